#include "deploy/cluster/cluster.hpp"

#include <algorithm>

#include <signal.h>

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <iostream>

#include "actors/blocking_client.hpp"
#include "actors/node.hpp"
#include "actors/remote_actor.hpp"
#include "messages/log.hpp"
#include "compute/generation.hpp"
#include "compute/text/tokenizer.hpp"
#include "messages/types.hpp"

namespace orrery::deploy {

actor_config::actor_config(std::chrono::milliseconds heartbeat) {
  register_types(*this);
  load<caf::io::middleman>();
  // A connection that stays silent for 4 heartbeats is dead (SIGSTOP,
  // partition); CAF then delivers down_msg for its actors.
  set("middleman.heartbeat-interval", caf::timespan{heartbeat});
  set("middleman.connection-timeout", caf::timespan{heartbeat * 4});
  // Idle scheduler workers wait on their condition variable (the next message
  // wakes them) instead of CAF's moderate polling: up to 500 wake-ups 50 us
  // apart after every message, for each of max(cores, 4) workers. In a
  // pipeline the waiting nodes polled through the computing node's turn and
  // took its cores (~40k vs ~6k wake-ups per node per benchmark; a 3-layer
  // stage 12.6 -> 10.9 ms/token, latency_ratio 1.15 -> 1.06 under load).
  set("work-stealing.moderate-poll-attempts", 0);
}

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_stop_signal(const std::function<bool()>& keep_waiting) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  timespec poll{0, 200'000'000};
  for (;;) {
    int signal = ::sigtimedwait(&set, nullptr, &poll);
    if (signal > 0) return signal;
    if (keep_waiting && !keep_waiting()) return 0;
  }
}

namespace {

/// How long a stopping node waits for its stages (a stop must take < 2 s).
constexpr std::chrono::milliseconds stop_grace{1500};

/// Why connecting to a node failed, for the line naming it unreachable.
std::string connect_failure(caf::actor_system& system, const caf::error& e, std::chrono::milliseconds timeout) {
  if (e == caf::sec::request_timeout)
    return "did not answer within the connect timeout of " + std::to_string(timeout.count()) + " ms";
  if (e == caf::sec::cannot_connect_to_node) return "nothing accepts connections there";
  if (e == caf::sec::no_actor_published_at_port) return "it published no actor";
  if (e == caf::sec::unexpected_actor_messaging_interface)
    return "what answers there is not an orrery node of this version (its messages differ)";
  return system.render(e);
}

}  // namespace

void run_node(const topology& t, const std::string& name) {
  const auto& spec = t.node(name);
  block_stop_signals();
  actor_config config(t.heartbeat_interval);
  caf::actor_system system(config);
  auto node = actors::spawn_node(system, {spec.name, spec.device, std::string(dtype_name(spec.dtype)),
                                          spec.memory_bytes.value_or(0), spec.threads, spec.host, spec.data_port});
  auto published = system.middleman().publish(node, spec.port, spec.host.c_str(), /*reuse_addr=*/true);
  if (!published) {
    caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
    throw std::runtime_error(spec.label() + ": cannot listen: " + system.render(published.error()));
  }
  std::cout << "node " << spec.name << " of cluster '" << t.cluster << "' listening on " << spec.address()
            << " (data plane " << spec.host << ":" << spec.data_port << ", " << spec.device << " " << dtype_name(spec.dtype) << ", " << spec.threads
            << " thread(s))" << std::endl;
  int signal = wait_for_stop_signal();
  std::cout << "node " << spec.name << ": stopping on signal " << signal << std::endl;
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
  // The actor system's destructor waits for every stage thread, and a stage
  // in the middle of loading or of a forward pass answers its exit only when
  // that is done (seconds for a large model). A node asked to stop stops:
  // past this grace period it exits without waiting.
  std::thread([name = spec.name, signal] {
    std::this_thread::sleep_for(stop_grace);
    logger("node").warn("node '" + name + "': a stage was still busy " + std::to_string(stop_grace.count()) +
                        " ms after the stop signal; exiting without waiting for it");
    std::cout.flush();  // _Exit flushes nothing: the node's last lines would be lost in its log
    std::_Exit(128 + signal);
  }).detach();
}

node_connections connect_nodes(caf::actor_system& system, const topology& t) {
  node_connections out;
  caf::scoped_actor self{system};
  for (const auto& n : t.nodes) {
    std::string failure;
    actors::node_actor handle;
    actors::request_remote_node(self, n.host, n.port, t.connect_timeout, [&](caf::expected<actors::node_actor> found) {
      if (found)
        handle = std::move(*found);
      else
        failure = connect_failure(system, found.error(), t.connect_timeout);
    });
    if (!failure.empty())
      out.unreachable.push_back(n.label() + " is unreachable: " + failure + " (is `orrery node --name " + n.name +
                                "` running?)");
    out.stages.push_back({n.name, n.host, n.port, handle, n.first_layer, n.last_layer, n.threads, n.group, n.slice});
  }
  return out;
}

void node_connections::require_all() const {
  if (!unreachable.empty()) throw std::runtime_error(unreachable.front());
}

pipeline_client::pipeline_client(const topology& t, std::string advertise_host)
    : topology_(t), config_(t.heartbeat_interval), system_(std::make_unique<caf::actor_system>(config_)) {
  actors::driver_config dc;
  auto nodes = connect_nodes(*system_, t);
  if (nodes.unreachable.size() == nodes.stages.size()) nodes.require_all();
  for (const auto& line : nodes.unreachable) logger("cluster").warn(line + "; planning around it");
  dc.stages = std::move(nodes.stages);
  dc.advertise_host = !advertise_host.empty() ? std::move(advertise_host) : t.testbed ? t.testbed->client : "127.0.0.1";
  start(std::move(dc));
}

pipeline_client::pipeline_client(const std::filesystem::path& model, const std::string& device, const std::string& dtype,
                                 int threads)
    : config_(topology_.heartbeat_interval), system_(std::make_unique<caf::actor_system>(config_)) {
  topology_.model = model;
  topology_.model_config = compute::llama_config::load(model / "config.json");
  topology_.num_layers = topology_.model_config.num_layers;
  actors::driver_config dc;
  auto node = actors::spawn_node(*system_, {"local", device, dtype, 0, threads, "127.0.0.1", 0});
  dc.stages.push_back({"local", "", 0, node, 0, topology_.num_layers, threads});
  start(std::move(dc));
}

void pipeline_client::start(actors::driver_config dc) {
  const auto& t = topology_;
  dc.model = t.model;
  dc.request_timeout = t.request_timeout;
  dc.collectives = t.collectives;
  dc.connect_timeout = t.connect_timeout;
  dc.heartbeat_interval = t.heartbeat_interval;
  dc.heartbeat_deadline = t.heartbeat_deadline;
  dc.rebalance_on_join = t.rebalance_on_join;
  driver_ = actors::spawn_driver(*system_, dc);
  try {
    // A deploy may outlast one request timeout: a node killed while it loads
    // is noticed only when its load request times out, and the driver then
    // deploys again around it.
    actors::deploy_blocking(*system_, driver_, t.request_timeout * 4);
  } catch (...) {
    // No destructor runs for a half-built client, and the actor system's
    // waits for every actor: the driver must be told to go.
    caf::anon_send_exit(driver_, caf::exit_reason::user_shutdown);
    throw;
  }
}

pipeline_client::~pipeline_client() {
  caf::anon_send_exit(driver_, caf::exit_reason::user_shutdown);
}

std::vector<generation_summary> pipeline_client::generate(const std::vector<generate_request>& requests,
                                                          const std::function<void(std::size_t, const token_event&)>& on_token) {
  return actors::generate_blocking(*system_, driver_, requests, topology_.request_timeout, on_token);
}

std::vector<stage_stats> pipeline_client::stats() {
  return actors::stats_blocking(*system_, driver_, topology_.request_timeout);
}

std::vector<recovery_event> pipeline_client::recoveries() {
  return actors::recoveries_blocking(*system_, driver_, topology_.request_timeout);
}

generation_summary generate_over(pipeline_client& client, const generate_request& request, std::ostream& text,
                                 std::ostream& out) {
  text << request.prompt << std::flush;
  auto summary = client.generate({request}, [&](std::size_t, const token_event& e) {
    text << compute::printable(e.text) << std::flush;
  })[0];
  text << "\n" << std::flush;
  const double ms_per_token = compute::decode_ms_per_token(summary.decode_ms, summary.tokens.size());
  char line[256];
  std::snprintf(line, sizeof line, "-- %zu tokens | prefill %.1f ms (%zu prompt tokens) | decode %.2f ms/token | %.1f tokens/s\n",
                summary.tokens.size(), summary.prefill_ms, summary.prompt_tokens.size(), ms_per_token,
                ms_per_token > 0 ? 1000.0 / ms_per_token : 0.0);
  out << line;
  if (request.prefill_chunks.size() > 1) {
    std::string lengths;
    for (auto l : request.prefill_chunks) lengths += (lengths.empty() ? "" : ", ") + std::to_string(l);
    out << "   prefill in " << request.prefill_chunks.size() << " chunks through the pipeline: " << lengths << " tokens\n";
  }
  if (summary.outline_points > 1)
    out << "   outline: " << summary.outline_points << " points written side by side, each continuing the outline's KV\n";
  else if (request.outline_points > 0)
    out << "   outline: fewer than 2 points; the answer went on as one sequence\n";
  if (request.max_drafts > 0) {
    const auto made = static_cast<double>(std::max<std::size_t>(summary.tokens.size(), 1) - 1);
    std::snprintf(line, sizeof line,
                  "   speculation: %d trips for %.0f tokens (%.2f tokens a trip), %d of %d guesses kept (%.0f%%), %d wasted\n",
                  summary.decode_trips, made, summary.decode_trips > 0 ? made / summary.decode_trips : 0.0,
                  summary.accepted, summary.drafted, summary.drafted > 0 ? 100.0 * summary.accepted / summary.drafted : 0.0,
                  summary.drafted - summary.accepted);
    out << line;
  }
  for (const auto& s : client.stats()) {
    std::snprintf(line, sizeof line, "   stage %u on %-10s layers [%d, %d): %llu frames, compute %.1f ms, transfer %.1f ms, %.1f KiB sent\n",
                  s.stage, s.node.c_str(), s.first_layer, s.last_layer, static_cast<unsigned long long>(s.frames),
                  s.compute_ms, s.transfer_ms, s.bytes_sent / 1024.0);
    out << line;
    if (s.collective_bytes_sent > 0) {
      // A group member: how much of its compute was waiting on the ring.
      std::snprintf(line, sizeof line, "      group ring: waited %.1f ms of the compute, %.1f KiB sent to the next member\n",
                    s.collective_wait_ms, s.collective_bytes_sent / 1024.0);
      out << line;
    }
  }
  return summary;
}

}  // namespace orrery::deploy
