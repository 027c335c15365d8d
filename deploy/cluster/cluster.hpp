#pragma once
// Running a topology: the CAF configuration every orrery process uses, a
// node process's main loop, and connecting a client to the nodes
// (deploy/cluster/local_cluster.hpp starts a topology's nodes as child processes).

#include <caf/actor_system_config.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/driver.hpp"
#include "deploy/cluster/topology.hpp"

namespace orrery::deploy {

/// orrery's types registered, the middleman loaded, and the middleman's own
/// heartbeat on (it is off by default in CAF 0.17.6, and without it a hung
/// peer is never noticed).
class actor_config : public caf::actor_system_config {
 public:
  explicit actor_config(std::chrono::milliseconds heartbeat = std::chrono::milliseconds(500));
};

/// `orrery node`: runs node `name` of `t` (publishing it on its control port,
/// its data plane on its data port) until SIGINT or SIGTERM.
void run_node(const topology& t, const std::string& name);

/// The nodes of a topology as a client reached them.
struct node_connections {
  /// Every node in topology order; the handle is null where it could not be reached.
  std::vector<actors::placement_stage> stages;
  /// One line per node that could not be reached, naming it and why.
  std::vector<std::string> unreachable;

  /// Throws std::runtime_error naming the first unreachable node, for the
  /// commands that need every node (profiling).
  void require_all() const;
};

/// Connects to every node of `t`, each within the connect timeout.
node_connections connect_nodes(caf::actor_system& system, const topology& t);

/// A client of a running topology: connected nodes, a deployed driver.
class pipeline_client {
 public:
  /// Nodes that cannot be reached are named on stderr and planned around
  /// (their layers go to the others, as a recovery would move them). Throws
  /// std::runtime_error when the nodes reached cannot hold the model, or a
  /// stage fails to load, naming the node and why. `advertise_host` is where
  /// the last stage reaches this process; empty: the testbed's client address
  /// for a testbed topology, else 127.0.0.1.
  explicit pipeline_client(const topology& t, std::string advertise_host = {});
  /// One node in this process holding the whole of `model` on `device` in
  /// `dtype` with `threads`: the driver and stage a cluster runs, on this
  /// machine alone (`orrery serve --model`).
  pipeline_client(const std::filesystem::path& model, const std::string& device, const std::string& dtype, int threads);
  ~pipeline_client();

  std::vector<generation_summary> generate(const std::vector<generate_request>& requests,
                                           const std::function<void(std::size_t, const token_event&)>& on_token = {});
  std::vector<stage_stats> stats();
  /// Every recovery of the pipeline so far (a node lost or returned).
  std::vector<recovery_event> recoveries();

  /// For callers that talk to the driver themselves (a token_stream).
  caf::actor_system& system() { return *system_; }
  const actors::driver_actor& driver() const { return driver_; }
  const topology& placed() const { return topology_; }

 private:
  /// Spawns the driver over `dc.stages` and deploys it.
  void start(actors::driver_config dc);

  topology topology_;
  actor_config config_;
  std::unique_ptr<caf::actor_system> system_;
  actors::driver_actor driver_;
};

/// Generates over a running topology, streaming the prompt and the text to
/// `text`, then prints the figures to `figures`: prefill, decode ms/token,
/// tokens/s, and each stage's compute and transfer times. Apart, so that
/// `orrery generate … > out.txt` holds the text alone.
generation_summary generate_over(pipeline_client& client, const generate_request& request, std::ostream& text,
                                 std::ostream& figures);

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it starts
/// afterwards, so they can be waited for: call before starting any thread.
void block_stop_signals();

/// Waits for SIGINT or SIGTERM (returning it), checking `keep_waiting` every
/// 200 ms and returning 0 once it says no.
int wait_for_stop_signal(const std::function<bool()>& keep_waiting = {});

}  // namespace orrery::deploy
