#pragma once
// splitmix64: a tiny, fast generator that gives the same numbers on every
// platform and libtorch version (std's distributions are not specified bit
// for bit). Seeds both the sampler and `orrery model init`.

#include <cstdint>

namespace orrery::compute {

/// Advances `state` and returns the next 64 random bits.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// A double uniform in [0, 1) from the next 53 random bits.
inline double unit_interval(std::uint64_t& state) {
  return static_cast<double>(splitmix64(state) >> 11) * 0x1.0p-53;
}

}  // namespace orrery::compute
