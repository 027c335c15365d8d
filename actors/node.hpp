#pragma once
// The node actor: one per process (= one device). It owns the process's data
// plane endpoint and its router (actors/router.hpp), answers resource
// queries, and spawns a stage actor for each layer range a driver assigns to
// it, registering the stage for its session's routes. (stats_atom) answers
// the router's route_counts.

#include <caf/actor_system.hpp>

#include <cstdint>
#include <string>

#include "actors/interfaces.hpp"

namespace orrery::actors {

struct node_config {
  std::string name;
  std::string device = "cpu";
  /// The weights' dtype: `fp32`, `fp16` or `bf16`.
  std::string dtype = "fp32";
  std::uint64_t memory_bytes = 0;  ///< 0: no budget
  int threads = 1;
  /// Where the data plane listens (and what stages tell their neighbours).
  std::string data_host = "127.0.0.1";
  std::uint16_t data_port = 0;  ///< 0: an ephemeral port
};

/// Spawns a node actor; throws std::runtime_error (naming the node and the
/// port) when its data plane cannot listen.
node_actor spawn_node(caf::actor_system& system, node_config config);

}  // namespace orrery::actors
