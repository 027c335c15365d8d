#pragma once
// The keys and values of one sequence for the layers of one shard,
// preallocated to the sequence's maximum length so decode never reallocates
// (EdgeShard keeps each layer's KV on the stage that owns the layer).

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <memory>

namespace orrery::compute {

class decode_graphs;

class kv_cache {
 public:
  kv_cache(int layers, int kv_heads, int capacity, int head_dim, at::TensorOptions options);

  /// [kv_heads, capacity, head_dim] views of one layer (layer counted from
  /// the shard's first layer); rows below length() are filled.
  at::Tensor keys(int layer) const;
  at::Tensor values(int layer) const;

  /// Tokens held; the next token's position.
  int length() const { return length_; }
  int capacity() const { return capacity_; }

  /// Bytes of the preallocated storage.
  std::size_t bytes() const;

  /// Marks `tokens` more positions as filled (after a forward pass wrote
  /// them); throws model_error when that would exceed the capacity.
  void advance(int tokens);

  /// Forgets everything from position `length` on (replay, speculation).
  void truncate(int length);

  /// Decode steps captured as CUDA graphs against this cache's storage
  /// (compute/decode_graph.hpp); empty until a step is replayed.
  std::shared_ptr<decode_graphs>& graphs() { return graphs_; }

 private:
  at::Tensor storage_;  // [layers, 2, kv_heads, capacity, head_dim]
  int capacity_;
  int length_ = 0;
  std::shared_ptr<decode_graphs> graphs_;
};

}  // namespace orrery::compute
