// `orrery demo`: the quick start's main job. Creates the `tiny` model if it is
// absent, starts the bundled 4-node loopback topology as child processes,
// generates over the pipeline, prints per-stage times and shuts it all down.

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"

namespace orrery::deploy {

namespace {

struct demo_options {
  std::string topology = ORRERY_SOURCE_DIR "/deploy/topologies/demo4.yaml";
  std::string model = ORRERY_SOURCE_DIR "/models/tiny";
  std::string prompt = "The orrery turns: ";
  int max_tokens = 48;
};

void run_demo(const demo_options& o) {
  ensure_model(o.model, "tiny", 0);
  auto t = load_topology(o.topology);
  std::cout << "orrery demo: the '" << t.cluster << "' topology, " << t.nodes.size()
            << " node processes on this machine, one pipeline stage each\n"
            << describe_placement(t) << std::flush;
  auto logs = std::filesystem::temp_directory_path() / ("orrery-demo-" + std::to_string(::getpid()));
  local_cluster cluster(t, logs);
  cluster.wait_ready(t.connect_timeout * 4);
  std::cout << "nodes up (logs in " << logs.string() << "); greedy generation with the random-initialised '"
            << t.model.filename().string() << "' model (arbitrary bytes, shown escaped):\n\n";
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
  auto* cmd = app.add_subcommand("demo", "Run the tiny model over a 4-node loopback pipeline (creating it if absent)");
  cmd->add_option("--topology", opts->topology, "Topology to run")->capture_default_str()->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Where the tiny model is created if absent (the topology must name it)")
      ->capture_default_str();
  cmd->add_option("--prompt", opts->prompt, "Prompt text")->capture_default_str();
  cmd->add_option("--max-tokens", opts->max_tokens, "Tokens to generate")->capture_default_str()->check(at_least(1));
  cmd->callback([opts] { run_demo(*opts); });
}

}  // namespace orrery::deploy
