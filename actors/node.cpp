#include "actors/node.hpp"

#include <caf/all.hpp>

#include <iostream>
#include <map>
#include <mutex>

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
  caf::actor find(std::uint16_t stage) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = routes_.find(stage);
    return it == routes_.end() ? caf::actor{} : caf::actor_cast<caf::actor>(it->second);
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::uint16_t, caf::actor_addr> routes_;
};

struct node_state {
  node_config config;
  std::shared_ptr<routing_table> routes;
  std::shared_ptr<messages::data_plane> data_plane;
  std::map<std::uint16_t, caf::actor> stages;
  static inline const char* name = "orrery.node";
};

caf::behavior node_actor(caf::stateful_actor<node_state>* self, node_config config,
                         std::shared_ptr<routing_table> routes, std::shared_ptr<messages::data_plane> plane) {
  self->state.config = std::move(config);
  self->state.routes = std::move(routes);
  self->state.data_plane = std::move(plane);
  self->set_exit_handler([self](caf::exit_msg& msg) {
    for (auto& [index, stage] : self->state.stages) self->send_exit(stage, msg.reason);
    self->quit(msg.reason);
  });
  return {
      [self](info_atom) {
        const auto& c = self->state.config;
        return node_info{c.name, c.device, c.memory_bytes, c.threads, c.data_host, self->state.data_plane->port()};
      },
      [self](load_stage_atom, stage_assignment& assignment) {
        const auto& c = self->state.config;
        auto& slot = self->state.stages[assignment.stage];
        if (slot) self->send_exit(slot, caf::exit_reason::user_shutdown);  // a redeployment replaces the old stage
        slot = spawn_stage(self->system(), {c.name, c.device, c.memory_bytes, c.data_host,
                                            self->state.data_plane->port(), self->state.data_plane});
        self->link_to(slot);  // a stage lives and dies with its node
        self->state.routes->set(assignment.stage, slot);
        return self->delegate(slot, load_stage_atom_v, std::move(assignment));
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
      options, tensor_allocator(),
      [routes, name](messages::received_frame frame) {
        auto stage = routes->find(frame.descriptor.destination_stage);
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
  return system.spawn(node_actor, std::move(config), routes, plane);
}

}  // namespace orrery::actors
