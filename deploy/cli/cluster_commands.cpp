// `orrery node` and `orrery up`: running the nodes of a topology.

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <map>
#include <memory>
#include <optional>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/cluster/run_registry.hpp"

namespace orrery::deploy {

namespace {

struct node_options {
  std::string topology;
  std::string name;
};

struct up_options {
  std::string topology;
  /// Seconds after which a node that exited is started again; empty: never.
  std::optional<double> restart_after_s;
};

using clock_type = std::chrono::steady_clock;

/// When each exited node is due to be started again.
using restart_schedule = std::map<std::string, clock_type::time_point>;

/// Prints a line per node that exited; with a restart delay, schedules its restart.
void report_exits(local_cluster& cluster, const std::optional<double>& restart_after_s, restart_schedule& restarts) {
  while (auto gone = cluster.exited_node()) {
    std::cout << utc_timestamp() << " node '" << gone->name << "' exited (" << gone->describe() << ")";
    if (restart_after_s) {
      restarts[gone->name] = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                                     std::chrono::duration<double>(*restart_after_s));
      std::cout << "; restarting it in " << *restart_after_s << " s";
    }
    std::cout << std::endl;
  }
}

/// Starts the nodes whose restart is due and registers their new pids.
void restart_due(local_cluster& cluster, run_registry& registry, restart_schedule& restarts) {
  for (auto it = restarts.begin(); it != restarts.end();) {
    if (clock_type::now() < it->second) {
      ++it;
      continue;
    }
    cluster.restart(it->first);
    registry.record(it->first, cluster.pid(it->first));
    std::cout << utc_timestamp() << " node '" << it->first << "' restarted (pid " << cluster.pid(it->first) << ")"
              << std::endl;
    it = restarts.erase(it);
  }
}

void run_up(const up_options& o) {
  auto t = load_topology(o.topology);
  block_stop_signals();
  std::cout << describe_placement(t) << std::flush;
  local_cluster cluster(t);
  cluster.wait_ready(t.connect_timeout * 4);
  run_registry registry(t, cluster);
  std::cout << "cluster '" << t.cluster << "' is up: " << t.nodes.size() << " node(s), listed in "
            << registry.path().string() << ". Generate with `orrery generate --topology " << o.topology
            << " --prompt …`; Ctrl-C stops them all." << std::endl;
  // A node that exits leaves the others running: `orrery chaos` kills nodes
  // precisely to see how the rest of the cluster copes.
  restart_schedule restarts;
  int signal = wait_for_stop_signal([&] {
    report_exits(cluster, o.restart_after_s, restarts);
    restart_due(cluster, registry, restarts);
    return cluster.any_running() || !restarts.empty();
  });
  cluster.stop();
  if (signal == 0) throw std::runtime_error("every node of '" + t.cluster + "' has exited");
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
  auto opts = std::make_shared<up_options>();
  auto restart_after_s = std::make_shared<double>();
  auto* cmd = app.add_subcommand(
      "up", "Start every node of a topology as local child processes until Ctrl-C; a node that exits leaves the others running");
  cmd->footer(
      "Each node that exits is reported with a time stamp, as `node 'b' exited (killed by signal 9)` or\n"
      "`(exit status 1)`. The pid and address of every node go to a run registry,\n"
      "${XDG_RUNTIME_DIR:-/tmp}/orrery-UID/CLUSTER.json, for `orrery chaos`; it is rewritten when a node is\n"
      "restarted and removed when `up` stops. `up` exits with an error once no node is left running.");
  cmd->add_option("topology", opts->topology, "Topology file (YAML)")->required()->check(CLI::ExistingFile);
  auto* restart = cmd->add_option("--restart-after", *restart_after_s,
                                  "Start a node that exited again after this many seconds: same name and arguments, "
                                  "a new process (default: never)")
                      ->check(at_least(0.0));
  cmd->callback([opts, restart_after_s, restart] {
    if (restart->count() > 0) opts->restart_after_s = *restart_after_s;
    run_up(*opts);
  });
}

}  // namespace orrery::deploy
