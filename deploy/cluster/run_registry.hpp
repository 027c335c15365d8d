#pragma once
// The run registry: which processes are the nodes of a running cluster.
//
// Background: `orrery chaos` runs as a separate process, started later by the
// user, so it cannot ask `orrery up` which processes are its nodes. `up`
// therefore keeps a run registry — a small JSON file per cluster, rewritten
// whenever a node is (re)started — and chaos re-reads it before every action.
// `testbed up` writes one too, marked as a testbed's: its nodes outlive the
// command that started them, so no launcher process vouches for the file. A
// pid read from a file may by then belong to an unrelated process, so a
// node_process opens a pidfd, checks the command line is the node's, and
// signals through the pidfd: a recycled pid is never signalled.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "deploy/cluster/local_cluster.hpp"
#include "deploy/cluster/topology.hpp"

namespace orrery::deploy {

// -- time stamps ---------------------------------------------------------------

/// Now as ISO-8601 UTC with milliseconds (`2024-05-01T12:00:00.123Z`): the
/// stamp of every event line of `orrery up` and `orrery chaos`, so the two
/// logs merge by sorting.
std::string utc_timestamp();

// -- the run registry ----------------------------------------------------------

/// One node as `orrery up` started it.
struct registered_node {
  std::string name;
  pid_t pid = 0;
  /// The control address, `host:port`.
  std::string address;
};

/// What the registry file of a running `orrery up` or testbed holds.
struct run_record {
  std::string cluster;
  /// The topology file exactly as `up` passed it to its nodes.
  std::filesystem::path topology;
  /// The `orrery up` process; 0 for a testbed.
  pid_t launcher = 0;
  std::vector<registered_node> nodes;
  /// Written by `orrery testbed up`, whose nodes run on without it.
  bool testbed = false;
};

/// `${XDG_RUNTIME_DIR:-/tmp}/orrery-UID`: where `orrery up` and `orrery
/// testbed` record what they started.
std::filesystem::path runtime_directory();

/// Creates runtime_directory() readable by this user only, and refuses one
/// that someone else owns: in a shared /tmp anyone could have made it.
void make_runtime_directory();

/// `runtime_directory()/CLUSTER.json`, with characters of the cluster name
/// other than letters, digits, `.`, `_` and `-` replaced by `_`.
std::filesystem::path registry_path(const std::string& cluster);

/// Writes `text` to a temporary file beside `file` and renames it over
/// `file`, so a reader never sees half a file; throws std::runtime_error
/// naming the file.
void write_atomically(const std::filesystem::path& file, const std::string& text);

/// Writes `r` as the registry of its cluster (creating runtime_directory()).
void write_registry(const run_record& r);

/// Reads the registry of `cluster`; throws std::runtime_error naming the path
/// when there is none (saying to start the cluster with `orrery up`), when it
/// is malformed, or when the `up` that wrote it is no longer running (a
/// testbed's registry has no launcher: `orrery testbed down` removes it).
run_record read_registry(const std::string& cluster, const std::filesystem::path& topology_file);

/// The registry of this `orrery up` process: written when constructed,
/// rewritten by record(), removed when destroyed. Every write is a temporary
/// file renamed over the registry, so a reader never sees half a file.
class run_registry {
 public:
  /// Registers every node of `t` with its process in `cluster`; throws
  /// std::runtime_error naming the path if it cannot be written.
  run_registry(const topology& t, const local_cluster& cluster);
  ~run_registry();
  run_registry(const run_registry&) = delete;
  run_registry& operator=(const run_registry&) = delete;

  /// Node `name` now runs as `pid` (it was restarted).
  void record(const std::string& name, pid_t pid);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  run_record record_;
};

// -- node processes --------------------------------------------------------------

/// A live `orrery node` process of a registry, held by a pidfd so that signals
/// reach that very process even if it dies and its pid is reused meanwhile.
class node_process {
 public:
  /// The process of `node` if `node.pid` is alive and runs exactly
  /// `orrery node --topology TOPOLOGY_FILE --name NAME`; nothing otherwise.
  static std::optional<node_process> open(const registered_node& node, const std::filesystem::path& topology_file);

  ~node_process();
  node_process(node_process&& other) noexcept;
  node_process& operator=(node_process&&) = delete;
  node_process(const node_process&) = delete;
  node_process& operator=(const node_process&) = delete;

  /// Sends `signal`; false if the process has exited since open(). Throws
  /// std::runtime_error naming the node for any other failure.
  bool send(int signal) const;

  /// Waits up to `timeout` for the process to exit; whether it has.
  bool exited_within(std::chrono::milliseconds timeout) const;

  const std::string& name() const { return node_.name; }

  /// `node 'NAME' pid PID`, for log lines.
  std::string label() const;

 private:
  node_process(registered_node node, int pidfd) : node_(std::move(node)), pidfd_(pidfd) {}

  registered_node node_;
  int pidfd_ = -1;
};

}  // namespace orrery::deploy
