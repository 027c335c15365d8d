#pragma once
// Exhaustive solvers for small instances (a few layers and devices): they try
// every placement and evaluate it with the same functions as the planners
// (pipeline.hpp), so a planner that disagrees with them is wrong.

#include "planning/cost.hpp"
#include "planning/pipeline.hpp"

namespace orrery::planning {

/// Tries every device for every layer (layer 0 on the source; devices may be
/// reused) and keeps the fastest memory-feasible request latency.
/// Empty stages when nothing fits. Cost: M^(N-1) placements.
pipeline_plan exhaustive_latency(const cost_model& costs);

/// Tries every cut of the layers into stages and every ordered choice of
/// distinct devices for them (the first one the source), keeping the smallest
/// memory-feasible bottleneck for the workload's batch. Empty when nothing fits.
pipeline_plan exhaustive_throughput(const cost_model& costs);

}  // namespace orrery::planning
