#pragma once
// Chaos on a running local cluster: `orrery chaos` kills or freezes the nodes
// that `orrery up` or `orrery testbed up` started, or cuts a testbed node's
// link, to watch the rest of the system cope. It finds the nodes through the
// run registry (deploy/cluster/run_registry.hpp), re-read before every action.

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>

namespace orrery::deploy {

// -- orrery chaos ------------------------------------------------------------------

/// What `orrery chaos` does; the defaults are the command's.
struct chaos_options {
  std::string topology;
  /// `kill` (SIGKILL), `freeze` (SIGSTOP, SIGCONT after `freeze_for`) or
  /// `partition` (the node's testbed link down for `partition_for`; only for
  /// nodes of `orrery testbed up`).
  std::string action = "kill";
  /// The node to act on; empty: a random live node each time.
  std::string node;
  /// The seed of the random choice; empty: a fresh one, printed.
  std::optional<std::uint64_t> seed;
  int times = 1;
  /// Seconds between the starts of successive actions; needed when times > 1.
  double every_s = 0;
  double freeze_for_s = 5;
  double partition_for_s = 5;
  /// Seconds before the first action.
  double delay_s = 0;
};

/// Runs `o`, writing one time-stamped line per action or skipped node to
/// `log`; returns early on SIGINT or SIGTERM, continuing a node it froze or
/// restoring a link it cut first. Throws std::runtime_error (or
/// topology_error) for an unusable request: partition outside a testbed, an
/// unknown node, no registry, `times > 1` without `every_s`.
void run_chaos(const chaos_options& o, std::ostream& log);

}  // namespace orrery::deploy
