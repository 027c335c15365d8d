// `orrery bench parallel`: one request's decode and prefill on a
// tensor-parallel group of two node processes (one thread each), beside one
// process with two threads and a two-stage pipeline of one-thread nodes
// (Galaxy's comparison), measured side by side in alternating rounds.

#include <unistd.h>

#include <CLI/CLI.hpp>
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

struct parallel_bench_options {
  std::string model;
  int prompt_tokens = 32;
  int new_tokens = 64;
  int prefill_tokens = 512;
  int repeats = 3;
  int base_port = 7760;
};

// Two loopback nodes: a group (`grouped`) or a pipeline of two stages.
std::filesystem::path write_layout(const std::filesystem::path& dir, const std::string& name,
                                   const std::filesystem::path& model, int base_port, bool grouped) {
  auto file = dir / (name + ".yaml");
  std::ofstream out(file);
  out << "cluster: " << name << "\nmodel: " << std::filesystem::absolute(model).string() << "\nnodes:\n";
  for (int i = 0; i < 2; ++i)
    out << "  - {name: " << name << i << ", address: 127.0.0.1:" << base_port + i << ", data_port: " << base_port + 10 + i
        << ", threads: 1" << (grouped ? ", group: g" : "") << "}\n";
  out << "placement: even\n";
  return file;
}

// A layout of node processes and a client on it.
struct running_layout {
  topology t;
  local_cluster cluster;
  pipeline_client client;
  running_layout(const std::filesystem::path& file, const std::filesystem::path& logs)
      : t(load_topology(file)), cluster(t, logs), client((cluster.wait_ready(t.connect_timeout * 4), t)) {}
};

struct timing {
  std::vector<double> decode_ms, prefill_ms;
};

nlohmann::json summary(const timing& t) {
  return {{"decode_ms_per_token", compute::median(t.decode_ms)},
          {"prefill_ms", compute::median(t.prefill_ms)},
          {"decode_runs_ms_per_token", t.decode_ms},
          {"prefill_runs_ms", t.prefill_ms}};
}

nlohmann::json run(const parallel_bench_options& o) {
  const auto logs = std::filesystem::temp_directory_path() / ("orrery-bench-parallel-" + std::to_string(::getpid()));
  std::filesystem::create_directories(logs);
  compute::model_dir dir(o.model);
  const auto& config = dir.config();
  auto tok = compute::load_tokenizer(o.model);
  compute::shard two_threads(dir, 0, config.num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(2)});
  compute::shard one_thread(dir, 0, config.num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(1)});

  compute::generation_request decode;
  decode.prompt = compute::bench_prompt(o.prompt_tokens);
  decode.max_new_tokens = o.new_tokens + 1;
  decode.stop_at_eos = false;
  compute::generation_request prefill = decode;
  prefill.prompt = compute::bench_prompt(o.prefill_tokens);
  prefill.max_new_tokens = 1;
  auto remote = [](const compute::generation_request& r) { return generate_request{r.prompt, r.max_new_tokens, {}, false, 0}; };

  std::cerr << "bench: starting a group of 2 and a pipeline of 2 node processes\n";
  running_layout group(write_layout(logs, "tpgroup", o.model, o.base_port, true), logs / "group");
  running_layout pipeline(write_layout(logs, "tppipe", o.model, o.base_port + 2, false), logs / "pipeline");
  for (auto* l : {&group, &pipeline}) l->client.generate({remote(decode)});  // warm-up
  compute::generate(two_threads, *tok, decode);

  timing local2, local1, grouped, piped;
  stage_stats leader_before{}, leader_after{}, member_after{};
  std::size_t grouped_tokens = 0;
  for (int r = 0; r < o.repeats; ++r) {
    std::cerr << "bench: round " << r + 1 << "/" << o.repeats << ": one process (2 threads, 1 thread), the group, the pipeline\n";
    auto d2 = compute::generate(two_threads, *tok, decode);
    local2.decode_ms.push_back(d2.decode_ms_per_token());
    local2.prefill_ms.push_back(compute::generate(two_threads, *tok, prefill).prefill_ms);
    local1.decode_ms.push_back(compute::generate(one_thread, *tok, decode).decode_ms_per_token());
    local1.prefill_ms.push_back(compute::generate(one_thread, *tok, prefill).prefill_ms);
    auto before = group.client.stats();
    auto g = group.client.generate({remote(decode)})[0];
    auto after = group.client.stats();
    grouped.decode_ms.push_back(compute::decode_ms_per_token(g.decode_ms, g.tokens.size()));
    grouped.prefill_ms.push_back(group.client.generate({remote(prefill)})[0].prefill_ms);
    leader_before = before.at(0);
    leader_after = after.at(0);
    member_after = after.at(1);
    member_after.collective_bytes_sent -= before.at(1).collective_bytes_sent;
    grouped_tokens = g.tokens.size();
    auto p = pipeline.client.generate({remote(decode)})[0];
    piped.decode_ms.push_back(compute::decode_ms_per_token(p.decode_ms, p.tokens.size()));
    piped.prefill_ms.push_back(pipeline.client.generate({remote(prefill)})[0].prefill_ms);
  }
  const double group_ms = compute::median(grouped.decode_ms);
  // A ring all-reduce of n members sends 2 (n - 1) / n of the tensor per
  // member: for n = 2 one [1, hidden] fp32 row per attention and per MLP.
  const double minimum_bytes = 2.0 * config.num_layers * config.hidden_size * 4.0;
  const double tokens = static_cast<double>(grouped_tokens);
  return {{"model", o.model},
          {"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"prefill_tokens", o.prefill_tokens},
          {"rounds", o.repeats},
          {"one_process_2_threads", summary(local2)},
          {"one_process_1_thread", summary(local1)},
          {"group_of_2", summary(grouped)},
          {"pipeline_of_2", summary(piped)},
          {"group_over_2_threads", group_ms / compute::median(local2.decode_ms)},
          {"group_over_pipeline", group_ms / compute::median(piped.decode_ms)},
          {"group_prefill_speedup_over_1_thread", compute::median(local1.prefill_ms) / compute::median(grouped.prefill_ms)},
          {"collectives", "all-reduce after each attention and MLP, no sequence parallelism, no tiling"},
          {"ring_bytes_per_token_per_member",
           {{"leader", static_cast<double>(leader_after.collective_bytes_sent - leader_before.collective_bytes_sent) / tokens},
            {"member", static_cast<double>(member_after.collective_bytes_sent) / tokens},
            {"theoretical_minimum", minimum_bytes}}}};
}

}  // namespace

void add_parallel_bench(CLI::App& bench) {
  auto opts = std::make_shared<parallel_bench_options>();
  auto* cmd = bench.add_subcommand(
      "parallel",
      "A tensor-parallel group of 2 node processes vs one process with 2 threads vs a 2-stage pipeline (loopback)");
  cmd->add_option("--model", opts->model, "Model directory (e.g. from `orrery model init --preset small`)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length for the decode figures, BOS included")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Decode steps timed")->capture_default_str()->check(at_least(1));
  cmd->add_option("--prefill-tokens", opts->prefill_tokens, "Prompt length for the prefill figures")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--repeats", opts->repeats, "Alternating rounds; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--base-port", opts->base_port, "First of the loopback ports the 4 nodes use (control and data)")
      ->capture_default_str()
      ->check(between(1024, 65000));
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
