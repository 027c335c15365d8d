#pragma once
// The actor system configuration of the in-process suites: orrery's types
// registered, no middleman (every actor lives in the test process).

#include <caf/actor_system_config.hpp>

#include "messages/types.hpp"

namespace orrery::test {

struct registered_config : caf::actor_system_config {
  registered_config() { register_types(*this); }
};

}  // namespace orrery::test
