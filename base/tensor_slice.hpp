#pragma once
// One member's part of every decoder layer of a tensor-parallel group
// (Galaxy): whole query heads [head_begin, head_end) with the KV heads they
// read, and the MLP's intermediate columns [column_begin, column_end). The
// plain ranges, as topologies, stage assignments and shards all name them;
// compute/tensor_slice.hpp cuts a model's layers into them.

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

}  // namespace orrery
