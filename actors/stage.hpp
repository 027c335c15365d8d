#pragma once
// The stage actor: one shard placed on a node. Detached, so libtorch work
// never blocks CAF's shared workers. It keeps a KV cache per request, runs
// each frame that reaches it through its layers and sends the result to its
// next hop: hidden states (and the frame's tokens) to the next stage, or,
// from the stage holding the head, the token it sampled to the session.
//
// A stage may be one member of a tensor-parallel group (Galaxy): every member
// receives the same frames, holds a slice of each layer's heads and MLP
// columns, and adds its partial sums to the others' over the group's ring
// (actors/group_ring.hpp) after each attention and MLP; the leader (rank 0)
// alone holds the head and sends on.

#include <caf/actor_system.hpp>

#include <atomic>
#include <memory>
#include <string>

#include "actors/interfaces.hpp"

namespace orrery::messages {
class data_plane;
}

namespace orrery::actors {

class router;
class shard_cache;
class backup_store;

struct stage_context {
  std::string node;
  std::string device;
  std::string dtype;
  std::string data_host;
  std::uint16_t data_port = 0;
  /// The node's data plane, for the link to the next hop.
  std::shared_ptr<messages::data_plane> data_plane;
  /// The node's weights, shared by the stages of every session.
  std::shared_ptr<shard_cache> weights;
  /// The node's router: a group member files its ring's pieces there.
  std::shared_ptr<router> routes;
  /// The node's weight backups (training stages).
  std::shared_ptr<backup_store> backups;
  /// The newest deployment of the stage's session on the node (its ring
  /// stops waiting for an older one's pieces).
  std::shared_ptr<const std::atomic<std::uint64_t>> announced_deployment;
};

/// Spawns an empty stage; it loads its shard on (load_stage_atom, stage_assignment).
stage_actor spawn_stage(caf::actor_system& system, stage_context context);

}  // namespace orrery::actors
