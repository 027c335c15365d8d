// `orrery bench pipeline`: one model on one device against the same model
// split over a topology's node processes, measured side by side in one run.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "compute/cpu_threads.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/shard.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"

namespace orrery::deploy {

namespace {

using clock_type = std::chrono::steady_clock;

struct pipeline_bench_options {
  std::string topology;
  std::string model;
  int prompt_tokens = 32;
  int new_tokens = 64;
  int concurrent = 4;
  int repeats = 5;
};

// Each stage's work between two snapshots of its counters, per token.
nlohmann::json per_stage(const std::vector<stage_stats>& before, const std::vector<stage_stats>& after, double tokens) {
  nlohmann::json stages = nlohmann::json::array();
  for (std::size_t i = 0; i < after.size(); ++i)
    stages.push_back({{"stage", after[i].stage},
                      {"node", after[i].node},
                      {"layers", {after[i].first_layer, after[i].last_layer}},
                      {"compute_ms_per_token", (after[i].compute_ms - before[i].compute_ms) / tokens},
                      {"transfer_ms_per_token", (after[i].transfer_ms - before[i].transfer_ms) / tokens},
                      {"bytes_sent_per_token", static_cast<double>(after[i].bytes_sent - before[i].bytes_sent) / tokens}});
  return stages;
}

nlohmann::json run(const pipeline_bench_options& o) {
  auto t = load_topology_for_model(o.topology, o.model);
  compute::generation_request local;
  local.prompt = compute::bench_prompt(o.prompt_tokens);
  local.max_new_tokens = o.new_tokens + 1;
  local.stop_at_eos = false;
  generate_request remote{local.prompt, local.max_new_tokens, {}, false, 0, {}, 0};  // greedy, as the local run

  compute::model_dir dir(t.model);
  auto tok = compute::load_tokenizer(t.model);
  compute::shard whole(dir, 0, dir.config().num_layers,
                       {at::kCPU, at::kFloat, compute::configure_cpu_threads(t.nodes.front().threads)});

  std::cerr << "bench: starting " << t.nodes.size() << " node processes\n";
  local_cluster cluster(t, std::filesystem::temp_directory_path() / ("orrery-bench-" + std::to_string(::getpid())));
  cluster.wait_ready(t.connect_timeout * 4);
  pipeline_client client(t);
  compute::generate(whole, *tok, local);  // warm-up: caches, connections, page faults
  client.generate({remote});

  // Single device and pipeline alternate, so drifts of this shared machine
  // (neighbours, steal time) hit both sides alike; medians are reported.
  std::vector<double> single, pipeline;
  std::vector<stage_stats> before, after_one;
  generation_summary one;
  for (int r = 0; r < o.repeats; ++r) {
    std::cerr << "bench: round " << r + 1 << "/" << o.repeats << ": single device, then 1 request over the pipeline\n";
    single.push_back(compute::generate(whole, *tok, local).decode_ms_per_token());
    before = client.stats();
    one = client.generate({remote})[0];
    after_one = client.stats();
    pipeline.push_back(compute::decode_ms_per_token(one.decode_ms, one.tokens.size()));
  }
  const double single_ms = compute::median(single), pipeline_ms = compute::median(pipeline);

  std::cerr << "bench: " << o.concurrent << " concurrent requests\n";
  auto start = clock_type::now();
  auto many = client.generate(std::vector<generate_request>(static_cast<std::size_t>(o.concurrent), remote));
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  auto after_many = client.stats();
  std::size_t generated = 0;
  for (const auto& s : many) generated += s.tokens.size();
  return {{"topology", t.file.string()},
          {"model", t.model.string()},
          {"nodes", t.nodes.size()},
          {"threads_per_node", t.nodes.front().threads},
          {"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"single_ms_per_token", single_ms},
          {"pipeline_ms_per_token", pipeline_ms},
          {"latency_ratio", pipeline_ms / single_ms},
          {"rounds", o.repeats},
          {"single_runs_ms_per_token", single},
          {"pipeline_runs_ms_per_token", pipeline},
          {"pipeline_prefill_ms", one.prefill_ms},
          {"tokens_per_s_1", 1000.0 / pipeline_ms},
          {"concurrent_requests", o.concurrent},
          {"tokens_per_s_4", static_cast<double>(generated) / seconds},
          {"stages_1", per_stage(before, after_one, static_cast<double>(one.tokens.size()))},
          {"stages_concurrent", per_stage(after_one, after_many, static_cast<double>(generated))}};
}

}  // namespace

void add_pipeline_bench(CLI::App& bench) {
  auto opts = std::make_shared<pipeline_bench_options>();
  auto* cmd = bench.add_subcommand(
      "pipeline", "One device vs the same model split over a topology's nodes (started here as local processes)");
  cmd->add_option("--topology", opts->topology, "Topology file; its nodes must be on this machine")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Model directory (overrides the topology's)")->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length, BOS included")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Decode steps timed")->capture_default_str()->check(at_least(1));
  cmd->add_option("--concurrent", opts->concurrent, "Requests in flight for the throughput figure")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--repeats", opts->repeats, "Alternating single-device / pipeline rounds; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
