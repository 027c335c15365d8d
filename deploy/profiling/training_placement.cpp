#include "deploy/profiling/training_placement.hpp"

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <numeric>
#include <ostream>
#include <sstream>
#include <utility>

#include "deploy/profiling/auto_placement.hpp"
#include "planning/simulator.hpp"

namespace orrery::deploy {

namespace {

// The plan's stages as topology nodes: members with no samples are left out
// (they would hold the layers and idle), a stage of several members becomes
// group `auto-<stage>` split by samples.
topology placed_topology(const topology& t, const planning::hpp_plan& plan) {
  topology placed = t;
  placed.auto_placement = false;
  placed.nodes.clear();
  for (std::size_t s = 0; s < plan.stages.size(); ++s) {
    const auto& stage = plan.stages[s];
    std::vector<std::size_t> members;
    std::vector<double> samples;
    for (std::size_t m = 0; m < stage.layout.devices.size(); ++m)
      if (stage.samples.at(m) > 0) members.push_back(stage.layout.devices[m]), samples.push_back(stage.samples[m]);
    const auto slices = members.size() > 1 ? group_slices(t.model_config, samples) : std::vector<tensor_slice>{};
    const bool grouped = members.size() > 1;
    for (std::size_t m = 0; m < members.size(); ++m) {
      node_spec n = stage_node(t, members[m], {members[m], stage.layout.begin, stage.layout.end},
                               grouped ? "auto-" + std::to_string(s) : "", grouped ? slices[m] : tensor_slice{});
      n.speed = samples[m];
      placed.nodes.push_back(std::move(n));
    }
  }
  return placed;
}

std::string layout_of(const planning::hpp_plan& plan, const planning::profile& p) {
  std::string text;
  for (const auto& stage : plan.stages) {
    std::string names;
    for (std::size_t m = 0; m < stage.layout.devices.size(); ++m)
      if (stage.samples[m] > 0) names += (names.empty() ? "" : "+") + p.devices[stage.layout.devices[m]].name;
    text += (text.empty() ? "" : " -> ") + names + " [" + std::to_string(stage.layout.begin) + ", " +
            std::to_string(stage.layout.end) + ")";
  }
  return text;
}

}  // namespace

planning::workload training_workload(const training_shape& shape) {
  planning::workload work;
  work.micro_batch_size = std::max(1, shape.micro_batch);
  work.micro_batches = std::max(1, shape.batch / work.micro_batch_size);
  work.train_tokens = std::max(1, shape.length);
  return work;
}

training_placement place_training(const topology& t, const planning::profile& p, std::string style,
                                  planning::hpp_plan plan) {
  training_placement out;
  out.style = std::move(style);
  out.layout = layout_of(plan, p);
  out.placed = placed_topology(t, plan);
  out.round_s = planning::simulate_training(p, plan).makespan;
  out.samples_per_s = out.round_s > 0 ? p.work.micro_batches * p.work.micro_batch_size / out.round_s : 0;
  out.formula_round_s = plan.round_seconds;
  for (const auto& st : plan.stages)
    out.allreduce_s = std::max(out.allreduce_s, st.step.allreduce), out.update_s = std::max(out.update_s, st.step.update);
  out.plan = std::move(plan);
  return out;
}

training_placement data_parallel_placement(const topology& t, const planning::profile& p) {
  auto whole = p;
  whole.work.micro_batch_size = p.work.micro_batches * p.work.micro_batch_size;
  whole.work.micro_batches = 1;
  std::vector<std::size_t> every(p.devices.size());
  std::iota(every.begin(), every.end(), 0);
  auto plan = planning::evaluate_hpp(whole, {{0, p.layers.size(), every}}, planning::rounding::proportional);
  if (!plan) throw planning::infeasible_error("the whole model's training state does not fit on every node");
  return place_training(t, whole, "data-parallel", *plan);
}

planning::hpp_plan pipeline_plan(const planning::profile& p) {
  std::vector<planning::stage_layout> stages;
  const auto ranges = even_ranges(static_cast<int>(p.layers.size()), static_cast<int>(p.devices.size()));
  for (std::size_t d = 0; d < ranges.size(); ++d)
    if (ranges[d].second > ranges[d].first)
      stages.push_back({static_cast<std::size_t>(ranges[d].first), static_cast<std::size_t>(ranges[d].second), {d}});
  auto plan = planning::evaluate_hpp(p, stages);
  if (!plan) throw planning::infeasible_error("a node's layers' training state does not fit its memory");
  return *plan;
}

planning::hpp_plan solo_plan(const planning::profile& p, std::size_t device) {
  auto plan = planning::evaluate_hpp(p, {{0, p.layers.size(), {device}}});
  if (!plan)
    throw planning::infeasible_error("the whole model's training state does not fit on node '" +
                                     p.devices.at(device).name + "'");
  return *plan;
}

training_placement plan_training(const topology& t, const planning::profile& p) {
  // Asteroid's DP first: it wins ties.
  const std::pair<std::string, std::function<training_placement()>> styles[] = {
      {"hybrid (asteroid)", [&] { return place_training(t, p, "hybrid (asteroid)", planning::asteroid_plan(p)); }},
      {"data-parallel", [&] { return data_parallel_placement(t, p); }},
      {"solo", [&] { return place_training(t, p, "solo", solo_plan(p, p.source)); }},
  };
  std::vector<training_placement> feasible;
  std::vector<training_alternative> failed;
  for (const auto& [style, place] : styles) {
    try {
      feasible.push_back(place());
    } catch (const std::runtime_error& e) {  // infeasible_error, profile_error, compute::model_error
      failed.push_back({style, 0, e.what()});
    }
  }
  if (feasible.empty()) {
    std::string reasons;
    for (const auto& f : failed) reasons += "\n  " + f.layout + ": " + f.reason;
    throw planning::infeasible_error("no training layout of the model fits the cluster:" + reasons);
  }
  std::stable_sort(feasible.begin(), feasible.end(),
                   [](const training_placement& a, const training_placement& b) { return a.round_s < b.round_s; });
  training_placement best = std::move(feasible.front());
  for (std::size_t i = 1; i < feasible.size(); ++i)
    if (feasible[i].layout != best.layout)
      best.alternatives.push_back({feasible[i].style + ": " + feasible[i].layout, feasible[i].round_s, ""});
  best.alternatives.insert(best.alternatives.end(), failed.begin(), failed.end());
  return best;
}

std::string describe(const training_placement& plan) {
  std::ostringstream out;
  out << "placement auto (training, " << plan.style << "): " << plan.layout;
  std::map<std::string, double> group_samples;
  for (const auto& n : plan.placed.nodes)
    if (!n.group.empty()) group_samples[n.group] += n.speed;
  for (const auto& n : plan.placed.nodes) {
    out << "\n  " << n.name << " [" << n.first_layer << ", " << n.last_layer << ")";
    if (!n.group.empty())
      out << " in data-parallel group " << n.group << ": " << n.speed << " of every " << group_samples[n.group]
          << " samples";
  }
  char line[200];
  std::snprintf(line, sizeof line, "\n  predicted round %.3f s (%.2f samples/s; Asteroid's closed form %.3f s)",
                plan.round_s, plan.samples_per_s, plan.formula_round_s);
  out << line;
  std::snprintf(line, sizeof line, "; of it the slowest all-reduce %.3f s, the slowest update %.3f s", plan.allreduce_s,
                plan.update_s);
  out << line;
  for (const auto& a : plan.alternatives) {
    std::snprintf(line, sizeof line, "%.3f s", a.round_s);
    out << "\n    over " << a.layout << ": " << (a.reason.empty() ? std::string(line) : "cannot run: " + a.reason);
  }
  return out.str();
}

topology resolve_training_placement(const topology& t, const training_shape& shape, std::ostream& log,
                                    double* predicted_round_s) {
  if (!t.auto_placement) return t;
  auto profile = obtain_profile(t, training_workload(shape), profile_bar("profile"), false, true);
  auto plan = plan_training(t, profile);
  log << describe(plan) << std::endl;
  if (predicted_round_s) *predicted_round_s = plan.round_s;
  return plan.placed;
}

}  // namespace orrery::deploy
