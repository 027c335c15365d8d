#pragma once
// One member's part of every decoder layer of a tensor-parallel group
// (Galaxy): whole query heads [head_begin, head_end) with the KV heads they
// read, and the MLP's intermediate columns [column_begin, column_end). The
// plain ranges, as topologies, stage assignments and shards all name them;
// compute/tensor_slice.hpp cuts a model's layers into them. And how the
// group's members add their partial sums up (actors/group_ring.hpp).

#include <cstdint>
#include <string>

namespace orrery {

struct tensor_slice {
  int head_begin = 0, head_end = 0;        ///< query heads
  int kv_head_begin = 0, kv_head_end = 0;  ///< the KV heads those read
  int column_begin = 0, column_end = 0;    ///< MLP intermediate columns

  int heads() const { return head_end - head_begin; }
  int kv_heads() const { return kv_head_end - kv_head_begin; }
  int columns() const { return column_end - column_begin; }
  /// `heads [0, 6) (kv [0, 2)), columns [0, 1024)`, for messages.
  std::string describe() const;
  bool operator==(const tensor_slice& other) const;
  bool operator!=(const tensor_slice& other) const { return !(*this == other); }
};

/// How a tensor-parallel group runs its collectives (a topology's
/// `collectives:`), the same for every group.
struct group_collectives {
  /// A pass with at least one token for every member runs the connective
  /// blocks in sequence parallelism (reduce-scatter, connective block on the
  /// member's rows, all-gather); other passes, decode steps among them,
  /// all-reduce: one token cannot be split.
  bool sequence_parallel = true;
  /// Column tiles each partial sum is computed and sent in, so one tile
  /// travels while the next is computed; 1: the whole partial, then send.
  std::int32_t tiles = 1;
};

}  // namespace orrery
