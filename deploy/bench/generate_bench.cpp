// `orrery bench generate`: Jupiter's two tricks on a running pipeline, each
// measured against the plain pipeline side by side in alternating rounds —
// the prompt sent in chunks that flow through the stages against one chunk
// (beside the simulator's prediction of each), guesses from prompt lookup
// verified in one trip against one token per trip (on a prompt whose
// continuation repeats it and on free text), and both together against
// neither (EdgeShard's pipeline) end to end.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "compute/generation.hpp"
#include "compute/text/tokenizer.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"
#include "planning/jupiter.hpp"
#include "planning/simulator.hpp"

namespace orrery::deploy {

namespace {

struct generate_bench_options {
  std::string topology;
  int prefill_tokens = 512;
  int prompt_tokens = 260;
  int new_tokens = 64;
  int speculate = 6;
  int repeats = 3;
  bool refresh = false;
};

// The input-grounded prompt: a passage, then its start again, so that text
// continuing the prompt repeats the passage. (A model trained on text would
// be asked to summarise or continue it; a random-weight model's greedy text
// repeats itself instead, which prompt lookup guesses the same way.)
std::string grounded_prompt() {
  const std::string passage =
      "The river rose in the night and the ferry could not cross, so the village waited on the bank. ";
  return passage + passage.substr(0, passage.size() / 2);
}

const std::string free_prompt = "Once upon a time";

generate_request request_of(const std::string& prompt, int new_tokens, std::vector<std::int32_t> chunks, int drafts,
                            bool overlap = false) {
  generate_request r;
  r.overlap_windows = overlap;
  r.prompt = prompt;
  r.max_new_tokens = new_tokens;
  r.stop_at_eos = false;  // greedy, a fixed number of steps
  r.prefill_chunks = std::move(chunks);
  r.max_drafts = drafts;
  return r;
}

// The median of each side's runs and its runs.
nlohmann::json runs_json(const std::vector<double>& runs) { return {{"median", compute::median(runs)}, {"runs", runs}}; }

std::string chunks_text(const std::vector<std::int32_t>& lengths) {
  std::string text;
  for (auto l : lengths) text += (text.empty() ? "" : "+") + std::to_string(l);
  return text.empty() ? "whole" : text;
}

// The profile's plan of the topology as it is placed: a pipeline, each node
// one stage, in the profile's device order by name.
std::vector<planning::stage> placed_stages(const topology& t, const planning::profile& p) {
  std::vector<planning::stage> stages;
  for (const auto& n : t.nodes) {
    if (n.last_layer <= n.first_layer) continue;
    if (!n.group.empty())
      throw std::invalid_argument("bench generate measures pipelines of single nodes; node '" + n.name + "' is in group '" +
                                  n.group + "'");
    auto device = std::find_if(p.devices.begin(), p.devices.end(), [&](const auto& d) { return d.name == n.name; });
    if (device == p.devices.end()) throw std::runtime_error("the profile has no device for node '" + n.name + "'");
    stages.push_back({static_cast<std::size_t>(device - p.devices.begin()), static_cast<std::size_t>(n.first_layer),
                      static_cast<std::size_t>(n.last_layer)});
  }
  return stages;
}

nlohmann::json prefill_section(pipeline_client& client, const topology& t, const generate_bench_options& o,
                               const planning::profile& profile) {
  auto p = profile;
  p.work.batch = 1;
  p.work.prompt_tokens = o.prefill_tokens;
  p.work.output_tokens = 1;
  const planning::cost_model costs(p);
  const auto stages = placed_stages(t, p);
  const auto planned = planning::jupiter_chunks(costs, stages);
  const int positions = static_cast<int>(stages.size());
  struct side {
    std::string name;
    std::vector<std::int32_t> lengths;
    std::vector<double> ms;
    std::vector<std::int32_t> first_tokens;
  };
  std::vector<side> sides = {{"one chunk", {}, {}, {}},
                             {"planned", {planned.lengths.begin(), planned.lengths.end()}, {}, {}},
                             {"equal, one per stage", planning::equal_chunks(o.prefill_tokens, positions), {}, {}},
                             {"equal, two per stage", planning::equal_chunks(o.prefill_tokens, 2 * positions), {}, {}}};
  const auto prompt = compute::bench_prompt(o.prefill_tokens);
  for (int round = 0; round < o.repeats; ++round)
    for (auto& s : sides) {
      const auto lengths = s.lengths.size() > 1 ? s.lengths : std::vector<std::int32_t>{};
      auto summary = client.generate({request_of(prompt, 1, lengths, 0)}).at(0);
      s.ms.push_back(summary.prefill_ms);
      s.first_tokens.push_back(summary.tokens.at(0));
      std::cerr << "bench: prefill round " << round + 1 << "/" << o.repeats << ", " << s.name << " ("
                << chunks_text(lengths) << "): " << summary.prefill_ms << " ms\n";
    }
  nlohmann::json out = nlohmann::json::array();
  const double whole = compute::median(sides[0].ms);
  bool same = true;
  for (const auto& s : sides) {
    const std::vector<int> lengths = s.lengths.empty() ? std::vector<int>{o.prefill_tokens}
                                                       : std::vector<int>(s.lengths.begin(), s.lengths.end());
    const double predicted = planning::chunked_prefill_seconds(costs, stages, lengths) * 1e3;
    const double measured = compute::median(s.ms);
    same = same && std::all_of(s.first_tokens.begin(), s.first_tokens.end(),
                               [&](std::int32_t id) { return id == sides[0].first_tokens.front(); });
    out.push_back({{"chunks", s.name},
                   {"lengths", lengths},
                   {"prefill_ms", runs_json(s.ms)},
                   {"speedup_over_one_chunk", whole / measured},
                   {"predicted_prefill_ms", predicted},
                   {"prediction_error", std::abs(predicted - measured) / measured}});
  }
  return {{"prompt_tokens", o.prefill_tokens},
          {"stages", positions},
          {"sides", out},
          {"same_first_token", same},
          {"planned_speedup", whole / compute::median(sides[1].ms)},
          {"target", "planned >= 2x one chunk on 4 stages; prediction error <= 0.2"}};
}

// Decode on one prompt without guesses, with one window at a time, and with
// the next window sent ahead: the tokens must agree.
nlohmann::json speculation_side(pipeline_client& client, const std::string& what, const std::string& prompt,
                                const generate_bench_options& o) {
  struct side {
    std::vector<double> ms, per_trip;
    std::vector<std::int32_t> tokens;
    int drafted = 0, accepted = 0, trips = 0, cancelled = 0;
  } plain, one, ahead;
  for (int round = 0; round < o.repeats; ++round)
    for (auto* s : {&plain, &one, &ahead}) {
      const int drafts = s == &plain ? 0 : o.speculate;
      auto summary = client.generate({request_of(prompt, o.new_tokens, {}, drafts, s == &ahead)}).at(0);
      s->ms.push_back(compute::decode_ms_per_token(summary.decode_ms, summary.tokens.size()));
      s->tokens = summary.tokens;
      s->drafted += summary.drafted;
      s->accepted += summary.accepted;
      s->trips += summary.decode_trips;
      s->cancelled += summary.cancelled_trips;
      s->per_trip.push_back(static_cast<double>(summary.tokens.size() - 1) / std::max(1, summary.decode_trips));
      std::cerr << "bench: decode round " << round + 1 << "/" << o.repeats << ", " << what << ", "
                << (s == &plain ? "one token a trip" : s == &one ? "guesses, one window at a time" : "guesses, next window ahead")
                << ": " << s->ms.back() << " ms/token (" << s->per_trip.back() << " tokens a trip)\n";
    }
  auto report = [&](const side& s) {
    return nlohmann::json{{"ms_per_token", runs_json(s.ms)},
                          {"speedup", compute::median(plain.ms) / compute::median(s.ms)},
                          {"same_tokens", s.tokens == plain.tokens},
                          {"tokens_per_trip", runs_json(s.per_trip)},
                          {"acceptance_rate", s.drafted > 0 ? static_cast<double>(s.accepted) / s.drafted : 0.0},
                          {"drafts", s.drafted},
                          {"drafts_kept", s.accepted},
                          {"drafts_wasted", s.drafted - s.accepted},
                          {"trips", s.trips},
                          {"trips_cancelled", s.cancelled}};
  };
  return {{"prompt", what},
          {"prompt_tokens", compute::prompt_tokens(compute::byte_tokenizer{}, prompt).size()},
          {"one_token_a_trip_ms_per_token", runs_json(plain.ms)},
          {"one_window_at_a_time", report(one)},
          {"next_window_ahead", report(ahead)}};
}

nlohmann::json end_to_end_section(pipeline_client& client, const topology& t, const generate_bench_options& o,
                                  const planning::profile& profile) {
  auto p = profile;
  p.work.batch = 1;
  p.work.prompt_tokens = o.prompt_tokens;
  p.work.output_tokens = o.new_tokens;
  const planning::cost_model costs(p);
  const auto stages = placed_stages(t, p);
  const auto planned = planning::jupiter_chunks(costs, stages);
  const std::vector<std::int32_t> chunks(planned.lengths.begin(), planned.lengths.end());
  const auto prompt = compute::bench_prompt(o.prompt_tokens);
  std::vector<double> plain_ms, jupiter_ms;
  for (int round = 0; round < o.repeats; ++round) {
    auto plain = client.generate({request_of(prompt, o.new_tokens, {}, 0)}).at(0);
    auto both = client.generate({request_of(prompt, o.new_tokens, chunks.size() > 1 ? chunks : std::vector<std::int32_t>{},
                                            o.speculate, true)})
                    .at(0);
    plain_ms.push_back(plain.prefill_ms + plain.decode_ms);
    jupiter_ms.push_back(both.prefill_ms + both.decode_ms);
    std::cerr << "bench: end to end round " << round + 1 << "/" << o.repeats << ": " << plain_ms.back()
              << " ms plain, " << jupiter_ms.back() << " ms chunked with guesses, the next window ahead\n";
  }
  planning::inference_options whole;
  auto chunked = whole;
  chunked.prefill_chunks = planned.lengths;
  const double predicted_plain = planning::simulate_inference(costs, stages, whole).mean_latency * 1e3;
  const double predicted_chunked = planning::simulate_inference(costs, stages, chunked).mean_latency * 1e3;
  const double measured_plain = compute::median(plain_ms), measured_jupiter = compute::median(jupiter_ms);
  return {{"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"chunks", planned.lengths},
          {"edgeshard_pipeline_ms", runs_json(plain_ms)},
          {"chunked_and_speculative_ms", runs_json(jupiter_ms)},
          {"speedup", measured_plain / measured_jupiter},
          {"predicted_edgeshard_pipeline_ms", predicted_plain},
          {"predicted_chunked_ms", predicted_chunked},
          {"prediction_error_edgeshard_pipeline", std::abs(predicted_plain - measured_plain) / measured_plain},
          {"note", "the simulator predicts the chunked prefill, not the guesses: predicted_chunked_ms decodes a "
                   "token a trip"}};
}

nlohmann::json run(const generate_bench_options& o) {
  auto t = load_topology(o.topology);
  if (t.auto_placement)
    throw std::invalid_argument("bench generate measures a topology as placed; give it an explicit or even placement");
  planning::workload work;
  work.prompt_tokens = o.prefill_tokens;
  work.output_tokens = o.new_tokens;
  const auto profile = obtain_profile(t, work, profile_bar("profile"), o.refresh);
  pipeline_client client(t);
  client.generate({request_of(compute::bench_prompt(8), 2, {}, 0)});  // untimed: links and caches warm
  nlohmann::json out = {{"bench", "generate"},
                        {"topology", o.topology},
                        {"cluster", t.cluster},
                        {"model", t.model.string()},
                        {"repeats", o.repeats},
                        {"max_drafts", o.speculate}};
  const auto context = t.model_config.max_position_embeddings;
  if (o.prefill_tokens <= context)
    out["prefill"] = prefill_section(client, t, o, profile);
  else
    out["prefill"] = {{"skipped", "the model's context of " + std::to_string(context) + " positions is shorter than " +
                                      std::to_string(o.prefill_tokens) + " prompt tokens"}};
  out["speculation"] = {speculation_side(client, "input-grounded (a passage, then its start again)", grounded_prompt(), o),
                        speculation_side(client, "free continuation", free_prompt, o)};
  out["speculation_target"] = "input-grounded >= 2x; free continuation no slower (speedup >= 1)";
  if (o.prompt_tokens + o.new_tokens - 1 <= context)
    out["end_to_end"] = end_to_end_section(client, t, o, profile);
  else
    out["end_to_end"] = {{"skipped", "the model's context of " + std::to_string(context) + " positions is shorter than " +
                                         std::to_string(o.prompt_tokens) + " + " + std::to_string(o.new_tokens) +
                                         " tokens"}};
  return out;
}

}  // namespace

void add_generate_bench(CLI::App& bench) {
  auto opts = std::make_shared<generate_bench_options>();
  auto* cmd = bench.add_subcommand(
      "generate",
      "Jupiter on a running pipeline (e.g. `orrery up F`, or `orrery testbed exec F -- orrery bench generate "
      "--topology F`): prefill in chunks against one chunk beside the simulator's predictions, decoding with guesses "
      "against one token a trip, and both against neither end to end");
  cmd->add_option("--topology", opts->topology, "Topology file of the running cluster (a pipeline of single nodes)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--prefill-tokens", opts->prefill_tokens, "Prompt length of the prefill comparison, BOS included")
      ->capture_default_str()
      ->check(between(2, 1 << 20));
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length end to end, BOS included")
      ->capture_default_str()
      ->check(between(2, 1 << 20));
  cmd->add_option("--new-tokens", opts->new_tokens, "Tokens generated per request")->capture_default_str()->check(between(2, 100000));
  cmd->add_option("--speculate", opts->speculate, "Guesses per trip at most")->capture_default_str()->check(between(1, 32));
  cmd->add_option("--repeats", opts->repeats, "Alternating rounds; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_flag("--refresh", opts->refresh, "Profile the nodes again even where the cache has them");
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
