#include "planning/auto_plan.hpp"

#include <algorithm>
#include <functional>
#include <numeric>

#include <nlohmann/json.hpp>

#include "planning/asteroid.hpp"
#include "planning/edgeshard.hpp"
#include "planning/galaxy.hpp"
#include "planning/jupiter.hpp"

namespace orrery::planning {

objective parse_objective(const std::string& text) {
  if (text == "latency")
    return objective::latency;
  if (text == "throughput")
    return objective::throughput;
  if (text == "training")
    return objective::training;
  throw profile_error("unknown objective '" + text + "' (known: latency, throughput, training)");
}

std::string to_string(objective goal) {
  switch (goal) {
    case objective::latency: return "latency";
    case objective::throughput: return "throughput";
    case objective::training: return "training";
  }
  return "?";
}

namespace {

// -- inference styles -----------------------------------------------------------

style_result simulated(const std::string& style, const cost_model& costs,
                       const std::vector<stage>& stages, const inference_options& options,
                       nlohmann::json plan) {
  if (!fits_memory(costs, stages, options.requests))
    throw infeasible_error("the plan does not fit memory with " +
                           std::to_string(options.requests) + " concurrent request(s)");
  simulation sim = simulate_inference(costs, stages, options);
  style_result r{style, true, "", sim.mean_latency, sim.throughput, sim.devices, std::move(plan), sim.timeline};
  return r;
}

int requests_for(const profile& p, objective goal) {
  return goal == objective::throughput ? p.work.batch : 1;
}

style_result edgeshard_style(const cost_model& costs, objective goal) {
  bool latency = goal == objective::latency;
  pipeline_plan plan = latency ? edgeshard_latency(costs) : edgeshard_throughput(costs);
  return simulated(latency ? "edgeshard" : "edgeshard-throughput", costs, plan.stages,
                   {requests_for(costs.source_profile(), goal), true, {}, false},
                   to_json(plan, costs.source_profile()));
}

style_result jupiter_style(const cost_model& costs, objective goal) {
  pipeline_plan plan = edgeshard_latency(costs);
  chunk_plan chunks = jupiter_chunks(costs, plan.stages);
  nlohmann::json json = to_json(plan, costs.source_profile());
  json["prefill"] = to_json(chunks);
  return simulated("edgeshard+jupiter", costs, plan.stages,
                   {requests_for(costs.source_profile(), goal), true, chunks.lengths, false}, json);
}

style_result latency_plan_for_throughput(const cost_model& costs, objective goal) {
  pipeline_plan plan = edgeshard_latency(costs);
  return simulated("edgeshard-latency-plan", costs, plan.stages,
                   {requests_for(costs.source_profile(), goal), true, {}, false},
                   to_json(plan, costs.source_profile()));
}

style_result solo_style(const cost_model& costs, objective goal) {
  const profile& p = costs.source_profile();
  std::vector<stage> stages{{p.source, 0, p.layers.size()}};
  if (!fits_memory(costs, stages, requests_for(p, goal)))
    throw infeasible_error("the source device " + p.devices[p.source].name + " holds " +
                           format_bytes(p.devices[p.source].memory_bytes) + ", the model needs " +
                           format_bytes(memory_per_device(costs, stages, requests_for(p, goal))[p.source]));
  pipeline_plan plan{stages, 0, true};
  return simulated("solo", costs, stages, {requests_for(p, goal), true, {}, false}, to_json(plan, p));
}

// A decode step reads a block's weights for one token (or one batch), a
// prompt pass once for all its tokens: each device's tp costs scaled by how
// much dearer a decode token is than a prompt token on its blocks.
profile decode_tp_profile(const cost_model& costs, int batch) {
  const profile& p = costs.source_profile();
  std::size_t block = p.layers.size() > 2 ? 1 : 0;
  double prompt = p.work.prompt_tokens;
  std::vector<double> factor;
  for (std::size_t d = 0; d < p.devices.size(); ++d) {
    double per_prompt_token = costs.prefill_seconds(block, d, 0, prompt) / prompt;
    factor.push_back(per_prompt_token > 0 ? costs.step_seconds(block, d) / per_prompt_token / batch : 1.0);
  }
  return rescale_tp_costs(p, factor);
}

// Galaxy: every device in one TP group (the source first, holding embedding
// and head). A request is a prefill block schedule over the prompt plus one
// schedule per decode step, the whole batch together for throughput.
style_result galaxy_style(const cost_model& costs, objective goal) {
  const profile& p = costs.source_profile();
  std::vector<std::size_t> group{p.source};
  for (std::size_t d = 0; d < p.devices.size(); ++d)
    if (d != p.source)
      group.push_back(d);
  int batch = requests_for(p, goal);
  tp_split prefill = galaxy_split(p, group, p.work.prompt_tokens, rounding::exact, batch);
  profile decoding = decode_tp_profile(costs, batch);
  tp_split decode = galaxy_split(decoding, group, batch, rounding::exact, batch);
  double blocks = static_cast<double>(p.layers.size()) - 2;
  std::size_t head = p.layers.size() - 1;
  double edges_prefill = costs.prefill_seconds(0, p.source, 0, p.work.prompt_tokens) +
                         costs.prefill_seconds(head, p.source, 0, p.work.prompt_tokens);
  double edges_step = batch * (costs.step_seconds(0, p.source) + costs.step_seconds(head, p.source));
  schedule prefill_block = simulate_tp_block(p, prefill, p.work.prompt_tokens, true);
  double step = edges_step + blocks * tp_block_time(decoding, decode, batch).overlapped;
  double latency = edges_prefill + blocks * prefill_block.makespan + (p.work.output_tokens - 1) * step;
  style_result r{"galaxy-tp", true, "", latency, batch * p.work.output_tokens / latency, {}, {}, prefill_block};
  std::vector<double> memory = tp_memory(p, prefill, batch);
  for (std::size_t i = 0; i < group.size(); ++i) {
    double busy = prefill_block.busy(2 * i);  // the block graph's compute resource of member i
    r.devices.push_back({p.devices[group[i]].name, busy, busy / prefill_block.makespan, memory[i]});
  }
  r.plan = to_json(prefill, p);
  r.plan["prefill_block_s"] = prefill_block.makespan;
  r.plan["decode_step_s"] = step;
  return r;
}

// -- training styles ------------------------------------------------------------

style_result training_style(const std::string& style, const profile& p, const hpp_plan& plan) {
  simulation sim = simulate_training(p, plan);
  nlohmann::json json = to_json(plan, p);
  json["formula_round_s"] = plan.round_seconds;
  return {style, true, "", sim.makespan, sim.throughput, sim.devices, json, sim.timeline};
}

style_result one_stage_style(const std::string& style, const profile& p,
                             std::vector<std::size_t> devices) {
  auto plan = evaluate_hpp(p, {{0, p.layers.size(), std::move(devices)}});
  if (!plan)
    throw infeasible_error("the whole model's weights, gradients and optimizer state do not fit "
                           "on every member of the group");
  return training_style(style, p, *plan);
}

using style_fn = std::function<style_result()>;

std::vector<std::pair<std::string, style_fn>> styles_for(const profile& p, const cost_model& costs,
                                                         objective goal) {
  if (goal == objective::training) {
    std::vector<std::size_t> all(p.devices.size());
    std::iota(all.begin(), all.end(), 0);
    return {{"asteroid-hpp", [&] { return training_style("asteroid-hpp", p, asteroid_plan(p)); }},
            {"data-parallel", [&, all] { return one_stage_style("data-parallel", p, all); }},
            {"solo", [&] { return one_stage_style("solo", p, {p.source}); }}};
  }
  std::vector<std::pair<std::string, style_fn>> out;
  out.push_back({goal == objective::latency ? "edgeshard" : "edgeshard-throughput",
                 [&] { return edgeshard_style(costs, goal); }});
  if (goal == objective::latency)
    out.push_back({"edgeshard+jupiter", [&] { return jupiter_style(costs, goal); }});
  else
    out.push_back({"edgeshard-latency-plan", [&] { return latency_plan_for_throughput(costs, goal); }});
  out.push_back({"galaxy-tp", [&] { return galaxy_style(costs, goal); }});
  out.push_back({"solo", [&] { return solo_style(costs, goal); }});
  return out;
}

bool better(const style_result& a, const style_result& b, objective goal) {
  if (a.feasible != b.feasible)
    return a.feasible;
  return goal == objective::latency ? a.latency < b.latency : a.throughput > b.throughput;
}

}  // namespace

ranked_plans plan_auto(const profile& p, objective goal) {
  cost_model costs(p);
  ranked_plans out;
  out.goal = goal;
  for (auto& [name, run] : styles_for(p, costs, goal)) {
    try {
      out.styles.push_back(run());
    } catch (const std::runtime_error& e) {  // infeasible_error, profile_error
      style_result r;
      r.style = name;
      r.reason = e.what();
      out.styles.push_back(std::move(r));
    }
  }
  std::stable_sort(out.styles.begin(), out.styles.end(),
                   [&](const style_result& a, const style_result& b) { return better(a, b, goal); });
  if (!out.styles.front().feasible) {
    std::string reasons;
    for (const auto& s : out.styles)
      reasons += "\n  " + s.style + ": " + s.reason;
    throw infeasible_error("no execution style fits " + p.model + " on this cluster:" + reasons);
  }
  return out;
}

nlohmann::json to_json(const ranked_plans& ranked) {
  nlohmann::json styles = nlohmann::json::array();
  for (const style_result& s : ranked.styles) {
    nlohmann::json devices = nlohmann::json::array();
    for (const device_use& d : s.devices)
      devices.push_back({{"name", d.name}, {"busy_s", d.busy_seconds},
                         {"utilisation", d.utilisation}, {"peak_memory_bytes", d.peak_memory}});
    nlohmann::json entry = {{"style", s.style}, {"feasible", s.feasible}};
    if (s.feasible) {
      entry["latency_s"] = s.latency;
      entry["throughput"] = s.throughput;
      entry["devices"] = devices;
      entry["plan"] = s.plan;
    } else {
      entry["reason"] = s.reason;
    }
    styles.push_back(entry);
  }
  return {{"objective", to_string(ranked.goal)},
          {"throughput_unit", ranked.goal == objective::training ? "samples/s" : "tokens/s"},
          {"chosen", ranked.styles.front().style},
          {"styles", styles}};
}

}  // namespace orrery::planning
