#include "deploy/profiling/auto_placement.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <set>
#include <sstream>

#include "compute/tensor_slice.hpp"
#include "planning/cost.hpp"
#include "planning/edgeshard.hpp"
#include "planning/group_pipeline.hpp"
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

// `groups[i]` runs stages[i] (whose device indexes `groups`); a group's
// members get the heads and columns of `splits[i]`.
topology with_layout(const topology& t, const std::vector<planning::stage>& stages,
                     const std::vector<std::vector<std::size_t>>& groups, const std::vector<planning::tp_split>& splits) {
  topology placed = t;
  placed.auto_placement = false;
  placed.nodes.clear();
  for (std::size_t i = 0; i < stages.size(); ++i) {
    const auto& members = groups[i];
    if (members.size() == 1) {
      placed.nodes.push_back(stage_node(t, members.front(), stages[i], "", {}));
      continue;
    }
    // Throws model_error when a member would get no head or no column.
    auto slices = compute::tensor_slices(t.model_config, splits[i].heads, splits[i].columns);
    for (std::size_t m = 0; m < members.size(); ++m)
      placed.nodes.push_back(stage_node(t, members[m], stages[i], "auto-" + std::to_string(i), slices[m]));
  }
  return placed;
}

// The planners check whole layers against a group's budgets together; a
// member holds its slice (and the embedding with layer 0, its rows of the
// LM head with the last layer) and the KV of its KV heads.
void check_members_fit(const topology& placed, const std::vector<std::size_t>& members, const planning::profile& p) {
  planning::cost_model costs(p);
  for (std::size_t i = 0; i < placed.nodes.size(); ++i) {
    const auto& n = placed.nodes[i];
    if (n.group.empty()) continue;
    const auto& device = p.devices[members[i]];
    double kv = 0;
    for (int l = n.first_layer; l < n.last_layer; ++l)
      kv += p.layers[l].kv_bytes_per_token * costs.context_tokens() * p.work.batch;
    double needs = static_cast<double>(n.weight_bytes) +
                   kv * n.slice.kv_heads() / placed.model_config.num_kv_heads * device.state_scale;
    if (needs > device.memory_bytes)
      throw planning::infeasible_error("node '" + n.name + "' would need " + planning::format_bytes(needs) +
                                       " for its slice of layers [" + std::to_string(n.first_layer) + ", " +
                                       std::to_string(n.last_layer) + ") but has " +
                                       planning::format_bytes(device.memory_bytes));
  }
}

std::string layout_text(const planning::profile& stages_profile, const std::vector<planning::stage>& stages,
                        bool grouped) {
  std::string text = grouped ? "tensor-parallel:" : "pipeline:";
  for (std::size_t i = 0; i < stages.size(); ++i)
    text += std::string(i == 0 ? " " : " -> ") + stages_profile.devices[stages[i].device].name + " [" +
            std::to_string(stages[i].begin) + ", " + std::to_string(stages[i].end) + ")";
  return text;
}

placement_plan make_plan(std::string name, const topology& t, const planning::profile& p,
                         std::vector<planning::stage> stages) {
  std::vector<std::vector<std::size_t>> groups;
  for (const auto& s : stages) groups.push_back({s.device});
  return {std::move(name), layout_text(p, stages, false), with_layout(t, stages, groups, {}), stages, groups,
          predict(p, stages), {}, ""};
}

// The nodes (in file order, the source first) cut into consecutive groups:
// bit i of `cuts` set cuts between node i and node i + 1.
std::vector<std::vector<std::size_t>> cut_into_groups(std::size_t nodes, std::uint64_t cuts) {
  std::vector<std::vector<std::size_t>> groups{{0}};
  for (std::size_t i = 1; i < nodes; ++i) {
    if (cuts & (std::uint64_t{1} << (i - 1))) groups.emplace_back();
    groups.back().push_back(i);
  }
  return groups;
}

// Every cut of up to this many nodes into consecutive groups is planned
// (2^(n-1) DPs); beyond it, the pipeline and one group of all nodes.
constexpr std::size_t max_nodes_cut_every_way = 8;

// The layouts to weigh: the pipeline of single nodes first (it wins ties),
// then, where `groups` is set, cuts of the nodes with at least one group.
std::vector<std::vector<std::vector<std::size_t>>> candidate_groups(std::size_t nodes, bool groups) {
  std::vector<std::vector<std::vector<std::size_t>>> out;
  std::vector<std::vector<std::size_t>> pipeline;
  for (std::size_t i = 0; i < nodes; ++i) pipeline.push_back({i});
  out.push_back(pipeline);
  if (!groups || nodes < 2) return out;
  if (nodes > max_nodes_cut_every_way) {
    out.push_back(cut_into_groups(nodes, 0));
    return out;
  }
  const std::uint64_t every_cut = (std::uint64_t{1} << (nodes - 1)) - 1;
  for (std::uint64_t c = 0; c < every_cut; ++c) out.push_back(cut_into_groups(nodes, c));
  return out;
}

// The latency DP over `groups` seen as devices, then the stages it uses as
// nodes and groups of nodes.
placement_plan plan_groups(const topology& t, const planning::profile& p,
                           const std::vector<std::vector<std::size_t>>& groups) {
  auto pipeline = planning::plan_group_pipeline(p, groups);
  planning::cost_model costs(pipeline.stages);
  auto stages = planning::edgeshard_latency_one_stage_per_device(costs).stages;
  placement_plan plan;
  bool grouped = false;
  std::vector<planning::tp_split> splits;
  for (auto& s : stages) {
    plan.groups.push_back(groups[s.device]);
    splits.push_back(pipeline.splits[s.device]);
    grouped = grouped || groups[s.device].size() > 1;
  }
  plan.layout = layout_text(pipeline.stages, stages, grouped);
  plan.placed = with_layout(t, stages, plan.groups, splits);
  std::vector<std::size_t> members;
  for (const auto& g : plan.groups) members.insert(members.end(), g.begin(), g.end());
  check_members_fit(plan.placed, members, p);
  plan.predicted = predict(pipeline.stages, stages);
  for (std::size_t i = 0; i < stages.size(); ++i) stages[i].device = plan.groups[i].front();
  plan.stages = std::move(stages);
  return plan;
}

placement_plan plan_latency(const topology& t, const planning::profile& p) {
  std::string note;
  if (!planning::has_tp_costs(p))
    note = "no tensor-parallel groups weighed: the profile has no " +
           std::string(p.shape ? "tp costs (devices[].tp)" : "model shape (model.shape)") +
           "; `orrery profile` measures both";
  else if (p.source != 0)
    note = "no tensor-parallel groups weighed: the source is not the first node";
  std::vector<placement_plan> plans;
  std::vector<placement_alternative> failed;
  for (const auto& groups : candidate_groups(p.devices.size(), note.empty())) {
    const bool pipeline = groups.size() == p.devices.size();
    try {
      if (pipeline) {
        planning::cost_model costs(p);
        plans.push_back(make_plan("", t, p, planning::edgeshard_latency_one_stage_per_device(costs).stages));
      } else {
        plans.push_back(plan_groups(t, p, groups));
      }
    } catch (const std::runtime_error& e) {  // infeasible_error, profile_error, compute::model_error
      std::string layout;
      for (const auto& g : groups) {
        std::string names;
        for (std::size_t d : g) names += (names.empty() ? "" : "+") + p.devices[d].name;
        layout += (layout.empty() ? "" : " -> ") + names;
      }
      failed.push_back({(pipeline ? "pipeline over " : "tensor-parallel over ") + layout, 0, e.what()});
    }
  }
  if (plans.empty()) {
    std::string reasons;
    for (const auto& f : failed) reasons += "\n  " + f.layout + ": " + f.reason;
    throw planning::infeasible_error("no layout of the model fits the cluster:" + reasons);
  }
  std::stable_sort(plans.begin(), plans.end(), [](const placement_plan& a, const placement_plan& b) {
    return a.predicted.decode_ms_per_token < b.predicted.decode_ms_per_token;
  });
  placement_plan best = std::move(plans.front());
  best.name = "auto (latency)";
  best.note = note;
  for (std::size_t i = 1; i < plans.size(); ++i) {
    bool seen = plans[i].layout == best.layout ||
                std::any_of(best.alternatives.begin(), best.alternatives.end(),
                            [&](const placement_alternative& a) { return a.layout == plans[i].layout; });
    if (!seen) best.alternatives.push_back({plans[i].layout, plans[i].predicted.decode_ms_per_token, ""});
  }
  best.alternatives.insert(best.alternatives.end(), failed.begin(), failed.end());
  return best;
}

}  // namespace

node_spec stage_node(const topology& t, std::size_t device, const planning::stage& s, const std::string& group,
                     const tensor_slice& slice) {
  node_spec n = t.nodes.at(device);
  n.first_layer = static_cast<int>(s.begin);
  n.last_layer = static_cast<int>(s.end);
  n.group = group;
  n.slice = slice;
  n.weight_bytes = n.weight_bytes_of(t.model_config, n.first_layer, n.last_layer);
  return n;
}

planning::profile obtain_profile(const topology& t, const planning::workload& work, const profile_progress& progress,
                                 bool refresh, bool training) {
  if (t.profile.empty()) {
    profiler_options options;
    options.work = work;
    options.refresh = refresh;
    options.training = training;
    return profile_cluster(t, options, progress);
  }
  planning::profile p = planning::load_profile(t.profile.string());
  check_matches(p, t);
  if (training)
    for (const auto& d : p.devices)
      for (std::size_t l = 0; l < d.layers.size(); ++l)
        if (!(d.layers[l].forward > 0 && d.layers[l].backward > 0))
          throw planning::profile_error(t.profile.string() + ": device '" + d.name + "' has no training times for layer " +
                                        std::to_string(l) + " (layers[].forward and .backward, seconds per sample); "
                                        "leave out `profile:` to measure them on the running nodes");
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
  if (t.objective == "training")
    throw planning::infeasible_error(t.file.string() + ": objective 'training' places the layers for `orrery train` "
                                     "(deploy/profiling/training_placement.hpp); for inference say 'latency' or "
                                     "'throughput'");
  if (t.objective != "throughput") return plan_latency(t, p);
  planning::cost_model costs(p);
  return make_plan("auto (throughput)", t, p, planning::edgeshard_throughput(costs).stages);
}

placement_plan plan_one_group(const topology& t, const planning::profile& p) {
  auto plan = plan_groups(t, p, cut_into_groups(p.devices.size(), 0));
  plan.name = "one group";
  return plan;
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
  for (const auto& n : plan.placed.nodes) {
    out << "  " << n.name << " [" << n.first_layer << ", " << n.last_layer << ")";
    if (!n.group.empty()) out << " (group " << n.group << ": " << n.slice.describe() << ")";
  }
  char line[200];
  const auto& p = plan.predicted;
  std::snprintf(line, sizeof line,
                "\n  predicted for %d concurrent request(s): prefill %.1f ms, decode %.2f ms/token per request, %.1f tokens/s",
                p.requests, p.prefill_ms, p.decode_ms_per_token, p.tokens_per_s);
  out << line;
  if (!plan.alternatives.empty()) {
    std::snprintf(line, sizeof line, "%.2f", p.decode_ms_per_token);
    out << "\n  chosen " << plan.layout << " (" << line << " ms/token) over:";
    for (const auto& a : plan.alternatives) {
      std::snprintf(line, sizeof line, "%.2f ms/token", a.decode_ms_per_token);
      out << "\n    " << a.layout << ": " << (a.reason.empty() ? std::string(line) : "cannot run: " + a.reason);
    }
  }
  if (!plan.note.empty()) out << "\n  " << plan.note;
  return out.str();
}

planning::chunk_plan plan_prefill(const placement_plan& plan, const planning::profile& p) {
  const bool grouped = std::any_of(plan.groups.begin(), plan.groups.end(), [](const auto& g) { return g.size() > 1; });
  if (!grouped) return planning::jupiter_chunks(planning::cost_model(p), plan.stages);
  // A group is one device of the group pipeline's profile, as plan_groups plans it.
  auto pipeline = planning::plan_group_pipeline(p, plan.groups);
  auto stages = plan.stages;
  for (std::size_t i = 0; i < stages.size(); ++i) stages[i].device = i;
  return planning::jupiter_chunks(planning::cost_model(pipeline.stages), stages);
}

int pipeline_positions(const topology& t) {
  std::set<int> firsts;
  for (const auto& n : t.nodes)
    if (n.last_layer > n.first_layer) firsts.insert(n.first_layer);
  return std::max<int>(1, static_cast<int>(firsts.size()));
}

topology resolve_placement(const topology& t, int requests, int prompt_tokens, int new_tokens, std::ostream& log,
                           placement_prediction* predicted, planning::chunk_plan* prefill) {
  if (!t.auto_placement) return t;
  planning::workload work;
  work.batch = std::max(1, requests);
  work.prompt_tokens = std::max(1, prompt_tokens);
  work.output_tokens = std::max(1, new_tokens);
  auto profile = obtain_profile(t, work, profile_bar("profile"));
  auto plan = plan_automatic(t, profile);
  log << describe(plan) << std::endl;
  if (predicted) *predicted = plan.predicted;
  if (prefill) *prefill = plan_prefill(plan, profile);
  return plan.placed;
}

}  // namespace orrery::deploy
