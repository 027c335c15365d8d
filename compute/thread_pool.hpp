#pragma once
// A small fork-join pool for the decode path's matrix-vector products.
//
// Background: decode on a CPU is memory-bound, and OpenBLAS's batch-1 gemv
// barely parallelises (ARCHITECTURE.md: 46.7 ms/token with one or two
// threads on the `small` shape). Splitting rows over every core needs a
// dispatch far cheaper than a token's ~100 matrix products, so workers spin
// briefly between jobs before sleeping. The pool is independent of
// libtorch's OpenMP/native backend, which differs between libtorch 1.13 and
// 2.x, so the split (and therefore every result) is the same on both.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace orrery::compute {

class thread_pool {
 public:
  /// `threads` counts the calling thread: a pool of 1 runs everything inline.
  explicit thread_pool(int threads);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  /// Calls fn(part) once for every part in [0, parts), spread over the pool's
  /// threads, and returns when all calls have returned. Not reentrant.
  template <class F>
  void run(int parts, F&& fn) {
    run_job(parts, [](void* f, int part) { (*static_cast<F*>(f))(part); }, &fn);
  }

 private:
  using trampoline = void (*)(void*, int);

  struct job {
    std::uint32_t generation = 0;
    int parts = 0;
    trampoline call = nullptr;
    void* fn = nullptr;
  };

  void run_job(int parts, trampoline call, void* fn);
  void work_on(const job& j);
  void worker_loop();

  std::vector<std::thread> workers_;
  std::atomic<std::uint32_t> generation_{0};
  // (generation << 32) | next unclaimed part: a worker still holding an old
  // job can never claim a part of a newer one.
  std::atomic<std::uint64_t> claim_{0};
  std::atomic<int> parts_done_{0};
  int parts_ = 0;
  trampoline call_ = nullptr;
  void* fn_ = nullptr;
  bool stopping_ = false;
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace orrery::compute
