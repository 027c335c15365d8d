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

std::shared_ptr<thread_pool> configure_cpu_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be at least 1, got " + std::to_string(threads));
  at::set_num_threads(threads);
  if (openblas_set_num_threads) openblas_set_num_threads(threads);
  return std::make_shared<thread_pool>(threads);
}

}  // namespace orrery::compute
