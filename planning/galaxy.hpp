#pragma once
// Galaxy (INFOCOM 2024): hybrid tensor + sequence parallelism inside a group.
// Per transformer block: attention in TP (device d holds h_d heads), a
// ReduceScatter along the sequence, the connective block in SP on the
// device's slice s_d, an AllGather, the MLP in TP (f_d columns), ReduceScatter,
// connective block, AllGather. The embedding and the head stay on the group's
// first device (the source in `auto` plans).

#include <cstddef>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "planning/profile.hpp"
#include "planning/task_graph.hpp"

namespace orrery::planning {

/// How integer shares are found.
enum class rounding {
  exact,         ///< min-max optimal integer split (orrery)
  proportional,  ///< proportional to speed, largest-remainder rounding (the paper)
};

/// A tensor-parallel group and its split of one block.
struct tp_split {
  std::vector<std::size_t> devices;  ///< ring order
  std::vector<int> heads;            ///< attention heads per device
  std::vector<int> columns;          ///< MLP intermediate columns per device
  std::vector<int> tokens;           ///< sequence slice per device (connective blocks)
};

/// Predicted time of one block over `tokens` tokens.
struct tp_layer_time {
  double serial = 0;       ///< collectives after the matmuls
  double overlapped = 0;   ///< tile-based ring overlap (simulated)
};

/// Splits heads, columns and tokens over `group` for a sequence of `tokens`,
/// in proportion to the profiled per-piece speeds and capped by memory
/// (weights plus the KV of `requests` requests at full context, of
/// `model_share` of the model's blocks: a group that is one stage of a
/// pipeline holds fewer than all).
/// Needs the profile's shape and every device's tp costs; throws
/// profile_error when missing and infeasible_error when the block weights do
/// not fit the group.
tp_split galaxy_split(const profile& p, const std::vector<std::size_t>& group, int tokens,
                      rounding rule = rounding::exact, int requests = 1, double model_share = 1);

/// Per-piece costs of a device whose transformer block costs
/// `seconds_per_token` per token of a prompt pass, shared out by the bytes
/// each piece reads (decode and short prefill are memory-bound, as the
/// measured per-layer costs are): a head its Q, K, V and O slices, a column
/// its gate, up and down slices, a connective block ~4 values per hidden unit.
/// For profiles that time whole layers only; a profiler that times the
/// pieces themselves measures kernel overheads this cannot see.
tp_costs tp_costs_from_block(const transformer_shape& s, double seconds_per_token);

/// `p` with each device d's tp costs multiplied by `factor[d]`. Profiled tp
/// costs are per token of a prompt pass (work.prompt_tokens tokens, the
/// weights read once for all of them); a decode step or a pass of another
/// length costs per token what the device's transformer block costs there,
/// relative to the prompt pass, and `factor` is that ratio.
profile rescale_tp_costs(const profile& p, const std::vector<double>& factor);

/// The block's schedule on the group: compute tiles on each device, ring steps
/// on each device's outgoing link; `overlap` splits each matmul into tiles
/// that overlap the ring steps (Galaxy's tile-based overlap).
schedule simulate_tp_block(const profile& p, const tp_split& split, int tokens, bool overlap);

/// The block as orrery's runtime runs it by default (sequence parallelism
/// off; actors/group_ring.hpp): each member's attention and MLP over all
/// `tokens` rows, their partial sums all-reduced (a swap for two members,
/// whole partials gathered in n - 1 ring steps up to
/// base's gathered_all_reduce_bytes, else the ring's 2 (n - 1) steps), the
/// connective blocks on every member.
schedule simulate_all_reduced_block(const profile& p, const tp_split& split, int tokens);

/// One block's time with and without overlap.
tp_layer_time tp_block_time(const profile& p, const tp_split& split, int tokens);

/// The serial time in closed form: four phases of compute (the slowest device)
/// and four ring collectives of n-1 steps each.
double tp_block_serial_closed_form(const profile& p, const tp_split& split, int tokens);

/// Bytes each group member holds for the whole model (weights + KV of
/// `requests` requests), in group order.
std::vector<double> tp_memory(const profile& p, const tp_split& split, int requests = 1);

/// The split as JSON.
nlohmann::json to_json(const tp_split& split, const profile& p);

}  // namespace orrery::planning
