// `orrery demo`: the quick start's main job. Starts the bundled 4-node
// loopback topology as child processes, generates over the pipeline with the
// model orrery trained on the King James Bible (deploy/models/kjv-tiny),
// prints per-stage times and shuts it all down.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "compute/bounded_file.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/training/trainer.hpp"

namespace orrery::deploy {

namespace {

struct demo_options {
  std::string topology = ORRERY_SOURCE_DIR "/deploy/topologies/demo4.yaml";
  std::string prompt = "And God said";
  int max_tokens = 120;
};

// What the model is, for the line before its text: where `orrery train` left
// a record beside it, how long and on what it was trained.
std::string model_origin(const std::filesystem::path& model) {
  const auto state = model / training_state_file;
  if (!std::filesystem::exists(state)) return "the model in " + model.string();
  auto j = compute::read_json_object(state, compute::max_model_json_bytes);
  const auto data = std::filesystem::path(j.value("data", nlohmann::json::object()).value("path", std::string("?")));
  return "'" + model.filename().string() + "', trained by `orrery train` for " +
         std::to_string(j.value("next_step", 0)) + " steps on " + data.filename().string() + " (" +
         (model / "README.md").string() + ")";
}

void run_demo(const demo_options& o) {
  auto t = load_topology(o.topology);
  std::cout << "orrery demo: the '" << t.cluster << "' topology, " << t.nodes.size()
            << " node processes on this machine, one pipeline stage each\n"
            << describe_placement(t) << std::flush;
  auto logs = std::filesystem::temp_directory_path() / ("orrery-demo-" + std::to_string(::getpid()));
  local_cluster cluster(t, logs);
  cluster.wait_ready(t.connect_timeout * 4);
  std::cout << "nodes up (logs in " << logs.string() << "); greedy generation with " << model_origin(t.model)
            << ":\n\n";
  {
    pipeline_client client(t);
    generate_request request;
    request.prompt = o.prompt;
    request.max_new_tokens = o.max_tokens;
    request.stop_at_eos = false;
    generate_over(client, request, std::cout, std::cerr);
  }
  cluster.stop();
  std::cout << "stopped all " << t.nodes.size() << " nodes" << std::endl;
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto opts = std::make_shared<demo_options>();
  auto* cmd = app.add_subcommand("demo", "Generate with a model orrery trained on the King James Bible over a 4-node loopback pipeline");
  cmd->add_option("--topology", opts->topology, "Topology to run")->capture_default_str()->check(CLI::ExistingFile);
  cmd->add_option("--prompt", opts->prompt, "Prompt text")->capture_default_str();
  cmd->add_option("--max-tokens", opts->max_tokens, "Tokens to generate")->capture_default_str()->check(at_least(1));
  cmd->callback([opts] { run_demo(*opts); });
}

}  // namespace orrery::deploy
