// `orrery node` and `orrery up`: running the nodes of a topology.

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "deploy/cluster.hpp"
#include "deploy/local_cluster.hpp"
#include "deploy/commands.hpp"

namespace orrery::deploy {

namespace {

struct node_options {
  std::string topology;
  std::string name;
};

void run_up(const std::string& file) {
  auto t = load_topology(file);
  block_stop_signals();
  std::cout << describe_placement(t) << std::flush;
  local_cluster cluster(t);
  cluster.wait_ready(t.connect_timeout * 4);
  std::cout << "cluster '" << t.cluster << "' is up: " << t.nodes.size()
            << " node(s). Generate with `orrery generate --topology " << file << " --prompt …`; Ctrl-C stops them all."
            << std::endl;
  std::string gone;
  int signal = wait_for_stop_signal([&] { return (gone = cluster.exited_node()).empty(); });
  cluster.stop();
  if (signal == 0) throw std::runtime_error("node '" + gone + "' exited; stopped the other nodes");
  std::cout << "stopped every node of '" << t.cluster << "'" << std::endl;
}

}  // namespace

void add_node_command(CLI::App& app) {
  auto opts = std::make_shared<node_options>();
  auto* cmd = app.add_subcommand("node", "Run one node of a topology in this process until SIGINT/SIGTERM");
  cmd->add_option("--topology", opts->topology, "Topology file (YAML)")->required()->check(CLI::ExistingFile);
  cmd->add_option("--name", opts->name, "Which node of the topology this process is")->required();
  cmd->callback([opts] { run_node(load_topology(opts->topology), opts->name); });
}

void add_up_command(CLI::App& app) {
  auto file = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("up", "Start every node of a topology as local child processes; Ctrl-C stops them all");
  cmd->add_option("topology", *file, "Topology file (YAML)")->required()->check(CLI::ExistingFile);
  cmd->callback([file] { run_up(*file); });
}

}  // namespace orrery::deploy
