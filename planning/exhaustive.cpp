#include "planning/exhaustive.hpp"

#include <functional>

namespace orrery::planning {

namespace {

void keep_if_better(pipeline_plan& best, std::vector<stage> stages, double seconds) {
  if (seconds < best.seconds) {
    best.seconds = seconds;
    best.stages = std::move(stages);
  }
}

}  // namespace

pipeline_plan exhaustive_latency(const cost_model& costs) {
  pipeline_plan best;
  std::vector<std::size_t> device_of_layer(costs.layers(), costs.source_profile().source);
  std::function<void(std::size_t)> place = [&](std::size_t l) {
    if (l == costs.layers()) {
      std::vector<stage> stages = stages_from_assignment(device_of_layer);
      if (fits_memory(costs, stages, 1))
        keep_if_better(best, stages, request_latency(costs, stages));
      return;
    }
    for (std::size_t d = 0; d < costs.devices(); ++d) {
      device_of_layer[l] = d;
      place(l + 1);
    }
  };
  place(1);
  return best;
}

pipeline_plan exhaustive_throughput(const cost_model& costs) {
  pipeline_plan best;
  int batch = costs.source_profile().work.batch;
  std::vector<stage> stages;
  std::vector<bool> taken(costs.devices(), false);
  // Chooses the device of the stage starting at `begin`, then its end.
  std::function<void(std::size_t, std::size_t)> place = [&](std::size_t begin, std::size_t device) {
    taken[device] = true;
    for (std::size_t end = begin + 1; end <= costs.layers(); ++end) {
      stages.push_back({device, begin, end});
      if (end == costs.layers()) {
        if (fits_memory(costs, stages, batch))
          keep_if_better(best, stages, bottleneck_seconds(costs, stages));
      } else {
        for (std::size_t next = 0; next < costs.devices(); ++next)
          if (!taken[next])
            place(end, next);
      }
      stages.pop_back();
    }
    taken[device] = false;
  };
  place(0, costs.source_profile().source);
  return best;
}

}  // namespace orrery::planning
