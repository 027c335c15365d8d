#pragma once
// orrery's actors answer failures with caf::make_error(sec::runtime_error,
// TEXT), where TEXT already says which node, stage and file and what went
// wrong. CAF renders such an error as `system_error(runtime_error, ("TEXT"))`,
// and each hop that reports it wraps it again; a user should read TEXT.

#include <caf/error.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

#include <string>

namespace orrery::actors {

/// The text an error carries when it is one of orrery's, else CAF's rendering.
inline std::string error_text(const caf::error& e) {
  if (e.category() == caf::atom("system") && e.code() == static_cast<std::uint8_t>(caf::sec::runtime_error) &&
      e.context().match_elements<std::string>())
    return e.context().get_as<std::string>(0);
  return caf::to_string(e);
}

}  // namespace orrery::actors
