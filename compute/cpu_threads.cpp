#include "compute/cpu_threads.hpp"

#include <ATen/Parallel.h>
#include <sched.h>

#include <stdexcept>
#include <string>
#include <thread>

#include "compute/thread_pool.hpp"

namespace orrery::compute {

int default_thread_count() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::shared_ptr<thread_pool> configure_cpu_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("threads must be at least 1, got " + std::to_string(threads));
  at::set_num_threads(threads);
  return std::make_shared<thread_pool>(threads);
}

}  // namespace orrery::compute
