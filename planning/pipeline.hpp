#pragma once
// A pipeline plan: the model cut into contiguous layer ranges, each run by one
// device (EdgeShard, Jupiter). Evaluating a plan here is the single definition
// of its latency, bottleneck and memory that planners, exhaustive solvers and
// tests all use.

#include <cstddef>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "planning/cost.hpp"

namespace orrery::planning {

/// No plan satisfies the memory constraints; the message says how much is missing.
class infeasible_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Layers [begin, end) run on `device`.
struct stage {
  std::size_t device = 0;
  std::size_t begin = 0;
  std::size_t end = 0;

  bool operator==(const stage& other) const {
    return device == other.device && begin == other.begin && end == other.end;
  }
};

/// Stages in pipeline order; `seconds` is the planner's objective value
/// (request latency or bottleneck step time).
struct pipeline_plan {
  std::vector<stage> stages;
  double seconds = std::numeric_limits<double>::infinity();
  bool exact = true;  ///< false when a search bound was hit and optimality is not proven
};

/// Stages from the device running each layer: consecutive layers on one device form one stage.
std::vector<stage> stages_from_assignment(const std::vector<std::size_t>& device_of_layer);

/// Seconds one request takes end to end: compute of every layer, the transfers
/// between stages on different devices and the token returns to the source.
double request_latency(const cost_model& costs, const std::vector<stage>& stages);

/// Seconds of the slowest pipeline step (a stage's compute, a transfer between
/// stages or the token's return) for one decode token: 1 / throughput.
double bottleneck_seconds(const cost_model& costs, const std::vector<stage>& stages);

/// Bytes each device holds (weights + KV for `requests`) at its own
/// state_scale, indexed by device.
std::vector<double> memory_per_device(const cost_model& costs, const std::vector<stage>& stages,
                                      int requests);

/// True when every device's share fits its memory budget.
bool fits_memory(const cost_model& costs, const std::vector<stage>& stages, int requests);

/// Throws infeasible_error when the model cannot fit even in the whole
/// cluster's memory, saying how many bytes are missing.
void require_total_memory(const cost_model& costs, int requests);

/// Human-readable byte count ("13.5 GB").
std::string format_bytes(double bytes);

/// The plan as JSON: stages with device names and layer ranges.
nlohmann::json to_json(const pipeline_plan& plan, const profile& p);

}  // namespace orrery::planning
