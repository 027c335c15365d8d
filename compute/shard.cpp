#include "compute/shard.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "compute/decode_graph.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/scalar_type.hpp"
#include "compute/thread_pool.hpp"

namespace orrery::compute {

at::Device device_from_name(const std::string& name) {
  try {
    at::Device parsed(name);
    if (parsed.is_cuda() && !at::hasCUDA())
      throw std::runtime_error("device '" + name + "' requested but this build has no CUDA");
    return parsed;
  } catch (const c10::Error&) {
    throw std::runtime_error("device '" + name + "' is neither cpu nor cuda:N");
  }
}

namespace {

constexpr std::size_t huge_page_bytes = std::size_t{2} << 20;

// CPU decode streams every weight once per token, so with 4 KiB pages it
// takes a TLB miss (a two-level page walk inside a VM) every 4 KiB. Weights
// of a huge page or more get their own 2 MiB-aligned anonymous mapping marked
// MADV_HUGEPAGE, which works where THP is set to `madvise` (Debian's default).
// Where the kernel refuses, the mapping simply stays in small pages.
at::Tensor empty_weight(at::IntArrayRef shape, const at::TensorOptions& options) {
  std::size_t bytes = options.dtype().itemsize();
  for (auto extent : shape) bytes *= static_cast<std::size_t>(extent);
  if (bytes < huge_page_bytes) return at::empty(shape, options);
  const std::size_t length = bytes + huge_page_bytes;
  void* map = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) throw model_error("cannot map " + std::to_string(bytes) + " bytes for a weight");
  const auto base = reinterpret_cast<std::uintptr_t>(map);
  void* aligned = reinterpret_cast<void*>((base + huge_page_bytes - 1) & ~(huge_page_bytes - 1));
  ::madvise(aligned, bytes, MADV_HUGEPAGE);
  return at::from_blob(aligned, shape, [map, length](void*) { ::munmap(map, length); }, options);
}

at::Tensor mapped_tensor(const model_dir& model, const std::string& name) {
  tensor_view view = model.tensor(name);
  return at::from_blob(const_cast<std::byte*>(view.data), view.shape,
                       at::TensorOptions().dtype(scalar_type_of(view.type)));
}

// Part of a tensor in a file: `length` rows (dim 0) or columns (dim 1)
// from `begin`; length -1 is all of them.
struct tensor_part {
  std::string name;
  int dim = 0;
  std::int64_t begin = 0, length = -1;
};

// Copies the mapped tensor parts `parts`, stacked row-wise, into one tensor
// the shard owns; only their rows and columns are read from the page cache.
// A GPU receives each file's bytes as they are and converts there: no
// converted host copy of any tensor.
at::Tensor load_stacked(const model_dir& model, const std::vector<tensor_part>& parts, const shard_options& options) {
  std::vector<at::Tensor> mapped;
  for (const auto& part : parts) {
    auto whole = mapped_tensor(model, part.name);
    mapped.push_back(part.length < 0 ? whole : whole.narrow(part.dim, part.begin, part.length));
  }
  std::vector<std::int64_t> shape = mapped.front().sizes().vec();
  for (std::size_t i = 1; i < mapped.size(); ++i) shape[0] += mapped[i].size(0);
  const auto owned_options = at::TensorOptions().device(options.device).dtype(options.dtype);
  auto owned = options.device.is_cpu() ? empty_weight(shape, owned_options) : at::empty(shape, owned_options);
  std::int64_t row = 0;
  for (const auto& part : mapped) {
    owned.narrow(0, row, part.size(0)).copy_(options.device.is_cpu() ? part : part.contiguous().to(options.device));
    row += part.size(0);
  }
  return owned;
}

at::Tensor load(const model_dir& model, const std::string& name, const shard_options& options) {
  return load_stacked(model, {{name}}, options);
}

std::string layer_name(int layer, const char* suffix) {
  return "model.layers." + std::to_string(layer) + "." + suffix;
}

// A part's partial sum as the layer continues with it: added up by the
// context's collective when it has one.
at::Tensor summed(const layer_context& context, int layer, collective_point point, const partial_sum& partial) {
  return context.collective ? context.collective(layer, point, partial) : partial.whole();
}

void tap(const layer_context& context, int layer, layer_point point, const at::Tensor& hidden) {
  for (const auto& read : context.taps) read(layer, point, hidden);
}

// Whether every sequence of the batch starts at position 0 with the same
// number of tokens (the sequences of a training pass).
bool fresh_and_equal(const std::vector<sequence_step>& batch) {
  return std::all_of(batch.begin(), batch.end(), [&](const sequence_step& s) {
    return s.cache->length() == 0 && s.tokens == batch.front().tokens;
  });
}

// The key (or value) rows a grad-mode attention reads, [kv_heads, window,
// head_dim]: the cache's rows before this pass's tokens, then this pass's
// `rows` ([tokens, kv_heads, head_dim]) as computed, so autograd reaches them.
at::Tensor past_then_new(const at::Tensor& cache, const at::Tensor& rows, int window) {
  return at::cat({cache.narrow(1, 0, window - rows.size(0)), rows.transpose(0, 1)}, 1);
}

}  // namespace

shard::shard(const model_dir& model, int first, int last, shard_options options)
    : config_(model.config()), first_(first), last_(last), options_(std::move(options)) {
  if (first < 0 || last > config_.num_layers || first >= last)
    throw model_error(model.path().string() + ": layer range [" + std::to_string(first) + ", " +
                      std::to_string(last) + ") is not inside [0, " + std::to_string(config_.num_layers) + ")");
  // Not InferenceMode: a grad-mode pass saves weights and rotary tables for
  // backward, which inference tensors cannot be.
  c10::NoGradGuard no_grad;
  slice_ = options_.slice.value_or(whole_layer(config_));
  if (!is_slice_of(config_, slice_))
    throw model_error(model.path().string() + ": " + slice_.describe() + " is not a slice of a layer of " +
                      std::to_string(config_.num_heads) + " heads (" + std::to_string(config_.num_kv_heads) +
                      " KV heads), " + std::to_string(config_.intermediate_size) + " MLP columns and a vocabulary of " +
                      std::to_string(config_.vocab_size));
  if (has_embedding()) embedding_ = load(model, "model.embed_tokens.weight", options_);
  const std::int64_t d = config_.head_dim;
  for (int layer = first; layer < last; ++layer) {
    auto part = [&](const char* suffix, int dim, std::int64_t begin, std::int64_t end) {
      return tensor_part{layer_name(layer, suffix), dim, begin, end - begin};
    };
    auto whole_part = [&](const char* suffix) { return tensor_part{layer_name(layer, suffix)}; };
    const std::int64_t q0 = slice_.head_begin * d, q1 = slice_.head_end * d;
    const std::int64_t kv0 = slice_.kv_head_begin * d, kv1 = slice_.kv_head_end * d;
    const std::int64_t c0 = slice_.column_begin, c1 = slice_.column_end;
    // Q, K, V and gate|up by rows, O and down by columns: a partial sum each.
    layers_.push_back({load_stacked(model, {whole_part("input_layernorm.weight")}, options_),
                       load_stacked(model,
                                    {part("self_attn.q_proj.weight", 0, q0, q1), part("self_attn.k_proj.weight", 0, kv0, kv1),
                                     part("self_attn.v_proj.weight", 0, kv0, kv1)},
                                    options_),
                       load_stacked(model, {part("self_attn.o_proj.weight", 1, q0, q1)}, options_),
                       load_stacked(model, {whole_part("post_attention_layernorm.weight")}, options_),
                       load_stacked(model, {part("mlp.gate_proj.weight", 0, c0, c1), part("mlp.up_proj.weight", 0, c0, c1)},
                                    options_),
                       load_stacked(model, {part("mlp.down_proj.weight", 1, c0, c1)}, options_)});
  }
  if (has_head()) {
    final_norm_ = load(model, "model.norm.weight", options_);
    // A tied head reads the embedding, which the last shard then needs even
    // when it does not start at layer 0.
    const auto v0 = slice_.vocab_begin, rows = slice_.vocab();
    if (config_.tie_word_embeddings && has_embedding())
      head_ = rows == config_.vocab_size ? embedding_ : embedding_.narrow(0, v0, rows);
    else
      head_ = load_stacked(model, {{config_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", 0, v0, rows}},
                           options_);
  }
  rotary_ = llama_ops::rotary_table::build(config_.head_dim, config_.rope_theta, config_.max_position_embeddings,
                                           at::TensorOptions().device(options_.device).dtype(options_.dtype));
}

shard::~shard() = default;
shard::shard(shard&&) noexcept = default;
shard& shard::operator=(shard&&) noexcept = default;

kv_cache shard::new_cache(int capacity) const {
  return kv_cache(last_ - first_, slice_.kv_heads(), capacity, config_.head_dim,
                  at::TensorOptions().device(options_.device).dtype(options_.dtype));
}

std::size_t shard::weight_bytes() const {
  auto bytes = [](const at::Tensor& t) { return t.defined() ? static_cast<std::size_t>(t.nbytes()) : 0; };
  std::size_t total = bytes(embedding_) + bytes(final_norm_);
  if (!(config_.tie_word_embeddings && has_embedding())) total += bytes(head_);
  for (const auto& l : layers_)
    for (const auto* t : {&l.input_norm, &l.qkv, &l.o, &l.post_norm, &l.gate_up, &l.down})
      total += bytes(*t);
  return total;
}

std::size_t shard::weight_bytes_read_per_token() const {
  std::size_t embedding = embedding_.defined() ? embedding_.nbytes() : 0;
  std::size_t total = weight_bytes() - embedding;
  return config_.tie_word_embeddings && has_embedding() && has_head() ? total + head_.nbytes() : total;
}

void shard::check_batch(const at::Tensor& input, const std::vector<sequence_step>& batch) const {
  std::int64_t tokens = 0;
  for (const auto& step : batch) {
    if (step.tokens <= 0) throw model_error("a sequence in the batch has no new tokens");
    if (step.cache->length() + step.tokens > step.cache->capacity())
      throw model_error("sequence of " + std::to_string(step.cache->length() + step.tokens) +
                        " tokens exceeds its context of " + std::to_string(step.cache->capacity()) + " positions");
    tokens += step.tokens;
  }
  const bool ids = has_embedding();
  if (input.dim() != (ids ? 1 : 2) || input.size(0) != tokens || (!ids && input.size(1) != config_.hidden_size))
    throw model_error("shard [" + std::to_string(first_) + ", " + std::to_string(last_) + ") expects " +
                      (ids ? "[" + std::to_string(tokens) + "] token ids"
                           : "[" + std::to_string(tokens) + ", " + std::to_string(config_.hidden_size) + "] hidden states") +
                      ", got a tensor of " + std::to_string(input.dim()) + " dimensions");
  if (ids && tokens > 0) {
    auto [lo, hi] = at::aminmax(input);
    if (lo.item<std::int64_t>() < 0 || hi.item<std::int64_t>() >= config_.vocab_size)
      throw model_error("token id outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
  }
}

at::Tensor shard::forward(const at::Tensor& input, const std::vector<sequence_step>& batch, logits_rows rows) {
  return forward(input, batch, layer_context{}, rows);
}

at::Tensor shard::forward(const at::Tensor& input, const std::vector<sequence_step>& batch,
                          const layer_context& context, logits_rows rows) {
  check_batch(input, batch);
  // InferenceMode(false) is grad mode: autograd records even where the
  // caller runs in InferenceMode or under a NoGradGuard.
  c10::InferenceMode mode(!context.grad);
  at::Tensor out;
  if (replays_graph(batch, context)) {
    out = replay_decode_step(*batch.front().cache, this, input.to(options_.device, /*non_blocking=*/true),
                             [&](const at::Tensor& in, const at::Tensor& position, int window) {
                               return run(in, batch, {llama_ops::token_positions::of(position, window, rotary_)}, rows,
                                          context);
                             });
  } else {
    std::vector<llama_ops::token_positions> positions;
    for (const auto& step : batch)
      positions.push_back(llama_ops::token_positions::consecutive(step.cache->length(), step.tokens, rotary_));
    out = run(input, batch, positions, rows, context);
  }
  for (const auto& step : batch) step.cache->advance(step.tokens);
  return out;
}

bool shard::replays_graph(const std::vector<sequence_step>& batch, const layer_context& context) const {
  // A replay runs the captured kernels only: it calls no hooks and records
  // no autograd, so any other context takes the eager path.
  return context.plain() && options_.cuda_graphs && options_.device.is_cuda() && cuda_graphs_built() &&
         batch.size() == 1 && batch.front().tokens == 1;
}

at::Tensor shard::run(const at::Tensor& input, const std::vector<sequence_step>& batch,
                      const std::vector<llama_ops::token_positions>& positions, logits_rows rows,
                      const layer_context& context) const {
  // Uploads are queued, not waited for: from a pinned frame (actors/
  // tensor_frame.hpp) the copy overlaps the host's work; from pageable
  // memory libtorch copies synchronously anyway.
  at::Tensor x = has_embedding()
                     ? at::embedding(embedding_, input.to(options_.device, /*non_blocking=*/true))
                     : input.to(at::TensorOptions().device(options_.device).dtype(options_.dtype), /*non_blocking=*/true);
  if (context.sequence) {
    // Taps and autograd would see only this member's rows of the residual.
    if (!context.taps.empty() || context.grad)
      throw model_error("sequence parallelism splits the residual stream: it runs without taps and grad mode");
    x = sequence_parallel_layers(x, batch, positions, *context.sequence);
  } else {
    for (int i = 0; i < last_ - first_; ++i) x = decoder_layer(i, x, batch, positions, context);
  }
  return has_head() ? logits(x, batch, rows) : x;
}

at::Tensor shard::decoder_layer(int index, const at::Tensor& x, const std::vector<sequence_step>& batch,
                                const std::vector<llama_ops::token_positions>& positions,
                                const layer_context& context) const {
  const int layer = first_ + index;
  const auto& w = layers_[static_cast<std::size_t>(index)];
  tap(context, layer, layer_point::input, x);
  auto normed = llama_ops::rms_norm(x, w.input_norm, config_.rms_norm_eps);
  auto y = x + summed(context, layer, collective_point::attention,
                      attention_part(index, normed, batch, positions, context.grad));
  auto h = llama_ops::rms_norm(y, w.post_norm, config_.rms_norm_eps);
  auto out = y + summed(context, layer, collective_point::mlp, mlp_part(index, h));
  tap(context, layer, layer_point::output, out);
  return out;
}

at::Tensor shard::sequence_parallel_layers(const at::Tensor& x, const std::vector<sequence_step>& batch,
                                           const std::vector<llama_ops::token_positions>& positions,
                                           const sequence_split& split) const {
  const double eps = config_.rms_norm_eps;
  // Every member holds all rows of the stage's input: the first norm needs
  // no gather. From there on the residual stream is this member's rows.
  auto rows = x.narrow(0, split.row_begin, split.row_end - split.row_begin);
  auto normed = llama_ops::rms_norm(x, layers_.front().input_norm, eps);
  for (int i = 0; i < last_ - first_; ++i) {
    const int layer = first_ + i;
    const auto& w = layers_[static_cast<std::size_t>(i)];
    rows = rows + split.reduce_scatter(layer, collective_point::attention,
                                       attention_part(i, normed, batch, positions, /*grad=*/false));
    auto h = split.all_gather(layer, collective_point::post_norm, llama_ops::rms_norm(rows, w.post_norm, eps));
    rows = rows + split.reduce_scatter(layer, collective_point::mlp, mlp_part(i, h));
    const bool last = i + 1 == last_ - first_;
    normed = split.all_gather(layer, collective_point::layer_end,
                              last ? rows : llama_ops::rms_norm(rows, layers_[static_cast<std::size_t>(i + 1)].input_norm, eps));
  }
  return normed;  // after the last layer: the residual stream's every row
}

partial_sum shard::attention_part(int index, const at::Tensor& normed, const std::vector<sequence_step>& batch,
                                  const std::vector<llama_ops::token_positions>& positions, bool grad) const {
  const auto& w = layers_[static_cast<std::size_t>(index)];
  const std::int64_t heads = slice_.heads(), kv_heads = slice_.kv_heads(), d = config_.head_dim;
  // Query head h reads KV head h / (heads / kv_heads) unless the slice cut a
  // KV group: then each run of query heads over one KV head goes alone.
  auto attend = [&](const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                    const llama_ops::token_positions& where) {
    if (!cuts_kv_group(config_, slice_)) return llama_ops::attention(q, keys, values, where);
    std::vector<at::Tensor> runs;
    for (std::int64_t first = 0; first < heads;) {
      const int kv = kv_head_of(config_, slice_, static_cast<int>(first));
      std::int64_t end = first;
      while (end < heads && kv_head_of(config_, slice_, static_cast<int>(end)) == kv) ++end;
      runs.push_back(llama_ops::attention(q.narrow(1, first, end - first), keys.narrow(0, kv, 1),
                                          values.narrow(0, kv, 1), where));
      first = end;
    }
    return at::cat(runs, 1);
  };
  auto qkv = llama_ops::linear(normed, w.qkv, options_.pool.get());  // [tokens, (heads + 2 kv_heads) * d]
  if (grad && fresh_and_equal(batch) && !cuts_kv_group(config_, slice_)) {
    // A training pass: sequences of one length, each from position 0, in
    // one batched attention rather than one per sequence.
    const auto sequences = static_cast<std::int64_t>(batch.size()), n = static_cast<std::int64_t>(batch.front().tokens);
    const auto& where = positions.front();
    auto rows = qkv.view({sequences, n, heads + 2 * kv_heads, d});
    auto qk = llama_ops::apply_rotary(rows.narrow(2, 0, heads + kv_heads), where);
    auto q = qk.narrow(2, 0, heads), k = qk.narrow(2, heads, kv_heads);
    auto v = rows.narrow(2, heads + kv_heads, kv_heads);
    for (std::int64_t i = 0; i < sequences; ++i) {  // values only, as below
      const auto& cache = *batch[static_cast<std::size_t>(i)].cache;
      llama_ops::store_at_positions(cache.keys(index), k[i].detach(), where.index);
      llama_ops::store_at_positions(cache.values(index), v[i].detach(), where.index);
    }
    return projected(llama_ops::causal_attention(q, k, v, where), w.o);
  }
  std::vector<at::Tensor> attended;
  std::int64_t row = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const int n = batch[i].tokens;
    const auto& where = positions[i];
    auto rows = qkv.narrow(0, row, n);
    // Queries and keys rotate by the same angles: one rotation for both.
    auto qk = llama_ops::apply_rotary(rows.narrow(1, 0, (heads + kv_heads) * d).view({n, heads + kv_heads, d}),
                                      where);
    auto q = qk.narrow(1, 0, heads), k = qk.narrow(1, heads, kv_heads);
    auto v = rows.narrow(1, (heads + kv_heads) * d, kv_heads * d).view({n, kv_heads, d});
    auto keys = batch[i].cache->keys(index), values = batch[i].cache->values(index);
    if (grad) {
      // The cache keeps values, never autograd history: a write with history
      // would chain every layer's backward through the whole cache storage,
      // whose version counter every later write bumps under the tensors
      // saved for backward. Attention reads this pass's rows as computed.
      llama_ops::store_at_positions(keys, k.detach(), where.index);
      llama_ops::store_at_positions(values, v.detach(), where.index);
      attended.push_back(attend(q, past_then_new(keys, k, where.window), past_then_new(values, v, where.window), where));
    } else {
      llama_ops::store_at_positions(keys, k, where.index);
      llama_ops::store_at_positions(values, v, where.index);
      attended.push_back(attend(q, keys, values, where));
    }
    row += n;
  }
  return projected(attended.size() == 1 ? attended[0] : at::cat(attended), w.o);
}

partial_sum shard::mlp_part(int index, const at::Tensor& h) const {
  const auto& w = layers_[static_cast<std::size_t>(index)];
  auto gate_up = llama_ops::linear(h, w.gate_up, options_.pool.get());
  const auto intermediate = gate_up.size(1) / 2;
  auto gated = at::silu(gate_up.narrow(1, 0, intermediate)) * gate_up.narrow(1, intermediate, intermediate);
  return projected(gated, w.down);
}

partial_sum shard::projected(const at::Tensor& input, const at::Tensor& weight) const {
  // Output columns [begin, end) are the weight's rows [begin, end): a
  // contiguous block of it.
  return partial_sum(input.size(0), weight.size(0), [input, weight, pool = options_.pool.get()](std::int64_t begin, std::int64_t end) {
    return llama_ops::linear(input, weight.narrow(0, begin, end - begin), pool);
  });
}

at::Tensor shard::logits(const at::Tensor& hidden, const std::vector<sequence_step>& batch, logits_rows rows) const {
  at::Tensor selected = hidden;
  // With one token per sequence every row is a last row (and a replayed
  // decode step must not copy an index list from the host).
  if (rows == logits_rows::last && hidden.size(0) != static_cast<std::int64_t>(batch.size())) {
    std::vector<std::int64_t> last_rows;
    std::int64_t row = 0;
    for (const auto& step : batch) {
      row += step.tokens;
      last_rows.push_back(row - 1);
    }
    selected = hidden.index_select(0, at::tensor(last_rows, at::TensorOptions().dtype(at::kLong)).to(hidden.device()));
  }
  auto normed = llama_ops::rms_norm(selected, final_norm_, config_.rms_norm_eps);
  return llama_ops::linear(normed, head_, options_.pool.get()).to(at::kFloat);
}

}  // namespace orrery::compute
