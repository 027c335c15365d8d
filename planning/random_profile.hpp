#pragma once
// Random heterogeneous profiles: the instances on which the planners are
// checked against the exhaustive solvers, and the inputs of `orrery bench planner`.

#include <cstddef>
#include <random>

#include "planning/profile.hpp"

namespace orrery::planning {

/// Shape of a random instance.
struct random_profile_options {
  std::size_t layers = 8;
  std::size_t devices = 4;
  /// Cluster memory / model memory (weights + KV of a batch) is drawn from
  /// [min_memory_ratio, max_memory_ratio]: below 1 nothing fits.
  double min_memory_ratio = 0.6;
  double max_memory_ratio = 2.5;
};

/// A valid profile with random layer sizes, per-device speeds that differ per
/// layer, memory budgets, links (a default plus random per-pair overrides),
/// source device and workload.
profile random_profile(std::mt19937_64& rng, const random_profile_options& options);

}  // namespace orrery::planning
