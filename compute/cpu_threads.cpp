#include "compute/cpu_threads.hpp"

#include <ATen/Parallel.h>
#include <sched.h>

#include <stdexcept>
#include <string>
#include <thread>

#include "compute/thread_pool.hpp"

// OpenBLAS (Debian's libtorch does its GEMMs there) keeps its own thread
// count, one per core by default, and its idle threads spin before they
// sleep: on a node held to a fraction of a core by a CPU quota those spinning
// threads spend the quota. Weak, because a libtorch built on MKL (the CUDA
// wheels) has no OpenBLAS.
extern "C" void openblas_set_num_threads(int threads) __attribute__((weak));

namespace orrery::compute {

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

void set_gemm_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be at least 1, got " + std::to_string(threads));
  if (openblas_set_num_threads) {
    // The cores go to OpenBLAS (prefill GEMMs) and the gemv pool (decode);
    // libtorch's own intra-op work stays on the calling thread. Its OpenMP
    // (libgomp) team would otherwise fork for each element-wise op between
    // two GEMMs, and its idle worker spin-waits after every parallel region
    // (libgomp's default spin count), holding a core through the next GEMM
    // that OpenBLAS's threads split over the same cores. Issue #14: on 2
    // cores a 128-token prefill took 3282 ms with libtorch at 2 threads and
    // 712 ms at 1 (OpenBLAS at 2 both times); `--threads 2` prefilled slower
    // than `--threads 1`, and OMP_WAIT_POLICY=PASSIVE closed the gap too.
    at::set_num_threads(1);
    openblas_set_num_threads(threads);
  } else {
    at::set_num_threads(threads);  // without OpenBLAS the GEMMs run on libtorch's threads (MKL)
  }
}

std::shared_ptr<thread_pool> configure_cpu_threads(int threads) {
  set_gemm_threads(threads);
  return std::make_shared<thread_pool>(threads);
}

}  // namespace orrery::compute
