// `orrery bench recovery`: what a node failure costs a serving pipeline. The
// same requests run twice over a topology's nodes (local processes): once
// failure-free, once while one node is killed (or frozen) mid-generation.
// Reported: how long the verdict took, how long until the replayed requests
// produced their next token, what moved, and whether every request came back
// with the failure-free tokens.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"

namespace orrery::deploy {

namespace {

struct recovery_bench_options {
  std::string topology;
  std::string model;
  std::string node;  // default: the middle node
  std::string action = "kill";
  int prompt_tokens = 32;
  int new_tokens = 64;
  int concurrent = 4;
  int act_after = 0;  // tokens streamed before the failure; default: a quarter of them
};

nlohmann::json target(double value, double limit) {
  return {{"value", value}, {"target", limit}, {"met", value >= 0 && value <= limit}};
}

nlohmann::json run(const recovery_bench_options& o) {
  auto t = load_topology_for_model(o.topology, o.model);
  if (t.nodes.size() < 2) throw std::runtime_error(t.file.string() + ": a recovery needs at least 2 nodes");
  const auto& victim = o.node.empty() ? t.nodes[t.nodes.size() / 2] : t.node(o.node);
  const int signal = o.action == "kill" ? SIGKILL : SIGSTOP;
  generate_request request{compute::bench_prompt(o.prompt_tokens), o.new_tokens, {}, false, 0, {}, 0};  // greedy
  const std::vector<generate_request> requests(static_cast<std::size_t>(o.concurrent), request);
  const int act_after = o.act_after > 0 ? o.act_after : o.concurrent * o.new_tokens / 4;

  std::cerr << "bench: starting " << t.nodes.size() << " node processes\n";
  local_cluster cluster(t, std::filesystem::temp_directory_path() / ("orrery-bench-" + std::to_string(::getpid())));
  cluster.wait_ready(t.connect_timeout * 4);
  pipeline_client client(t);
  std::cerr << "bench: " << o.concurrent << " requests without failures\n";
  auto reference = client.generate(requests);

  std::cerr << "bench: the same requests; " << victim.name << " gets " << (signal == SIGKILL ? "SIGKILL" : "SIGSTOP")
            << " after " << act_after << " tokens\n";
  const pid_t pid = cluster.pid(victim.name);
  std::int64_t acted_at = 0;
  int streamed = 0;
  std::vector<int> streamed_per_request(requests.size(), 0);
  std::vector<generation_summary> summaries;
  std::string failure;
  try {
    summaries = client.generate(requests, [&](std::size_t i, const token_event&) {
      ++streamed_per_request[i];
      if (++streamed != act_after) return;
      acted_at = unix_ms_now();
      ::kill(pid, signal);
    });
  } catch (const std::exception& e) {
    failure = e.what();
  }
  if (signal == SIGSTOP) ::kill(pid, SIGCONT);  // it is fenced when it speaks again

  int lost = summaries.empty() ? o.concurrent : 0, differing = 0, repeated = 0;
  for (std::size_t i = 0; i < summaries.size(); ++i) {
    differing += summaries[i].tokens != reference[i].tokens;
    repeated += streamed_per_request[i] != static_cast<int>(summaries[i].tokens.size());
  }
  recovery_event event;
  for (const auto& e : client.recoveries())
    if (e.node == victim.name && e.reason != "rejoined") {
      event = e;
      break;
    }
  const double detect_ms = event.verdict_unix_ms > 0 ? static_cast<double>(event.verdict_unix_ms - acted_at) : -1;
  nlohmann::json out{{"topology", t.file.string()},
                     {"model", t.model.string()},
                     {"nodes", t.nodes.size()},
                     {"action", o.action},
                     {"node", victim.name},
                     {"verdict", event.reason},
                     {"heartbeat_ms", t.heartbeat_interval.count()},
                     {"heartbeat_deadline_ms", t.heartbeat_deadline.count()},
                     {"concurrent_requests", o.concurrent},
                     {"new_tokens", o.new_tokens},
                     {"acted_after_tokens", act_after},
                     {"detect_ms", detect_ms},
                     {"recover_ms", event.recover_ms},
                     {"layers_moved", event.layers_moved},
                     {"bytes_moved", event.bytes_moved},
                     {"requests_replayed", event.requests_replayed},
                     {"requests_lost", lost},
                     {"requests_with_other_tokens", differing},
                     {"requests_with_lost_or_repeated_tokens", repeated},
                     {"targets",
                      {{"detect_ms", target(detect_ms, 2000)},
                       {"recover_ms", target(event.recover_ms, 3000)},
                       {"requests_lost", target(lost, 0)}}}};
  if (!failure.empty()) out["failure"] = failure;
  return out;
}

}  // namespace

void add_recovery_bench(CLI::App& bench) {
  auto opts = std::make_shared<recovery_bench_options>();
  auto* cmd = bench.add_subcommand(
      "recovery", "What killing (or freezing) one node mid-generation costs: detect_ms, recover_ms, what moved, requests lost");
  cmd->add_option("--topology", opts->topology, "Topology file; its nodes must be on this machine")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Model directory (overrides the topology's)")->check(CLI::ExistingDirectory);
  cmd->add_option("--node", opts->node, "The node to fail (default: the middle one in pipeline order)");
  cmd->add_option("--action", opts->action, "kill (SIGKILL) or freeze (SIGSTOP, SIGCONT at the end)")
      ->capture_default_str()
      ->check(CLI::IsMember({"kill", "freeze"}));
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length, BOS included")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Tokens per request")->capture_default_str()->check(at_least(1));
  cmd->add_option("--concurrent", opts->concurrent, "Requests in flight")->capture_default_str()->check(at_least(1));
  cmd->add_option("--after-tokens", opts->act_after, "Tokens streamed (all requests together) before the failure; "
                                                      "default: a quarter of them")
      ->check(at_least(1));
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
