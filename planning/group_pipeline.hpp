#pragma once
// Pipelines whose stages may be tensor-parallel groups (Galaxy's split inside
// a stage, EdgeShard's layer ranges across stages). A group is seen by the
// pipeline planners and the simulator as one device: the "group profile" has
// one device per group, whose per-layer times are the group's predicted block
// time (galaxy_split, then simulate_tp_block) and whose links are the worst
// between the groups' members. So one planner and one simulator serve
// pipelines of single devices and of groups alike.
//
// The profile's layers are decoder blocks as orrery's runtime holds them and
// the profiler measures them: the embedding folded into the first block, the
// final norm and the head into the last. A group's members pay what such an
// edge layer costs beyond a plain block: the embedding whole, the head in
// proportion to their vocabulary rows (the leader's share, on its times).
//
// A group's block is costed as the runtime runs it by default: the parts'
// partial sums all-reduced after their matmuls (simulate_all_reduced_block).

#include <cstddef>
#include <vector>

#include "planning/galaxy.hpp"
#include "planning/profile.hpp"

namespace orrery::planning {

/// The profile of a pipeline over `groups` and the split each group runs.
struct group_pipeline {
  /// One device per group, in group order; the source is the group holding
  /// `p.source` (which must lead its group). Devices named `a+b+c`.
  profile stages;
  /// Per group, its split of a decode step at the workload's mid context:
  /// the heads and columns its members hold.
  std::vector<tp_split> splits;
};

/// The group profile of `p` over `groups` (each in ring order, the leader
/// first; a group of one is that device itself). Needs the profile's shape
/// and the members' tp costs for groups of more than one; throws
/// profile_error when they are missing or the source does not lead its
/// group, and infeasible_error when a group cannot hold its share of blocks.
/// A group's memory is its members' budgets together: planners check the
/// whole layers against it, the members' slices are checked by the caller.
group_pipeline plan_group_pipeline(const profile& p, const std::vector<std::vector<std::size_t>>& groups);

/// Whether every device has tp costs and the profile a shape, so groups can
/// be planned.
bool has_tp_costs(const profile& p);

}  // namespace orrery::planning
