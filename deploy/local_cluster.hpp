#pragma once
// A local launcher: every node of a topology as a child process of this one.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <string>

#include "deploy/topology.hpp"

namespace orrery::deploy {

/// Every node of a topology as a child process of this one (`orrery node`),
/// stopped when this object is destroyed — or when this process dies
/// (PR_SET_PDEATHSIG), so no node outlives its launcher.
class local_cluster {
 public:
  /// Starts the nodes with `executable node …` (by default this very
  /// binary); with `log_dir` each node's output goes to
  /// `<log_dir>/<name>.log`, otherwise to this process's stdout/stderr.
  local_cluster(const topology& t, std::filesystem::path log_dir = {},
                std::filesystem::path executable = "/proc/self/exe");
  ~local_cluster();
  local_cluster(const local_cluster&) = delete;
  local_cluster& operator=(const local_cluster&) = delete;

  /// Waits until every node accepts connections on its control port;
  /// throws std::runtime_error naming a node that exited or did not come up.
  void wait_ready(std::chrono::milliseconds timeout);

  /// The name of a node that has exited, if any (reaps it).
  std::string exited_node();

  pid_t pid(const std::string& name) const { return pids_.at(name); }

  /// SIGTERM to every node, SIGKILL after a grace period, reap all.
  void stop();

 private:
  topology topology_;
  std::filesystem::path log_dir_;
  std::map<std::string, pid_t> pids_;
};

}  // namespace orrery::deploy
