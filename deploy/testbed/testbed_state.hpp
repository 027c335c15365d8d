#pragma once
// The testbed's state file, `testbed_state` (deploy/testbed/testbed.hpp) as
// JSON: planned before anything exists, rewritten after each resource `up`
// creates, and read by `down`, `status`, `exec` and `orrery chaos`.
// Internal to deploy/testbed.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "deploy/cluster/run_registry.hpp"
#include "deploy/cluster/topology.hpp"
#include "deploy/testbed/testbed.hpp"

namespace orrery::deploy::detail {

/// Writes `s` to its state file, atomically (write_atomically).
void save_state(const testbed_state& s);

/// The state of the testbed `up` is about to build: every name decided, nothing created.
testbed_state planned_state(const topology& t);

/// The state of `t`'s testbed; throws std::runtime_error saying to run
/// `orrery testbed up TOPOLOGY_FILE` if it is not up.
testbed_state require_up(const topology& t, const std::filesystem::path& topology_file);

/// The live process of node `n`, if it still runs the node's command line.
std::optional<node_process> process_of(const testbed_state& s, const testbed_node& n);

/// What `s` records that still exists, e.g. `netns orrery-lab-a`.
std::vector<std::string> live_resources(const testbed_state& s);

}  // namespace orrery::deploy::detail
