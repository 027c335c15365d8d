#include "deploy/cluster/topology.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <tuple>
#include <utility>

#include "compute/model_error.hpp"
#include "planning/catalog.hpp"

namespace orrery::deploy {

namespace {

namespace fs = std::filesystem;

// The file every message names; one problem ends the parse.
struct source {
  std::string file;

  [[noreturn]] void fail(int line, const std::string& problem) const {
    throw topology_error(file + ":" + std::to_string(line) + ": " + problem);
  }
};

// yaml-cpp's marks are 0-based, and -1 where there is no text (an empty file).
int line_of(const YAML::Mark& mark) { return mark.line >= 0 ? mark.line + 1 : 1; }
int line_of(const YAML::Node& node) { return line_of(node.Mark()); }

std::string kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "nothing";
  }
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

// "1 layer", "3 layers".
std::string count_of(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string range_text(int first, int last) {
  return "[" + std::to_string(first) + ", " + std::to_string(last) + ")";
}

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// "did you mean 'x'? " for a name within two edits of a known one (a typo or a
// swapped pair of letters), but never for a name that shares almost nothing.
std::string did_you_mean(const std::string& name, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_distance = 3;
  for (const auto& candidate : known) {
    auto distance = edit_distance(name, candidate);
    if (distance < best_distance && distance < candidate.size()) best = candidate, best_distance = distance;
  }
  return best.empty() ? "" : "did you mean '" + best + "'? ";
}

// One `key: value` of a YAML map, with the key's line.
struct entry {
  std::string key;
  YAML::Node value;
  int line = 0;
};

// A YAML map whose keys are all checked up front — unknown and duplicate keys
// are errors — so a misspelt optional key never silently falls back to its
// default. `noun` is what its keys are ("key", or "node" in a placement).
class section {
 public:
  section(const source& src, const YAML::Node& map, std::string what, int line,
          const std::vector<std::string>& known, const std::string& noun = "key")
      : src_(src), what_(std::move(what)), line_(line) {
    if (!map.IsMap()) src.fail(line, what_ + " must be a map, got " + kind_of(map));
    for (const auto& pair : map) {
      int key_line = line_of(pair.first);
      if (!pair.first.IsScalar()) src.fail(key_line, "a key in " + what_ + " is " + kind_of(pair.first));
      std::string key = pair.first.Scalar();
      if (std::find(known.begin(), known.end(), key) == known.end())
        src.fail(key_line, "unknown " + noun + " '" + key + "' in " + what_ + " (" + did_you_mean(key, known) +
                               "known: " + join(known) + ")");
      if (const entry* first = find(key))
        src.fail(key_line, "duplicate " + noun + " '" + key + "' in " + what_ + " (first on line " +
                               std::to_string(first->line) + ")");
      entries_.push_back({key, pair.second, key_line});
    }
  }

  const entry* find(const std::string& key) const {
    auto it = std::find_if(entries_.begin(), entries_.end(), [&](const entry& e) { return e.key == key; });
    return it == entries_.end() ? nullptr : &*it;
  }

  const entry& require(const std::string& key) const {
    if (const entry* e = find(key)) return *e;
    src_.fail(line_, "missing required key '" + key + "' in " + what_);
  }

  int line() const { return line_; }

 private:
  const source& src_;
  std::string what_;
  int line_;
  std::vector<entry> entries_;
};

// -- scalar values -------------------------------------------------------------

std::string text(const source& src, const entry& e) {
  if (!e.value.IsScalar() || e.value.Scalar().empty())
    src.fail(e.line, "'" + e.key + "' must be a non-empty string, got " + kind_of(e.value));
  return e.value.Scalar();
}

// Strict decimal: YAML's untyped scalars would otherwise let "1.5" or "0x10"
// through as whatever a lenient conversion makes of them.
std::optional<std::int64_t> integer(const std::string& digits) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size() || digits.empty()) return std::nullopt;
  return value;
}

std::int64_t integer_in(const source& src, const entry& e, std::int64_t low, std::int64_t high) {
  auto value = e.value.IsScalar() ? integer(e.value.Scalar()) : std::nullopt;
  if (!value || *value < low || *value > high)
    src.fail(e.line, "'" + e.key + "' must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                         "], got " + kind_of(e.value));
  return *value;
}

std::optional<std::uint16_t> port_number(const std::string& digits) {
  auto value = integer(digits);
  if (!value || *value < 1 || *value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(*value);
}

// A decimal number, an optional space and one of `units` (by which the
// number is multiplied); nothing when the text is anything else.
std::optional<double> quantity(const std::string& spec, const std::map<std::string, double>& units) {
  auto number_end = std::min(spec.find_first_not_of("0123456789."), spec.size());
  auto unit_start = std::min(spec.find_first_not_of(' ', number_end), spec.size());
  auto unit = units.find(spec.substr(unit_start));
  double number = 0;
  auto [end, error] = std::from_chars(spec.data(), spec.data() + number_end, number, std::chars_format::fixed);
  if (unit == units.end() || error != std::errc() || end != spec.data() + number_end) return std::nullopt;
  return number * unit->second;
}

// `1073741824`, `2GiB`, `1.5 GB`: decimal (KB = 1000) and binary (KiB = 1024)
// units both occur in device data sheets, so both are accepted.
std::optional<std::uint64_t> byte_count(const std::string& spec) {
  static const std::map<std::string, double> units = {
      {"", 1},        {"B", 1},          {"KB", 1e3},       {"MB", 1e6},      {"GB", 1e9},
      {"TB", 1e12},   {"KiB", 0x1p10},   {"MiB", 0x1p20},   {"GiB", 0x1p30},  {"TiB", 0x1p40}};
  auto bytes = quantity(spec, units);
  if (!bytes || *bytes < 1 || *bytes >= 0x1p64) return std::nullopt;
  return static_cast<std::uint64_t>(*bytes);
}

// -- nodes ---------------------------------------------------------------------

// A node as read, with the lines later checks point at.
struct parsed_node {
  node_spec spec;
  int address_line = 0;
  int data_port_line = 0;
  int memory_line = 0;
  int range_line = 0;
};

const std::vector<std::string> node_keys = {"name",   "address", "data_port", "device",
                                            "dtype",  "memory",  "threads",   "emulate"};

std::string node_name(const source& src, const entry& e) {
  auto name = text(src, e);
  auto valid = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; };
  if (!std::all_of(name.begin(), name.end(), valid))
    src.fail(e.line, "node name '" + name + "' may only hold letters, digits, '_' and '-'");
  return name;
}

void read_address(const source& src, const entry& e, node_spec& node) {
  auto address = text(src, e);
  auto colon = address.rfind(':');
  if (colon == std::string::npos) src.fail(e.line, "address '" + address + "' has no port (expected host:port)");
  std::string host = address.substr(0, colon);
  bool bracketed = host.size() >= 2 && host.front() == '[' && host.back() == ']';
  if (bracketed) host = host.substr(1, host.size() - 2);
  if (host.empty()) src.fail(e.line, "address '" + address + "' has an empty host (expected host:port)");
  if (!bracketed && host.find(':') != std::string::npos)
    src.fail(e.line, "address '" + address + "': write an IPv6 host in brackets, e.g. [::1]:7411");
  auto port = port_number(address.substr(colon + 1));
  if (!port) src.fail(e.line, "address '" + address + "' has port '" + address.substr(colon + 1) + "', expected 1..65535");
  node.host = host;
  node.port = *port;
}

// A host that does not resolve otherwise surfaces only when a node listens or
// a client connects, as CAF's bare "Invalid argument" with no line to fix.
void check_resolvable(const source& src, const parsed_node& node) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int status = ::getaddrinfo(node.spec.host.c_str(), nullptr, &hints, &found);
  if (found != nullptr) ::freeaddrinfo(found);
  if (status != 0)
    src.fail(node.address_line, "node '" + node.spec.name + "': cannot resolve host '" + node.spec.host +
                                    "': " + ::gai_strerror(status));
}

std::string device_name(const source& src, const entry& e) {
  auto device = text(src, e);
  auto digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  bool cuda = device.rfind("cuda:", 0) == 0 && device.size() > 5 && std::all_of(device.begin() + 5, device.end(), digit);
  if (device != "cpu" && !cuda)
    src.fail(e.line, "device '" + device + "' is neither cpu nor cuda:N");
  return device;
}

std::uint64_t memory_budget(const source& src, const entry& e) {
  auto budget = e.value.IsScalar() ? byte_count(e.value.Scalar()) : std::nullopt;
  if (!budget)
    src.fail(e.line, "memory " + kind_of(e.value) +
                         " is not a size: write bytes (1073741824) or a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB");
  return *budget;
}

// The data plane listens beside the control port unless told otherwise.
void read_data_port(const source& src, const section& s, parsed_node& node) {
  if (const entry* e = s.find("data_port")) {
    node.spec.data_port = static_cast<std::uint16_t>(integer_in(src, *e, 1, 65535));
    node.data_port_line = e->line;
    return;
  }
  int fallback = node.spec.port + 100;
  if (fallback > 65535)
    src.fail(node.address_line, "the default data port (control port + 100 = " + std::to_string(fallback) +
                                    ") is out of range; set data_port");
  node.spec.data_port = static_cast<std::uint16_t>(fallback);
  node.data_port_line = node.address_line;
}

// `100mbit`, `1gbit`, `1.5 Gbit/s`, `500kbit`, or bits per second: how tc
// and datasheets write link rates.
std::optional<std::uint64_t> bit_rate(std::string spec) {
  if (spec.size() > 2 && spec.compare(spec.size() - 2, 2, "/s") == 0) spec.resize(spec.size() - 2);
  for (auto& c : spec) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::map<std::string, double> units = {{"", 1}, {"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}};
  auto bits = quantity(spec, units);
  // tc's tbf takes rates from 8 bit/s; 1 Pbit/s is beyond any link here.
  if (!bits || *bits < 8 || *bits > 1e15) return std::nullopt;
  return static_cast<std::uint64_t>(*bits);
}

std::uint64_t rate_of(const source& src, const entry& e) {
  auto rate = e.value.IsScalar() ? bit_rate(e.value.Scalar()) : std::nullopt;
  if (!rate)
    src.fail(e.line, "'" + e.key + "' " + kind_of(e.value) +
                         " is not a link rate: write bits per second or a number with kbit, mbit or gbit (100mbit)");
  return *rate;
}

// This machine's reference core streams weights at 13 GB/s (ARCHITECTURE.md,
// an AVX2 read loop on one core); decode is memory-bound, so a device's
// effective weight-streaming rate over it is the share of a core that
// decodes as fast. A testbed node cannot be given more than one core's worth
// from a preset: what a desktop's other cores add is not emulated.
constexpr double reference_core_bytes_per_s = 13e9;

// Every Jetson and the Raspberry Pi 5 have one gigabit Ethernet port.
constexpr std::uint64_t preset_link_bits_per_s = 1'000'000'000;

// The planning catalog's devices, under their catalog keys and, for the
// Jetsons, as `jetson-KEY` too.
emulation emulation_preset(const source& src, const entry& e) {
  std::string name = text(src, e);
  std::string key = name.rfind("jetson-", 0) == 0 ? name.substr(7) : name;
  const planning::device_spec* found = nullptr;
  std::vector<std::string> known;
  for (const auto& device : planning::device_catalog()) {
    known.push_back(device.key);
    if (device.key == key) found = &device;
  }
  if (!found) src.fail(e.line, "unknown device preset '" + name + "' (" + did_you_mean(key, known) + "known: " + join(known) + ")");
  emulation out;
  out.preset = name;
  out.cpu_share = std::min(1.0, found->memory_bandwidth * found->bandwidth_efficiency / reference_core_bytes_per_s);
  out.memory_bytes = static_cast<std::uint64_t>(found->memory_bytes);
  out.egress_bits_per_s = out.ingress_bits_per_s = preset_link_bits_per_s;
  return out;
}

double cpu_share_of(const source& src, const entry& e) {
  double share = 0;
  bool valid = false;
  if (e.value.IsScalar()) {
    const auto& digits = e.value.Scalar();
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), share, std::chars_format::fixed);
    valid = error == std::errc() && end == digits.data() + digits.size() && share >= 0.01 && share <= 1024;
  }
  if (!valid) src.fail(e.line, "'cpu' must be a fraction of one core in [0.01, 1024] (0.25 is a quarter core), got " + kind_of(e.value));
  return share;
}

// `emulate:` of a node: a preset fills in what the explicit keys leave out.
emulation read_emulation(const source& src, const entry& e) {
  section s(src, e.value, "'emulate'", e.line, {"device", "cpu", "memory", "bandwidth", "egress", "ingress"});
  emulation out;
  if (const entry* device = s.find("device")) out = emulation_preset(src, *device);
  if (const entry* cpu = s.find("cpu")) out.cpu_share = cpu_share_of(src, *cpu);
  if (const entry* memory = s.find("memory")) out.memory_bytes = memory_budget(src, *memory);
  if (const entry* both = s.find("bandwidth")) out.egress_bits_per_s = out.ingress_bits_per_s = rate_of(src, *both);
  if (const entry* egress = s.find("egress")) out.egress_bits_per_s = rate_of(src, *egress);
  if (const entry* ingress = s.find("ingress")) out.ingress_bits_per_s = rate_of(src, *ingress);
  return out;
}

parsed_node read_node(const source& src, const YAML::Node& item, std::size_t index) {
  section s(src, item, "node " + std::to_string(index + 1), line_of(item), node_keys);
  parsed_node node;
  node.spec.line = s.line();
  node.spec.name = node_name(src, s.require("name"));
  const entry& address = s.require("address");
  read_address(src, address, node.spec);
  node.address_line = address.line;
  read_data_port(src, s, node);
  if (const entry* e = s.find("device")) node.spec.device = device_name(src, *e);
  node.spec.dtype = compute::default_dtype(node.spec.device);
  if (const entry* e = s.find("dtype")) {
    auto dtype = compute::dtype_from_name(text(src, *e));
    if (!dtype) src.fail(e->line, "dtype '" + text(src, *e) + "' is not one of fp32, fp16, bf16");
    node.spec.dtype = *dtype;
  }
  if (const entry* e = s.find("memory")) {
    node.spec.memory_bytes = memory_budget(src, *e);
    node.memory_line = e->line;
  }
  if (const entry* e = s.find("threads"))
    node.spec.threads = static_cast<int>(integer_in(src, *e, 1, std::numeric_limits<int>::max()));
  if (const entry* e = s.find("emulate")) node.spec.emulate = read_emulation(src, *e);
  return node;
}

std::vector<parsed_node> read_nodes(const source& src, const entry& e) {
  if (!e.value.IsSequence()) src.fail(e.line, "'nodes' must be a list of nodes, got " + kind_of(e.value));
  if (e.value.size() == 0) src.fail(e.line, "'nodes' is empty: a topology needs at least one node");
  std::vector<parsed_node> nodes;
  std::map<std::string, int> lines;  // name -> line of its first use
  for (std::size_t i = 0; i < e.value.size(); ++i) {
    auto node = read_node(src, e.value[i], i);
    auto [it, fresh] = lines.emplace(node.spec.name, node.spec.line);
    if (!fresh)
      src.fail(node.spec.line, "duplicate node name '" + node.spec.name + "' (first on line " +
                                   std::to_string(it->second) + ")");
    nodes.push_back(std::move(node));
  }
  return nodes;
}

// Two listeners on one host cannot share a port. Hosts are compared as written:
// `localhost` and `127.0.0.1` are not recognised as the same machine.
void check_ports(const source& src, const std::vector<parsed_node>& nodes) {
  std::map<std::pair<std::string, std::uint16_t>, std::string> users;
  for (const auto& node : nodes) {
    struct listener {
      std::uint16_t port;
      int line;
      const char* role;
    };
    for (const listener& l : {listener{node.spec.port, node.address_line, "control"},
                              listener{node.spec.data_port, node.data_port_line, "data"}}) {
      std::string user = "node '" + node.spec.name + "' " + l.role + " port";
      auto [it, fresh] = users.emplace(std::pair{node.spec.host, l.port}, user);
      if (!fresh)
        src.fail(l.line, user + " " + node.spec.host + ":" + std::to_string(l.port) + " clashes with " + it->second);
    }
  }
}

// -- model and placement ---------------------------------------------------------

// What is at `model` when it is not a model directory, or nothing.
std::optional<std::string> not_a_model(const fs::path& model) {
  std::error_code error;
  const auto status = fs::status(model, error);
  if (!fs::exists(status))
    return "does not exist (`orrery model init --preset tiny|small|llama2-7b --out " + model.string() +
           "` creates one)";
  if (!fs::is_directory(status)) return "is a file, not a model directory (one holding config.json and the weights)";
  if (!fs::exists(model / "config.json", error)) return "has no config.json: it is not a model directory";
  return std::nullopt;
}

fs::path resolve_model(const source& src, const entry& e, const fs::path& file) {
  fs::path written = text(src, e);
  // Absolute: nodes resolve the path the client sends them in their own working directories.
  fs::path model = fs::absolute(written.is_relative() ? file.parent_path() / written : written).lexically_normal();
  if (auto problem = not_a_model(model))
    src.fail(e.line, "model '" + written.string() + "'" +
                         (model == written ? "" : " (resolved to '" + model.string() + "')") + " " + *problem);
  return model;
}

compute::llama_config read_model_config(const source& src, const entry& e, const fs::path& model) {
  try {
    return compute::llama_config::load(model / "config.json");
  } catch (const compute::model_error& error) {
    src.fail(e.line, std::string("cannot read the model's config.json: ") + error.what());
  }
}

// Earlier nodes take the remainder, so layer counts differ by at most one.
void place_even(const source& src, int line, int num_layers, std::vector<parsed_node>& nodes) {
  int count = static_cast<int>(nodes.size());
  if (count > num_layers)
    src.fail(line, "placement 'even' needs at least one layer per node, but the model has " +
                       count_of(num_layers, "layer") + " and the topology " + count_of(count, "node"));
  auto ranges = even_ranges(num_layers, count);
  for (int i = 0; i < count; ++i) {
    std::tie(nodes[i].spec.first_layer, nodes[i].spec.last_layer) = ranges[i];
    nodes[i].range_line = line;
  }
}

// `[first, last]` in the file: a list of two integers.
std::optional<std::pair<std::int64_t, std::int64_t>> layer_range(const YAML::Node& value) {
  if (!value.IsSequence() || value.size() != 2 || !value[0].IsScalar() || !value[1].IsScalar()) return std::nullopt;
  auto first = integer(value[0].Scalar());
  auto last = integer(value[1].Scalar());
  if (!first || !last) return std::nullopt;
  return std::pair{*first, *last};
}

void read_range(const source& src, const entry& e, int num_layers, parsed_node& node) {
  auto range = layer_range(e.value);
  if (!range) src.fail(e.line, "the layers of node '" + e.key + "' must be a range [first, last), e.g. [0, 4]");
  auto [first, last] = *range;
  std::string written = "[" + std::to_string(first) + ", " + std::to_string(last) + ")";
  if (first >= last) src.fail(e.line, "the layer range " + written + " of node '" + e.key + "' is empty");
  if (first < 0 || last > num_layers)
    src.fail(e.line, "the layer range " + written + " of node '" + e.key + "' is outside the model's layers " +
                         range_text(0, num_layers));
  node.spec.first_layer = static_cast<int>(first);
  node.spec.last_layer = static_cast<int>(last);
  node.range_line = e.line;
}

// Every layer on exactly one node: walking the ranges in order, each must
// start where the previous one ended.
void check_coverage(const source& src, int placement_line, int num_layers, std::vector<parsed_node*> order) {
  std::sort(order.begin(), order.end(),
            [](const parsed_node* a, const parsed_node* b) { return a->spec.first_layer < b->spec.first_layer; });
  int covered = 0;
  const parsed_node* previous = nullptr;
  for (const parsed_node* node : order) {
    const auto& spec = node->spec;
    if (spec.first_layer < covered)
      src.fail(node->range_line, "the layer range " + range_text(spec.first_layer, spec.last_layer) + " of node '" +
                                     spec.name + "' overlaps node '" + previous->spec.name + "'s " +
                                     range_text(previous->spec.first_layer, previous->spec.last_layer));
    if (spec.first_layer > covered)
      src.fail(node->range_line, "layers " + range_text(covered, spec.first_layer) + " are on no node");
    covered = spec.last_layer;
    previous = node;
  }
  if (covered < num_layers) src.fail(placement_line, "layers " + range_text(covered, num_layers) + " are on no node");
}

void place_explicit(const source& src, const entry& e, int num_layers, std::vector<parsed_node>& nodes) {
  std::vector<std::string> names;
  for (const auto& node : nodes) names.push_back(node.spec.name);
  section ranges(src, e.value, "the placement", e.line, names, "node");
  std::vector<parsed_node*> order;
  for (auto& node : nodes) {
    const entry* range = ranges.find(node.spec.name);
    if (!range) src.fail(e.line, "node '" + node.spec.name + "' has no layer range in the placement");
    read_range(src, *range, num_layers, node);
    order.push_back(&node);
  }
  check_coverage(src, e.line, num_layers, std::move(order));
}

void place(const source& src, const entry* e, int nodes_line, int num_layers, std::vector<parsed_node>& nodes) {
  if (!e) return place_even(src, nodes_line, num_layers, nodes);
  if (e->value.IsScalar() && e->value.Scalar() == "even") return place_even(src, e->line, num_layers, nodes);
  if (!e->value.IsMap())
    src.fail(e->line, "placement must be 'even', 'auto' or a map of node name to layer range, got " + kind_of(e->value));
  place_explicit(src, *e, num_layers, nodes);
}

void check_memory(const source& src, const compute::llama_config& config, std::vector<parsed_node>& nodes) {
  for (auto& node : nodes) {
    auto& spec = node.spec;
    // Activations and KV caches come on top and are not counted.
    spec.weight_bytes = spec.weight_bytes_of(config, spec.first_layer, spec.last_layer);
    if (spec.memory_bytes && spec.weight_bytes > *spec.memory_bytes)
      src.fail(node.memory_line, "node '" + spec.name + "' needs " + std::to_string(spec.weight_bytes) + " bytes (" +
                                     human_bytes(spec.weight_bytes) + ") of " + std::string(compute::dtype_name(spec.dtype)) + " weights for layers " +
                                     range_text(spec.first_layer, spec.last_layer) + " but its memory budget is " +
                                     std::to_string(*spec.memory_bytes) + " bytes (" +
                                     human_bytes(*spec.memory_bytes) + ")");
  }
}

// -- testbed ---------------------------------------------------------------------

std::optional<std::uint32_t> ipv4(const std::string& text) {
  in_addr address{};
  if (::inet_pton(AF_INET, text.c_str(), &address) != 1) return std::nullopt;
  return ntohl(address.s_addr);
}

std::string ipv4_text(std::uint32_t host_order) {
  in_addr address{htonl(host_order)};
  char text[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &address, text, sizeof text);
  return text;
}

void read_subnet(const source& src, const entry& e, testbed_spec& tb) {
  tb.subnet = text(src, e);
  auto slash = tb.subnet.find('/');
  auto network = ipv4(tb.subnet.substr(0, slash));
  auto prefix = slash == std::string::npos ? std::nullopt : integer(tb.subnet.substr(slash + 1));
  if (!network || !prefix || *prefix < 8 || *prefix > 30)
    src.fail(e.line, "subnet '" + tb.subnet + "' must be an IPv4 network with a prefix length of 8..30, e.g. 10.213.0.0/24");
  tb.prefix_length = static_cast<int>(*prefix);
  std::uint32_t mask = ~std::uint32_t{0} << (32 - tb.prefix_length);
  if ((*network & ~mask) != 0)
    src.fail(e.line, "subnet '" + tb.subnet + "' has host bits set (the network is " + ipv4_text(*network & mask) + "/" +
                         std::to_string(tb.prefix_length) + ")");
  tb.network = *network;
}

// An address the testbed can hand out: inside the subnet, neither its
// network nor its broadcast address.
bool usable_in(const testbed_spec& tb, std::uint32_t address) {
  std::uint32_t mask = ~std::uint32_t{0} << (32 - tb.prefix_length);
  return (address & mask) == tb.network && address != tb.network && address != (tb.network | ~mask);
}

// A testbed gives every node, and the client, its own address in its own
// network namespace, so each node's host must be a distinct address of the
// subnet.
void read_testbed(const source& src, const entry* e, int nodes_line, const std::vector<parsed_node>& nodes, topology& t) {
  bool emulated = std::any_of(nodes.begin(), nodes.end(), [](const parsed_node& n) { return n.spec.emulate.has_value(); });
  if (!e && !emulated) return;
  testbed_spec tb;
  tb.line = e ? e->line : nodes_line;
  tb.network = *ipv4("10.213.0.0");
  std::optional<entry> client;
  if (e) {
    section s(src, e->value, "'testbed'", e->line, {"subnet", "client"});
    if (const entry* subnet = s.find("subnet")) read_subnet(src, *subnet, tb);
    if (const entry* c = s.find("client")) client = *c;
  }
  std::uint32_t client_address = tb.network + 1;
  if (client) {
    auto written = ipv4(text(src, *client));
    if (!written || !usable_in(tb, *written))
      src.fail(client->line, "testbed client '" + client->value.Scalar() + "' is not a host address of the subnet " + tb.subnet);
    client_address = *written;
  }
  tb.client = ipv4_text(client_address);
  std::map<std::uint32_t, std::string> owners = {{client_address, "the testbed client"}};
  for (const auto& node : nodes) {
    auto address = ipv4(node.spec.host);
    if (!address || !usable_in(tb, *address))
      src.fail(node.address_line, "node '" + node.spec.name + "' host " + node.spec.host + " is not a host address of the testbed subnet " +
                                      tb.subnet + ": in a testbed each node runs in its own network namespace with its own address there");
    auto [it, fresh] = owners.emplace(*address, "node '" + node.spec.name + "'");
    if (!fresh)
      src.fail(node.address_line, "node '" + node.spec.name + "' host " + node.spec.host + " is already " + it->second +
                                      "'s: in a testbed every node needs its own address");
  }
  t.testbed = tb;
}

// -- timeouts --------------------------------------------------------------------

void read_timeouts(const source& src, const entry& e, topology& t) {
  section s(src, e.value, "'timeouts'", e.line, {"connect_ms", "request_ms", "heartbeat_ms", "heartbeat_deadline_ms"});
  auto read = [&](const char* key, std::chrono::milliseconds& out) {
    if (const entry* value = s.find(key))
      out = std::chrono::milliseconds(integer_in(src, *value, 1, std::numeric_limits<std::int32_t>::max()));
  };
  read("connect_ms", t.connect_timeout);
  read("request_ms", t.request_timeout);
  read("heartbeat_ms", t.heartbeat_interval);
  read("heartbeat_deadline_ms", t.heartbeat_deadline);
  if (t.heartbeat_deadline < 2 * t.heartbeat_interval) {
    const entry* at = s.find("heartbeat_deadline_ms") ? s.find("heartbeat_deadline_ms") : s.find("heartbeat_ms");
    src.fail(at->line, "heartbeat_deadline_ms (" + std::to_string(t.heartbeat_deadline.count()) +
                           ") must be at least twice heartbeat_ms (" + std::to_string(t.heartbeat_interval.count()) +
                           "), or one late heartbeat kills a node");
  }
}

bool read_rebalance(const source& src, const entry& e) {
  auto value = text(src, e);
  if (value == "on_join") return true;
  if (value == "never") return false;
  src.fail(e.line, "rebalance must be 'on_join' or 'never', got '" + value + "'");
}

// `placement: auto` with its `objective:` and `profile:`; those two mean
// nothing for any other placement, so they are errors there.
void read_automatic_placement(const source& src, const section& top, const fs::path& file, topology& t) {
  const entry* placement = top.find("placement");
  t.auto_placement = placement && placement->value.IsScalar() && placement->value.Scalar() == "auto";
  for (const char* key : {"objective", "profile"})
    if (const entry* e = top.find(key); e && !t.auto_placement)
      src.fail(e->line, std::string("'") + key + "' only applies to 'placement: auto'");
  if (const entry* e = top.find("objective")) {
    t.objective = text(src, *e);
    if (t.objective != "latency" && t.objective != "throughput")
      src.fail(e->line, "objective must be 'latency' or 'throughput', got '" + t.objective + "'");
  }
  if (const entry* e = top.find("profile")) {
    fs::path written = text(src, *e);
    t.profile = (written.is_relative() ? file.parent_path() / written : written).lexically_normal();
  }
}

YAML::Node load_yaml(const source& src, const std::string& yaml_text) {
  try {
    return YAML::Load(yaml_text);
  } catch (const YAML::Exception& error) {
    src.fail(line_of(error.mark), "YAML syntax error: " + error.msg);
  }
}

std::string file_kind(const fs::file_status& status) {
  switch (status.type()) {
    case fs::file_type::directory: return "a directory";
    case fs::file_type::fifo: return "a FIFO";
    case fs::file_type::socket: return "a socket";
    case fs::file_type::block:
    case fs::file_type::character: return "a device";
    default: return "something else";
  }
}

[[noreturn]] void fail_file(const fs::path& file, const std::string& problem) {
  throw topology_error(file.string() + ": " + problem);
}

// The whole file, once it is known to be a regular file of at most
// max_topology_file_bytes: its status is read before it is opened, so a FIFO
// is refused instead of blocking the open.
std::string read_topology_file(const fs::path& file) {
  std::error_code error;
  const auto status = fs::status(file, error);
  if (error) fail_file(file, "cannot open the topology file: " + error.message());
  if (!fs::is_regular_file(status)) fail_file(file, "is " + file_kind(status) + ", not a regular file");
  const auto size = fs::file_size(file, error);
  if (error) fail_file(file, "cannot open the topology file: " + error.message());
  if (size > max_topology_file_bytes)
    fail_file(file, "the topology file has " + std::to_string(size) + " bytes (" + human_bytes(size) +
                        "), more than the " + human_bytes(max_topology_file_bytes) + " a topology file may have");
  std::ifstream in(file, std::ios::binary);
  std::string text(size, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size))) fail_file(file, "cannot read the topology file");
  return text;
}

}  // namespace

std::vector<std::pair<int, int>> even_ranges(int layers, int nodes) {
  std::vector<std::pair<int, int>> ranges;
  int first = 0;
  for (int i = 0; i < nodes; ++i) {
    int last = first + layers / nodes + (i < layers % nodes ? 1 : 0);
    ranges.emplace_back(first, last);
    first = last;
  }
  return ranges;
}

std::string human_bytes(std::uint64_t bytes) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  std::size_t unit = 0;
  for (; value >= 1024 && unit + 1 < std::size(units); ++unit) value /= 1024;
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", value, units[unit]);
  return text;
}

std::uint64_t node_spec::weight_bytes_of(const compute::llama_config& model, int first, int last) const {
  return static_cast<std::uint64_t>(model.parameter_count(first, last)) * compute::dtype_size(dtype);
}

std::string node_spec::address() const {
  bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string node_spec::label() const {
  return "node '" + name + "' (" + address() + ")";
}

const node_spec& topology::node(const std::string& name) const {
  auto it = std::find_if(nodes.begin(), nodes.end(), [&](const node_spec& n) { return n.name == name; });
  if (it != nodes.end()) return *it;
  std::vector<std::string> names;
  for (const auto& n : nodes) names.push_back(n.name);
  throw topology_error(file.string() + ": no node named '" + name + "' (" + did_you_mean(name, names) +
                       "nodes: " + join(names) + ")");
}

topology parse_topology(const std::string& yaml_text, const std::filesystem::path& file_for_messages) {
  const source src{file_for_messages.string()};
  YAML::Node root = load_yaml(src, yaml_text);
  section top(src, root, "the topology", line_of(root),
              {"cluster", "model", "nodes", "placement", "objective", "profile", "timeouts", "rebalance", "testbed"});
  topology t;
  t.file = file_for_messages;
  t.cluster = text(src, top.require("cluster"));
  const entry& model = top.require("model");
  const entry& nodes_entry = top.require("nodes");
  auto nodes = read_nodes(src, nodes_entry);
  check_ports(src, nodes);
  for (const auto& node : nodes) check_resolvable(src, node);
  if (const entry* e = top.find("timeouts")) read_timeouts(src, *e, t);
  if (const entry* e = top.find("rebalance")) t.rebalance_on_join = read_rebalance(src, *e);
  // The model is opened only once the file itself is known to be well formed.
  t.model = resolve_model(src, model, file_for_messages);
  t.model_config = read_model_config(src, model, t.model);
  t.num_layers = t.model_config.num_layers;
  read_testbed(src, top.find("testbed"), nodes_entry.line, nodes, t);
  read_automatic_placement(src, top, file_for_messages, t);
  if (!t.auto_placement) {
    place(src, top.find("placement"), nodes_entry.line, t.num_layers, nodes);
    check_memory(src, t.model_config, nodes);
  }
  std::stable_sort(nodes.begin(), nodes.end(), [](const parsed_node& a, const parsed_node& b) {
    return a.spec.first_layer < b.spec.first_layer;
  });
  for (auto& node : nodes) t.nodes.push_back(std::move(node.spec));
  return t;
}

topology load_topology(const std::filesystem::path& file) {
  return parse_topology(read_topology_file(file), file);
}

topology load_topology_for_model(const std::filesystem::path& file, const std::string& model) {
  if (model.empty()) return load_topology(file);
  YAML::Node root = load_yaml({file.string()}, read_topology_file(file));
  root["model"] = std::filesystem::absolute(model).string();
  std::stringstream text;
  text << root;
  return parse_topology(text.str(), file);
}

std::string describe_placement(const topology& t) {
  std::size_t name_width = 4, address_width = 7;
  for (const auto& node : t.nodes) {
    name_width = std::max(name_width, node.name.size());
    address_width = std::max(address_width, node.address().size());
  }
  std::ostringstream out;
  out << "cluster " << t.cluster << ": " << t.model.string() << ", " << count_of(t.num_layers, "layer") << " over "
      << count_of(t.nodes.size(), "node") << (t.auto_placement ? ", placement auto (" + t.objective + ")" : "") << "\n";
  out << std::left << "  " << std::setw(name_width) << "node" << "  " << std::setw(address_width) << "address"
      << "  data   device  layers     weights     budget\n";
  for (const auto& node : t.nodes) {
    out << "  " << std::setw(name_width) << node.name << "  " << std::setw(address_width) << node.address() << "  "
        << std::setw(5) << node.data_port << "  " << std::setw(6) << node.device << "  " << std::setw(9)
        << (node.first_layer < node.last_layer ? range_text(node.first_layer, node.last_layer) : "-") << "  " << std::setw(10) << human_bytes(node.weight_bytes)
        << "  " << (node.memory_bytes ? human_bytes(*node.memory_bytes) : "unlimited") << "\n";
  }
  return out.str();
}

}  // namespace orrery::deploy
