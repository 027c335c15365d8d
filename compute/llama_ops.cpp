#include "compute/llama_ops.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "compute/gemv.hpp"
#include "compute/thread_pool.hpp"

namespace orrery::compute::llama_ops {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto x32 = x.to(at::kFloat);
  auto normed = x32 * at::rsqrt(x32.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, thread_pool* pool) {
  // The gemv has no backward: a product autograd records goes to libtorch.
  const bool recorded = c10::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad());
  const bool gemv = pool != nullptr && !recorded && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                    w.scalar_type() == at::kFloat && x.dim() == 2 && x.size(0) <= max_gemv_rows;
  if (!gemv) return at::linear(x, w);
  auto input = x.contiguous();
  auto out = at::empty({x.size(0), w.size(0)}, x.options());
  gemv_f32(w.data_ptr<float>(), w.size(0), w.size(1), input.data_ptr<float>(), x.size(0), out.data_ptr<float>(),
           *pool);
  return out;
}

rotary_table rotary_table::build(int head_dim, double theta, int max_positions, at::TensorOptions options) {
  // The same float32 arithmetic as HF's LlamaRotaryEmbedding, so positions
  // round identically: inv_freq = 1 / theta^(2i/d), freqs = pos * inv_freq.
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto exponents = at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) / head_dim;
  auto inv_freq = 1.0 / at::pow(at::scalar_tensor(theta, f32), exponents);
  auto positions = at::arange(0, max_positions, at::TensorOptions().dtype(at::kLong)).to(at::kFloat);
  auto freqs = at::outer(positions, inv_freq);
  auto angles = at::cat({freqs, freqs}, -1);
  return {angles.cos().to(options), angles.sin().to(options)};
}

token_positions token_positions::of(at::Tensor index, int window, const rotary_table& table) {
  token_positions p;
  p.future = at::arange(window, index.options()).unsqueeze(0) > index.unsqueeze(1);
  if (index.is_cuda()) p.visible = p.future.logical_not();
  p.cos = table.cos.index_select(0, index).unsqueeze(1);
  p.sin = table.sin.index_select(0, index).unsqueeze(1);
  p.index = std::move(index);
  p.window = window;
  return p;
}

token_positions token_positions::consecutive(int first, int tokens, const rotary_table& table) {
  auto index = at::arange(first, first + tokens, at::TensorOptions().dtype(at::kLong).device(table.cos.device()));
  return of(std::move(index), first + tokens, table);
}

at::Tensor apply_rotary(const at::Tensor& x, const token_positions& positions) {
  const auto half = x.size(-1) / 2;
  auto rotated = at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * positions.cos + rotated * positions.sin;
}

void store_at_positions(const at::Tensor& cache, const at::Tensor& rows, const at::Tensor& positions) {
  cache.index_copy_(1, positions, rows.transpose(0, 1));
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                     const token_positions& positions) {
  const auto tokens = q.size(0), heads = q.size(1), head_dim = q.size(2), kv_heads = keys.size(0);
  const std::int64_t group = heads / kv_heads, window = positions.window;
#ifdef ORRERY_WITH_CUDA
  if (q.is_cuda()) {
    auto out = at::scaled_dot_product_attention(q.permute({1, 0, 2}).unsqueeze(0),
                                                keys.narrow(1, 0, window).unsqueeze(0),
                                                values.narrow(1, 0, window).unsqueeze(0), positions.visible, 0.0,
                                                /*is_causal=*/false, std::nullopt, /*enable_gqa=*/group > 1);
    return out.squeeze(0).permute({1, 0, 2}).reshape({tokens, heads * head_dim});
  }
#endif
  // [tokens, kv_heads * group, d] -> [kv_heads, group * tokens, d]: each kv
  // head multiplies the queries of its whole group in one batched product.
  auto grouped = q.reshape({tokens, kv_heads, group, head_dim}).permute({1, 2, 0, 3}).reshape(
      {kv_heads, group * tokens, head_dim});
  auto k = keys.narrow(1, 0, window), v = values.narrow(1, 0, window);
  auto scores = at::bmm(grouped, k.transpose(1, 2)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  // A masked score adds an exact zero to the softmax.
  scores = scores.view({kv_heads, group, tokens, window})
               .masked_fill(positions.future, -std::numeric_limits<float>::infinity())
               .view({kv_heads, group * tokens, window});
  auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  auto out = at::bmm(probs, v);  // [kv_heads, group * tokens, d]
  return out.view({kv_heads, group, tokens, head_dim}).permute({2, 0, 1, 3}).reshape({tokens, heads * head_dim});
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const token_positions& positions) {
  const auto batch = q.size(0), tokens = q.size(1), heads = q.size(2), head_dim = q.size(3), kv_heads = k.size(2);
  const std::int64_t group = heads / kv_heads;
#ifdef ORRERY_WITH_CUDA
  if (q.is_cuda()) {
    // is_causal rather than a mask: the fused kernels then take it, backward too.
    auto out = at::scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), std::nullopt,
                                                0.0, /*is_causal=*/true, std::nullopt, /*enable_gqa=*/group > 1);
    return out.transpose(1, 2).reshape({batch * tokens, heads * head_dim});
  }
#endif
  // As attention(): each kv head multiplies its group's queries in one
  // product, here for every sequence of the batch at once.
  auto grouped = q.reshape({batch, tokens, kv_heads, group, head_dim})
                     .permute({0, 2, 3, 1, 4})
                     .reshape({batch * kv_heads, group * tokens, head_dim});
  auto keys = k.permute({0, 2, 1, 3}).reshape({batch * kv_heads, tokens, head_dim});
  auto values = v.permute({0, 2, 1, 3}).reshape({batch * kv_heads, tokens, head_dim});
  auto scores = at::bmm(grouped, keys.transpose(1, 2)) * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  scores = scores.view({batch * kv_heads, group, tokens, tokens})
               .masked_fill(positions.future, -std::numeric_limits<float>::infinity())
               .view({batch * kv_heads, group * tokens, tokens});
  auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  auto out = at::bmm(probs, values);  // [batch * kv_heads, group * tokens, d]
  return out.view({batch, kv_heads, group, tokens, head_dim})
      .permute({0, 3, 1, 2, 4})
      .reshape({batch * tokens, heads * head_dim});
}

}  // namespace orrery::compute::llama_ops
