// `orrery chaos`: kill or freeze nodes that `orrery up` or `orrery testbed up`
// started, or cut a testbed node's link (deploy/chaos/chaos.hpp).

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "deploy/chaos/chaos.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"

namespace orrery::deploy {

namespace {

const char* const chaos_footer = R"(Finding the nodes: `orrery up F` writes the pid and control address of each node it started
to a run registry, ${XDG_RUNTIME_DIR:-/tmp}/orrery-UID/CLUSTER.json (CLUSTER: the topology's
`cluster:` name), rewrites it when a node is restarted (`orrery up --restart-after`) and
removes it when it stops; `orrery testbed up F` writes one that `orrery testbed down F`
removes. chaos re-reads it before every action. Without one it fails, naming the path:
start the cluster with `orrery up F` or `orrery testbed up F` first.

Safety: a node is signalled only if its pid is alive and its /proc/PID/cmdline is exactly
`orrery node --topology F --name NAME`; the signal goes through a pidfd, so a pid the node
left behind and another process took is never signalled. A registered node that is not
running is skipped with a `skip` line; the random choice picks among running nodes only.

Output: one line per action, e.g.
  2024-05-01T12:00:00.123Z kill node 'b' pid 4242
  2024-05-01T12:00:02.123Z freeze node 'a' pid 4240 for 5 s
  2024-05-01T12:00:07.124Z continue node 'a' pid 4240
  2024-05-01T12:00:09.000Z partition node 'c' pid 4241 for 3 s (veth v-c in netns orrery-lab-bridge down)
  2024-05-01T12:00:12.001Z restore node 'c' pid 4241 (veth v-c in netns orrery-lab-bridge up)
(ISO-8601 UTC with milliseconds, as `orrery up` stamps its `node 'b' exited` lines).

partition needs nodes started by `orrery testbed up` (and root): it sets the bridge-side end
of the node's veth pair down, so nothing reaches the node or leaves it, and up again after
--partition-for; the link's tbf shaping stays attached meanwhile. With `orrery up`, whose
nodes share this machine's loopback, it is an error.

Ctrl-C or SIGTERM during a freeze sends SIGCONT, during a partition brings the link up,
before chaos exits. A chaos process killed with SIGKILL leaves its node frozen (`kill -CONT
PID`) or cut off (`ip -n orrery-CLUSTER-bridge link set v-NODE up`).)";

}  // namespace

void add_chaos_command(CLI::App& app) {
  auto opts = std::make_shared<chaos_options>();
  auto seed = std::make_shared<std::uint64_t>();
  auto* cmd = app.add_subcommand(
      "chaos", "Kill, freeze or cut off nodes started by `orrery up` or `orrery testbed up`: a named or random one, N times");
  cmd->footer(chaos_footer);
  cmd->add_option("--topology", opts->topology, "Topology file the cluster was started from (`orrery up` or `orrery testbed up`)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--action", opts->action,
                  "kill: SIGKILL; freeze: SIGSTOP, then SIGCONT after --freeze-for; partition: the node's link down for "
                  "--partition-for (testbed only)")
      ->capture_default_str()
      ->check(CLI::IsMember({"kill", "freeze", "partition"}));
  cmd->add_option("--node", opts->node, "The node to act on (default: a random running node each time)");
  auto* seed_option =
      cmd->add_option("--seed", *seed, "Seed of the random choice of node (default: a fresh seed, printed)")
          ->check(at_least<std::uint64_t>(0));
  cmd->add_option("--times", opts->times, "How many actions")->capture_default_str()->check(at_least(1));
  cmd->add_option("--every", opts->every_s, "Seconds between the starts of successive actions (needed with --times > 1)")
      ->capture_default_str()
      ->check(at_least(0.0));
  cmd->add_option("--freeze-for", opts->freeze_for_s, "Seconds a frozen node stays stopped before SIGCONT")
      ->capture_default_str()
      ->check(above(0.0));
  cmd->add_option("--partition-for", opts->partition_for_s, "Seconds a partitioned node stays cut off before its link is restored")
      ->capture_default_str()
      ->check(above(0.0));
  cmd->add_option("--delay", opts->delay_s, "Seconds to wait before the first action")
      ->capture_default_str()
      ->check(at_least(0.0));
  cmd->callback([opts, seed, seed_option] {
    if (seed_option->count() > 0) opts->seed = *seed;
    run_chaos(*opts, std::cout);
  });
}

}  // namespace orrery::deploy
