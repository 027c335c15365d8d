// `orrery bench placement`: the planner's automatic layout against the even
// one (a pipeline of every node) and, where the profile has tensor-parallel
// costs, every node as one group, on a running cluster (typically `orrery
// testbed up`), each predicted from the measured profile and measured with
// concurrent requests, in alternating rounds so all see the same machine state.

#include <CLI/CLI.hpp>
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "base/tensor_slice.hpp"
#include "compute/generation.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"
#include "planning/group_pipeline.hpp"

namespace orrery::deploy {

namespace {

struct placement_bench_options {
  std::string topology;
  int requests = 4;
  int prompt_tokens = 16;
  int new_tokens = 32;
  int repeats = 3;
  bool refresh = false;
};

struct measurement {
  double decode_ms_per_token = 0;
  double tokens_per_s = 0;
  /// Each stage's ring wait and frames in the requests' decode steps only.
  std::vector<stage_stats> decode_stages;
};

// Decode ms/token per request (the mean over the requests) and what the
// requests make together, the same definitions as placement_prediction.
measurement measure(const placement_plan& plan, const placement_bench_options& o) {
  pipeline_client client(plan.placed);
  // One request of one token first, untimed: its stats are one prefill's,
  // which the timed requests' stats less theirs leave the decode steps'.
  client.generate({generate_request{compute::bench_prompt(o.prompt_tokens), 1, {}, false, 0, {}, 0}});
  const auto prefill = client.stats();
  generate_request request{compute::bench_prompt(o.prompt_tokens), o.new_tokens, {}, false, 0, {}, 0};  // greedy
  std::vector<generate_request> requests;
  for (int i = 0; i < o.requests; ++i) {
    requests.push_back(request);
    requests.back().tag = static_cast<std::uint64_t>(i);
  }
  auto summaries = client.generate(requests);
  double sum = 0;
  for (const auto& s : summaries) sum += compute::decode_ms_per_token(s.decode_ms, s.tokens.size());
  measurement m;
  m.decode_ms_per_token = sum / static_cast<double>(summaries.size());
  m.tokens_per_s = o.requests * 1e3 / m.decode_ms_per_token;
  m.decode_stages = client.stats();
  for (auto& st : m.decode_stages)
    for (const auto& one : prefill)
      if (one.node == st.node && one.stage == st.stage) {
        const auto prefills = static_cast<double>(o.requests + 1);
        st.frames -= static_cast<std::uint64_t>(prefills) * one.frames;
        st.collective_wait_ms = std::max(0.0, st.collective_wait_ms - prefills * one.collective_wait_ms);
      }
  return m;
}

// A group's decode ring step as its runs measured it: the slowest member
// waits only on the ring (never on a slower member), so its wait over its
// ring steps is what one step costs. Each decode frame is a pass through
// every layer: two all-reduces of a row per layer (base::all_reduce_schedule_of).
double measured_ring_step(const placement_plan& group, const std::vector<measurement>& runs, const topology& t) {
  const int members = static_cast<int>(group.groups.front().size());
  const auto schedule = all_reduce_schedule_of(members, t.model_config.hidden_size * std::int64_t{4});
  std::vector<double> per_run;
  for (const auto& m : runs) {
    double least = -1;
    for (const auto& st : m.decode_stages) {
      const double steps = static_cast<double>(st.frames) * 2 * (st.last_layer - st.first_layer) * schedule.steps;
      if (steps <= 0) continue;
      const double step = st.collective_wait_ms / 1e3 / steps;
      least = least < 0 ? step : std::min(least, step);
    }
    if (least >= 0) per_run.push_back(least);
  }
  return per_run.empty() ? 0.0 : compute::median(per_run);
}

nlohmann::json layers_of(const placement_plan& plan) {
  nlohmann::json layers = nlohmann::json::object();
  for (const auto& n : plan.placed.nodes) layers[n.name] = {n.first_layer, n.last_layer};
  return layers;
}

nlohmann::json report(const placement_plan& plan, const std::vector<measurement>& runs) {
  std::vector<double> ms, tps;
  for (const auto& m : runs) ms.push_back(m.decode_ms_per_token), tps.push_back(m.tokens_per_s);
  const double measured_ms = compute::median(ms), measured_tps = compute::median(tps);
  const auto& p = plan.predicted;
  return {{"layers", layers_of(plan)},
          {"predicted", {{"decode_ms_per_token", p.decode_ms_per_token}, {"tokens_per_s", p.tokens_per_s}, {"prefill_ms", p.prefill_ms}}},
          {"measured", {{"decode_ms_per_token", measured_ms}, {"tokens_per_s", measured_tps}, {"decode_ms_per_token_runs", ms}}},
          {"prediction_error",
           {{"decode_ms_per_token", std::abs(p.decode_ms_per_token - measured_ms) / measured_ms},
            {"tokens_per_s", std::abs(p.tokens_per_s - measured_tps) / measured_tps}}}};
}

nlohmann::json run(const placement_bench_options& o) {
  auto t = load_topology(o.topology);
  planning::workload work;
  work.batch = o.requests;
  work.prompt_tokens = o.prompt_tokens;  // bench_prompt(n) is n tokens with BOS
  work.output_tokens = o.new_tokens;
  auto profile = obtain_profile(t, work, profile_bar("profile"), o.refresh);
  std::vector<placement_plan> plans = {plan_even(t, profile), plan_automatic(t, profile)};
  // Galaxy's comparison: every node in one tensor-parallel group, where the
  // profile has the costs to split it.
  if (planning::has_tp_costs(profile) && t.nodes.size() > 1) plans.push_back(plan_one_group(t, profile));
  for (const auto& plan : plans) std::cerr << "bench: " << describe(plan) << "\n";
  std::vector<std::vector<measurement>> runs(plans.size());
  for (int round = 0; round < o.repeats; ++round)
    for (std::size_t i = 0; i < plans.size(); ++i) {
      runs[i].push_back(measure(plans[i], o));
      std::cerr << "bench: round " << round + 1 << "/" << o.repeats << " " << plans[i].name << ": "
                << runs[i].back().decode_ms_per_token << " ms/token per request, " << runs[i].back().tokens_per_s
                << " tokens/s\n";
    }
  auto even = report(plans[0], runs[0]);
  auto automatic = report(plans[1], runs[1]);
  automatic["layout"] = plans[1].layout;
  nlohmann::json one_group = plans.size() > 2 ? report(plans[2], runs[2]) : nlohmann::json(nullptr);
  // Calibration: the group's measured ring step becomes the profile's floor
  // for a step (kept for these nodes, so later plans and predictions use
  // it), and every layout is predicted again with it beside its measurement.
  nlohmann::json calibration = nullptr;
  if (plans.size() > 2) {
    auto calibrated = profile;
    calibrated.ring_step_floor = measured_ring_step(plans[2], runs[2], t);
    save_ring_step_floor(t, calibrated.ring_step_floor);
    auto again = [](nlohmann::json& out, const placement_plan& plan, const placement_plan& replanned,
                    const std::vector<measurement>& measured) {
      if (replanned.layout != plan.layout) {
        out["calibrated"] = {{"layout", replanned.layout}, {"note", "the calibrated profile plans another layout"}};
        return;
      }
      const auto r = report(replanned, measured);
      out["calibrated"] = r["predicted"];
      out["calibrated"]["prediction_error"] = r["prediction_error"];
    };
    again(even, plans[0], plan_even(t, calibrated), runs[0]);
    again(automatic, plans[1], plan_automatic(t, calibrated), runs[1]);
    again(one_group, plans[2], plan_one_group(t, calibrated), runs[2]);
    calibration = {{"ring_step_floor_s_used", profile.ring_step_floor},
                   {"ring_step_floor_s_measured", calibrated.ring_step_floor},
                   {"what", "the one group's slowest member's ring wait per step, kept for these nodes; each layout's "
                            "'calibrated' is its prediction with it"}};
  }
  const bool throughput = t.objective == "throughput";
  const double speedup =
      throughput ? automatic["measured"]["tokens_per_s"].get<double>() / even["measured"]["tokens_per_s"].get<double>()
                 : even["measured"]["decode_ms_per_token"].get<double>() /
                       automatic["measured"]["decode_ms_per_token"].get<double>();
  return {{"bench", "placement"},
          {"topology", o.topology},
          {"cluster", t.cluster},
          {"objective", t.objective},
          {"requests", o.requests},
          {"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"repeats", o.repeats},
          {"even", even},
          {"auto", automatic},
          {"auto_speedup_in_objective", speedup},
          {"one_group", one_group},
          {"calibration", calibration},
          {"targets", {{"auto_speedup_in_objective", ">= 1.3"}, {"prediction_error", "<= 0.2"}}}};
}

}  // namespace

void add_placement_bench(CLI::App& bench) {
  auto opts = std::make_shared<placement_bench_options>();
  auto* cmd = bench.add_subcommand(
      "placement",
      "Even against automatic placement on a running cluster (e.g. `orrery testbed exec F -- orrery bench placement "
      "--topology F`): predicted and measured decode ms/token and tokens/s with concurrent requests, and the "
      "prediction error, for the topology's objective");
  cmd->add_option("--topology", opts->topology, "Topology file of the running cluster")->required()->check(CLI::ExistingFile);
  cmd->add_option("--requests", opts->requests, "Concurrent requests")->capture_default_str()->check(at_least(1));
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length")->capture_default_str()->check(at_least(1));
  cmd->add_option("--new-tokens", opts->new_tokens, "Tokens generated per request")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--repeats", opts->repeats, "Alternating rounds; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_flag("--refresh", opts->refresh, "Profile again instead of using cached measurements");
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
