#include "compute/gemv.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <random>
#include <vector>

#include "compute/thread_pool.hpp"

using namespace orrery::compute;

namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

}  // namespace

TEST_CASE("gemv matches a double-precision reference for odd shapes and any vector count") {
  thread_pool pool(2);
  for (auto [rows, cols] : std::vector<std::pair<int, int>>{{1, 1}, {7, 15}, {130, 17}, {257, 768}, {64, 2048}}) {
    auto w = random_floats(static_cast<std::size_t>(rows) * cols, 1);
    for (int vectors : {1, 3, 4, 5, 9}) {
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(vectors);
      auto x = random_floats(static_cast<std::size_t>(vectors) * cols, 2);
      std::vector<float> y(static_cast<std::size_t>(vectors) * rows);
      gemv_f32(w.data(), rows, cols, x.data(), vectors, y.data(), pool);
      for (int v = 0; v < vectors; ++v)
        for (int r = 0; r < rows; ++r) {
          double expected = 0;
          for (int c = 0; c < cols; ++c) expected += static_cast<double>(w[r * cols + c]) * x[v * cols + c];
          CHECK(std::abs(y[v * rows + r] - expected) <= 1e-5 * std::sqrt(cols) + 1e-6);
        }
    }
  }
}

TEST_CASE("each result is bitwise independent of the batch it is in and of the thread count") {
  const int rows = 300, cols = 771;
  auto w = random_floats(rows * cols, 3);
  auto x = random_floats(6 * cols, 4);
  thread_pool one(1), two(2);
  std::vector<float> batched(6 * rows), alone(rows);
  gemv_f32(w.data(), rows, cols, x.data(), 6, batched.data(), two);
  for (int v = 0; v < 6; ++v) {
    gemv_f32(w.data(), rows, cols, x.data() + v * cols, 1, alone.data(), one);
    CHECK(std::equal(alone.begin(), alone.end(), batched.begin() + v * rows));
  }
}

TEST_CASE("the thread pool runs every part exactly once, job after job") {
  thread_pool pool(3);
  for (int job = 0; job < 2000; ++job) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(job % 37 + 1));
    pool.run(static_cast<int>(hits.size()), [&](int part) { hits[static_cast<std::size_t>(part)].fetch_add(1); });
    for (auto& h : hits) REQUIRE(h.load() == 1);
  }
}

TEST_CASE("the read bandwidth measurement gives a plausible figure") {
  thread_pool pool(2);
  double bytes_per_s = measure_read_bandwidth(pool, std::size_t{64} << 20, 2);
  CHECK(bytes_per_s > 1e8);   // slower than 100 MB/s would mean it measured nothing real
  CHECK(bytes_per_s < 1e13);  // faster than 10 TB/s would mean it read nothing
}
