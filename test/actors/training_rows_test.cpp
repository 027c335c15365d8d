// How a data-parallel training stage splits each micro-batch's rows among
// its members.

#include <doctest/doctest.h>

#include <vector>

#include "actors/training_stage.hpp"

using orrery::actors::member_rows;
using orrery::actors::training_rows;

namespace {

using counts = std::vector<std::uint32_t>;

// Each member's rows over a step of `micro_batches` micro-batches of `rows`.
counts over_step(const std::vector<std::int32_t>& shares, std::uint32_t micro_batches, std::uint32_t rows) {
  counts out(shares.size(), 0);
  for (std::uint32_t k = 0; k < micro_batches; ++k) {
    const auto c = training_rows(k, rows, shares);
    std::uint32_t sum = 0;
    for (std::size_t m = 0; m < c.size(); ++m) out[m] += c[m], sum += c[m];
    CHECK(sum == rows);  // every row runs, once
  }
  return out;
}

}  // namespace

TEST_CASE("a data-parallel stage splits each micro-batch's rows in proportion to its members' shares") {
  CHECK(training_rows(5, 4, {}) == counts{4});  // a stage of one runs all
  CHECK(training_rows(5, 4, {7}) == counts{4});
  CHECK(training_rows(0, 4, {1, 1}) == counts{2, 2});
  CHECK(training_rows(0, 6, {2, 1}) == counts{4, 2});
  CHECK(training_rows(0, 4, {2, 1, 1}) == counts{2, 1, 1});
  CHECK(training_rows(0, 6, {235, 117}) == counts{4, 2});  // speeds 1 : 0.5 as MLP columns
  // Fewer rows than members, or shares that do not divide a micro-batch:
  // over the step each member still gets its share.
  CHECK(over_step({1, 1}, 4, 1) == counts{2, 2});
  CHECK(over_step({2, 1}, 3, 2) == counts{4, 2});
  CHECK(over_step({2, 1, 1}, 4, 2) == counts{4, 2, 2});
  CHECK(over_step({1, 1, 1}, 3, 2) == counts{2, 2, 2});
  CHECK(training_rows(0, 3, {1, 0}) == counts{3, 0});  // a member without a share runs nothing
}

TEST_CASE("each member's rows are a consecutive range, in member order, covering the micro-batch") {
  for (std::uint32_t k = 0; k < 5; ++k) {
    std::uint32_t next = 0;
    for (std::size_t m = 0; m < 3; ++m) {
      const auto r = member_rows(k, 7, {3, 2, 2}, m);
      CHECK(r.first == next);
      CHECK(r.count == training_rows(k, 7, {3, 2, 2})[m]);
      next += r.count;
    }
    CHECK(next == 7);
  }
  CHECK(member_rows(0, 4, {}, 0).count == 4);
}
