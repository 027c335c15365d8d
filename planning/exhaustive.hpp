#pragma once
// Exhaustive solvers for small instances (a few layers and devices): they try
// every placement and evaluate it with the same functions as the planners
// (pipeline.hpp), so a planner that disagrees with them is wrong.

#include "planning/asteroid.hpp"
#include "planning/cost.hpp"
#include "planning/jupiter.hpp"
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

/// Tries every number of stages, every cut of the layers, every assignment of
/// the devices to stages (each device in exactly one, as Asteroid uses them
/// all) and every split of the micro-batch in every group, keeping the
/// smallest round latency (the same formula and memory model as
/// asteroid_plan). Empty stages when nothing fits.
hpp_plan exhaustive_hpp(const profile& p);

/// Tries every composition of the prompt into chunks (2^(P-1) of them) and
/// keeps the fastest prefill through `stages`.
chunk_plan exhaustive_chunks(const cost_model& costs, const std::vector<stage>& stages);

}  // namespace orrery::planning
