#include "messages/types.hpp"

#include <caf/actor_system_config.hpp>

#include "messages/errors.hpp"

namespace orrery {

void register_types(caf::actor_system_config& cfg) {
  cfg.add_message_types<caf::id_block::orrery>();
  add_error_category(cfg);
}

}  // namespace orrery
