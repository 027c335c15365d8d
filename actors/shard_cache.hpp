#pragma once
// The weights a node holds, shared by the stages of every session on it.
// Each client session gets stage actors of its own (its own KV caches, its
// own next hop), but two sessions serving the same layers of the same model
// on one node read one copy of the weights: a shard is keyed by the model's
// identity (actors/model_identity.hpp), its layer range, device and dtype,
// and lives while any stage holds it. The node's memory budget covers every
// shard held, whichever session loaded it.
//
// A tensor-parallel member's slice is a session's own (`owner`): its forward
// pass waits for the other members inside the shard's turn, and two
// sessions whose groups share nodes could each hold one node's turn while
// waiting for the other's.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "compute/shard.hpp"

namespace orrery::compute {
class model_dir;
}

namespace orrery::actors {

/// A shard and the turn its forward passes take: stages of two sessions run
/// on their own threads, and a shard's forward pass is not reentrant.
class shared_shard {
 public:
  explicit shared_shard(compute::shard shard) : shard_(std::move(shard)) {}
  const compute::shard& shard() const { return shard_; }
  /// Runs the shard over `input` with the caches of `batch`, alone (with
  /// `context` between the parts of each layer: compute/layer_program.hpp),
  /// and the head's logits for `rows`.
  at::Tensor forward(const at::Tensor& input, const std::vector<compute::sequence_step>& batch,
                     const compute::layer_context& context = {},
                     compute::logits_rows rows = compute::logits_rows::last);

 private:
  std::mutex turn_;
  compute::shard shard_;
};

class shard_cache {
 public:
  /// `memory_budget` 0: none.
  explicit shard_cache(std::uint64_t memory_budget) : budget_(memory_budget) {}

  /// Layers [first, last) of the model `fingerprint` at `model`, shared when
  /// held already, loaded otherwise (`loaded` says which). Throws std::runtime_error when loading
  /// them would take the node past its budget (naming the bytes needed, held
  /// and allowed), compute::model_error when they cannot be loaded.
  std::shared_ptr<shared_shard> acquire(const std::string& fingerprint, const compute::model_dir& model, int first,
                                        int last, const compute::shard_options& options, bool& loaded,
                                        std::uint64_t owner = 0);

  /// Bytes of the weights held now.
  std::uint64_t held_bytes() const;

 private:
  /// Model, layers, device, dtype, slice, owner (0: shared).
  using key = std::tuple<std::string, int, int, std::string, int, std::string, std::uint64_t>;
  std::uint64_t held_bytes_locked() const;

  std::uint64_t budget_;
  mutable std::mutex mutex_;
  std::map<key, std::weak_ptr<shared_shard>> shards_;
};

}  // namespace orrery::actors
