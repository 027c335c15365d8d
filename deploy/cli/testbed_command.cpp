// `orrery testbed up|down|exec|status`: an emulated edge cluster on this
// machine (deploy/testbed/testbed.hpp).

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/testbed/testbed.hpp"

namespace orrery::deploy {

namespace {

const char* const testbed_footer = R"(Every subcommand needs root (network namespaces, tc and cgroups do).

What `up F` creates, all named after the topology's `cluster:` (CLUSTER below):
  network namespaces orrery-CLUSTER-NODE (one per node, its `eth0` holding the node's
    address), orrery-CLUSTER-client (the client's address) and orrery-CLUSTER-bridge (a
    bridge `br0` with one veth port per node, `v-NODE`, and `v.client`);
  `tc qdisc tbf` on a node's `eth0` (its egress) and on its bridge port (its ingress),
    for the rates of its `emulate:`;
  cgroups /sys/fs/cgroup/cpu/orrery-CLUSTER-NODE (cpu.cfs_period_us 10000,
    cpu.cfs_quota_us = share x period) and /sys/fs/cgroup/memory/orrery-CLUSTER-NODE
    (memory.limit_in_bytes), for the limits it has;
  one `orrery node --topology F --name NODE` per node, in its namespace and cgroups,
    detached, logging to ${XDG_RUNTIME_DIR:-/tmp}/orrery-UID/testbed-CLUSTER/NODE.log;
  the state file testbed-CLUSTER/state.json beside those logs, listing all of the above,
    and the run registry CLUSTER.json that `orrery chaos` reads.
The machine's own network namespace gets no interface, address or route: only commands
run with `orrery testbed exec F -- …` reach the nodes. `down F` removes exactly what the
state file lists.)";

}  // namespace

void add_testbed_command(CLI::App& app) {
  auto* testbed = app.add_subcommand(
      "testbed", "An emulated edge cluster on this machine: each node in its own network namespace behind a "
                 "rate-limited link, with a CPU quota and a memory cap (needs root)");
  testbed->footer(testbed_footer);
  testbed->require_subcommand(1);

  auto up = std::make_shared<testbed_up_options>();
  auto* up_cmd = testbed->add_subcommand(
      "up", "Create the namespaces, veths, bridge, tbf shaping and cgroups of a topology's testbed and start its "
            "nodes there, detached (needs root)");
  up_cmd->footer(testbed_footer);
  up_cmd->add_option("topology", up->topology, "Topology file with a `testbed:` section or `emulate:` nodes")
      ->required()
      ->check(CLI::ExistingFile);
  up_cmd->add_option("--ready-timeout", up->ready_timeout_s,
                     "Seconds every node has to accept connections from the client namespace")
      ->capture_default_str()
      ->check(above(0.0));
  up_cmd->callback([up] { testbed_up(*up, std::cout); });

  auto down = std::make_shared<std::string>();
  auto* down_cmd = testbed->add_subcommand(
      "down", "Stop the testbed's nodes and remove the cgroups, namespaces (with their veths) and files its state "
              "file lists, and nothing else; nothing to remove is not an error (needs root)");
  down_cmd->add_option("topology", *down, "Topology file the testbed was started from")->required()->check(CLI::ExistingFile);
  down_cmd->callback([down] { testbed_down(*down, std::cout); });

  auto exec_topology = std::make_shared<std::string>();
  auto command = std::make_shared<std::vector<std::string>>();
  auto* exec_cmd = testbed->add_subcommand(
      "exec", "Run a command in the testbed's client namespace, the one place that reaches the nodes; exits with "
              "its status (needs root; creates nothing)");
  exec_cmd->footer(
      "Example: orrery testbed exec F -- orrery generate --topology F --prompt 'Hello'\n"
      "(CLIENT: the testbed's client address, which the last stage sends tokens back to).");
  exec_cmd->add_option("topology", *exec_topology, "Topology file the testbed was started from")
      ->required()
      ->check(CLI::ExistingFile);
  exec_cmd->add_option("command", *command, "The command and its arguments, after `--`")->required();
  exec_cmd->callback([exec_topology, command] {
    if (int status = testbed_exec(*exec_topology, *command); status != 0) throw CLI::RuntimeError(status);
  });

  auto status = std::make_shared<std::string>();
  auto* status_cmd = testbed->add_subcommand(
      "status", "What the testbed's state file lists, and whether each node runs and is reachable from the client "
                "namespace (needs root; creates nothing)");
  status_cmd->add_option("topology", *status, "Topology file the testbed was started from")
      ->required()
      ->check(CLI::ExistingFile);
  status_cmd->callback([status] { testbed_status(*status, std::cout); });
}

}  // namespace orrery::deploy
