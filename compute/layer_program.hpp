#pragma once
// A shard's forward pass as a program of decoder layers, each run in named
// parts with a context between them. The context is what lets one layer
// program serve every parallel layout:
//
//   a   = collective(attention,  attention(x))
//   y   = x + a                                  ┐ the connective
//   h   = collective(connective, post_norm(y))   ┘ block
//   out = y + collective(mlp,        mlp(h))
//
// - attention: input norm, q|k|v, rotary, KV store, attention, o-projection;
//   its output is the attention's contribution before the residual add.
// - connective: the residual add y = x + attention and the post-attention
//   norm; its output is the MLP's input (the norm of y).
// - mlp: gate|up, SwiGLU, down-projection; its output is the MLP's
//   contribution before the residual add out = y + mlp.
//
// Tensor parallelism (Galaxy) splits attention heads and MLP columns, so each
// member computes a partial sum of the attention and MLP outputs: the
// collective after those parts is where their all-reduce goes, before the
// residual add. Taps read the residual stream at a layer's input and output
// (parallel adapters, PAC's activation cache). Grad mode records autograd so
// a training step can run backward through the layers. KV operations beyond
// append (truncate, copy a prefix) are kv_cache's own (compute/kv_cache.hpp):
// they happen between passes, not inside one.

#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace orrery::compute {

/// The named parts of a decoder layer, in the order they run.
enum class layer_part { attention, connective, mlp };

/// Where a tap reads a layer's residual stream.
enum class layer_point {
  input,   ///< the hidden states entering the layer
  output,  ///< the hidden states leaving it
};

/// Called after each part of each layer with the part's output ([tokens,
/// hidden]); returns the tensor the layer continues with (the partial itself,
/// or for instance its all-reduced sum). `layer` is the model's layer index,
/// not the shard's.
using layer_collective = std::function<at::Tensor(int layer, layer_part part, const at::Tensor& partial)>;

/// Reads the hidden states ([tokens, hidden]) of model layer `layer` at
/// `point`. A tap must not write into them: the layer continues with them.
using hidden_tap = std::function<void(int layer, layer_point point, const at::Tensor& hidden)>;

/// What a forward pass runs with beside its batch. The empty context is the
/// whole-model inference path: no hooks, no autograd.
struct layer_context {
  /// Between parts; empty: each part's output is used as it is.
  layer_collective collective;
  /// Called in order at every layer's input and output.
  std::vector<hidden_tap> taps;
  /// Records autograd through the pass (training), so a backward from the
  /// output reaches the input hidden states; off, the pass runs in
  /// InferenceMode. Products that autograd records go through libtorch's
  /// GEMM rather than orrery's gemv (compute/llama_ops.hpp).
  bool grad = false;

  /// No hooks and no grad: the pass a CUDA graph may replay.
  bool plain() const { return !collective && taps.empty() && !grad; }
};

}  // namespace orrery::compute
