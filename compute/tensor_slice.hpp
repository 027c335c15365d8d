#pragma once
// One member's part of every decoder layer of a tensor-parallel group
// (Galaxy): whole query heads [head_begin, head_end) with the KV heads they
// read, and the MLP's intermediate columns [column_begin, column_end). Q, K,
// V and gate|up are cut by rows (their outputs), O and down by columns (their
// inputs), so each member computes a partial sum of the attention's and the
// MLP's outputs and the group adds them up (actors/group_ring.hpp).
//
// With grouped-query attention a query head reads KV head h / (heads /
// kv_heads). A cut inside such a group gives both members that KV head: it is
// replicated, never split from a query head that reads it. So any member
// count and any shares work, not only divisors of the KV-head count.
//
// Torch-free, so the topology's checks use it. The ranges themselves are
// base/tensor_slice.hpp.

#include <vector>

#include "base/tensor_slice.hpp"
#include "compute/llama_config.hpp"

namespace orrery::compute {

/// The whole layer as a slice.
tensor_slice whole_layer(const llama_config& config);

/// Query heads [head_begin, head_end) with the KV heads they read, MLP
/// columns [column_begin, column_end) and LM head rows [vocab_begin, vocab_end).
tensor_slice slice_of(const llama_config& config, int head_begin, int head_end, int column_begin, int column_end,
                      int vocab_begin, int vocab_end);

/// Whether `slice` is a slice of this model's layers: non-empty ranges
/// inside them, its KV heads those its query heads read.
bool is_slice_of(const llama_config& config, const tensor_slice& slice);

/// Whether `slice` cuts a KV group: its query heads do not all read KV head
/// h / (heads / kv_heads) of their own numbering (then kv_head_of maps them).
bool cuts_kv_group(const llama_config& config, const tensor_slice& slice);

/// The slices of a group whose members take `heads[m]` query heads and
/// `columns[m]` MLP columns, in member order (contiguous ranges, the first
/// member from 0), and LM head rows in proportion to their columns (the
/// split by speed), at least one each. Throws model_error when the shares do
/// not add up to the model's heads and columns or a member gets no head or
/// no column.
std::vector<tensor_slice> tensor_slices(const llama_config& config, const std::vector<int>& heads,
                                        const std::vector<int>& columns);

/// Parameters a member holding `slice` of layers [first, last) keeps: its
/// rows and columns, the norms, the embedding with layer 0 and, with the
/// last layer, the final norm and its LM head rows (counted as
/// llama_config::parameter_count does).
std::int64_t parameter_count(const llama_config& config, int first, int last, const tensor_slice& slice);

/// Local query head `h` of `slice` reads local KV head kv_head_of(h).
int kv_head_of(const llama_config& config, const tensor_slice& slice, int local_head);

}  // namespace orrery::compute
