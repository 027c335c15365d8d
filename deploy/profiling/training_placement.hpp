#pragma once
// `placement: auto` for `orrery train`: stages of layers and data-parallel
// groups of nodes planned by Asteroid's DP (planning/asteroid.hpp) from a
// profile with training times (forward and backward per sample), predicted
// by the 1F1B round simulation, and written back as a topology whose
// `group:`s the pipeline engine trains as data-parallel stages.
//
// The planner splits each micro-batch's samples inside a group; so does the
// runtime, by the members' shares (actors/training_stage.hpp's
// training_rows), which the topology carries as the plan's samples.

#include <iosfwd>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"
#include "planning/asteroid.hpp"
#include "planning/profile.hpp"

namespace orrery::deploy {

/// The shape of a training round as `orrery train` runs it.
struct training_shape {
  int batch = 8;        ///< samples per step
  int micro_batch = 2;  ///< samples per micro-batch (divides batch)
  int length = 64;      ///< tokens per sample
};

/// A layout the training planner weighed.
struct training_alternative {
  std::string layout;   ///< as training_placement::layout; the style's name where it cannot run
  double round_s = 0;   ///< simulated round; 0 when it cannot run
  std::string reason;   ///< why it cannot run; empty when it can
};

/// A planned training layout and its prediction.
struct training_placement {
  std::string style;   ///< "hybrid (asteroid)", "data-parallel" or "solo"
  /// `a+b [0, 2) -> c [2, 4)`: each stage's members (by name) and layers.
  std::string layout;
  /// The topology with the layout applied: the nodes that hold layers, stage
  /// by stage; a stage of several members is group `auto-<stage>`, each
  /// member's slice (its share of the micro-batches) in proportion to the
  /// samples the plan gives it.
  topology placed;
  planning::hpp_plan plan;
  double round_s = 0;          ///< the simulated round (M micro-batches + all-reduces)
  double samples_per_s = 0;    ///< the round's samples over round_s
  double formula_round_s = 0;  ///< Asteroid's closed form, for comparison
  /// Parts of the round: the slowest stage's gradient all-reduce and update.
  double allreduce_s = 0, update_s = 0;
  std::vector<training_alternative> alternatives;  ///< the others weighed, fastest first
};

/// The workload of a training placement: M = batch / micro_batch
/// micro-batches of micro_batch samples of length tokens.
planning::workload training_workload(const training_shape& shape);

/// The plan as a training placement: its layout, topology and simulated round.
training_placement place_training(const topology& t, const planning::profile& p, std::string style,
                                  planning::hpp_plan plan);

/// Pure data parallelism: every node trains every layer on its share of each
/// step's samples, in proportion to its speed (no pipeline, so the step is
/// one batch to split: a micro-batch smaller than the nodes would leave the
/// slow ones out). Throws planning::infeasible_error when the model's
/// training state does not fit a node.
training_placement data_parallel_placement(const topology& t, const planning::profile& p);

/// Pure pipeline parallelism: every node a stage of its own, in file order,
/// over layer ranges as `placement: even` cuts them. Throws
/// planning::infeasible_error.
planning::hpp_plan pipeline_plan(const planning::profile& p);

/// One device trains every layer. Throws planning::infeasible_error.
planning::hpp_plan solo_plan(const planning::profile& p, std::size_t device);

/// The fastest of Asteroid's hybrid plan, pure data parallelism over every
/// node and the source node alone, by simulated round. Throws
/// planning::infeasible_error when none fits.
training_placement plan_training(const topology& t, const planning::profile& p);

/// Lines for a log: the stages, each member's samples per micro-batch, the
/// predicted round and samples/s, and the layouts weighed against it.
std::string describe(const training_placement& plan);

/// For `orrery train --topology`: `t` itself unless its placement is `auto`;
/// then the planned topology after printing the plan to `log`, and the
/// predicted round in `predicted_round_s`.
topology resolve_training_placement(const topology& t, const training_shape& shape, std::ostream& log,
                                    double* predicted_round_s = nullptr);

}  // namespace orrery::deploy
