#include "compute/gemv.hpp"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <vector>

#include "compute/thread_pool.hpp"

namespace orrery::compute {

namespace {

// Vectors multiplied per pass over a row: 4 vectors x 2 accumulators fit the
// 16 ymm registers with the two W loads.
constexpr int vectors_per_pass = 4;

// Rows per scheduled part: big enough to amortise the claim (~100 ns), small
// enough to balance a few thousand rows over the cores.
constexpr std::int64_t rows_per_part = 64;

float scalar_tail(const float* w, const float* x, std::int64_t from, std::int64_t cols) {
  float sum = 0.0f;
  for (std::int64_t c = from; c < cols; ++c) sum += w[c] * x[c];
  return sum;
}

__attribute__((target("avx2,fma"))) inline float horizontal_sum(__m256 a, __m256 b) {
  __m256 s = _mm256_add_ps(a, b);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}

template <int N>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* w, std::int64_t row_begin, std::int64_t row_end,
                                                   std::int64_t cols, const float* x, float* y, std::int64_t rows) {
  const std::int64_t body = cols - cols % 16;
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const float* row = w + r * cols;
    __m256 lo[N], hi[N];
    for (int v = 0; v < N; ++v) lo[v] = hi[v] = _mm256_setzero_ps();
    for (std::int64_t c = 0; c < body; c += 16) {
      __m256 w0 = _mm256_loadu_ps(row + c), w1 = _mm256_loadu_ps(row + c + 8);
      for (int v = 0; v < N; ++v) {
        lo[v] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + v * cols + c), lo[v]);
        hi[v] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + v * cols + c + 8), hi[v]);
      }
    }
    for (int v = 0; v < N; ++v)
      y[v * rows + r] = horizontal_sum(lo[v], hi[v]) + scalar_tail(row, x + v * cols, body, cols);
  }
}

// Portable fallback with the same split (16 partial sums, then the tail).
template <int N>
void rows_portable(const float* w, std::int64_t row_begin, std::int64_t row_end, std::int64_t cols, const float* x,
                   float* y, std::int64_t rows) {
  const std::int64_t body = cols - cols % 16;
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const float* row = w + r * cols;
    for (int v = 0; v < N; ++v) {
      float lanes[16] = {};
      for (std::int64_t c = 0; c < body; c += 16)
        for (int l = 0; l < 16; ++l) lanes[l] += row[c + l] * x[v * cols + c + l];
      float sum = 0.0f;
      for (float lane : lanes) sum += lane;
      y[v * rows + r] = sum + scalar_tail(row, x + v * cols, body, cols);
    }
  }
}

using rows_kernel = void (*)(const float*, std::int64_t, std::int64_t, std::int64_t, const float*, float*,
                             std::int64_t);

rows_kernel pick_kernel(int n) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  static const rows_kernel fast[] = {rows_avx2<1>, rows_avx2<2>, rows_avx2<3>, rows_avx2<4>};
  static const rows_kernel portable[] = {rows_portable<1>, rows_portable<2>, rows_portable<3>, rows_portable<4>};
  return (avx2 ? fast : portable)[n - 1];
}

}  // namespace

void gemv_f32(const float* w, std::int64_t rows, std::int64_t cols, const float* x, std::int64_t vectors, float* y,
              thread_pool& pool) {
  const int parts = static_cast<int>((rows + rows_per_part - 1) / rows_per_part);
  pool.run(parts, [&](int part) {
    std::int64_t begin = part * rows_per_part, end = std::min(rows, begin + rows_per_part);
    for (std::int64_t v = 0; v < vectors; v += vectors_per_pass) {
      int n = static_cast<int>(std::min<std::int64_t>(vectors_per_pass, vectors - v));
      pick_kernel(n)(w, begin, end, cols, x + v * cols, y + v * rows, rows);
    }
  });
}

namespace {

__attribute__((target("avx2"))) float sum_avx2(const float* p, std::size_t n) {
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps(), c = _mm256_setzero_ps(), d = _mm256_setzero_ps();
  for (std::size_t i = 0; i + 32 <= n; i += 32) {
    a = _mm256_add_ps(a, _mm256_load_ps(p + i));
    b = _mm256_add_ps(b, _mm256_load_ps(p + i + 8));
    c = _mm256_add_ps(c, _mm256_load_ps(p + i + 16));
    d = _mm256_add_ps(d, _mm256_load_ps(p + i + 24));
  }
  return horizontal_sum(_mm256_add_ps(a, b), _mm256_add_ps(c, d));
}

float sum_portable(const float* p, std::size_t n) {
  float lanes[16] = {};
  for (std::size_t i = 0; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; ++l) lanes[l] += p[i + l];
  float sum = 0.0f;
  for (float lane : lanes) sum += lane;
  return sum;
}

}  // namespace

double measure_read_bandwidth(thread_pool& pool, std::size_t bytes, int repeats) {
  const std::size_t floats = bytes / sizeof(float);
  std::unique_ptr<float, decltype(&std::free)> buffer(
      static_cast<float*>(std::aligned_alloc(64, floats * sizeof(float))), &std::free);
  std::fill(buffer.get(), buffer.get() + floats, 1.0f);  // fault every page in before timing
  const int parts = pool.size() * 16;
  const std::size_t per_part = floats / static_cast<std::size_t>(parts) / 32 * 32;
  std::vector<float> sinks(static_cast<std::size_t>(parts));
  const bool avx2 = __builtin_cpu_supports("avx2");
  double best = 0;
  for (int i = 0; i < repeats; ++i) {
    auto start = std::chrono::steady_clock::now();
    pool.run(parts, [&](int part) { 
      const float* p = buffer.get() + part * per_part;
      sinks[part] = avx2 ? sum_avx2(p, per_part) : sum_portable(p, per_part);
     });
    std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    best = std::max(best, static_cast<double>(per_part * parts * sizeof(float)) / seconds.count());
  }
  volatile float keep = sinks[0];  // the sums must not be optimised away
  (void)keep;
  return best;
}

}  // namespace orrery::compute
