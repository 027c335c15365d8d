#include "planning/pipeline.hpp"

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

namespace orrery::planning {

namespace {

template <class PerLayer>
double stage_sum(const stage& s, const PerLayer& per_layer) {
  double total = 0;
  for (std::size_t l = s.begin; l < s.end; ++l)
    total += per_layer(l, s.device);
  return total;
}

}  // namespace

std::vector<stage> stages_from_assignment(const std::vector<std::size_t>& device_of_layer) {
  std::vector<stage> stages;
  for (std::size_t l = 0; l < device_of_layer.size(); ++l) {
    if (stages.empty() || stages.back().device != device_of_layer[l])
      stages.push_back({device_of_layer[l], l, l});
    stages.back().end = l + 1;
  }
  return stages;
}

double request_latency(const cost_model& costs, const std::vector<stage>& stages) {
  double total = 0;
  for (std::size_t i = 0; i < stages.size(); ++i) {
    total += stage_sum(stages[i], [&](std::size_t l, std::size_t d) { return costs.request_seconds(l, d); });
    if (i + 1 < stages.size())
      total += costs.request_transfer(stages[i].end - 1, stages[i].device, stages[i + 1].device);
  }
  return total + costs.request_return(stages.back().device);
}

double bottleneck_seconds(const cost_model& costs, const std::vector<stage>& stages) {
  double worst = costs.step_return(stages.back().device);
  for (std::size_t i = 0; i < stages.size(); ++i) {
    worst = std::max(worst, stage_sum(stages[i], [&](std::size_t l, std::size_t d) {
                       return costs.step_seconds(l, d);
                     }));
    if (i + 1 < stages.size())
      worst = std::max(worst, costs.step_transfer(stages[i].end - 1, stages[i].device,
                                                  stages[i + 1].device));
  }
  return worst;
}

std::vector<double> memory_per_device(const cost_model& costs, const std::vector<stage>& stages,
                                      int requests) {
  std::vector<double> used(costs.devices(), 0.0);
  for (const stage& s : stages)
    for (std::size_t l = s.begin; l < s.end; ++l)
      used[s.device] += costs.memory_bytes(l, requests) * costs.source_profile().devices[s.device].state_scale;
  return used;
}

bool fits_memory(const cost_model& costs, const std::vector<stage>& stages, int requests) {
  std::vector<double> used = memory_per_device(costs, stages, requests);
  for (std::size_t d = 0; d < used.size(); ++d)
    if (used[d] > costs.source_profile().devices[d].memory_bytes)
      return false;
  return true;
}

std::string format_bytes(double bytes) {
  char text[32];
  if (bytes >= 1e9)
    std::snprintf(text, sizeof text, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6)
    std::snprintf(text, sizeof text, "%.1f MB", bytes / 1e6);
  else
    std::snprintf(text, sizeof text, "%.0f B", bytes);
  return text;
}

void require_total_memory(const cost_model& costs, int requests) {
  double needed = 0;
  for (std::size_t l = 0; l < costs.layers(); ++l)
    needed += costs.memory_bytes(l, requests);
  double available = 0;
  for (const auto& d : costs.source_profile().devices)
    available += state_budget(d);
  if (needed > available)
    throw infeasible_error("model " + costs.source_profile().model + " needs " +
                           format_bytes(needed) + " (weights + KV for " +
                           std::to_string(requests) + " request(s) of " +
                           std::to_string(costs.context_tokens()) + " tokens), the cluster has " +
                           format_bytes(available) + ": " + format_bytes(needed - available) +
                           " missing");
}

nlohmann::json to_json(const pipeline_plan& plan, const profile& p) {
  nlohmann::json stages = nlohmann::json::array();
  for (const stage& s : plan.stages)
    stages.push_back({{"device", s.device}, {"device_name", p.devices[s.device].name},
                      {"layers", {s.begin, s.end}}});
  return {{"stages", stages}, {"exact", plan.exact}};
}

}  // namespace orrery::planning
