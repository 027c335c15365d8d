#pragma once
// One thread count per node process, given to the libraries that run
// compute/'s heavy work: orrery's decode gemv pool and the GEMMs' library
// (OpenBLAS's own threads, or libtorch's intra-op threads where libtorch has
// no OpenBLAS). Benchmarks compare paths at the same count.

#include <memory>

namespace orrery::compute {

class thread_pool;

/// The default: every core the process may use.
int default_thread_count();

/// Gives `threads` to OpenBLAS (libtorch's intra-op work then stays on one
/// thread, see cpu_threads.cpp) or, without OpenBLAS, to libtorch: for the
/// whole process, so a benchmark that runs shards of different counts in
/// one process sets it before each. Throws std::invalid_argument when
/// threads < 1.
void set_gemm_threads(int threads);

/// set_gemm_threads(threads), and a gemv pool of the same size.
std::shared_ptr<thread_pool> configure_cpu_threads(int threads);

}  // namespace orrery::compute
