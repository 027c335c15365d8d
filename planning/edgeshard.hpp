#pragma once
// EdgeShard (IEEE IoT-J 2024): joint device selection and layer partition.
//
// Latency: the paper's DP D(i,j) = min_k [D(i-1,k) + O_{i-1}/B(k,j)] + t(i,j)
// lets a device be used again later in the path, but its memory check ("along
// the path") is then a heuristic: the best path into (i-1,k) may have filled
// device j. On 1000 random small instances it was suboptimal on 108 of 579
// feasible ones. orrery runs the paper's O(N*M^2) DP for an incumbent, then a
// label-setting search over (layer, device, memory used per device): Pareto
// dominance (up to interchangeable devices), pruning by the incumbent against
// a lower bound (the same problem with each stage fitting its device on its
// own), and a cap on labels per state. When the cap never bites the result is
// proven optimal (`exact`); otherwise it is the best found, never worse than
// the paper's DP. With reuse and per-device memory the problem packs layers
// into devices, so no polynomial exact algorithm is claimed: on memory-tight
// 80-layer x 16-device clusters the search takes ~1.5 s and is not proven.
//
// Throughput: g(i, S+{j}, j) = min_{m<i, k in S} max(g(m,S,k), O_m/B(k,j),
// sum_{l=m+1..i} t(l,j)), each device used at most once, which makes the memory
// check per stage and the DP exact; O(N^2 * 2^M * M^2) with prefix sums and
// pruning by memory and by the best complete plan found so far.

#include <cstddef>

#include "planning/cost.hpp"
#include "planning/pipeline.hpp"

namespace orrery::planning {

/// Most devices the throughput DP accepts: its table has 2^M entries per layer and device.
inline constexpr std::size_t throughput_max_devices = 14;

/// The paper's latency DP alone (memory tracked along each state's best path):
/// always memory-feasible, not always optimal. Empty stages when it finds none.
pipeline_plan edgeshard_latency_heuristic(const cost_model& costs);

/// The minimum-latency plan for one request: layer 0 on the source device,
/// devices reusable, every device's total share within its memory. `exact`
/// says whether optimality was proven (see above). Never slower than
/// edgeshard_latency_heuristic. Throws infeasible_error when no placement fits.
pipeline_plan edgeshard_latency(const cost_model& costs);

/// The minimum-latency plan for one request when each device may hold at
/// most one contiguous layer range (how orrery's runtime deploys: one stage
/// per node). The throughput DP below with stage costs summed instead of
/// maxed; exact. Throws infeasible_error.
pipeline_plan edgeshard_latency_one_stage_per_device(const cost_model& costs);

/// The maximum-throughput pipeline for the workload's batch: layer 0 on the
/// source, each device at most one stage holding its layers' weights and KV for
/// the batch. `seconds` is the bottleneck step. Throws infeasible_error.
pipeline_plan edgeshard_throughput(const cost_model& costs);

}  // namespace orrery::planning
