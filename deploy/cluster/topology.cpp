// A topology file as a whole: reading the file (regular, bounded), its
// top-level keys in order — nodes, timeouts, model, testbed, placement — and
// what the rest of orrery asks of a topology (deploy/cluster/topology.hpp).
// The sections are read in topology_nodes.cpp and topology_placement.cpp
// through the strict YAML reading of topology_yaml.hpp.

#include "deploy/cluster/topology.hpp"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <limits>
#include <sstream>

#include "compute/message_text.hpp"
#include "compute/tensor_slice.hpp"
#include "deploy/cluster/topology_yaml.hpp"

namespace orrery::deploy {

using namespace detail;

namespace {

namespace fs = std::filesystem;

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

// `collectives: {sequence_parallel: on, tiles: 4}`
group_collectives read_collectives(const source& src, const entry& e) {
  section s(src, e.value, "'collectives'", e.line, {"sequence_parallel", "tiles"});
  group_collectives out;
  if (const entry* sp = s.find("sequence_parallel")) {
    const auto value = text(src, *sp);
    if (value != "on" && value != "off") src.fail(sp->line, "sequence_parallel must be 'on' or 'off', got '" + value + "'");
    out.sequence_parallel = value == "on";
  }
  if (const entry* tiles = s.find("tiles")) out.tiles = static_cast<std::int32_t>(integer_in(src, *tiles, 1, 64));
  return out;
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
    if (t.objective != "latency" && t.objective != "throughput" && t.objective != "training")
      src.fail(e->line, "objective must be 'latency', 'throughput' or 'training', got '" + t.objective + "'");
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
  const auto parameters = group.empty() ? model.parameter_count(first, last)
                                        : compute::parameter_count(model, first, last, slice);
  return static_cast<std::uint64_t>(parameters) * element_size(dtype);
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
                       "nodes: " + compute::join(names) + ")");
}

topology parse_topology(const std::string& yaml_text, const std::filesystem::path& file_for_messages) {
  const source src{file_for_messages.string()};
  YAML::Node root = load_yaml(src, yaml_text);
  section top(src, root, "the topology", line_of(root),
              {"cluster", "model", "nodes", "placement", "objective", "profile", "timeouts", "rebalance", "testbed",
               "collectives"});
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
  if (const entry* e = top.find("collectives")) t.collectives = read_collectives(src, *e);
  // The model is opened only once the file itself is known to be well formed.
  t.model = resolve_model(src, model, file_for_messages);
  t.model_config = read_model_config(src, model, t.model);
  t.num_layers = t.model_config.num_layers;
  read_testbed(src, top.find("testbed"), nodes_entry.line, nodes, t);
  read_automatic_placement(src, top, file_for_messages, t);
  for (const auto& node : nodes)
    if (t.auto_placement && !node.spec.group.empty())
      src.fail(node.group_line, "placement 'auto' forms its own groups from the nodes: give group '" +
                                    node.spec.group + "' its layers with placement 'even' or a map of layer ranges");
  if (!t.auto_placement) {
    place(src, top.find("placement"), nodes_entry.line, t.model_config, nodes);
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
        << "  " << (node.memory_bytes ? human_bytes(*node.memory_bytes) : "unlimited")
        << (node.group.empty() ? "" : "  group " + node.group + ": " + node.slice.describe()) << "\n";
  }
  return out.str();
}

}  // namespace orrery::deploy
