#pragma once
// orrery's own errors: one CAF error category ("orrery") whose code says what
// kind of failure it is and whose context is one string saying where and why
// ("node 'b' stage 1 of session …: cannot load layers [2, 4): …"). Actors
// answer with these; callers branch on the code and show the text.

#include <caf/error.hpp>
#include <caf/make_message.hpp>

#include <cstdint>
#include <string>

namespace caf {
class actor_system_config;
}

namespace orrery {

enum class errc : std::uint8_t {
  /// A request that cannot be served as asked (bad parameters, too long for the context).
  invalid_request = 1,
  /// The driver was asked to do something its state does not allow (generate before deploy, deploy twice).
  not_ready,
  /// A node's copy of the model differs from the client's.
  model_mismatch,
  /// A stage could not load its layers (files, memory budget, device).
  load_failed,
  /// A node, stage or data plane cannot be reached.
  unreachable,
  /// The nodes there cannot hold the model.
  no_capacity,
  /// A request failed in the pipeline (a stage's error, a malformed answer, a deadline).
  request_failed,
  /// `orrery profile` could not time layers or measure a link.
  profiling_failed,
  /// The requester cancelled its request (a serving client went away).
  cancelled,
};

/// The code's name ("load_failed", …).
const char* to_string(errc code);

/// An orrery error: `code` and the text that says where and why.
caf::error make_error(errc code, std::string text);

/// The text of an orrery error; empty for any other error.
std::string error_text_of(const caf::error& e);

/// Lets `cfg`'s actor system render orrery errors (actor_system::render).
void add_error_category(caf::actor_system_config& cfg);

}  // namespace orrery
