#pragma once
// A local launcher: every node of a topology as a child process of this one.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"

namespace orrery::deploy {

/// What local_cluster passes the executable to start node `name`:
/// `node --topology TOPOLOGY_FILE --name NAME` (`orrery chaos` checks a
/// process's command line against it before signalling it).
std::vector<std::string> node_arguments(const std::filesystem::path& topology_file, const std::string& name);

/// How a node process ended, as waitpid reported it.
struct node_exit {
  std::string name;
  /// waitpid's status word.
  int status = 0;

  /// `killed by signal 9` or `exit status 1`.
  std::string describe() const;
};

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

  /// A node that has exited, if any (reaps it); it stays stopped until
  /// restart() starts it again.
  std::optional<node_exit> exited_node();

  /// Starts node `name` again, with the same arguments, as a new process;
  /// throws std::logic_error if it is still running.
  void restart(const std::string& name);

  /// The process of node `name`; throws std::out_of_range if it is not
  /// running (it exited and was not restarted).
  pid_t pid(const std::string& name) const { return pids_.at(name); }

  /// Whether any node is still running.
  bool any_running() const { return !pids_.empty(); }

  /// SIGTERM to every node, SIGKILL after a grace period, reap all.
  void stop();

 private:
  /// Forks and execs `executable_ node --topology … --name NAME`; throws
  /// std::runtime_error naming the node if fork fails.
  pid_t start(const node_spec& n) const;

  topology topology_;
  std::filesystem::path log_dir_;
  std::filesystem::path executable_;
  std::map<std::string, pid_t> pids_;
};

}  // namespace orrery::deploy
