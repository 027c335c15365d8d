#include "actors/remote_actor.hpp"

#include <caf/actor_cast.hpp>
#include <caf/sec.hpp>

namespace orrery::actors {

caf::expected<node_actor> published_node(caf::actor_system& system, const caf::strong_actor_ptr& published,
                                         const std::set<std::string>& interface) {
  if (!published) return caf::make_error(caf::sec::no_actor_published_at_port);
  if (interface != system.message_types<node_actor>()) return caf::make_error(caf::sec::unexpected_actor_messaging_interface);
  return caf::actor_cast<node_actor>(published);
}

}  // namespace orrery::actors
