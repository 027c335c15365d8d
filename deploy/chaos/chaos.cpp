#include "deploy/chaos/chaos.hpp"

#include <signal.h>

#include <chrono>
#include <ctime>
#include <ostream>
#include <random>
#include <stdexcept>
#include <vector>

#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/run_registry.hpp"
#include "deploy/testbed/testbed.hpp"

namespace orrery::deploy {

namespace {

using std::chrono::steady_clock;

steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<steady_clock::duration>(std::chrono::duration<double>(s));
}

/// Waits until `deadline`; returns the SIGINT or SIGTERM that cut the wait
/// short, or 0 (stop signals must be blocked: block_stop_signals). Not
/// wait_for_stop_signal, which looks at the clock only every 200 ms: a
/// `--freeze-for 0.5` should last 0.5 s, not 0.6.
int sleep_until(steady_clock::time_point deadline) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  for (auto now = steady_clock::now(); now < deadline; now = steady_clock::now()) {
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
    const timespec timeout{static_cast<time_t>(left / 1'000'000'000), static_cast<long>(left % 1'000'000'000)};
    if (int signal = ::sigtimedwait(&stop, nullptr, &timeout); signal > 0) return signal;
  }
  return 0;
}

std::string partition_unavailable(const std::string& topology_file) {
  return "--action partition takes a node's network link down, which needs nodes started by `orrery testbed up` (each "
         "behind its own link); the nodes of `orrery up` share this machine's loopback, and " + topology_file +
         " describes no testbed (add a `testbed:` section, see deploy/topologies/README.md). Use --action kill or "
         "--action freeze";
}

/// The processes chaos may act on now: node `name`'s, or every registered
/// node's when `name` is empty. A registered node that is not running gets a
/// `skip` line instead.
std::vector<node_process> live_nodes(const run_record& r, const std::string& name, std::ostream& log) {
  std::vector<node_process> live;
  bool listed = false;
  for (const auto& n : r.nodes) {
    if (!name.empty() && n.name != name) continue;
    listed = true;
    if (auto process = node_process::open(n, r.topology))
      live.push_back(std::move(*process));
    else
      log << utc_timestamp() << " skip node '" << n.name << "' (registered pid " << n.pid << "): not running" << std::endl;
  }
  if (!listed)
    log << utc_timestamp() << " skip node '" << name << "': the registry of cluster '" << r.cluster
        << "' lists no such node (it was written for " << r.topology.string() << ")" << std::endl;
  return live;
}

/// SIGSTOP, the freeze, SIGCONT — also when a stop signal cuts the freeze
/// short, so chaos never leaves a node frozen. Returns that signal, or 0.
int freeze(const node_process& target, double freeze_for_s, std::ostream& log) {
  if (!target.send(SIGSTOP)) {
    log << utc_timestamp() << " skip " << target.label() << ": exited before SIGSTOP" << std::endl;
    return 0;
  }
  log << utc_timestamp() << " freeze " << target.label() << " for " << freeze_for_s << " s" << std::endl;
  int signal = sleep_until(steady_clock::now() + seconds(freeze_for_s));
  log << utc_timestamp() << (target.send(SIGCONT) ? " continue " : " skip continuing (it exited while frozen) ")
      << target.label() << std::endl;
  return signal;
}

/// The node's testbed link down, the partition, the link up again — also when
/// a stop signal cuts the partition short. Returns that signal, or 0.
int partition(const topology& t, const node_process& target, double partition_for_s, std::ostream& log) {
  const testbed_link link(t, target.name());
  link.cut();
  log << utc_timestamp() << " partition " << target.label() << " for " << partition_for_s << " s (" << link.describe()
      << " down)" << std::endl;
  int signal = sleep_until(steady_clock::now() + seconds(partition_for_s));
  link.restore();
  log << utc_timestamp() << " restore " << target.label() << " (" << link.describe() << " up)" << std::endl;
  return signal;
}

/// One action on node `o.node` or a random live node of `t`; returns the stop
/// signal that cut a freeze or partition short, or 0.
int act_once(const chaos_options& o, const topology& t, std::mt19937_64& random, std::ostream& log) {
  // Re-read every time: `up --restart-after` gives restarted nodes new pids.
  auto live = live_nodes(read_registry(t.cluster, o.topology), o.node, log);
  if (live.empty()) {
    if (o.node.empty()) log << utc_timestamp() << " skip: no node of cluster '" << t.cluster << "' is running" << std::endl;
    return 0;
  }
  const auto& target = live[std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(random)];
  if (o.action == "freeze") return freeze(target, o.freeze_for_s, log);
  if (o.action == "partition") return partition(t, target, o.partition_for_s, log);
  log << utc_timestamp() << (target.send(SIGKILL) ? " kill " : " skip (exited before SIGKILL) ") << target.label()
      << std::endl;
  return 0;
}

}  // namespace

// -- orrery chaos ------------------------------------------------------------------

void run_chaos(const chaos_options& o, std::ostream& log) {
  if (o.times > 1 && o.every_s <= 0)
    throw std::runtime_error("--times " + std::to_string(o.times) + " needs --every SECONDS, the interval between actions");
  const auto t = load_topology(o.topology);
  if (o.action == "partition" && !t.testbed) throw std::runtime_error(partition_unavailable(o.topology));
  if (!o.node.empty()) t.node(o.node);  // throws naming the topology's nodes
  read_registry(t.cluster, o.topology);  // fails now rather than after --delay
  block_stop_signals();
  const auto seed = o.seed ? *o.seed : std::random_device{}();
  std::mt19937_64 random(seed);
  log << utc_timestamp() << " chaos on cluster '" << t.cluster << "': " << o.action << " "
      << (o.node.empty() ? "a random node (seed " + std::to_string(seed) + ")" : "node '" + o.node + "'") << ", "
      << o.times << " time(s)";
  if (o.times > 1) log << " every " << o.every_s << " s";
  log << std::endl;

  const auto first = steady_clock::now() + seconds(o.delay_s);
  for (int i = 0; i < o.times; ++i) {
    int signal = sleep_until(first + i * seconds(o.every_s));
    if (signal == 0) signal = act_once(o, t, random, log);
    if (signal != 0) {
      log << utc_timestamp() << " chaos stopped by signal " << signal << std::endl;
      return;
    }
  }
}

}  // namespace orrery::deploy
