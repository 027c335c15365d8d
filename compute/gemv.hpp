#pragma once
// y = W x for a handful of vectors x: the matrix products of a decode step.
// Memory-bound: each row of W is streamed from memory once and multiplied
// with every vector while it is in registers; rows are split over the pool.
// Each (row, vector) dot product is summed in the same order whatever the
// number of vectors or threads, so a batched decode step gives bitwise the
// results of decoding each sequence alone.

#include <cstdint>

namespace orrery::compute {

class thread_pool;

/// Y[v][r] = sum_c W[r][c] * X[v][c] for v < vectors, r < rows.
/// W is row-major [rows, cols], X is [vectors, cols], Y is [vectors, rows].
void gemv_f32(const float* w, std::int64_t rows, std::int64_t cols, const float* x, std::int64_t vectors,
              float* y, thread_pool& pool);

/// Bytes/second one full read of a buffer much larger than the caches
/// achieves with the pool's threads (best of `repeats`): the memory bandwidth
/// a memory-bound decode step can at best use.
double measure_read_bandwidth(thread_pool& pool, std::size_t bytes = std::size_t{1} << 30, int repeats = 5);

}  // namespace orrery::compute
