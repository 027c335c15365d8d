#pragma once
// The supervisor: membership of a cluster's nodes and verdicts on them.
//
// Each node is watched three ways (ARCHITECTURE.md): application heartbeats
// with a deadline (a node that stops sending, because it was frozen or lost
// its network, is dead once the deadline passes), a monitor on its published
// actor (a dropped connection arrives as down_msg at once), and the CAF
// middleman's own heartbeat, which the process configures. A node that is
// merely slow (late heartbeats inside the deadline) is reported, not killed.
//
// Membership keeps the incarnation each node reported for this supervisor's
// session (a node keeps one per session). A verdict makes that incarnation
// dead for good: its later heartbeats are answered with a fence (the node
// drops the session's stages and draws the session a new incarnation; other
// sessions on the node are untouched), and only a new incarnation is
// admitted again. Dead nodes are redialled, so a restarted or
// resumed node rejoins by itself. Verdicts go to one subscriber (the driver),
// which moves layers and replays requests.

#include <caf/actor_system.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "actors/interfaces.hpp"

namespace orrery::actors {

struct supervised_node {
  std::string name;
  /// Where to redial it; empty: never (an in-process node).
  std::string host;
  std::uint16_t port = 0;
  node_actor handle;
};

struct supervisor_config {
  /// The client session whose nodes these are: nodes keep incarnations and
  /// fences per session.
  std::uint64_t session = 0;
  std::vector<supervised_node> nodes;
  std::chrono::milliseconds heartbeat_interval{250};
  /// Silence longer than this is a death verdict.
  std::chrono::milliseconds heartbeat_deadline{1000};
  std::chrono::milliseconds reconnect_interval{1000};
  std::chrono::milliseconds connect_timeout{3000};
  /// Receives a node_verdict for every death and every return.
  verdict_listener subscriber;
};

supervisor_actor spawn_supervisor(caf::actor_system& system, supervisor_config config);

}  // namespace orrery::actors
