#pragma once
// The inference cost model every pipeline planner, exhaustive solver and the
// simulator share, so that "the same constraints" is true by construction.
//
// A request is a prompt of P tokens prefilled at once (the first output token)
// followed by G-1 decode steps, each producing one token that returns to the
// source device (the user is there).
//
// A prefill chunk of `length` tokens after `position` earlier ones costs what
// it costs alone, length * prefill(length) (the weights are read once per chunk,
// which is what a short chunk pays on memory-bound devices), plus the extra
// attention over the earlier tokens: the growth of the cumulative prefill cost,
// (position + length) * prefill(position + length) - position * prefill(position),
// beyond the standalone cost, when positive. With per-token costs a + b*x at
// position x this is exactly length * (a + b*(position + length/2)).

#include <cstddef>
#include <vector>

#include "planning/profile.hpp"

namespace orrery::planning {

/// Per-layer, per-device costs of the profile's workload, precomputed.
class cost_model {
 public:
  /// @param p a validated profile; must outlive the model.
  explicit cost_model(const profile& p);

  /// The profile this model was built from.
  const profile& source_profile() const { return *profile_; }
  std::size_t layers() const { return profile_->layers.size(); }
  std::size_t devices() const { return profile_->devices.size(); }

  /// Seconds layer `l` costs on device `d` for one whole request.
  double request_seconds(std::size_t l, std::size_t d) const { return request_[l * devices() + d]; }

  /// Seconds of one steady-state decode step (one token at mid context).
  double step_seconds(std::size_t l, std::size_t d) const { return step_[l * devices() + d]; }

  /// Seconds to prefill `length` tokens starting at `position` through layer `l` on `d`.
  double prefill_seconds(std::size_t l, std::size_t d, double position, double length) const;

  /// Seconds of the decode step at context `context` through layer `l` on `d`.
  double decode_seconds(std::size_t l, std::size_t d, double context) const;

  /// Seconds spent moving layer `l`'s output from `a` to `b` over one request.
  double request_transfer(std::size_t l, std::size_t a, std::size_t b) const;

  /// Seconds to move one token's output of layer `l` from `a` to `b`.
  double step_transfer(std::size_t l, std::size_t a, std::size_t b) const;

  /// Seconds over one request to return each generated token (the
  /// workload's return_bytes) from `d` to the source.
  double request_return(std::size_t d) const;

  /// Seconds to return one generated token from `d` to the source.
  double step_return(std::size_t d) const;

  /// Bytes layer `l` occupies when serving `requests` concurrent requests
  /// (weights + KV), as the layer profiles count them (see state_scale).
  double memory_bytes(std::size_t l, int requests) const;

  /// Tokens of context a request holds at its end (prompt + output).
  int context_tokens() const;

 private:
  const profile* profile_;
  std::vector<double> request_;
  std::vector<double> step_;
};

}  // namespace orrery::planning
