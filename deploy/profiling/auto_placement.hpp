#pragma once
// `placement: auto`: the layers of a topology placed by the planner from a
// measured profile (deploy/profiling/profiler.hpp), with the plan's predictions, so a
// run can report predicted beside measured figures.
//
// orrery's runtime gives each node at most one contiguous layer range, so the
// objectives map to the EdgeShard DPs that use each device once: `latency`
// minimises one request's time end to end, `throughput` the bottleneck step
// for the workload's concurrent requests. Nodes the plan does not use are left
// out of the pipeline.
//
// For `latency` a stage may also be a tensor-parallel group of consecutive
// nodes (Galaxy, planning/group_pipeline.hpp) when the profile has tp costs:
// every way of cutting the nodes (in file order) into consecutive groups is
// planned by the same DP over the groups, predicted, and the layout with the
// lowest predicted decode time per token wins; its `placed` topology names
// the groups and each member's slice of heads and columns.

#include <cstddef>
#include <iosfwd>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"
#include "deploy/profiling/profiler.hpp"
#include "planning/jupiter.hpp"
#include "planning/pipeline.hpp"
#include "planning/profile.hpp"

namespace orrery::deploy {

/// What a layout is predicted to do for the profile's workload
/// (work.batch concurrent requests of work.prompt_tokens + work.output_tokens).
struct placement_prediction {
  int requests = 1;
  double prefill_ms = 0;            ///< first token of a request, mean
  double decode_ms_per_token = 0;   ///< per request, after the first token
  double tokens_per_s = 0;          ///< all requests together, while decoding
};

/// A layout the automatic planner weighed.
struct placement_alternative {
  std::string layout;              ///< as placement_plan::layout
  double decode_ms_per_token = 0;  ///< predicted, per request; 0 when it cannot run
  std::string reason;              ///< why it cannot run; empty when it can
};

/// A layout of the topology's layers and its prediction.
struct placement_plan {
  std::string name;  ///< "auto (throughput)", "even", …
  /// The stages: `pipeline: n0 [0, 3) -> n1 [3, 4)`, or with a group
  /// `tensor-parallel: n0+n1 [0, 4)`.
  std::string layout;
  /// The topology with the layout applied: only the nodes that hold layers,
  /// in pipeline order.
  topology placed;
  /// device = index in the profile (the topology's file order) of the
  /// stage's node, of its leader for a group.
  std::vector<planning::stage> stages;
  /// Per stage, its nodes (profile indices, the leader first); one for a
  /// stage of its own.
  std::vector<std::vector<std::size_t>> groups;
  placement_prediction predicted;
  /// The other layouts weighed, fastest first (`latency` only).
  std::vector<placement_alternative> alternatives;
  /// Why some layouts were not weighed; empty when all were.
  std::string note;
};

/// Node `device` of `t` holding stage `s`'s layers: a node of its own (empty
/// `group`), or a member of `group` holding `slice` of them; its weight bytes
/// follow.
node_spec stage_node(const topology& t, std::size_t device, const planning::stage& s, const std::string& group,
                     const tensor_slice& slice);

/// The profile `t` plans from: its `profile:` file if set, else measured on
/// the running nodes (or taken from the cache unless `refresh`), for `work`;
/// with `training`, one with training times (a file without them is an error).
planning::profile obtain_profile(const topology& t, const planning::workload& work, const profile_progress& progress,
                                 bool refresh = false, bool training = false);

/// The planner's layout for `t.objective`; throws planning::infeasible_error
/// naming what does not fit.
placement_plan plan_automatic(const topology& t, const planning::profile& p);

/// Every node of `t` as one tensor-parallel group holding every layer,
/// split by the profile's tp costs; throws planning::profile_error when the
/// profile has none and planning::infeasible_error when it does not fit.
placement_plan plan_one_group(const topology& t, const planning::profile& p);

/// `placement: even` over every node of `t` (in file order), predicted from `p`.
placement_plan plan_even(const topology& t, const planning::profile& p);

/// The simulator's prediction of `stages` for the profile's workload.
placement_prediction predict(const planning::profile& p, const std::vector<planning::stage>& stages);

/// A few lines: each stage's node and layers (and a group member's slice),
/// the prediction, and the layouts weighed against it with their predicted
/// decode ms/token.
std::string describe(const placement_plan& plan);

/// Jupiter's prefill chunks for `plan`'s stages and the prompt of the
/// profile's workload (planning/jupiter.hpp), a group costed as the planner
/// costs it.
planning::chunk_plan plan_prefill(const placement_plan& plan, const planning::profile& p);

/// For commands that run a topology: `t` itself unless its placement is
/// `auto`; then the planned topology, after printing the plan to `log`.
/// `requests`, `prompt_tokens` and `new_tokens` describe the run ahead.
/// `prefill`, where given, gets the plan's prefill chunks (left as it is
/// for a placement that is not `auto`: there is no profile to plan from).
topology resolve_placement(const topology& t, int requests, int prompt_tokens, int new_tokens, std::ostream& log,
                           placement_prediction* predicted = nullptr, planning::chunk_plan* prefill = nullptr);

/// The pipeline positions of a resolved topology (a group counts once).
int pipeline_positions(const topology& t);

/// `--prefill-chunks auto` without a profile: chunks of at least this many
/// tokens, one per pipeline position.
constexpr int min_chunk_tokens = 32;

}  // namespace orrery::deploy
