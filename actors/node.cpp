#include "actors/node.hpp"

#include <caf/all.hpp>

#include <iostream>
#include <map>
#include <mutex>
#include <random>

#include "actors/profiling.hpp"
#include "actors/stage.hpp"
#include "actors/tensor_frame.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

// Stage index -> stage actor, read on the data plane's io thread and
// written by the node actor. Weak addresses: a finished stage is not kept
// alive by its routing entry.
class routing_table {
 public:
  void set(std::uint16_t stage, const caf::actor& actor) {
    std::lock_guard<std::mutex> lock(mutex_);
    routes_[stage] = actor.address();
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    routes_.clear();
  }
  caf::actor find(std::uint16_t stage) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = routes_.find(stage);
    return it == routes_.end() ? caf::actor{} : caf::actor_cast<caf::actor>(it->second);
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::uint16_t, caf::actor_addr> routes_;
};

std::uint64_t fresh_incarnation() {
  static std::random_device entropy;
  return (std::uint64_t{entropy()} << 32) | entropy();
}

struct node_state {
  node_config config;
  std::uint64_t incarnation = fresh_incarnation();
  std::shared_ptr<routing_table> routes;
  std::shared_ptr<messages::data_plane> data_plane;
  std::map<std::uint16_t, caf::actor> stages;
  /// Supervisors watching this node, and the heartbeat interval each asked for.
  std::map<caf::actor, std::chrono::milliseconds> watchers;
  std::uint64_t heartbeats_sent = 0;
  bool beating = false;
  probe_sink probes;
  std::unique_ptr<probe_responder> responder;
  static inline const char* name = "orrery.node";
};

using node_ptr = caf::stateful_actor<node_state>*;

node_info describe(node_ptr self) {
  const auto& c = self->state.config;
  return node_info{c.name,      c.device,   c.memory_bytes, c.threads, c.data_host, self->state.data_plane->port(),
                   self->state.incarnation};
}

// Heartbeats go out from the node actor on CAF's shared workers, never from a
// stage's compute thread: a node busy computing is slow, not silent.
void beat(node_ptr self) {
  auto& s = self->state;
  if (s.watchers.empty()) {
    s.beating = false;
    return;
  }
  auto interval = std::chrono::milliseconds::max();
  for (const auto& [watcher, every] : s.watchers) {
    self->send(watcher, heartbeat{s.config.name, s.incarnation, ++s.heartbeats_sent});
    interval = std::min(interval, every);
  }
  s.beating = true;
  self->delayed_send(self, interval, tick_atom_v);
}

// A supervisor declared this incarnation dead and has moved its layers away:
// whatever the stages still hold belongs to a pipeline that no longer exists.
// The node starts over under a new incarnation and may be given layers again.
void start_over(node_ptr self) {
  auto& s = self->state;
  for (auto& [index, stage] : s.stages) {
    self->unlink_from(stage);
    self->send_exit(stage, caf::exit_reason::user_shutdown);
  }
  s.stages.clear();
  s.routes->clear();
  s.routes->set(probe_stage, caf::actor_cast<caf::actor>(self));
  s.incarnation = fresh_incarnation();
  std::cerr << "node " << s.config.name << ": fenced by a supervisor; dropped its stages, now incarnation "
            << s.incarnation << std::endl;
}

caf::behavior node_actor(node_ptr self, node_config config,
                         std::shared_ptr<routing_table> routes, std::shared_ptr<messages::data_plane> plane) {
  self->state.config = std::move(config);
  self->state.routes = std::move(routes);
  self->state.data_plane = std::move(plane);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    for (auto& [index, stage] : self->state.stages) self->send_exit(stage, msg.reason);
    self->quit(msg.reason);
  });
  self->set_down_handler([self](caf::down_msg& msg) {
    auto watcher = caf::actor_cast<caf::actor>(msg.source);
    if (watcher) self->state.watchers.erase(watcher);
  });
  return {
      [self](info_atom) { return describe(self); },
      [self](watch_atom, caf::actor& supervisor, std::int64_t interval_ms) {
        self->monitor(supervisor);
        self->state.watchers[supervisor] = std::chrono::milliseconds(std::max<std::int64_t>(interval_ms, 10));
        if (!self->state.beating) beat(self);
        return describe(self);
      },
      [self](tick_atom) { beat(self); },
      [self](fence_atom, std::uint64_t incarnation) {
        if (incarnation == self->state.incarnation) start_over(self);
        return describe(self);
      },
      [self](load_stage_atom, stage_assignment& assignment) {
        const auto& c = self->state.config;
        auto& slot = self->state.stages[assignment.stage];
        if (!slot) {
          slot = spawn_stage(self->system(), {c.name, c.device, c.dtype, c.memory_bytes, c.data_host,
                                              self->state.data_plane->port(), self->state.data_plane});
          self->link_to(slot);  // a stage lives and dies with its node
          self->state.routes->set(assignment.stage, slot);
        }
        return self->delegate(slot, load_stage_atom_v, std::move(assignment));
      },
      // `orrery profile`: the slow parts run in workers, so heartbeats go on.
      [self](layer_timing_request& request) {
        const auto& c = self->state.config;
        auto timer = spawn_layer_timer(self->system(), c.name, c.device, c.dtype, c.threads, c.memory_bytes);
        return self->delegate(timer, std::move(request));
      },
      [self](link_probe& probe) {
        auto prober = spawn_link_prober(self->system(), self->state.data_plane, caf::actor_cast<caf::actor>(self));
        return self->delegate(prober, std::move(probe));
      },
      [self](probe_expect_atom, std::uint64_t id, std::uint64_t answers) {
        auto promise = self->make_response_promise();
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
          std::cerr << "node " << s.config.name << ": cannot answer a link probe from " << host << ": " << e.what() << "\n";
        }
      },
  };
}

}  // namespace

caf::actor spawn_node(caf::actor_system& system, node_config config) {
  auto routes = std::make_shared<routing_table>();
  const std::string name = config.name;
  messages::data_plane_options options;
  options.bind_address = config.data_host;
  options.port = config.data_port;
  auto plane = std::make_shared<messages::data_plane>(
      options, tensor_allocator(/*pinned=*/config.device != "cpu"),
      [routes, name](messages::received_frame frame) {
        auto stage = routes->find(frame.descriptor.destination_stage);
        if (stage && frame.descriptor.destination_stage == probe_stage) {
          auto host = frame.peer.substr(0, frame.peer.rfind(':'));
          if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
          return caf::anon_send(stage, probe_frame_atom_v, frame.descriptor.request_id, frame.descriptor.reply_port, host);
        }
        if (!stage) {
          std::cerr << "node " << name << ": dropped a frame for unknown stage " << frame.descriptor.destination_stage
                    << " from " << frame.peer << "\n";
          return;
        }
        caf::anon_send(stage, tensor_frame{frame.descriptor, tensor_of(frame)});
      },
      [name](const std::string& peer, const std::string& problem) {
        std::cerr << "node " << name << ": data plane link from " << peer << " closed: " << problem << "\n";
      });
  auto node = system.spawn(node_actor, std::move(config), routes, plane);
  routes->set(probe_stage, node);  // the node actor is its own probe sink
  return node;
}

}  // namespace orrery::actors
