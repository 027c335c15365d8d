#pragma once
// The decode step of one sequence (one new token) has the same shapes at
// every position once positions are device tensors and attention reads a
// fixed window (llama_ops::token_positions). On CUDA that step is captured
// once per window as a CUDA graph and replayed: one launch instead of ~45
// kernel launches a layer, which is what bounds an eager decode of a large
// model on a fast GPU. Graphs are built only where libtorch has CUDA; the
// captures belong to the KV cache they write into and die with it.

#include <ATen/core/Tensor.h>

#include <functional>

namespace orrery::compute {

class kv_cache;

/// Whether this build can capture CUDA graphs (libtorch with CUDA).
bool cuda_graphs_built();

/// The graphed computation: from the input of one token at `position`
/// (int64 [1] on the device), attending over `window` key rows, to the
/// shard's output.
using graphable_step = std::function<at::Tensor(const at::Tensor& input, const at::Tensor& position, int window)>;

/// Runs `step` for the next token of `cache` (at position cache.length(),
/// which the caller advances afterwards) by replaying the graph captured for
/// its window, capturing it first when needed. `owner` identifies the weights
/// the graph reads: a cache used with other weights captures afresh. The
/// result is a fresh tensor the caller may keep. Throws std::logic_error in
/// a build without CUDA.
at::Tensor replay_decode_step(kv_cache& cache, const void* owner, const at::Tensor& input, const graphable_step& step);

/// The attention window a step at `position` is replayed with: the next
/// power of two of its context (at least 64), capped at the capacity.
int graph_window(int position, int capacity);

}  // namespace orrery::compute
