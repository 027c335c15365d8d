#pragma once
// The pieces of a Llama decoder layer as HF's LlamaForCausalLM computes them
// (RMSNorm, rotate-half rotary embeddings, grouped-query attention, SwiGLU),
// on packed token rows [tokens, features].

#include <ATen/core/Tensor.h>

namespace orrery::compute {

class thread_pool;

namespace llama_ops {

/// weight * x / sqrt(mean(x^2) + eps), in float32 as HF does.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// x [tokens, in] times w [out, in] transposed. A few fp32 rows on the CPU go
/// through orrery's memory-bound gemv on `pool`; everything else (prefill,
/// GPU, half precision, or pool == nullptr) through libtorch's GEMM.
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, thread_pool* pool);

/// Most token rows one gemv call handles; beyond this a GEMM is faster.
inline constexpr std::int64_t max_gemv_rows = 16;

/// cos and sin of every position, [max_positions, head_dim], laid out as
/// HF's rotate-half convention expects (the half-size table repeated twice).
struct rotary_table {
  at::Tensor cos;
  at::Tensor sin;

  static rotary_table build(int head_dim, double theta, int max_positions, at::TensorOptions options);
};

/// Rotates x [tokens, heads, head_dim] whose first token sits at `position`.
at::Tensor apply_rotary(const at::Tensor& x, const rotary_table& table, int position);

/// Causal attention of q [tokens, heads, head_dim] (first token at
/// `position`) over the first position + tokens rows of keys / values
/// [kv_heads, capacity, head_dim]; query head h reads kv head
/// h / (heads / kv_heads). Returns [tokens, heads * head_dim].
at::Tensor attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int position);

}  // namespace llama_ops
}  // namespace orrery::compute
