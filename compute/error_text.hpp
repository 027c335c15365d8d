#pragma once
// libtorch's errors (c10::Error) carry the C++ stack of where they were
// raised after their first line ("Exception raised from … (most recent call
// first): frame #0 …"): for a developer, not for a user reading an error.

#include <string>

namespace orrery::compute {

/// The first line of an error's text, without libtorch's stack trace.
inline std::string first_line(const std::string& what) { return what.substr(0, what.find('\n')); }

}  // namespace orrery::compute
