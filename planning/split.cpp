#include "planning/split.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <queue>
#include <utility>

namespace orrery::planning {

namespace {

long long sum_of(const std::vector<int>& v) {
  return std::accumulate(v.begin(), v.end(), 0LL);
}

}  // namespace

double slowest(const std::vector<int>& shares, const std::vector<double>& unit_cost) {
  double worst = 0;
  for (std::size_t d = 0; d < shares.size(); ++d)
    worst = std::max(worst, shares[d] * unit_cost[d]);
  return worst;
}

std::optional<std::vector<int>> min_max_split(int total, const std::vector<double>& unit_cost,
                                              const std::vector<int>& caps) {
  if (sum_of(caps) < total)
    return std::nullopt;
  std::vector<int> shares(unit_cost.size(), 0);
  // (finish time with one more unit, device): smallest first, ties to the lower index.
  using entry = std::pair<double, std::size_t>;
  std::priority_queue<entry, std::vector<entry>, std::greater<entry>> next;
  for (std::size_t d = 0; d < shares.size(); ++d)
    if (caps[d] > 0)
      next.push({unit_cost[d], d});
  for (int unit = 0; unit < total; ++unit) {
    auto [finish, d] = next.top();
    next.pop();
    if (++shares[d] < caps[d])
      next.push({(shares[d] + 1) * unit_cost[d], d});
  }
  return shares;
}

std::optional<std::vector<int>> proportional_split(int total, const std::vector<double>& unit_cost,
                                                   const std::vector<int>& caps) {
  if (sum_of(caps) < total)
    return std::nullopt;
  std::size_t n = unit_cost.size();
  std::vector<double> exact(n, 0.0);
  std::vector<bool> capped(n, false);
  // Water-filling: share the rest by speed among the uncapped, cap, repeat.
  double left = total;
  for (bool changed = true; changed && left > 1e-9;) {
    changed = false;
    double speed = 0;
    for (std::size_t d = 0; d < n; ++d)
      if (!capped[d])
        speed += 1 / std::max(unit_cost[d], 1e-300);
    double handed = left;
    for (std::size_t d = 0; d < n; ++d) {
      if (capped[d])
        continue;
      double want = exact[d] + handed * (1 / std::max(unit_cost[d], 1e-300)) / speed;
      exact[d] = std::min(want, static_cast<double>(caps[d]));
      if (want >= caps[d]) {
        capped[d] = true;
        changed = true;
      }
    }
    left = total - std::accumulate(exact.begin(), exact.end(), 0.0);
  }
  std::vector<int> shares(n);
  std::vector<std::size_t> order(n);
  for (std::size_t d = 0; d < n; ++d) {
    shares[d] = static_cast<int>(std::floor(exact[d] + 1e-9));
    order[d] = d;
  }
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return exact[a] - shares[a] > exact[b] - shares[b];
  });
  for (long long missing = total - sum_of(shares); missing > 0;)
    for (std::size_t d : order)
      if (missing > 0 && shares[d] < caps[d]) {
        ++shares[d];
        --missing;
      }
  return shares;
}

void offload_stragglers(std::vector<int>& shares, const std::vector<double>& unit_cost,
                        const std::vector<int>& caps) {
  for (;;) {
    std::size_t from = 0, to = shares.size();
    for (std::size_t d = 0; d < shares.size(); ++d)
      if (shares[d] * unit_cost[d] > shares[from] * unit_cost[from])
        from = d;
    for (std::size_t d = 0; d < shares.size(); ++d)
      if (d != from && shares[d] < caps[d] &&
          (to == shares.size() || (shares[d] + 1) * unit_cost[d] < (shares[to] + 1) * unit_cost[to]))
        to = d;
    if (shares[from] == 0 || to == shares.size() ||
        (shares[to] + 1) * unit_cost[to] >= shares[from] * unit_cost[from])
      return;
    --shares[from];
    ++shares[to];
  }
}

}  // namespace orrery::planning
