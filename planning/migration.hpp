#pragma once
// Where layers go when nodes come and go while a pipeline serves: the
// recovery rule of ARCHITECTURE.md ("only what must move moves"). A lost
// node's layers go to its surviving neighbours in the pipeline when their
// memory allows; otherwise the layers are laid out afresh over every
// surviving node. Devices are indices into the cluster's node list.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "planning/pipeline.hpp"

namespace orrery::planning {

struct cluster_state {
  /// Per device: whether it is alive, and its memory budget in bytes (0: none).
  std::vector<bool> alive;
  std::vector<std::uint64_t> memory_bytes;
  /// Per layer: the bytes of weights it needs (layer 0 with the embedding,
  /// the last with the head), counted in one reference dtype.
  std::vector<std::uint64_t> layer_bytes;
  /// Per device: the bytes it stores for each byte of layer_bytes (its
  /// dtype's element size over the reference's: 0.5 for a bf16 node beside
  /// fp32 layer bytes). Empty: 1 for every device.
  std::vector<double> state_scale;
};

struct migration {
  std::vector<stage> stages;  ///< the new layout, in pipeline order
  std::string how;            ///< "neighbours" or "fresh plan"
};

/// The layout after the devices that `state` marks dead leave `current` (a
/// contiguous cover of every layer). Throws infeasible_error naming the
/// layers that no surviving device can hold.
migration plan_after_loss(const std::vector<stage>& current, const cluster_state& state);

/// Every layer spread over the alive devices in index order, as evenly as
/// their memory allows. Throws infeasible_error when they cannot hold them.
std::vector<stage> even_layout(const cluster_state& state);

}  // namespace orrery::planning
