// `orrery bench serve`: N concurrent streaming clients (real HTTP, one
// thread each) against `orrery serve`'s server over one process and over a
// topology's node processes, measured side by side in one run.

#include <unistd.h>

#include <httplib.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/serving/server.hpp"

namespace orrery::deploy {

namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

struct serve_bench_options {
  std::string topology = "deploy/topologies/demo4.yaml";
  std::string model;
  std::vector<int> clients{1, 4, 16};
  int prompt_tokens = 32;
  int new_tokens = 64;
  int threads = 1;
  double temperature = 0;
};

// What one streaming client saw.
struct client_run {
  double ttft_ms = -1;
  std::vector<double> gaps_ms;  // between events that carried text
  std::size_t tokens = 0;       // the usage chunk's completion_tokens
  std::string error;
};

// One streaming completion over its own HTTP connection.
client_run stream_once(int port, const std::string& model, const std::string& prompt, int tokens, double temperature,
                       std::uint64_t seed) {
  client_run run;
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(std::chrono::seconds(300));
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = {{"Content-Type", "application/json"}};
  req.body = json{{"model", model}, {"prompt", prompt}, {"max_tokens", tokens}, {"temperature", temperature}, {"seed", seed},
                  {"stream", true}, {"stream_options", {{"include_usage", true}}}}
                 .dump();
  const auto start = clock_type::now();
  auto last = start;
  std::string pending;
  req.content_receiver = [&](const char* data, std::size_t length, std::uint64_t, std::uint64_t) {
    pending.append(data, length);
    for (auto end = pending.find("\n\n"); end != std::string::npos; end = pending.find("\n\n")) {
      const auto event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: {", 0) != 0) continue;
      const auto j = json::parse(event.substr(6));
      if (j.contains("error")) run.error = j["error"].value("message", "error");
      if (j.contains("usage") && j["usage"].is_object()) run.tokens = j["usage"]["completion_tokens"].get<std::size_t>();
      if (j["choices"].empty() || j["choices"][0].value("text", "").empty()) continue;
      const auto now = clock_type::now();
      if (run.ttft_ms < 0)
        run.ttft_ms = std::chrono::duration<double, std::milli>(now - start).count();
      else
        run.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
      last = now;
    }
    return true;
  };
  auto result = http.send(req);
  if (!result) run.error = "HTTP: " + httplib::to_string(result.error());
  else if (result->status != 200) run.error = "HTTP " + std::to_string(result->status) + ": " + result->body;
  return run;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

// `clients` streams at once against the server on `port`.
json measure(int port, const std::string& model, int clients, const serve_bench_options& o) {
  std::vector<client_run> runs(static_cast<std::size_t>(clients));
  std::vector<std::thread> threads;
  const auto start = clock_type::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      runs[static_cast<std::size_t>(c)] =
          stream_once(port, model, compute::bench_prompt(o.prompt_tokens), o.new_tokens, o.temperature,
                      static_cast<std::uint64_t>(c) + 1);
    });
  for (auto& t : threads) t.join();
  const double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  std::vector<double> ttft, gaps;
  std::size_t tokens = 0;
  for (const auto& r : runs) {
    if (!r.error.empty()) throw std::runtime_error("bench serve: a client failed: " + r.error);
    ttft.push_back(r.ttft_ms);
    gaps.insert(gaps.end(), r.gaps_ms.begin(), r.gaps_ms.end());
    tokens += r.tokens;
  }
  return {{"clients", clients},
          {"tokens", tokens},
          {"seconds", seconds},
          {"tokens_per_s", static_cast<double>(tokens) / seconds},
          {"ttft_ms_p50", percentile(ttft, 0.5)},
          {"ttft_ms_p99", percentile(ttft, 0.99)},
          {"itl_ms_p50", percentile(gaps, 0.5)},
          {"itl_ms_p99", percentile(gaps, 0.99)}};
}

// Every client count against one layout's server; the stages' batching.
json bench_layout(pipeline_client& client, const std::string& name, const serve_bench_options& o) {
  serve_options so;
  so.port = 0;
  so.http_threads = *std::max_element(o.clients.begin(), o.clients.end()) + 4;
  openai_server server(client, so);
  const int port = server.bind();
  std::thread http([&] { server.run(); });
  json out = {{"layout", name}, {"runs", json::array()}};
  try {
    const auto model = client.placed().model.filename().string();
    std::cerr << "bench serve: " << name << ": warm-up\n";
    measure(port, model, 1, o);
    for (int n : o.clients) {
      std::cerr << "bench serve: " << name << ": " << n << " concurrent streaming client(s)\n";
      const auto before = client.stats();
      auto run = measure(port, model, n, o);
      const auto after = client.stats();
      json stages = json::array();
      for (std::size_t i = 0; i < after.size(); ++i) {
        const auto batches = after[i].batches - before[i].batches;
        const auto batched = after[i].batched_frames - before[i].batched_frames;
        const auto frames = after[i].frames - before[i].frames;
        stages.push_back({{"node", after[i].node},
                          {"frames", frames},
                          {"batched_frames", batched},
                          {"mean_batch", batches > 0 ? static_cast<double>(batched) / static_cast<double>(batches) : 1.0}});
      }
      run["stages"] = stages;
      out["runs"].push_back(run);
    }
  } catch (...) {
    server.stop();
    http.join();
    throw;
  }
  server.stop();
  http.join();
  const auto& runs = out["runs"];
  out["scaling"] = runs.back()["tokens_per_s"].get<double>() / runs.front()["tokens_per_s"].get<double>();
  return out;
}

json run(const serve_bench_options& o) {
  auto t = load_topology_for_model(o.topology, o.model);
  json layouts = json::array();
  {
    pipeline_client one(t.model, "cpu", "fp32", o.threads);
    layouts.push_back(bench_layout(one, "one process", o));
  }
  std::cerr << "bench serve: starting " << t.nodes.size() << " node processes\n";
  local_cluster cluster(t, std::filesystem::temp_directory_path() / ("orrery-bench-serve-" + std::to_string(::getpid())));
  cluster.wait_ready(t.connect_timeout * 4);
  pipeline_client pipeline(t);
  layouts.push_back(bench_layout(pipeline, std::to_string(t.nodes.size()) + "-node pipeline", o));
  return {{"model", t.model.string()},
          {"topology", t.file.string()},
          {"prompt_tokens", o.prompt_tokens},
          {"new_tokens", o.new_tokens},
          {"one_process_threads", o.threads},
          {"temperature", o.temperature},
          {"layouts", layouts},
          {"target", "16 clients >= 3x the aggregate tokens/s of 1 client on the pipeline"}};
}

}  // namespace

void add_serve_bench(CLI::App& bench) {
  auto opts = std::make_shared<serve_bench_options>();
  auto* cmd = bench.add_subcommand(
      "serve", "Concurrent streaming HTTP clients against `orrery serve` over one process and over a topology's nodes "
               "(started here as local processes): tokens/s, time to first token, inter-token latency");
  cmd->add_option("--topology", opts->topology, "Topology file; its nodes must be on this machine")
      ->capture_default_str()
      ->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Model directory (overrides the topology's)")->check(CLI::ExistingDirectory);
  cmd->add_option("--clients", opts->clients, "Concurrent client counts, each measured in turn")
      ->capture_default_str()
      ->delimiter(',')
      ->check(between(1, 1024));
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length, BOS included")->capture_default_str()->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Tokens each client asks for")->capture_default_str()->check(at_least(1));
  cmd->add_option("--temperature", opts->temperature,
                  "Sampling temperature of every client (0: greedy; above it each client has its own seed)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 2.0));
  cmd->add_option("--threads", opts->threads, "CPU threads of the one-process layout")->capture_default_str()->check(at_least(1));
  cmd->callback([opts] { std::cout << run(*opts).dump(2) << std::endl; });
}

}  // namespace orrery::deploy
