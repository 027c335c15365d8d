#include "deploy/profiling/auto_placement.hpp"

#include <algorithm>
#include <cstdio>
#include <ostream>
#include <sstream>

#include "planning/cost.hpp"
#include "planning/edgeshard.hpp"
#include "planning/simulator.hpp"

namespace orrery::deploy {

namespace {

// A profile file must describe this very cluster and model: one device per
// node, in the topology's order and under the nodes' names, and one layer per
// decoder layer.
void check_matches(const planning::profile& p, const topology& t) {
  const std::string where = t.profile.string();
  if (p.devices.size() != t.nodes.size())
    throw planning::profile_error(where + ": the profile has " + std::to_string(p.devices.size()) +
                                  " devices but the topology " + std::to_string(t.nodes.size()) + " nodes");
  for (std::size_t i = 0; i < p.devices.size(); ++i)
    if (p.devices[i].name != t.nodes[i].name)
      throw planning::profile_error(where + ": device " + std::to_string(i) + " is '" + p.devices[i].name +
                                    "' but node " + std::to_string(i) + " of the topology is '" + t.nodes[i].name + "'");
  if (p.layers.size() != static_cast<std::size_t>(t.num_layers))
    throw planning::profile_error(where + ": the profile has " + std::to_string(p.layers.size()) +
                                  " layers but the model " + std::to_string(t.num_layers));
}

topology with_layout(const topology& t, const std::vector<planning::stage>& stages) {
  topology placed = t;
  placed.auto_placement = false;
  placed.nodes.clear();
  for (const auto& s : stages) {
    node_spec n = t.nodes.at(s.device);
    n.first_layer = static_cast<int>(s.begin);
    n.last_layer = static_cast<int>(s.end);
    n.weight_bytes = n.weight_bytes_of(t.model_config, n.first_layer, n.last_layer);
    placed.nodes.push_back(std::move(n));
  }
  return placed;
}

placement_plan make_plan(std::string name, const topology& t, const planning::profile& p,
                         std::vector<planning::stage> stages) {
  placement_plan plan{std::move(name), with_layout(t, stages), stages, predict(p, stages)};
  return plan;
}

}  // namespace

planning::profile obtain_profile(const topology& t, const planning::workload& work, const profile_progress& progress,
                                 bool refresh) {
  if (t.profile.empty()) {
    profiler_options options;
    options.work = work;
    options.refresh = refresh;
    return profile_cluster(t, options, progress);
  }
  planning::profile p = planning::load_profile(t.profile.string());
  check_matches(p, t);
  double return_bytes = p.work.return_bytes;
  p.work = work;
  p.work.return_bytes = return_bytes;
  p.validate();
  return p;
}

placement_prediction predict(const planning::profile& p, const std::vector<planning::stage>& stages) {
  planning::cost_model costs(p);
  planning::inference_options options;
  options.requests = p.work.batch;
  auto whole = planning::simulate_inference(costs, stages, options);
  options.prefill_only = true;
  auto prefill = planning::simulate_inference(costs, stages, options);
  placement_prediction out;
  out.requests = p.work.batch;
  out.prefill_ms = prefill.mean_latency * 1e3;
  int steps = std::max(1, p.work.output_tokens - 1);
  out.decode_ms_per_token = (whole.mean_latency - prefill.mean_latency) * 1e3 / steps;
  out.tokens_per_s = out.decode_ms_per_token > 0 ? out.requests * 1e3 / out.decode_ms_per_token : 0;
  return out;
}

placement_plan plan_automatic(const topology& t, const planning::profile& p) {
  planning::cost_model costs(p);
  auto plan = t.objective == "throughput" ? planning::edgeshard_throughput(costs)
                                          : planning::edgeshard_latency_one_stage_per_device(costs);
  return make_plan("auto (" + t.objective + ")", t, p, plan.stages);
}

placement_plan plan_even(const topology& t, const planning::profile& p) {
  std::vector<planning::stage> stages;
  auto ranges = even_ranges(t.num_layers, static_cast<int>(t.nodes.size()));
  for (std::size_t i = 0; i < ranges.size(); ++i)
    stages.push_back({i, static_cast<std::size_t>(ranges[i].first), static_cast<std::size_t>(ranges[i].second)});
  return make_plan("even", t, p, stages);
}

std::string describe(const placement_plan& plan) {
  std::ostringstream out;
  out << "placement " << plan.name << ":";
  for (const auto& n : plan.placed.nodes)
    out << "  " << n.name << " [" << n.first_layer << ", " << n.last_layer << ")";
  char line[200];
  const auto& p = plan.predicted;
  std::snprintf(line, sizeof line,
                "\n  predicted for %d concurrent request(s): prefill %.1f ms, decode %.2f ms/token per request, %.1f tokens/s",
                p.requests, p.prefill_ms, p.decode_ms_per_token, p.tokens_per_s);
  out << line;
  return out.str();
}

topology resolve_placement(const topology& t, int requests, int prompt_tokens, int new_tokens, std::ostream& log,
                           placement_prediction* predicted) {
  if (!t.auto_placement) return t;
  planning::workload work;
  work.batch = std::max(1, requests);
  work.prompt_tokens = std::max(1, prompt_tokens);
  work.output_tokens = std::max(1, new_tokens);
  auto profile = obtain_profile(t, work, progress_bar("profile"));
  auto plan = plan_automatic(t, profile);
  log << describe(plan) << std::endl;
  if (predicted) *predicted = plan.predicted;
  return plan.placed;
}

}  // namespace orrery::deploy
