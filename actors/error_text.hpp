#pragma once
// orrery's actors answer failures with orrery errors (messages/errors.hpp)
// whose TEXT already says which node, stage and file and what went wrong.
// CAF's own rendering wraps it (`error(…, ("TEXT"))`), and each hop that
// reports it wraps it again; a user should read TEXT.

#include <caf/error.hpp>

#include "messages/errors.hpp"

#include <string>

namespace orrery::actors {

/// The text an error carries when it is one of orrery's, else CAF's rendering.
inline std::string error_text(const caf::error& e) {
  if (auto text = error_text_of(e); !text.empty()) return text;
  return caf::to_string(e);
}

}  // namespace orrery::actors
