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
/// GPU, half precision, products autograd records, or pool == nullptr)
/// through libtorch's GEMM.
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

/// Where one sequence's new tokens sit, and what follows from it for every
/// layer alike, computed once per forward pass. Positions live in a device
/// tensor rather than in host integers so that a decode step has the same
/// kernels and shapes at every position and can be replayed as a CUDA graph.
struct token_positions {
  /// Each new token's position: int64, [tokens], on the compute device.
  at::Tensor index;
  /// Attention reads the key rows [0, window): exactly the context in eager
  /// steps, a fixed bucket past it in replayed ones (the extra rows masked).
  int window = 0;
  /// bool [tokens, window]: the keys past each token's own position (later
  /// tokens of a prefill, rows of a replayed window not filled yet).
  at::Tensor future;
  /// Its complement, the form fused GPU attention takes; on CUDA only.
  at::Tensor visible;
  /// The rotary table's rows at `index`: [tokens, 1, head_dim].
  at::Tensor cos, sin;

  static token_positions of(at::Tensor index, int window, const rotary_table& table);
  /// The positions [first, first + tokens) with the exact window.
  static token_positions consecutive(int first, int tokens, const rotary_table& table);
};

/// Rotates x [tokens, heads, head_dim] (or [sequences, tokens, heads,
/// head_dim], every sequence at the same positions) by its tokens' positions.
at::Tensor apply_rotary(const at::Tensor& x, const token_positions& positions);

/// Writes the new tokens' keys or values [tokens, kv_heads, head_dim] into
/// a cache [kv_heads, capacity, head_dim] at their positions.
void store_at_positions(const at::Tensor& cache, const at::Tensor& rows, const at::Tensor& positions);

/// Causal attention of q [tokens, heads, head_dim] over the rows [0,
/// window) of keys / values [kv_heads, capacity, head_dim]: a query sees the
/// keys up to its own position. Query head h reads kv head h / (heads /
/// kv_heads). Returns [tokens, heads * head_dim]. On CUDA one fused kernel
/// (scaled_dot_product_attention, as HF's default); on the CPU explicit
/// products and softmax, in float32 as HF's eager attention.
at::Tensor attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                     const token_positions& positions);

/// Causal attention of `sequences` sequences of the same length, each from
/// position 0 and attending only to itself: q [sequences, tokens, heads,
/// head_dim], k and v [sequences, tokens, kv_heads, head_dim], `positions`
/// those of one of them. Returns [sequences * tokens, heads * head_dim], the
/// rows of attention() called per sequence, in one batched product (a
/// training pass: one call where attention() takes one per sequence).
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const token_positions& positions);

}  // namespace llama_ops
}  // namespace orrery::compute
