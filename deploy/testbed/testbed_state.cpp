// The testbed's state file: its JSON form, where it lies, and the questions
// asked of it (is the testbed up, which of its nodes and resources still exist).

#include "deploy/testbed/testbed_state.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "deploy/testbed/emulation.hpp"
#include "deploy/testbed/process.hpp"

namespace orrery::deploy {

namespace detail {

namespace {

namespace fs = std::filesystem;

nlohmann::json to_json(const testbed_state& s) {
  auto nodes = nlohmann::json::array();
  for (const auto& n : s.nodes)
    nodes.push_back({{"name", n.name}, {"netns", n.netns}, {"address", n.address}, {"bridge_port", n.bridge_port},
                     {"pid", n.pid}, {"log", n.log.string()}, {"cpus", n.cpus}});
  std::vector<std::string> cgroups;
  for (const auto& c : s.cgroups) cgroups.push_back(c.string());
  return {{"cluster", s.cluster}, {"topology", s.topology.string()},
          {"bridge_netns", s.bridge_netns}, {"client_netns", s.client_netns},
          {"namespaces", s.namespaces}, {"cgroups", cgroups},
          {"nodes", nodes}, {"registry", s.registry}};
}

testbed_state state_from_json(const nlohmann::json& j) {
  testbed_state s;
  s.cluster = j.at("cluster").get<std::string>();
  s.topology = j.at("topology").get<std::string>();
  s.bridge_netns = j.at("bridge_netns").get<std::string>();
  s.client_netns = j.at("client_netns").get<std::string>();
  s.namespaces = j.at("namespaces").get<std::vector<std::string>>();
  for (const auto& c : j.at("cgroups")) s.cgroups.emplace_back(c.get<std::string>());
  for (const auto& n : j.at("nodes"))
    s.nodes.push_back({n.at("name").get<std::string>(), n.at("netns").get<std::string>(), n.at("address").get<std::string>(),
                       n.at("bridge_port").get<std::string>(), n.at("pid").get<pid_t>(), n.at("log").get<std::string>(),
                       n.value("cpus", std::vector<int>{})});
  s.registry = j.at("registry").get<bool>();
  return s;
}

}  // namespace

void save_state(const testbed_state& s) {
  write_atomically(testbed_state_path(s.cluster), to_json(s).dump(2) + "\n");
}

/// The state of the testbed `up` is about to build: every name decided, nothing created.
testbed_state planned_state(const topology& t) {
  testbed_state s;
  s.cluster = t.cluster;
  s.topology = t.file;
  s.bridge_netns = resource_name(t.cluster, "bridge");
  s.client_netns = resource_name(t.cluster, "client");
  const auto dir = testbed_state_path(t.cluster).parent_path();
  std::vector<std::optional<double>> shares;
  for (const auto& n : t.nodes) shares.push_back(n.emulate ? n.emulate->cpu_share : std::nullopt);
  const auto pins = pin_to_cpus(shares, host_cpus());
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    const auto& n = t.nodes[i];
    s.nodes.push_back({n.name, resource_name(t.cluster, n.name), n.address(), bridge_port_name(n.name, i), 0,
                       dir / (n.name + ".log"), pins[i]});
  }
  return s;
}

testbed_state require_up(const topology& t, const fs::path& topology_file) {
  auto s = read_testbed_state(t.cluster);
  if (!s)
    throw std::runtime_error("the testbed of cluster '" + t.cluster + "' is not up (no state at " +
                             testbed_state_path(t.cluster).string() + "): start it with `orrery testbed up " +
                             topology_file.string() + "`");
  return *s;
}

/// The live process of node `n`, if it still runs the node's command line.
std::optional<node_process> process_of(const testbed_state& s, const testbed_node& n) {
  if (n.pid == 0) return std::nullopt;
  return node_process::open({n.name, n.pid, n.address}, s.topology);
}


/// What `s` records that still exists, e.g. `netns orrery-lab-a`.
std::vector<std::string> live_resources(const testbed_state& s) {
  std::vector<std::string> live;
  for (const auto& netns : s.namespaces)
    if (fs::exists(netns_path(netns))) live.push_back("netns " + netns);
  for (const auto& cgroup : s.cgroups)
    if (fs::exists(cgroup)) live.push_back("cgroup " + cgroup.string());
  for (const auto& n : s.nodes)
    if (process_of(s, n)) live.push_back("node '" + n.name + "' pid " + std::to_string(n.pid));
  return live;
}

}  // namespace detail

using namespace detail;

std::filesystem::path testbed_state_path(const std::string& cluster) {
  // registry_path's file name, so both name a cluster the same way.
  return runtime_directory() / ("testbed-" + registry_path(cluster).stem().string()) / "state.json";
}

std::optional<testbed_state> read_testbed_state(const std::string& cluster) {
  const auto path = testbed_state_path(cluster);
  std::ifstream in(path);
  if (!in) return std::nullopt;
  try {
    return state_from_json(nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path.string() + " is not a testbed state file: " + e.what());
  }
}

}  // namespace orrery::deploy
