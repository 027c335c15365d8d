// The `nodes:` and `testbed:` sections of a topology file: each node's
// name, address, ports, device, dtype, memory budget, threads and emulated
// limits; the testbed's subnet, and every node's address in it.

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <limits>
#include <map>
#include <utility>

#include "compute/message_text.hpp"
#include "deploy/cluster/topology_yaml.hpp"
#include "planning/catalog.hpp"

namespace orrery::deploy::detail {

namespace {

const std::vector<std::string> node_keys = {"name",    "address", "data_port", "device", "dtype",
                                            "memory",  "threads", "emulate",   "group",  "speed"};

// A scalar that is a number in [low, high] written in `format`, or nothing.
std::optional<double> number_in(const entry& e, double low, double high, std::chars_format format) {
  if (!e.value.IsScalar()) return std::nullopt;
  const auto& digits = e.value.Scalar();
  double value = 0;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value, format);
  if (error != std::errc() || end != digits.data() + digits.size() || !(value >= low && value <= high)) return std::nullopt;
  return value;
}

// `speed:` a node's compute speed relative to the rest of its group.
double speed_of(const source& src, const entry& e) {
  if (auto speed = number_in(e, 0.01, 1e6, std::chars_format::general)) return *speed;
  src.fail(e.line, "'speed' must be a node's compute speed relative to its group, in [0.01, 1e6] (2 is twice as "
                   "fast), got " + kind_of(e.value));
}

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
  if (!found) src.fail(e.line, "unknown device preset '" + name + "' (" + did_you_mean(key, known) + "known: " + compute::join(known) + ")");
  emulation out;
  out.preset = name;
  out.cpu_share = std::min(1.0, found->memory_bandwidth * found->bandwidth_efficiency / reference_core_bytes_per_s);
  out.memory_bytes = static_cast<std::uint64_t>(found->memory_bytes);
  out.egress_bits_per_s = out.ingress_bits_per_s = preset_link_bits_per_s;
  return out;
}

double cpu_share_of(const source& src, const entry& e) {
  if (auto share = number_in(e, 0.01, 1024, std::chars_format::fixed)) return *share;
  src.fail(e.line, "'cpu' must be a fraction of one core in [0.01, 1024] (0.25 is a quarter core), got " + kind_of(e.value));
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
  node.spec.dtype = default_element_type(node.spec.device);
  if (const entry* e = s.find("dtype")) {
    auto dtype = element_type_from_name(text(src, *e));
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
  if (const entry* e = s.find("group")) {
    node.spec.group = text(src, *e);
    if (node.spec.group.empty()) src.fail(e->line, "'group' must name the node's group");
    node.group_line = e->line;
  }
  if (const entry* e = s.find("speed")) {
    if (!s.find("group")) src.fail(e->line, "'speed' splits a group's work, but node '" + node.spec.name + "' has no 'group'");
    node.spec.speed = speed_of(src, *e);
  }
  return node;
}

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

}  // namespace

// -- nodes ---------------------------------------------------------------------

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

// -- testbed ---------------------------------------------------------------------

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

}  // namespace orrery::deploy::detail
