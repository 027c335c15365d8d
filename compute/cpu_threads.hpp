#pragma once
// One thread count per node process, applied to every thread user of
// compute/: orrery's decode gemv pool, libtorch's intra-op threads (GEMMs,
// element-wise ops) and OpenBLAS's own threads. Benchmarks compare paths at the same count.

#include <memory>

namespace orrery::compute {

class thread_pool;

/// The default: every core the process may use.
int default_thread_count();

/// Sets libtorch's intra-op thread count to `threads` and returns a gemv pool
/// of the same size. Throws std::invalid_argument when threads < 1.
std::shared_ptr<thread_pool> configure_cpu_threads(int threads);

}  // namespace orrery::compute
