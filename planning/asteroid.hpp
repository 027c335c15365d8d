#pragma once
// Asteroid (MobiCom 2024): hybrid pipeline + data parallel training (HPP).
// Stages of contiguous layers run on device groups; each micro-batch of B
// samples is split inside a group by device speed, capped by memory; a round
// is M micro-batches under 1F1B followed by a ring all-reduce of each stage's
// gradients inside its group.

#include <cstddef>
#include <limits>
#include <optional>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "planning/galaxy.hpp"
#include "planning/profile.hpp"

namespace orrery::planning {

/// One step of the HPP pipeline: a stage, or a transfer between stages (whose
/// forward and backward are the activation / gradient transfers).
struct hpp_step {
  double forward = 0;    ///< E_f, seconds per micro-batch
  double backward = 0;   ///< E_b
  double allreduce = 0;  ///< T_a, seconds per round
  /// Seconds of the optimizer update after the round (its slowest member's):
  /// clipping needs the global gradient norm, so every stage updates once
  /// every stage's all-reduce is done, all stages at once.
  double update = 0;
};

/// HPP-round latency under 1F1B: max_s (end of step s's last backward + T_a^s),
/// paced by the dominant step dm = argmax (E_f + E_b). PAPERS.md's form
/// (T_w^s + T_e^s with T_e^s = M(E^dm) + sum_{i=s}^{dm-1} E^i) leaves out the
/// first micro-batch's trip through the steps after dm and back; against the
/// 1F1B simulation it underestimated rounds by up to 78% on random plans with
/// M < P. Here the dominant step ends at sum_{i<dm} E_f^i + M E^dm +
/// sum_{i>dm} E^i; a step s < dm ends sum_{i=s}^{dm-1} E_b^i later, a step
/// s > dm that much earlier. Exact for equal steps: (M + P - 1)(E_f + E_b) + T_a;
/// on random plans within -11%..+31% of the simulation (it ignores the tail
/// hidden behind the dominant step's warm-up), which is why `orrery plan`
/// reports the simulated round. The updates follow: + max_s U^s.
double round_latency(const std::vector<hpp_step>& steps, int micro_batches);

/// A stage's layers and the devices running them.
struct stage_layout {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::vector<std::size_t> devices;
};

/// A stage with its split and predicted figures.
struct hpp_stage {
  stage_layout layout;
  std::vector<int> samples;    ///< per device, summing to the micro-batch size
  std::vector<double> memory;  ///< bytes per device
  hpp_step step;
};

/// An HPP plan and its predicted round latency.
struct hpp_plan {
  std::vector<hpp_stage> stages;
  std::vector<double> transfers;  ///< seconds per micro-batch between stage s and s+1
  double round_seconds = std::numeric_limits<double>::infinity();

  /// Stages and transfers interleaved, as the round-latency formula takes them.
  std::vector<hpp_step> steps() const;
};

/// The stage `layout` at position `position` of `stage_count` stages with the
/// given samples per device: its step times and memory; nullopt when a device's
/// memory is exceeded.
std::optional<hpp_stage> evaluate_stage(const profile& p, const stage_layout& layout,
                                        std::size_t position, std::size_t stage_count,
                                        const std::vector<int>& samples);

/// The most samples each group member can take at that position (memory caps);
/// nullopt when a member cannot even hold the stage's weights and optimizer state.
std::optional<std::vector<int>> sample_caps(const profile& p, const stage_layout& layout,
                                            std::size_t position, std::size_t stage_count);

/// Splits the micro-batch in every stage (`rule`: exact min-max, or the paper's
/// proportional split + straggler offloading) and predicts the round.
std::optional<hpp_plan> evaluate_hpp(const profile& p, const std::vector<stage_layout>& layouts,
                                     rounding rule = rounding::exact);

/// Seconds per micro-batch to move activations from one group to the next.
double stage_transfer(const profile& p, const stage_layout& from, const stage_layout& to);

/// Asteroid's planner: devices sorted by memory, Q(l, n, p) = the best plan for
/// the last l layers on the last n devices in p stages, built from a new first
/// stage and the best sub-plan; run for several device orders (memory and
/// speed, both ways), then improved by local search (swap or move devices
/// between groups, shift stage boundaries). Uses every device. Throws
/// infeasible_error.
hpp_plan asteroid_plan(const profile& p, rounding rule = rounding::exact);

/// The plan as JSON.
nlohmann::json to_json(const hpp_plan& plan, const profile& p);

}  // namespace orrery::planning
