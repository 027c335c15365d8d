#pragma once
// The programs the testbed starts: a child placed in cgroups and a network
// namespace before it runs its own code (the nodes, `orrery testbed exec`),
// and the `ip` and `tc` commands that build the testbed, run to completion.
// Internal to deploy/testbed.

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace orrery::deploy::detail {

/// `/var/run/netns/NETNS`, where `ip netns` keeps namespace NETNS.
std::filesystem::path netns_path(const std::string& netns);

/// `name` in PATH; empty if it is nowhere there.
std::string find_in_path(const std::string& name);

/// Where and how spawn() starts a child; all of it happens before the child
/// runs any of its own code.
struct child_setup {
  /// Cgroup directories the child joins.
  std::vector<std::filesystem::path> cgroups;
  /// The network namespace it joins; empty: this process's.
  std::string netns;
  /// Detached from this process's session and terminal.
  bool new_session = false;
  /// Its stdout and stderr go here and its stdin reads /dev/null; -1: it
  /// inherits all three.
  int output = -1;
};

/// Forks and execs `argv` (searched in PATH) as `setup` says; returns its pid
/// once it runs. Throws std::runtime_error naming the step that failed in the
/// child: joining a cgroup, entering the namespace, running the program.
pid_t spawn(std::vector<std::string> argv, const child_setup& setup);

/// Runs a tool (`ip`, `tc`) to completion; throws std::runtime_error quoting
/// the command and what it printed when it fails.
void run_tool(const std::vector<std::string>& argv);

}  // namespace orrery::deploy::detail
