#pragma once
// What makes the testbed's namespaces an edge cluster, piece by piece: the
// names of its namespaces, interfaces and cgroups; a namespace per node
// joined to a bridge by a veth that tbf shapes; a cgroup v1 CPU quota, the
// CPUs it may run on and a memory limit per node. Each piece is recorded in the state file as soon as
// it exists (testbed_state.hpp), so `down` removes exactly what was made.
// Internal to deploy/testbed.

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"
#include "deploy/testbed/testbed.hpp"

namespace orrery::deploy::detail {

// -- names -------------------------------------------------------------------------

// Namespaces and cgroups are `orrery-CLUSTER-WHO` (WHO: a node, `client` or
// `bridge`), with anything but letters, digits, `_` and `-` replaced by `_`.
std::string resource_name(const std::string& cluster, const std::string& who);

/// Node names that would take the testbed's own namespaces' names.
extern const std::vector<std::string> reserved_node_names;

/// The bridge-side end of node `node`'s veth, the node being `index`th in the topology.
std::string bridge_port_name(const std::string& node, std::size_t index);

// -- preflight -----------------------------------------------------------------------

/// Throws std::runtime_error unless this process runs as root.
void require_root();

// -- building ------------------------------------------------------------------------

/// The bridge namespace with its bridge, and the client namespace linked to it.
void build_bridge_and_client(testbed_state& s, const testbed_spec& tb);

/// The node's namespace and link, shaped: egress on its own end, ingress on
/// the bridge's end towards it.
void build_node_network(testbed_state& s, const testbed_spec& tb, const node_spec& spec, const testbed_node& n);

/// The CPUs listed in a cpuset list such as `0-3,8` (`where` names it in the
/// error a malformed list gets).
std::vector<int> parse_cpu_list(const std::string& text, const std::string& where);

/// The CPUs the testbed may give its nodes: the root cpuset's `cpuset.cpus`.
std::vector<int> host_cpus();

/// The CPUs each node is pinned to, by its cpu share (nothing for a node
/// without one): ceil(share) CPUs each, the least loaded first (then the
/// lowest), so 4 nodes at 0.5 core on 2 CPUs share a CPU pairwise.
std::vector<std::vector<int>> pin_to_cpus(const std::vector<std::optional<double>>& shares, const std::vector<int>& cpus);

/// The node's cpu, cpuset and memory cgroups, for the limits it has.
std::vector<std::filesystem::path> build_cgroups(testbed_state& s, const node_spec& spec, const testbed_node& n);

// -- tearing down ----------------------------------------------------------------------

/// rmdir of a cgroup directory; a process that has just exited can keep its
/// cgroup busy (EBUSY) for a moment after it was reaped, so that is retried
/// for up to 2 s. False with errno set otherwise.
bool remove_cgroup(const std::filesystem::path& cgroup);

}  // namespace orrery::deploy::detail
