#pragma once
// Integer splits of work across a group of devices with different speeds and
// memory caps: Galaxy's heads / MLP columns / sequence slices and Asteroid's
// samples of a micro-batch. Device d finishes x_d units at x_d * unit_cost[d];
// the group waits for the slowest.

#include <optional>
#include <vector>

namespace orrery::planning {

/// Shares x_d with sum `total`, 0 <= x_d <= caps[d], minimising max_d x_d * unit_cost[d].
/// Exact: each unit goes to the device that would finish it earliest (for
/// linear costs this greedy is optimal: an exchange argument on the last unit).
/// nullopt when the caps add up to less than `total`.
std::optional<std::vector<int>> min_max_split(int total, const std::vector<double>& unit_cost,
                                              const std::vector<int>& caps);

/// The papers' heuristic (Galaxy, Asteroid): shares proportional to speed
/// 1 / unit_cost, capped, the overflow handed to the uncapped devices, then
/// rounded by largest remainder. nullopt when the caps cannot hold `total`.
std::optional<std::vector<int>> proportional_split(int total, const std::vector<double>& unit_cost,
                                                   const std::vector<int>& caps);

/// Asteroid's straggler offloading: moves one unit at a time from the slowest
/// device to the one that would finish it earliest (with headroom) while the
/// maximum improves.
void offload_stragglers(std::vector<int>& shares, const std::vector<double>& unit_cost,
                        const std::vector<int>& caps);

/// max_d shares[d] * unit_cost[d].
double slowest(const std::vector<int>& shares, const std::vector<double>& unit_cost);

}  // namespace orrery::planning
