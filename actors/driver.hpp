#pragma once
// The driver: one per client session. It deploys a placement onto node
// actors, then serves generation requests over the pipeline: tokenise, send
// the prompt (with the request's sampling parameters) to the first stage,
// take the token the last stage sampled, send it back in, stream it to the
// requester. Only token ids cross back, unless a request asks for logits. Requests in
// flight at once occupy different stages at once (pipelined decode).
//
// It also keeps its pipeline serving when nodes fail. Once deployed it runs a
// supervisor (actors/supervisor.hpp) over the nodes; on a death verdict it
// moves the dead node's layers (planning/migration.hpp: neighbours first,
// else a fresh plan), rewires the pipeline under a new deployment number
// (frames of older deployments are dropped everywhere), and replays every
// request in flight from its token history, so the requester sees a pause,
// never an error, a lost or a repeated token. When the survivors cannot hold
// the model, requests fail naming what is missing, and the driver waits for
// nodes to return.
//
// Each driver is one client session: it draws a session id, and every node
// gives the session stages, KV caches and incarnations of its own, so clients
// sharing nodes never see each other's state. The model's content (its files'
// sizes and hashes) goes with every stage assignment; a node whose copy
// differs refuses to load it, naming the file.
//
// A stage may be a tensor-parallel group of nodes: the driver sends each
// frame to every member and wires them into a ring. When a member dies the
// group's layers move as a lost node's do: the group becomes a stage of one.
//
// Its messages are driver_actor's (actors/interfaces.hpp); replies carry
// errors as caf::error naming the node.

#include <caf/actor_system.hpp>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "actors/interfaces.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

/// One pipeline stage of a placement: a node (already connected and, for
/// remote nodes, a proxy; null when the client could not reach it, and the
/// driver plans around it) and the layers it runs.
struct placement_stage {
  std::string node_name;
  /// Where the node's control port is, to redial it after a failure; an
  /// empty host means in-process (never redialled).
  std::string host;
  std::uint16_t port = 0;
  node_actor node;
  int first_layer = 0;
  int last_layer = 0;
  int threads = 1;
  /// A member of a tensor-parallel group (Galaxy): the group's name, and the
  /// heads and columns of each layer this node holds. A group's members are
  /// consecutive stages with the same layers, the first its leader. Empty: a
  /// stage of its own.
  std::string group{};
  tensor_slice slice{};
};

struct driver_config {
  /// The model directory (its config and tokenizer; nodes load weights from
  /// the same path on their machines).
  std::filesystem::path model;
  std::vector<placement_stage> stages;  ///< in pipeline order
  /// How every tensor-parallel group adds up its partial sums.
  group_collectives collectives{};
  std::chrono::milliseconds request_timeout{30000};
  /// The address the last stage reaches this process's data plane at.
  std::string advertise_host = "127.0.0.1";
  std::chrono::milliseconds connect_timeout{3000};
  /// Node heartbeats: how often, and how much silence is a death.
  std::chrono::milliseconds heartbeat_interval{250};
  std::chrono::milliseconds heartbeat_deadline{1000};
  /// When a lost node returns, give it layers back (the topology's placement
  /// once every node is back, else an even spread); otherwise it only
  /// serves again when the survivors cannot hold the model.
  bool rebalance_on_join = false;
};

/// Spawns a driver. Throws model_error if the model's config or tokenizer
/// cannot be read.
driver_actor spawn_driver(caf::actor_system& system, driver_config config);

}  // namespace orrery::actors
