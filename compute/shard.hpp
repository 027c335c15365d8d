#pragma once
// A shard: the layers [first, last) of a Llama model, loaded from a model
// directory by reading only its own tensors. The embedding belongs to the
// shard that starts at layer 0, the final norm and LM head to the one that
// ends at the last layer; the whole model is simply the shard [0, N).
//
// A forward pass takes a packed batch: the new tokens of several sequences
// stacked row-wise, each sequence with its own KV cache. A prefill is a batch
// of one sequence with many tokens; a batched decode step is many sequences
// with one token each.
//
// Each decoder layer runs as named parts (attention, connective block, MLP)
// with a context between them: a collective, taps on the hidden states, grad
// mode (compute/layer_program.hpp). forward without a context is the
// whole-model inference path, and the fast one.

#include <ATen/core/Tensor.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compute/kv_cache.hpp"
#include "compute/layer_program.hpp"
#include "compute/llama_config.hpp"
#include "compute/llama_ops.hpp"
#include "compute/tensor_slice.hpp"

namespace orrery::compute {

class model_dir;
class thread_pool;

/// `cpu` or `cuda:N` as a device; throws std::runtime_error when malformed
/// or when this build of libtorch has no CUDA.
at::Device device_from_name(const std::string& name);

struct shard_options {
  at::Device device = at::kCPU;
  /// The dtype weights are converted to and computed in.
  at::ScalarType dtype = at::kFloat;
  /// Threads for the decode gemv; nullptr computes every product with
  /// libtorch's own GEMM (the stock path, kept for comparison).
  std::shared_ptr<thread_pool> pool;
  /// On CUDA, replay the decode step of a single sequence as a CUDA graph
  /// (compute/decode_graph.hpp); false runs it eagerly (for comparison).
  bool cuda_graphs = true;
  /// A member of a tensor-parallel group holds only these heads and MLP
  /// columns of each layer and, ending at the last layer, these rows of the
  /// LM head (compute/tensor_slice.hpp), read from the files row and column
  /// ranges at a time; its attention and MLP return partial sums, which the
  /// context's collective adds up, and its logits are its vocabulary rows'
  /// columns. Empty: whole layers.
  std::optional<tensor_slice> slice = std::nullopt;
};

/// One sequence's part of a packed batch.
struct sequence_step {
  kv_cache* cache;
  /// Rows of the packed input that belong to this sequence, in order.
  int tokens;
};

enum class logits_rows {
  last,  ///< one row per sequence: its last token (generation)
  all,   ///< one row per input token (scoring, tests)
};

/// A decoder layer's weights. The projections that read the same input are
/// stacked row-wise into one matrix each (q|k|v, gate|up): one product
/// instead of three or two, which on a GPU is fewer and larger kernels.
struct layer_weights {
  at::Tensor input_norm, qkv, o, post_norm, gate_up, down;
};

class shard {
 public:
  /// Loads layers [first, last) of `model`; throws model_error when the range
  /// is invalid or a tensor is missing or misshapen.
  shard(const model_dir& model, int first, int last, shard_options options = {});
  ~shard();
  shard(shard&&) noexcept;
  shard& operator=(shard&&) noexcept;

  const llama_config& config() const { return config_; }
  int first_layer() const { return first_; }
  int last_layer() const { return last_; }
  bool has_embedding() const { return first_ == 0; }
  /// The final norm and (the slice's rows of) the LM head.
  bool has_head() const { return last_ == config_.num_layers; }
  /// The heads and columns it holds of each layer (whole_layer unless sliced).
  const tensor_slice& slice() const { return slice_; }
  const shard_options& options() const { return options_; }
  /// Turns CUDA graph replays of decode steps on or off (for comparison).
  void use_cuda_graphs(bool on) { options_.cuda_graphs = on; }

  /// A KV cache for one sequence of at most `capacity` tokens.
  kv_cache new_cache(int capacity) const;

  /// Bytes of the weights this shard holds in memory.
  std::size_t weight_bytes() const;
  /// Bytes of weights one decode step reads (everything but the embedding
  /// table, of which only one row per token is read).
  std::size_t weight_bytes_read_per_token() const;

  /// Runs the shard over a packed batch. `input` holds token ids (int64,
  /// [tokens]) for a shard with the embedding, hidden states ([tokens,
  /// hidden]) otherwise. Returns logits ([rows, vocab], float32) from the
  /// shard with the head (a slice's: [rows, its vocabulary rows]), hidden
  /// states ([tokens, hidden]) otherwise. Every
  /// cache advances by its sequence's tokens. Throws model_error when a
  /// sequence would outgrow its cache or the input does not match the batch.
  at::Tensor forward(const at::Tensor& input, const std::vector<sequence_step>& batch,
                     logits_rows rows = logits_rows::last);

  /// The same pass with `context` between the parts of every decoder layer
  /// (compute/layer_program.hpp). With an empty context the result is bitwise
  /// that of forward(input, batch, rows). On CUDA only a plain context's
  /// decode steps replay as CUDA graphs: a replay runs captured kernels, so
  /// it can neither call hooks nor record autograd, and a context with hooks
  /// or grad runs eagerly.
  at::Tensor forward(const at::Tensor& input, const std::vector<sequence_step>& batch, const layer_context& context,
                     logits_rows rows = logits_rows::last);

  // Weights, for benchmarks that run the same modules outside the shard.
  const std::vector<layer_weights>& layers() const { return layers_; }
  const at::Tensor& embedding() const { return embedding_; }
  const at::Tensor& final_norm() const { return final_norm_; }
  const at::Tensor& head() const { return head_; }
  const llama_ops::rotary_table& rotary() const { return rotary_; }

 private:
  /// The forward pass proper, for tokens at `positions` (one per sequence).
  at::Tensor run(const at::Tensor& input, const std::vector<sequence_step>& batch,
                 const std::vector<llama_ops::token_positions>& positions, logits_rows rows,
                 const layer_context& context) const;
  bool replays_graph(const std::vector<sequence_step>& batch, const layer_context& context) const;
  /// Layer `index` (counted from the shard's first layer), part by part.
  at::Tensor decoder_layer(int index, const at::Tensor& x, const std::vector<sequence_step>& batch,
                           const std::vector<llama_ops::token_positions>& positions,
                           const layer_context& context) const;
  /// Every layer with sequence parallelism (compute/layer_program.hpp).
  at::Tensor sequence_parallel_layers(const at::Tensor& x, const std::vector<sequence_step>& batch,
                                      const std::vector<llama_ops::token_positions>& positions,
                                      const sequence_split& split) const;
  /// The attention's contribution to the residual stream, [tokens, hidden],
  /// from the normed input; writes the new tokens' keys and values into
  /// their caches and leaves only the o-projection to the partial sum.
  partial_sum attention_part(int index, const at::Tensor& normed, const std::vector<sequence_step>& batch,
                             const std::vector<llama_ops::token_positions>& positions, bool grad) const;
  /// The MLP's contribution to the residual stream from the normed `h`.
  partial_sum mlp_part(int index, const at::Tensor& h) const;
  /// input · weightᵀ as a partial sum, by output columns.
  partial_sum projected(const at::Tensor& input, const at::Tensor& weight) const;
  at::Tensor logits(const at::Tensor& hidden, const std::vector<sequence_step>& batch, logits_rows rows) const;
  void check_batch(const at::Tensor& input, const std::vector<sequence_step>& batch) const;

  llama_config config_;
  int first_;
  int last_;
  shard_options options_;
  at::Tensor embedding_;
  std::vector<layer_weights> layers_;
  at::Tensor final_norm_;
  at::Tensor head_;  // the embedding itself when tied
  tensor_slice slice_;
  llama_ops::rotary_table rotary_;
};

}  // namespace orrery::compute
