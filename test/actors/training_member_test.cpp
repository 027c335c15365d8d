// Which member of a data-parallel training stage runs each micro-batch.

#include <doctest/doctest.h>

#include <vector>

#include "actors/training_stage.hpp"

using orrery::actors::training_member;

namespace {

std::vector<int> counts(const std::vector<std::int32_t>& shares, std::uint32_t micro_batches) {
  std::vector<int> out(shares.size(), 0);
  for (std::uint32_t k = 0; k < micro_batches; ++k) ++out.at(static_cast<std::size_t>(training_member(k, shares)));
  return out;
}

}  // namespace

TEST_CASE("a data-parallel stage deals micro-batches in proportion to its members' shares, interleaved") {
  CHECK(training_member(5, {}) == 0);  // a stage of one
  CHECK(counts({1, 1}, 8) == std::vector<int>{4, 4});
  CHECK(counts({235, 117}, 6) == std::vector<int>{4, 2});  // speeds 1 : 0.5 as MLP columns
  CHECK(counts({2, 1, 1}, 8) == std::vector<int>{4, 2, 2});
  CHECK(counts({3, 1}, 3) == std::vector<int>{2, 1});  // a remainder goes to the larger share
  // Interleaved, not in blocks: the faster member does not run the first half alone.
  std::vector<int> order;
  for (std::uint32_t k = 0; k < 4; ++k) order.push_back(training_member(k, {1, 1}));
  CHECK(order == std::vector<int>{0, 1, 0, 1});
}
