#pragma once
// An emulated edge cluster on one machine: `orrery testbed up` gives every
// node of a topology its own network namespace behind a rate-limited link,
// a CPU quota and a memory cap, and starts the node there; `exec` runs a
// command in a client namespace that reaches the nodes; `down` removes it all.
//
// Background: the papers orrery follows measure on Jetsons and Raspberry Pis
// joined by 100 Mbit/s to 1 Gbit/s Ethernet. To see a plan behave on such a
// cluster without one, each node gets what makes it slow: a `tc qdisc tbf`
// on both ends of its link (this kernel has no netem), cgroup v1
// `cpu.cfs_quota_us` for its speed (on CPUs of its own: `cpuset.cpus`) and
// `memory.limit_in_bytes` for its RAM.
// The namespaces hang off a bridge in a namespace of its own, and every veth
// is created directly inside its namespaces, so the machine's own (root)
// namespace never holds a testbed interface, address or route.
//
// The testbed outlives the command that built it, so `up` records every
// namespace, cgroup, process and file it creates in a state file, rewritten
// after each one: `down` (and `up`'s own rollback when a step fails) removes
// what the file lists and nothing else.
//
// The parts: emulation.hpp (namespaces, links, shaping, cgroups), process.hpp
// (the programs it starts), testbed_state.hpp (the state file), testbed.cpp
// (up, down, exec, status).

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"

namespace orrery::deploy {

/// Why `orrery testbed up` cannot run on this machine — not root, `ip` or
/// `tc` missing, no cgroup v1 cpu, cpuset or memory controller, or a kernel without
/// veth, bridge or tbf (probed in a throw-away namespace) — or "" when it can.
std::string testbed_unavailable();

// -- the state file --------------------------------------------------------------

/// One node of a testbed as `up` set it up.
struct testbed_node {
  std::string name;
  /// Its network namespace (`/var/run/netns/NAME`).
  std::string netns;
  /// The control address, `host:port`.
  std::string address;
  /// The bridge-side end of its veth pair, in the bridge namespace.
  std::string bridge_port;
  /// 0 until started.
  pid_t pid = 0;
  /// Where its stdout and stderr go.
  std::filesystem::path log;
  /// The CPUs it runs on (emulation.hpp's pin_to_cpus); empty: any.
  std::vector<int> cpus;
};

/// What a testbed's state file records: everything `up` created, listed as
/// soon as it exists.
struct testbed_state {
  std::string cluster;
  /// The topology file, absolute, as the nodes were started with it.
  std::filesystem::path topology;
  std::string bridge_netns;
  std::string client_netns;
  /// In creation order (veths go with their namespaces).
  std::vector<std::string> namespaces;
  /// Directories under /sys/fs/cgroup/{cpu,cpuset,memory}, in creation order.
  std::vector<std::filesystem::path> cgroups;
  std::vector<testbed_node> nodes;
  /// Whether `up` wrote the run registry `orrery chaos` reads.
  bool registry = false;
};

/// `runtime_directory()/testbed-CLUSTER/state.json` (CLUSTER as in
/// registry_path); the nodes' logs lie beside it.
std::filesystem::path testbed_state_path(const std::string& cluster);

/// The state of `cluster`'s testbed; nothing if it has none. Throws
/// std::runtime_error naming the file if it is malformed.
std::optional<testbed_state> read_testbed_state(const std::string& cluster);

// -- orrery testbed up | down | exec | status -----------------------------------------

struct testbed_up_options {
  std::string topology;
  /// How long every node has to accept connections from the client namespace.
  double ready_timeout_s = 15;
};

/// Builds the testbed of `o.topology` and starts its nodes, printing a summary
/// to `out`. Throws std::runtime_error naming what is missing or the step that
/// failed (after removing everything created so far), or saying the testbed
/// is already up.
void testbed_up(const testbed_up_options& o, std::ostream& out);

/// Stops the recorded nodes and removes the recorded cgroups, namespaces and
/// files, one line each to `out`; nothing recorded is not an error. Throws
/// std::runtime_error listing what could not be removed (the state file then
/// stays, listing it).
void testbed_down(const std::filesystem::path& topology_file, std::ostream& out);

/// Runs `command` (searched in PATH) in the testbed's client namespace with
/// this process's stdin, stdout and stderr; returns its exit status, or 128 +
/// the signal that killed it.
int testbed_exec(const std::filesystem::path& topology_file, const std::vector<std::string>& command);

/// Prints what the state file records and whether each node runs and accepts
/// connections from the client namespace.
void testbed_status(const std::filesystem::path& topology_file, std::ostream& out);

// -- links and namespaces ------------------------------------------------------------

/// The link of one node of a running testbed, for `orrery chaos --action
/// partition`: the bridge-side end of its veth pair.
class testbed_link {
 public:
  /// Throws std::runtime_error if the testbed of `t` is not up or lists no
  /// node `node`.
  testbed_link(const topology& t, const std::string& node);

  /// Takes the link down: nothing reaches the node or leaves it.
  void cut() const;
  /// Brings the link up again. Its tbf qdiscs stay attached while it is down
  /// (checked on this kernel), so the shaping comes back with it.
  void restore() const;
  /// `veth v-NODE in netns orrery-CLUSTER-bridge`, for log lines.
  std::string describe() const;

 private:
  std::string netns_;
  std::string port_;
};

/// Runs `work` on a thread that has joined network namespace `netns` (a name
/// under /var/run/netns), rethrowing what it throws; sockets it opens stay in
/// that namespace.
void in_network_namespace(const std::string& netns, const std::function<void()>& work);

/// Whether `ipv4:port` accepts a TCP connection within `timeout`, over an
/// on-link route only (SO_DONTROUTE): never through a gateway, so from a
/// namespace without a link into the testbed subnet this fails at once,
/// without sending a packet.
bool accepts_on_link(const std::string& ipv4, std::uint16_t port, std::chrono::milliseconds timeout);

}  // namespace orrery::deploy
