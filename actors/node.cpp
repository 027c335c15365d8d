#include "actors/node.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <deque>
#include <map>
#include <random>

#include "actors/backup_store.hpp"
#include "actors/error_text.hpp"
#include "actors/profiling.hpp"
#include "actors/router.hpp"
#include "actors/shard_cache.hpp"
#include "actors/stage.hpp"
#include "actors/tensor_frame.hpp"
#include "actors/training_stage.hpp"
#include "messages/errors.hpp"
#include "messages/data_plane.hpp"
#include "messages/log.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

const logger& node_log() {
  static const logger log("node");
  return log;
}

std::uint64_t fresh_incarnation() {
  static std::random_device entropy;
  return (std::uint64_t{entropy()} << 32) | entropy();
}

/// What a node keeps for one client session: its stages, the driver that
/// owns them (monitored: when it goes, so do they) and the supervisors
/// watching the node for it. The incarnation is the session's own, so a
/// fence from one session's supervisor never drops another session's stages.
struct session_state {
  std::uint64_t incarnation = fresh_incarnation();
  /// Inference stages (stage_actor) or, for a training session, training
  /// stages (training_stage_actor); both load on load_stage_atom.
  std::map<std::uint16_t, caf::actor> stages;
  bool training = false;
  /// The newest deployment the driver has assigned stages for: a group
  /// member waiting on its ring for an older one gives up at once.
  std::shared_ptr<std::atomic<std::uint64_t>> deployment = std::make_shared<std::atomic<std::uint64_t>>(0);
  caf::actor_addr driver;
  std::map<supervisor_actor, std::chrono::milliseconds> watchers;
};

struct node_state {
  node_config config;
  /// The process's incarnation, reported outside any session.
  std::uint64_t incarnation = fresh_incarnation();
  std::shared_ptr<router> routes;
  std::shared_ptr<messages::data_plane> data_plane;
  std::shared_ptr<shard_cache> weights;
  std::shared_ptr<backup_store> backups;
  std::map<std::uint64_t, session_state> sessions;
  /// Stages this node dropped: one that had already ended when it was
  /// unlinked still sends its exit, which must not end the node. Bounded:
  /// the oldest are forgotten first.
  std::deque<caf::actor_addr> dropped;
  static constexpr std::size_t max_dropped = 1024;
  std::uint64_t heartbeats_sent = 0;
  bool beating = false;
  probe_sink probes;
  std::unique_ptr<probe_responder> responder;
  static inline const char* name = "orrery.node";
};

using node_ptr = node_actor::stateful_pointer<node_state>;

node_info describe(node_ptr self, std::uint64_t session) {
  const auto& s = self->state;
  const auto& c = s.config;
  auto it = s.sessions.find(session);
  return node_info{c.name,      c.device, c.dtype, c.memory_bytes, c.threads, c.data_host, s.data_plane->port(),
                   it == s.sessions.end() ? s.incarnation : it->second.incarnation};
}

// Heartbeats go out from the node actor on CAF's shared workers, never from a
// stage's compute thread: a node busy computing is slow, not silent.
void beat(node_ptr self) {
  auto& s = self->state;
  auto interval = std::chrono::milliseconds::max();
  for (const auto& [id, session] : s.sessions)
    for (const auto& [watcher, every] : session.watchers) {
      self->send(watcher, heartbeat{s.config.name, session.incarnation, ++s.heartbeats_sent});
      interval = std::min(interval, every);
    }
  s.beating = interval != std::chrono::milliseconds::max();
  if (s.beating) self->delayed_send(self, interval, tick_atom_v);
}

// A stage's routes: its frames and, for a group member, its ring's pieces.
void unroute(node_ptr self, std::uint64_t session, std::uint16_t stage) {
  self->state.routes->remove(router::handler_kind::stage, session, stage);
  self->state.routes->remove(router::handler_kind::group, session, stage);
}

void drop_stages(node_ptr self, std::uint64_t id, session_state& session) {
  for (auto& [index, stage] : session.stages) {
    auto& dropped = self->state.dropped;
    dropped.push_back(stage.address());
    if (dropped.size() > node_state::max_dropped) dropped.pop_front();
    self->unlink_from(stage);
    self->send_exit(stage, caf::exit_reason::user_shutdown);
    unroute(self, id, index);
  }
  session.stages.clear();
}

// A supervisor of session `id` declared this incarnation dead and has moved
// the session's layers away: whatever its stages still hold belongs to a
// pipeline that no longer exists. The session starts over under a new
// incarnation and may be given layers again.
void start_over(node_ptr self, std::uint64_t id, session_state& session) {
  drop_stages(self, id, session);
  session.incarnation = fresh_incarnation();
  node_log().info("node '" + self->state.config.name + "': fenced by the supervisor of session " + std::to_string(id) +
                  "; dropped its stages, now incarnation " + std::to_string(session.incarnation));
}

// A driver or a supervisor went away: a driver's session ends with it (its
// stages and their weights are released), a supervisor stops being watched.
void on_down(node_ptr self, const caf::down_msg& msg) {
  auto& sessions = self->state.sessions;
  for (auto it = sessions.begin(); it != sessions.end();) {
    auto& session = it->second;
    if (session.driver == msg.source) {
      drop_stages(self, it->first, session);
      it = sessions.erase(it);
      continue;
    }
    for (auto w = session.watchers.begin(); w != session.watchers.end();)
      w = w->first.address() == msg.source ? session.watchers.erase(w) : std::next(w);
    // Watched but never given a stage (a standby node), and no longer watched.
    const bool idle = !session.driver && session.stages.empty() && session.watchers.empty();
    it = idle ? sessions.erase(it) : std::next(it);
  }
}

// A stage that ended on its own (an error its actor did not survive) takes
// only itself: the node and other sessions' stages keep serving. Returns
// false when `source` is none of the node's stages.
bool forget_stage(node_ptr self, const caf::actor_addr& source, const caf::error& reason) {
  for (auto& [id, session] : self->state.sessions)
    for (auto it = session.stages.begin(); it != session.stages.end(); ++it)
      if (it->second.address() == source) {
        node_log().warn("node '" + self->state.config.name + "' stage " + std::to_string(it->first) + " of session " +
                        std::to_string(id) + " ended: " + error_text(reason));
        unroute(self, id, it->first);
        session.stages.erase(it);
        return true;
      }
  return false;
}

caf::result<stage_ready> assign(node_ptr self, stage_assignment& assignment) {
  auto& s = self->state;
  if (assignment.session == 0) return make_error(errc::invalid_request, "session 0 is reserved for link probes");
  auto& session = s.sessions[assignment.session];
  if (!session.driver) {
    session.driver = self->current_sender() ? self->current_sender()->address() : caf::actor_addr{};
    if (auto driver = caf::actor_cast<caf::actor>(session.driver)) self->monitor(driver);
  }
  session.deployment->store(std::max(session.deployment->load(), assignment.deployment));
  const bool training = assignment.training.enabled;
  if (!session.stages.empty() && session.training != training)
    return make_error(errc::invalid_request, std::string("session ") + std::to_string(assignment.session) + " " +
                                                 (session.training ? "trains" : "serves") + " on node '" + s.config.name +
                                                 "'; it cannot also " + (training ? "train" : "serve"));
  session.training = training;
  auto& slot = session.stages[assignment.stage];
  if (!slot) {
    const auto& c = s.config;
    const stage_context context{c.name,   c.device,  c.dtype,   c.data_host,        s.data_plane->port(),
                                s.data_plane, s.weights, s.routes, s.backups, session.deployment};
    slot = training ? caf::actor_cast<caf::actor>(spawn_training_stage(self->system(), context))
                    : caf::actor_cast<caf::actor>(spawn_stage(self->system(), context));
    self->link_to(slot);  // a stage lives and dies with its node
    s.routes->add(router::handler_kind::stage, assignment.session, assignment.stage, slot.address());
  }
  // Both kinds of stage answer load_stage_atom alike.
  return self->delegate(caf::actor_cast<stage_actor>(slot), load_stage_atom_v, std::move(assignment));
}

using backup_sender_actor = caf::typed_actor<caf::replies_to<backup_transfer>::with<std::uint64_t>>;

// Sends parameters of a backup this node holds to the stage restoring them,
// in a worker of its own: a transfer takes as long as the link needs, and
// the node's heartbeats go on meanwhile.
backup_sender_actor spawn_backup_sender(caf::actor_system& system, std::string node,
                                        std::shared_ptr<backup_store> backups,
                                        std::shared_ptr<messages::data_plane> plane) {
  return system.spawn<caf::detached>([node = std::move(node), backups, plane](backup_sender_actor::pointer self)
                                         -> backup_sender_actor::behavior_type {
    return {[=](backup_transfer& t) -> caf::result<std::uint64_t> {
      self->quit();
      try {
        const auto parameters = backups->get(t.run, t.round, t.names);
        auto link = plane->connect(t.to.host, t.to.port, std::chrono::milliseconds(t.timeout_ms));
        messages::backup_route route;
        route.run = t.run;
        route.round = t.round;
        route.restore = true;
        route.stage = t.to.stage;
        send_backup(*link, t.session, t.deployment, route, parameters);
        std::uint64_t bytes = 0;
        for (const auto& p : parameters)
          for (const auto& x : p.state) bytes += x.nbytes();
        return bytes;
      } catch (const std::exception& e) {
        return make_error(errc::request_failed, "node '" + node + "' cannot send its backup of round " +
                                                    std::to_string(t.round) + ": " + e.what());
      }
    }};
  });
}

node_actor::behavior_type node_behavior(node_ptr self, node_config config, std::shared_ptr<router> routes,
                                        std::shared_ptr<messages::data_plane> plane,
                                        std::shared_ptr<backup_store> backups) {
  self->state.config = std::move(config);
  self->state.routes = std::move(routes);
  self->state.data_plane = std::move(plane);
  self->state.backups = std::move(backups);
  self->state.weights = std::make_shared<shard_cache>(self->state.config.memory_bytes);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    if (forget_stage(self, msg.source, msg.reason)) return;
    // A dropped stage's exit that crossed the unlink (its session's driver
    // went down while the driver's exit to it was on its way).
    auto& dropped = self->state.dropped;
    if (auto it = std::find(dropped.begin(), dropped.end(), msg.source); it != dropped.end()) {
      dropped.erase(it);
      return;
    }
    for (auto& [id, session] : self->state.sessions)
      for (auto& [index, stage] : session.stages) self->send_exit(stage, msg.reason);
    self->quit(msg.reason);
  });
  self->set_down_handler([self](caf::down_msg& msg) { on_down(self, msg); });
  return {
      [self](info_atom) { return describe(self, 0); },
      [self](stats_atom) { return self->state.routes->counts(); },
      [self](watch_atom, caf::actor& supervisor, std::int64_t interval_ms, std::uint64_t session) {
        self->monitor(supervisor);
        self->state.sessions[session].watchers[caf::actor_cast<supervisor_actor>(supervisor)] =
            std::chrono::milliseconds(std::max<std::int64_t>(interval_ms, 10));
        if (!self->state.beating) beat(self);
        return describe(self, session);
      },
      [self](tick_atom) { beat(self); },
      [self](fence_atom, std::uint64_t session, std::uint64_t incarnation) {
        auto it = self->state.sessions.find(session);
        if (it != self->state.sessions.end() && it->second.incarnation == incarnation) start_over(self, session, it->second);
        return describe(self, session);
      },
      [self](load_stage_atom, stage_assignment& assignment) { return assign(self, assignment); },
      [self](backup_missing_atom, std::uint64_t run, std::int64_t round, const std::vector<std::string>& names) {
        return self->state.backups->missing(run, round, names);
      },
      [self](backup_transfer& transfer) -> caf::result<std::uint64_t> {
        const auto& s = self->state;
        return self->delegate(spawn_backup_sender(self->system(), s.config.name, s.backups, s.data_plane),
                              std::move(transfer));
      },
      [self](forget_backup_atom, std::uint64_t run) { self->state.backups->forget(run); },
      // `orrery profile`: the slow parts run in workers, so heartbeats go on.
      [self](layer_timing_request& request) -> caf::result<layer_timing_report> {
        const auto& c = self->state.config;
        auto timer = spawn_layer_timer(self->system(), c.name, c.device, c.dtype, c.threads, c.memory_bytes);
        return self->delegate(timer, std::move(request));
      },
      [self](link_probe& probe) -> caf::result<link_measurement> {
        auto prober = spawn_link_prober(self->system(), self->state.data_plane, caf::actor_cast<node_actor>(self));
        return self->delegate(prober, std::move(probe));
      },
      [self](probe_expect_atom, std::uint64_t id, std::uint64_t answers) -> caf::result<std::uint64_t> {
        auto promise = self->make_response_promise<std::uint64_t>();
        self->state.probes.expect(id, answers, promise);
        return promise;
      },
      // A probe frame from another node (answered), or an answer to one of ours.
      [self](probe_frame_atom, std::uint64_t id, std::uint16_t reply_port, const std::string& host) {
        auto& s = self->state;
        if (reply_port == 0) return s.probes.received(id);
        if (!s.responder) s.responder = std::make_unique<probe_responder>(s.data_plane);
        try {
          s.responder->answer(id, host, reply_port);
        } catch (const std::exception& e) {
          node_log().warn("node '" + s.config.name + "': cannot answer a link probe from " + host + ": " + e.what());
        }
      },
  };
}

}  // namespace

node_actor spawn_node(caf::actor_system& system, node_config config) {
  auto routes = std::make_shared<router>("node '" + config.name + "'");
  const std::string name = config.name;
  messages::data_plane_options options;
  options.bind_address = config.data_host;
  options.port = config.data_port;
  auto plane = std::make_shared<messages::data_plane>(
      options, tensor_allocator(/*pinned=*/config.device != "cpu"), router::handler_of(routes),
      [name](const std::string& peer, const std::string& problem) {
        node_log().warn("node '" + name + "': data plane link from " + peer + " closed: " + problem);
      });
  // Backups a neighbour sends are stored on the io thread, as they arrive.
  auto backups = std::make_shared<backup_store>();
  routes->add_sink(router::handler_kind::backup, 0, 0, [backups, name](tensor_frame frame) {
    try {
      backups->receive(std::move(frame));
    } catch (const std::exception& e) {
      node_log().warn("node '" + name + "': dropped a backup frame: " + e.what());
    }
  });
  auto node = system.spawn(node_behavior, std::move(config), routes, plane, backups);
  routes->add(router::handler_kind::prober, probe_session, 0, node.address());  // the node actor is its own probe sink
  return node;
}

}  // namespace orrery::actors
