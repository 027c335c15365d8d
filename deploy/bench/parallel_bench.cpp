// `orrery bench parallel`: one request's decode and prefill on a
// tensor-parallel group of node processes, beside one process with as many
// threads as the group has, one process with one thread, and a pipeline of
// the same nodes (Galaxy's comparison), measured side by side in alternating
// rounds. The group runs its prefill three ways: all-reduces only (plain
// TP), with sequence parallelism, and with sequence parallelism and tiled
// partial sums; decode steps all-reduce (one token cannot be split), whole
// or tiled.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "compute/cpu_threads.hpp"
#include "compute/gemv.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"

namespace orrery::deploy {

namespace {

struct parallel_bench_options {
  std::string topology;
  std::string model;
  int prompt_tokens = 32;
  int new_tokens = 64;
  int prefill_tokens = 512;
  int repeats = 3;
  int tiles = 4;
  int base_port = 7760;
};

// A group member as the layouts are written: its threads and speed.
struct member_spec {
  int threads = 1;
  double speed = 1;
};

// The group to measure: the topology's nodes (all of one group, on this
// machine), or two one-thread members of equal speed.
std::vector<member_spec> members_of(const parallel_bench_options& o, std::string& model) {
  if (o.topology.empty()) return {{1, 1}, {1, 1}};
  auto t = load_topology_for_model(o.topology, o.model);
  model = t.model.string();
  std::vector<member_spec> out;
  for (const auto& n : t.nodes) {
    if (n.group.empty() || n.group != t.nodes.front().group)
      throw std::runtime_error(o.topology + ": bench parallel measures one tensor-parallel group, but node '" + n.name +
                               "' is " + (n.group.empty() ? "not in a group" : "in group '" + n.group + "'") +
                               ": give every node the same `group:`");
    if (n.emulate || n.device != "cpu")
      throw std::runtime_error(o.topology + ": node '" + n.name +
                               "' is emulated or not on the CPU; bench parallel runs its layouts as loopback CPU processes");
    out.push_back({n.threads, n.speed});
  }
  return out;
}

// Loopback node processes: the members as a group (`grouped`) or as a
// pipeline of as many stages.
std::filesystem::path write_layout(const std::filesystem::path& dir, const std::string& name, const std::string& model,
                                   const std::vector<member_spec>& members, int base_port, bool grouped) {
  auto file = dir / (name + ".yaml");
  std::ofstream out(file);
  out << "cluster: " << name << "\nmodel: " << std::filesystem::absolute(model).string() << "\nnodes:\n";
  for (std::size_t i = 0; i < members.size(); ++i) {
    out << "  - {name: " << name << i << ", address: 127.0.0.1:" << base_port + static_cast<int>(i)
        << ", data_port: " << base_port + 32 + static_cast<int>(i) << ", threads: " << members[i].threads;
    if (grouped) out << ", group: g, speed: " << members[i].speed;
    out << "}\n";
  }
  out << "placement: even\n";
  return file;
}

// Node processes of one layout, and the clients run on them: one session
// each, every one with its own collectives.
struct running_layout {
  topology t;
  local_cluster cluster;
  std::vector<std::unique_ptr<pipeline_client>> clients;
  running_layout(const std::filesystem::path& file, const std::filesystem::path& logs,
                 const std::vector<group_collectives>& variants)
      : t(load_topology(file)), cluster(t, logs) {
    cluster.wait_ready(t.connect_timeout * 4);
    for (const auto& collectives : variants) {
      auto with = t;
      with.collectives = collectives;
      clients.push_back(std::make_unique<pipeline_client>(with));
    }
  }
};

struct timing {
  std::vector<double> decode_ms, prefill_ms;
};

nlohmann::json summary(const timing& t) {
  nlohmann::json out;
  if (!t.decode_ms.empty()) {
    out["decode_ms_per_token"] = compute::median(t.decode_ms);
    out["decode_runs_ms_per_token"] = t.decode_ms;
  }
  if (!t.prefill_ms.empty()) {
    out["prefill_ms"] = compute::median(t.prefill_ms);
    out["prefill_runs_ms"] = t.prefill_ms;
  }
  return out;
}

// What each member did for one request: counters after minus before.
struct member_use {
  double compute_ms = 0, wait_ms = 0;
  double collective_bytes = 0;
};

std::vector<member_use> used(const std::vector<stage_stats>& before, const std::vector<stage_stats>& after) {
  std::vector<member_use> out;
  for (std::size_t i = 0; i < after.size(); ++i)
    out.push_back({after[i].compute_ms - before[i].compute_ms, after[i].collective_wait_ms - before[i].collective_wait_ms,
                   static_cast<double>(after[i].collective_bytes_sent - before[i].collective_bytes_sent)});
  return out;
}

nlohmann::json run(const parallel_bench_options& o) {
  std::string model = o.model;
  const auto members = members_of(o, model);
  if (model.empty()) throw std::runtime_error("bench parallel needs --model or --topology");
  const int n = static_cast<int>(members.size());
  int group_threads = 0;
  for (const auto& m : members) group_threads += m.threads;

  const auto logs = std::filesystem::temp_directory_path() / ("orrery-bench-parallel-" + std::to_string(::getpid()));
  std::filesystem::create_directories(logs);
  compute::model_dir dir(model);
  const auto& config = dir.config();
  auto tok = compute::load_tokenizer(model);
  compute::shard threaded(dir, 0, config.num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(group_threads)});
  compute::shard one_thread(dir, 0, config.num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(1)});

  compute::generation_request decode;
  decode.prompt = compute::bench_prompt(o.prompt_tokens);
  decode.max_new_tokens = o.new_tokens + 1;
  decode.stop_at_eos = false;
  compute::generation_request prompt_only = decode;
  prompt_only.max_new_tokens = 1;
  compute::generation_request prefill = prompt_only;
  prefill.prompt = compute::bench_prompt(o.prefill_tokens);
  auto remote = [](const compute::generation_request& r) { return generate_request{r.prompt, r.max_new_tokens, {}, false, 0, {}, 0}; };

  // The group's variants: all-reduce only, sequence parallelism, SP with tiles.
  const std::vector<std::pair<std::string, group_collectives>> variants = {
      {"all_reduce", {false, 1}}, {"sequence_parallel", {true, 1}}, {"sequence_parallel_tiled", {true, o.tiles}}};
  std::vector<group_collectives> settings;
  for (const auto& v : variants) settings.push_back(v.second);
  // The floor the weights' bytes set: a pipeline streams them one core at a
  // time, a group at best at all its threads' bandwidth (the cores'
  // shared memory), so its decode cannot fall below bandwidth(1) /
  // bandwidth(group threads) of the pipeline's, whatever the ring costs.
  std::cerr << "bench: measuring read bandwidth with 1 and " << group_threads << " threads\n";
  compute::thread_pool single(1), all(group_threads);
  const double bandwidth_1 = compute::measure_read_bandwidth(single, std::size_t{512} << 20);
  const double bandwidth_n = compute::measure_read_bandwidth(all, std::size_t{512} << 20);
  std::cerr << "bench: starting a group of " << n << " and a pipeline of " << n << " node processes\n";
  running_layout group(write_layout(logs, "tpgroup", model, members, o.base_port, true), logs / "group", settings);
  running_layout pipeline(write_layout(logs, "tppipe", model, members, o.base_port + 16, false), logs / "pipeline", {{}});
  for (auto& client : group.clients) client->generate({remote(decode)});  // warm-up
  pipeline.clients.front()->generate({remote(decode)});
  compute::generate(threaded, *tok, decode);

  timing local_threaded, local1, piped;
  std::vector<timing> grouped(variants.size());
  std::vector<member_use> decode_use(static_cast<std::size_t>(n)), prompt_use(static_cast<std::size_t>(n));
  std::size_t decoded = 0;
  for (int r = 0; r < o.repeats; ++r) {
    std::cerr << "bench: round " << r + 1 << "/" << o.repeats << ": one process (" << group_threads
              << " threads, 1 thread), the group (" << variants.size() << " ways), the pipeline\n";
    // The GEMMs' thread count is the process's: set before each side.
    compute::set_gemm_threads(group_threads);
    local_threaded.decode_ms.push_back(compute::generate(threaded, *tok, decode).decode_ms_per_token());
    local_threaded.prefill_ms.push_back(compute::generate(threaded, *tok, prefill).prefill_ms);
    compute::set_gemm_threads(1);
    local1.decode_ms.push_back(compute::generate(one_thread, *tok, decode).decode_ms_per_token());
    local1.prefill_ms.push_back(compute::generate(one_thread, *tok, prefill).prefill_ms);
    for (std::size_t v = 0; v < variants.size(); ++v) {
      auto& client = *group.clients[v];
      // Decode steps are one token: they differ between variants only by tiles.
      if (v == 0 || variants[v].second.tiles > 1) {
        auto before = client.stats();
        auto g = client.generate({remote(decode)})[0];
        auto middle = client.stats();
        client.generate({remote(prompt_only)});
        auto after = client.stats();
        grouped[v].decode_ms.push_back(compute::decode_ms_per_token(g.decode_ms, g.tokens.size()));
        if (v == 0) {  // per decode token: the decode request less its prompt's pass
          decoded = g.tokens.size() - 1;
          auto whole = used(before, middle), prompt = used(middle, after);
          for (int m = 0; m < n; ++m) {
            decode_use[m].compute_ms += whole[m].compute_ms - prompt[m].compute_ms;
            decode_use[m].wait_ms += whole[m].wait_ms - prompt[m].wait_ms;
            decode_use[m].collective_bytes = whole[m].collective_bytes - prompt[m].collective_bytes;
          }
        }
      }
      grouped[v].prefill_ms.push_back(client.generate({remote(prefill)})[0].prefill_ms);
    }
    auto p = pipeline.clients.front()->generate({remote(decode)})[0];
    piped.decode_ms.push_back(compute::decode_ms_per_token(p.decode_ms, p.tokens.size()));
    piped.prefill_ms.push_back(pipeline.clients.front()->generate({remote(prefill)})[0].prefill_ms);
  }

  const auto threads_name = "one_process_" + std::to_string(group_threads) + "_threads";
  const double group_decode = compute::median(grouped[0].decode_ms);
  nlohmann::json variant_json, prefill_speedups;
  for (std::size_t v = 0; v < variants.size(); ++v) {
    variant_json[variants[v].first] = summary(grouped[v]);
    prefill_speedups[variants[v].first] = compute::median(local1.prefill_ms) / compute::median(grouped[v].prefill_ms);
  }
  // A decode step all-reduces a [1, hidden] fp32 row twice a layer, each
  // member sending one piece per ring step (a swap's row for two members,
  // the whole rows round the ring for more); greedy, it then gathers each
  // member's best (value, id): n - 1 pieces of 16 bytes per member.
  const double row = config.hidden_size * 4.0;
  const auto all_reduce = all_reduce_schedule_of(n, config.hidden_size * std::int64_t{4});
  const double minimum_bytes =
      config.num_layers * 2 * all_reduce.steps * row / all_reduce.pieces + (n - 1) * 16.0;
  nlohmann::json per_member = nlohmann::json::array();
  const double tokens = static_cast<double>(std::max<std::size_t>(decoded, 1)) * o.repeats;
  for (int m = 0; m < n; ++m)
    per_member.push_back({{"node", "tpgroup" + std::to_string(m)},
                          {"compute_ms_per_token", decode_use[m].compute_ms / tokens},
                          {"ring_wait_ms_per_token", decode_use[m].wait_ms / tokens},
                          {"ring_bytes_per_token", decode_use[m].collective_bytes / static_cast<double>(std::max<std::size_t>(decoded, 1))}});
  return {{"model", model},
          {"members", n},
          {"group_threads", group_threads},
          {"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"prefill_tokens", o.prefill_tokens},
          {"rounds", o.repeats},
          {"tiles", o.tiles},
          {threads_name, summary(local_threaded)},
          {"one_process_1_thread", summary(local1)},
          {"group", variant_json},
          {"pipeline", summary(piped)},
          {"group_decode_over_" + threads_name.substr(12), group_decode / compute::median(local_threaded.decode_ms)},
          {"group_decode_over_pipeline", group_decode / compute::median(piped.decode_ms)},
          {"group_prefill_speedup_over_1_thread", prefill_speedups},
          {"decode_per_member", per_member},
          {"decode_ring_bytes_theoretical_minimum", minimum_bytes},
          {"read_bandwidth_bytes_per_s", {{"1_thread", bandwidth_1}, {threads_name.substr(12), bandwidth_n}}},
          {"group_decode_over_pipeline_floor", bandwidth_1 / bandwidth_n},
          {"collectives",
           "decode: an all-reduce after each attention and MLP, then (vocabulary-parallel LM head, greedy) an all-gather "
           "of each member's best (value, id); prefill: the same (all_reduce) or reduce-scatter + all-gather around "
           "connective blocks run on each member's rows (sequence_parallel), with partial sums computed and sent in "
           "column tiles (_tiled)"}};
}

}  // namespace

void add_parallel_bench(CLI::App& bench) {
  auto opts = std::make_shared<parallel_bench_options>();
  auto* cmd = bench.add_subcommand(
      "parallel",
      "A tensor-parallel group of node processes vs one process with as many threads vs a pipeline of the same nodes "
      "(loopback)");
  cmd->add_option("--topology", opts->topology,
                  "A topology whose nodes form one group (their threads and speeds; its model unless --model); "
                  "default: 2 one-thread members of equal speed")
      ->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Model directory (e.g. from `orrery model init --preset small`)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length for the decode figures, BOS included")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Decode steps timed")->capture_default_str()->check(at_least(1));
  cmd->add_option("--prefill-tokens", opts->prefill_tokens, "Prompt length for the prefill figures")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--tiles", opts->tiles, "Column tiles of the tiled variant")->capture_default_str()->check(between(2, 64));
  cmd->add_option("--repeats", opts->repeats, "Alternating rounds; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--base-port", opts->base_port, "First of the loopback ports the nodes use (64 from there)")
      ->capture_default_str()
      ->check(between(1024, 65000));
  cmd->callback([opts] {
    if (opts->topology.empty() && opts->model.empty()) throw CLI::RequiredError("--model or --topology");
    std::cout << run(*opts).dump(2) << std::endl;
  });
}

}  // namespace orrery::deploy
