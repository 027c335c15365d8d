#pragma once
// libtorch's errors (c10::Error) append "Exception raised from FUNCTION at
// FILE:LINE" and a C++ stack trace to their message, and code that wraps one
// in its own error carries them along: for a developer, not for a user
// reading an error.

#include <string>

namespace orrery::compute {

/// An error's text without libtorch's stack trace.
inline std::string without_backtrace(std::string message) {
  auto at = message.find("\nException raised from ");
  if (at != std::string::npos) message.erase(at);
  return message;
}

}  // namespace orrery::compute
