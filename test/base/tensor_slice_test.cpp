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

TEST_CASE("a group all-reduces alone, by a swap, by whole partials round the ring up to 64 KiB, else by the ring") {
  using orrery::all_reduce_form;
  using orrery::all_reduce_schedule_of;
  CHECK(all_reduce_schedule_of(1, 1 << 20).form == all_reduce_form::alone);
  CHECK(all_reduce_schedule_of(1, 1 << 20).steps == 0);
  const auto swap = all_reduce_schedule_of(2, 1 << 20);
  CHECK((swap.form == all_reduce_form::swap && swap.steps == 1 && swap.pieces == 1));
  const auto gathered = all_reduce_schedule_of(4, orrery::gathered_all_reduce_bytes);
  CHECK((gathered.form == all_reduce_form::gathered && gathered.steps == 3 && gathered.pieces == 1));
  const auto ring = all_reduce_schedule_of(4, orrery::gathered_all_reduce_bytes + 4);
  CHECK((ring.form == all_reduce_form::ring && ring.steps == 6 && ring.pieces == 4));
}
