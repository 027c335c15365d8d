// `orrery serve`: the OpenAI HTTP API over a model on this machine (--model)
// or over the nodes of a running topology (--topology).

#include <CLI/CLI.hpp>
#include <csignal>
#include <iostream>
#include <memory>
#include <thread>

#include "compute/cpu_threads.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"
#include "deploy/serving/server.hpp"

namespace orrery::deploy {

namespace {

// The workload an automatic placement is planned for when serving: requests
// come and go, so a typical chat turn.
constexpr int planned_prompt_tokens = 128;
constexpr int planned_new_tokens = 128;

struct serve_command_options {
  std::string model;
  std::string topology;
  std::string advertise_host;
  local_device where{"cpu", "", compute::default_thread_count()};
  serve_options serve;
};

void run_serve(const serve_command_options& o) {
  // Before any thread starts, so the signals can be waited for.
  block_stop_signals();
  std::signal(SIGPIPE, SIG_IGN);  // a client that went away is a failed write, not the end of the server
  std::unique_ptr<pipeline_client> client;
  if (!o.topology.empty()) {
    auto t = load_topology(o.topology);
    if (t.auto_placement) t = resolve_placement(t, o.serve.http_threads, planned_prompt_tokens, planned_new_tokens, std::cerr);
    client = std::make_unique<pipeline_client>(t, o.advertise_host);
  } else {
    check_runs_here(o.where);
    client = std::make_unique<pipeline_client>(o.model, o.where.device, o.where.resolved_dtype(), o.where.threads);
  }
  openai_server server(*client, o.serve);
  const int port = server.bind();
  std::thread http([&server] { server.run(); });
  std::cout << "serving " << server.description() << " on http://" << o.serve.host << ":" << port
            << (o.serve.api_key.empty() ? "" : " (API key required)") << "; Ctrl-C stops" << std::endl;
  const int signal = wait_for_stop_signal();
  std::cout << "serve: stopping on signal " << signal << std::endl;
  server.stop();
  http.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto opts = std::make_shared<serve_command_options>();
  auto* cmd = app.add_subcommand(
      "serve",
      "Serve the OpenAI HTTP API (/v1/models, /v1/completions, /v1/chat/completions with streaming, /health, /metrics) over a "
      "model here or a running topology; concurrent requests share the pipeline");
  auto* model = cmd->add_option("--model", opts->model, "HF-layout model directory: serve it from this machine")->check(CLI::ExistingDirectory);
  auto* topology = cmd->add_option("--topology", opts->topology, "Topology file: serve over its running nodes (see `orrery up`)")
                       ->check(CLI::ExistingFile);
  model->excludes(topology);
  cmd->add_option("--host", opts->serve.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", opts->serve.port, "Port to listen on (0: any free port, printed at start)")
      ->capture_default_str()
      ->check(between(0, 65535));
  cmd->add_option("--api-key", opts->serve.api_key,
                  "Require 'Authorization: Bearer KEY' on /v1/... (default: $ORRERY_API_KEY; unset: open)")
      ->envname("ORRERY_API_KEY");
  cmd->add_option("--model-name", opts->serve.model_name, "The model's id in the API (default: the model directory's name)");
  cmd->add_option("--http-threads", opts->serve.http_threads, "Requests answered at once (a streaming request holds one)")
      ->capture_default_str()
      ->check(between(1, 4096));
  cmd->add_option("--speculate", opts->serve.speculate,
                  "Guess up to this many tokens per trip through the pipeline (prompt lookup; the text is the same); 0 keeps "
                  "every decode step one token, which the stages batch across requests")
      ->capture_default_str()
      ->check(between(0, 32));
  cmd->add_option("--advertise-host", opts->advertise_host,
                  "With --topology: the address the last stage reaches this process at (default: as for generate)");
  add_device_flags(*cmd, opts->where);
  cmd->callback([opts] {
    if (opts->model.empty() && opts->topology.empty())
      throw std::invalid_argument("serve needs --model DIR (this machine) or --topology FILE (a cluster)");
    run_serve(*opts);
  });
}

}  // namespace orrery::deploy
