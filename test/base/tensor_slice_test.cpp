// The one proportional split groups use (base/tensor_slice.hpp): floors, then
// the largest remainders, ties to the lower index; the parts add up to the
// total whatever the shares.

#include "base/tensor_slice.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <vector>

using namespace orrery;

TEST_CASE("largest_remainder_split gives each its floor, then the largest remainders one more, ties to the lower index") {
  CHECK(largest_remainder_split(10, {88, 176, 88}) == std::vector<std::int64_t>{3, 5, 2});  // 2.5, 5, 2.5: a tie
  CHECK(largest_remainder_split(512, {100, 252}) == std::vector<std::int64_t>{145, 367});   // 145.45, 366.55
  CHECK(largest_remainder_split(32000, {700, 1348}) == std::vector<std::int64_t>{10938, 21062});
  CHECK(largest_remainder_split(1, {1, 1}) == std::vector<std::int64_t>{1, 0});
  CHECK(largest_remainder_split(7, {0, 3}) == std::vector<std::int64_t>{0, 7});
  for (std::int64_t total : {0, 1, 99, 1000003}) {
    CAPTURE(total);
    std::int64_t sum = 0;
    for (auto part : largest_remainder_split(total, {3, 1, 4, 1, 5})) sum += part;
    CHECK(sum == total);
  }
  CHECK_THROWS_WITH_AS(largest_remainder_split(5, {0, 0}), "largest_remainder_split: the shares add up to 0",
                       std::invalid_argument);
}
