#include "actors/supervisor.hpp"

#include <caf/all.hpp>

#include <set>

#include "actors/remote_actor.hpp"
#include "messages/log.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

struct member {
  supervised_node spec;
  bool alive = false;
  bool dialling = false;
  std::uint64_t incarnation = 0;
  std::set<std::uint64_t> dead_incarnations;
  clock_type::time_point last_seen;
  clock_type::time_point next_dial;
};

struct supervisor_state {
  supervisor_config config;
  std::vector<member> members;
  clock_type::time_point last_tick = clock_type::now();
  static inline const char* name = "orrery.supervisor";
};

using supervisor_ptr = supervisor_actor::stateful_pointer<supervisor_state>;

/// The supervisor's logger; every line names the session.
const logger& log(supervisor_ptr) {
  static const logger supervisor_log("supervisor");
  return supervisor_log;
}

std::string session_of(supervisor_ptr self) { return "session " + std::to_string(self->state.config.session) + ": "; }

member* find(supervisor_ptr self, const std::string& name) {
  for (auto& m : self->state.members)
    if (m.spec.name == name) return &m;
  return nullptr;
}

std::string ms(clock_type::duration d) {
  return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

void declare_dead(supervisor_ptr self, member& m, const std::string& reason) {
  if (!m.alive) return;
  m.alive = false;
  m.dead_incarnations.insert(m.incarnation);
  if (m.spec.handle) self->demonitor(m.spec.handle.address());
  m.spec.handle = nullptr;
  m.next_dial = clock_type::now() + self->state.config.reconnect_interval;
  log(self).warn(session_of(self) + "node '" + m.spec.name + "' (incarnation " + std::to_string(m.incarnation) +
                 ") is dead: " + reason);
  self->send(self->state.config.subscriber, node_verdict{m.spec.name, m.incarnation, false, reason, {}, {}});
}

void admit(supervisor_ptr self, member& m, const node_actor& handle, const node_info& info) {
  m.alive = true;
  m.dialling = false;
  m.incarnation = info.incarnation;
  m.spec.handle = handle;
  m.last_seen = clock_type::now();
  self->monitor(handle);
  log(self).info(session_of(self) + "node '" + m.spec.name + "' rejoined as incarnation " +
                 std::to_string(info.incarnation));
  self->send(self->state.config.subscriber,
             node_verdict{m.spec.name, m.incarnation, true, "rejoined", caf::actor_cast<caf::actor>(handle), info});
}

// Registers this supervisor with the node, which starts heartbeats. A member
// of the initial deployment learns its incarnation here. A returning one is
// always fenced before it is admitted: whatever it holds (a resumed node's
// old stages) belongs to a layout that is gone, and the fence gives it an
// incarnation nobody has declared dead.
void watch(supervisor_ptr self, const std::string& name, node_actor handle, bool returning) {
  const auto& c = self->state.config;
  self->request(handle, c.connect_timeout, watch_atom_v, caf::actor_cast<caf::actor>(self),
                static_cast<std::int64_t>(c.heartbeat_interval.count()), c.session)
      .then(
          [self, name, handle, returning](node_info& info) {
            auto* m = find(self, name);
            if (!m) return;
            if (!returning) {
              if (!m->alive) return;
              m->incarnation = info.incarnation;
              m->last_seen = clock_type::now();
              self->monitor(handle);
              return;
            }
            if (m->alive) return;
            self->request(handle, self->state.config.connect_timeout, fence_atom_v, self->state.config.session,
                          info.incarnation)
                .then(
                    [self, name, handle](node_info& fresh) {
                      auto* m = find(self, name);
                      if (!m || m->alive) return;
                      if (m->dead_incarnations.count(fresh.incarnation) == 0) return admit(self, *m, handle, fresh);
                      m->dialling = false;
                    },
                    [self, name](caf::error&) {
                      if (auto* m = find(self, name)) m->dialling = false;
                    });
          },
          [self, name, returning](caf::error& e) {
            auto* m = find(self, name);
            if (!m) return;
            if (returning)
              m->dialling = false;
            else
              declare_dead(self, *m, "did not answer the supervisor: " + caf::to_string(e));
          });
}

void dial(supervisor_ptr self, member& m) {
  m.dialling = true;
  m.next_dial = clock_type::now() + self->state.config.reconnect_interval;
  request_remote_node(self, m.spec.host, m.spec.port, self->state.config.connect_timeout,
                      [self, name = m.spec.name](caf::expected<node_actor> found) {
                        auto* m = find(self, name);
                        if (!m) return;
                        if (!found) {
                          if (found.error() == caf::sec::unexpected_actor_messaging_interface)
                            log(self).error(session_of(self) + "what answers at " + m->spec.host + ":" +
                                            std::to_string(m->spec.port) +
                                            " is not an orrery node of this version (its messages differ); "
                                            "not admitting it");
                          m->dialling = false;
                          return;
                        }
                        watch(self, name, *found, true);
                      });
}

void tick(supervisor_ptr self) {
  auto& s = self->state;
  const auto now = clock_type::now();
  // A tick far behind schedule means this process itself stood still
  // (stopped, swapped out, a suspended laptop): the heartbeats that arrived
  // meanwhile are still queued, so silence says nothing about the nodes.
  if (now - s.last_tick > s.config.heartbeat_deadline / 2) {
    log(self).warn(session_of(self) + "this process stood still for " + ms(now - s.last_tick) +
                   "; every node gets a fresh deadline");
    for (auto& m : s.members) m.last_seen = now;
  }
  s.last_tick = now;
  for (auto& m : s.members) {
    if (m.alive && now - m.last_seen > s.config.heartbeat_deadline)
      declare_dead(self, m, "no heartbeat for " + ms(now - m.last_seen) + " (deadline " + ms(s.config.heartbeat_deadline) + ")");
    else if (!m.alive && !m.dialling && !m.spec.host.empty() && now >= m.next_dial && self->system().has_middleman())
      dial(self, m);
  }
  self->delayed_send(self, std::max(s.config.heartbeat_interval / 2, std::chrono::milliseconds(10)), tick_atom_v);
}

void on_heartbeat(supervisor_ptr self, const heartbeat& beat) {
  auto* m = find(self, beat.node);
  if (!m) return;
  if (m->alive && beat.incarnation == m->incarnation) {
    const auto gap = clock_type::now() - m->last_seen;
    if (gap > 2 * self->state.config.heartbeat_interval)
      log(self).info(session_of(self) + "node '" + m->spec.name + "' is slow: heartbeat after " + ms(gap) +
                     " (deadline " + ms(self->state.config.heartbeat_deadline) + ")");
    m->last_seen = clock_type::now();
  } else if (m->dead_incarnations.count(beat.incarnation) > 0) {
    // A frozen node that was resumed: it must not serve its old layers.
    // Anonymous: the node's answer (its new incarnation) is learnt on redial.
    caf::anon_send(caf::actor_cast<node_actor>(self->current_sender()), fence_atom_v, self->state.config.session,
                   beat.incarnation);
  }
}

supervisor_actor::behavior_type supervisor_behavior(supervisor_ptr self, supervisor_config config) {
  auto& s = self->state;
  s.config = std::move(config);
  // Members start alive (the driver has just connected to them) until their
  // deadline says otherwise.
  for (const auto& spec : s.config.nodes) {
    member m;
    m.spec = spec;
    m.alive = static_cast<bool>(spec.handle);
    m.last_seen = clock_type::now();
    s.members.push_back(std::move(m));
  }
  for (auto& m : s.members)
    if (m.alive) watch(self, m.spec.name, m.spec.handle, false);
  self->set_down_handler([self](caf::down_msg& msg) {
    for (auto& m : self->state.members)
      if (m.alive && m.spec.handle && m.spec.handle.address() == msg.source)
        declare_dead(self, m, "connection lost (" + caf::to_string(msg.reason) + ")");
  });
  tick(self);
  return {
      [self](heartbeat& beat) { on_heartbeat(self, beat); },
      [self](tick_atom) { tick(self); },
  };
}

}  // namespace

supervisor_actor spawn_supervisor(caf::actor_system& system, supervisor_config config) {
  return system.spawn(supervisor_behavior, std::move(config));
}

}  // namespace orrery::actors
