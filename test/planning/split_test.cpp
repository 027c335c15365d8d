#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <random>

#include "planning/split.hpp"

using namespace orrery::planning;

namespace {

double brute_force(int total, const std::vector<double>& cost, const std::vector<int>& caps) {
  double best = std::numeric_limits<double>::infinity();
  std::vector<int> shares(cost.size());
  std::function<void(std::size_t, int)> place = [&](std::size_t i, int left) {
    if (i + 1 == cost.size()) {
      if (left <= caps[i]) {
        shares[i] = left;
        best = std::min(best, slowest(shares, cost));
      }
      return;
    }
    for (int x = 0; x <= std::min(left, caps[i]); ++x) {
      shares[i] = x;
      place(i + 1, left - x);
    }
  };
  place(0, total);
  return best;
}

int sum(const std::vector<int>& v) {
  int s = 0;
  for (int x : v)
    s += x;
  return s;
}

}  // namespace

TEST_CASE("min-max split is optimal and the papers' rounding stays within one unit") {
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int> devices(1, 4), units(0, 12), cap(0, 8);
  std::uniform_real_distribution<double> cost(0.1, 5.0);
  int feasible = 0;
  double worst_gap = 0;
  for (int i = 0; i < 1000; ++i) {
    std::vector<double> c(devices(rng));
    std::vector<int> caps(c.size());
    for (std::size_t d = 0; d < c.size(); ++d) {
      c[d] = cost(rng);
      caps[d] = cap(rng);
    }
    int total = units(rng);
    auto exact = min_max_split(total, c, caps);
    auto rounded = proportional_split(total, c, caps);
    if (sum(caps) < total) {
      CHECK_FALSE(exact);
      CHECK_FALSE(rounded);
      continue;
    }
    ++feasible;
    REQUIRE(exact);
    REQUIRE(rounded);
    double best = brute_force(total, c, caps);
    CHECK(slowest(*exact, c) == doctest::Approx(best));
    CHECK(sum(*exact) == total);
    CHECK(sum(*rounded) == total);
    for (std::size_t d = 0; d < c.size(); ++d) {
      CHECK((*exact)[d] <= caps[d]);
      CHECK((*rounded)[d] <= caps[d]);
    }
    // Proportional shares are within one unit of the fractional optimum on
    // uncapped devices; capped ones finish no later than the optimum's bound.
    double max_cost = *std::max_element(c.begin(), c.end());
    double gap = slowest(*rounded, c) - best;
    CHECK(gap <= max_cost + 1e-9);
    worst_gap = std::max(worst_gap, best > 0 ? gap / best : 0.0);
    std::vector<int> offloaded = *rounded;
    offload_stragglers(offloaded, c, caps);
    CHECK(slowest(offloaded, c) <= slowest(*rounded, c) + 1e-12);
    CHECK(sum(offloaded) == total);
  }
  MESSAGE("split: ", feasible, " feasible; proportional rounding's worst relative gap ", worst_gap);
  CHECK(feasible > 500);
}
