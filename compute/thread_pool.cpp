#include "compute/thread_pool.hpp"

#include <chrono>

namespace orrery::compute {

namespace {

// How long an idle worker spins before sleeping: longer than the gap between
// two matrix products of a decode step (tens of microseconds), far shorter
// than a human-visible idle period.
constexpr auto spin_before_sleep = std::chrono::microseconds(500);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

thread_pool::thread_pool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

thread_pool::~thread_pool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    generation_.fetch_add(1);  // wakes every worker; none can claim a part
  }
  wake_.notify_all();
  for (auto& w : workers_) w.join();
}

void thread_pool::work_on(const job& j) {
  std::uint64_t claim = claim_.load(std::memory_order_acquire);
  for (;;) {
    if ((claim >> 32) != j.generation || static_cast<int>(claim & 0xffffffffu) >= j.parts) return;
    if (!claim_.compare_exchange_weak(claim, claim + 1, std::memory_order_acq_rel)) continue;
    j.call(j.fn, static_cast<int>(claim & 0xffffffffu));
    parts_done_.fetch_add(1, std::memory_order_release);
    claim = claim_.load(std::memory_order_acquire);
  }
}

void thread_pool::run_job(int parts, trampoline call, void* fn) {
  if (workers_.empty() || parts <= 1) {
    for (int part = 0; part < parts; ++part) call(fn, part);
    return;
  }
  job j;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    j = job{generation_.load() + 1, parts, call, fn};
    parts_ = parts;
    call_ = call;
    fn_ = fn;
    parts_done_.store(0);
    claim_.store(static_cast<std::uint64_t>(j.generation) << 32);
    generation_.store(j.generation, std::memory_order_release);
  }
  wake_.notify_all();
  work_on(j);
  while (parts_done_.load(std::memory_order_acquire) < parts) cpu_relax();
}

void thread_pool::worker_loop() {
  std::uint32_t seen = 0;
  for (;;) {
    auto spin_until = std::chrono::steady_clock::now() + spin_before_sleep;
    while (generation_.load(std::memory_order_acquire) == seen &&
           std::chrono::steady_clock::now() < spin_until)
      cpu_relax();
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return generation_.load() != seen; });
    if (stopping_) return;
    seen = generation_.load();
    job j{seen, parts_, call_, fn_};
    lock.unlock();
    work_on(j);
  }
}

}  // namespace orrery::compute
