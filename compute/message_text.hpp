#pragma once
// Pieces of error and log messages that every layer from compute/ up writes
// the same way: a list of names joined into one line, and what a failed
// system call's errno means. Header-only and torch-free, so deploy/ and
// actors/ use it as well as compute/.

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace orrery::compute {

/// `a, b, c`: `items` with `separator` between each two.
inline std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

/// `WHAT: DESCRIPTION` of errno `error` (std::strerror's text): `cannot read:
/// No such file or directory`. Read errno right after the call that failed,
/// before anything else can set it.
inline std::string errno_text(const std::string& what, int error = errno) {
  return what + ": " + std::strerror(error);
}

}  // namespace orrery::compute
