#pragma once
// A shard's forward pass as a program of decoder layers, each run in named
// parts with a context between them. The context is what lets one layer
// program serve every parallel layout. Alone, or in a tensor-parallel group
// (Galaxy) that adds up its members' partial sums with all-reduces:
//
//   a   = all_reduce(attention, attention(norm(x)))
//   y   = x + a                          ┐ the connective block
//   out = y + all_reduce(mlp, mlp(norm(y)))   (residual add, norm)
//
// - attention: q|k|v, rotary, KV store, attention, o-projection of the
//   normed input; its output is the attention's contribution before the
//   residual add.
// - mlp: gate|up, SwiGLU, down-projection of the normed y.
// - the connective blocks: the residual adds and the norms between them.
//
// Tensor parallelism splits attention heads and MLP columns, so each member
// computes a partial sum of the attention's and the MLP's outputs; the
// collective after those parts adds them up, before the residual add.
//
// With sequence parallelism (Galaxy's hybrid) the residual stream lives as
// each member's rows of the pass only, and the connective blocks run on
// those rows: a reduce-scatter leaves each member its rows of the sum, the
// residual add and the norm run on them, and an all-gather hands every
// member all rows of the normed tensor the next part reads:
//
//   r   = my rows of x;  n = norm(x)          (every member holds all of x)
//   per layer:  r += reduce_scatter(attention, attention(n))
//               n  = all_gather(post_norm,  norm(r))
//               r += reduce_scatter(mlp, mlp(n))
//               n  = all_gather(layer_end, norm_of_next_layer(r))
//   out = all_gather(layer_end of the last layer, r)
//
// The bytes equal the all-reduces' (an all-reduce is a reduce-scatter and an
// all-gather); what SP saves is the connective blocks' work on all rows.
//
// A part's partial sum is handed to the collective as columns on demand
// (partial_sum), so the collective may compute and send it in tiles: one
// tile travels while the next is computed (Galaxy's overlap).
//
// Taps read the residual stream at a layer's input and output (parallel
// adapters, PAC's activation cache). Grad mode records autograd so a training
// step can run backward through the layers. KV operations beyond append
// (truncate, copy a prefix) are kv_cache's own (compute/kv_cache.hpp): they
// happen between passes, not inside one.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace orrery::compute {

/// Where in a decoder layer a collective runs; with the layer's index this
/// numbers every collective of a pass (collective_index).
enum class collective_point {
  attention,  ///< the attention's partial sum (all-reduce or reduce-scatter)
  post_norm,  ///< the connective block's norm, MLP input (all-gather, SP)
  mlp,        ///< the MLP's partial sum (all-reduce or reduce-scatter)
  layer_end,  ///< the next layer's normed input, or the shard's output (all-gather, SP)
};

/// A collective's number within a pass: unique over the model's layers.
inline std::uint32_t collective_index(int layer, collective_point point) {
  return static_cast<std::uint32_t>(4 * layer + static_cast<int>(point));
}

/// Where a tap reads a layer's residual stream.
enum class layer_point {
  input,   ///< the hidden states entering the layer
  output,  ///< the hidden states leaving it
};

/// A part's output ([rows, width]) before the group adds it up: computed by
/// column ranges on demand, so a collective can send one tile of columns
/// while it computes the next. Each column of a product is computed the same
/// way whatever the range, so the tiles put together are the whole product.
class partial_sum {
 public:
  using columns_fn = std::function<at::Tensor(std::int64_t begin, std::int64_t end)>;
  partial_sum(std::int64_t rows, std::int64_t width, columns_fn columns)
      : rows_(rows), width_(width), columns_(std::move(columns)) {}

  std::int64_t rows() const { return rows_; }
  std::int64_t width() const { return width_; }
  /// Columns [begin, end) of every row.
  at::Tensor columns(std::int64_t begin, std::int64_t end) const { return columns_(begin, end); }
  at::Tensor whole() const { return columns_(0, width_); }

 private:
  std::int64_t rows_, width_;
  columns_fn columns_;
};

/// Adds up a partial sum over the group: all rows of the sum. `layer` is the
/// model's layer index, not the shard's.
using layer_collective = std::function<at::Tensor(int layer, collective_point point, const partial_sum& partial)>;

/// Reads the hidden states ([tokens, hidden]) of model layer `layer` at
/// `point`. A tap must not write into them: the layer continues with them.
using hidden_tap = std::function<void(int layer, layer_point point, const at::Tensor& hidden)>;

/// Sequence parallelism: this member's rows of the pass and the collectives
/// that move between rows and the whole.
struct sequence_split {
  std::int64_t row_begin = 0, row_end = 0;
  /// Rows [row_begin, row_end) of the sum of every member's partial.
  std::function<at::Tensor(int layer, collective_point point, const partial_sum& partial)> reduce_scatter;
  /// All rows, every member's stacked in order, from this member's `rows`.
  std::function<at::Tensor(int layer, collective_point point, const at::Tensor& rows)> all_gather;
};

/// What a forward pass runs with beside its batch. The empty context is the
/// whole-model inference path: no hooks, no autograd.
struct layer_context {
  /// After each partial sum; empty: the partial is the whole sum.
  layer_collective collective;
  /// Sequence parallelism; when set it replaces `collective`. Taps and grad
  /// mode would read only this member's rows: a pass refuses them with it.
  std::optional<sequence_split> sequence = std::nullopt;
  /// Called in order at every layer's input and output.
  std::vector<hidden_tap> taps;
  /// Records autograd through the pass (training), so a backward from the
  /// output reaches the input hidden states; off, the pass runs in
  /// InferenceMode. Products that autograd records go through libtorch's
  /// GEMM rather than orrery's gemv (compute/llama_ops.hpp).
  bool grad = false;

  /// No hooks and no grad: the pass a CUDA graph may replay.
  bool plain() const { return !collective && !sequence && taps.empty() && !grad; }
};

}  // namespace orrery::compute
