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

  /// Rolls the sequence back to its first `length` tokens: the next token's
  /// position becomes `length` (replay; speculative decoding drops rejected
  /// draft tokens). The rows past it are rewritten by the next forward pass
  /// and never read before that. Throws model_error, naming both lengths,
  /// unless 0 <= length <= length().
  void truncate(int length);

  /// A new cache of `capacity` positions holding this one's first `tokens`
  /// tokens (a shared prefix, e.g. a system prompt, continued by several
  /// sequences); the two caches share no storage afterwards. Throws
  /// model_error, naming the values, unless 0 <= tokens <= length() and
  /// tokens <= capacity.
  kv_cache copy_prefix(int tokens, int capacity) const;

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
