#pragma once
// One member's part of every decoder layer of a tensor-parallel group
// (Galaxy): whole query heads [head_begin, head_end) with the KV heads they
// read, the MLP's intermediate columns [column_begin, column_end), and the
// LM head's rows (vocabulary entries) [vocab_begin, vocab_end) where its
// layers end the model: each member computes its columns of the logits. The
// plain ranges, as topologies, stage assignments and shards all name them;
// compute/tensor_slice.hpp cuts a model's layers into them. And how the
// group's members add their partial sums up (actors/group_ring.hpp).

#include <cstdint>
#include <string>
#include <vector>

namespace orrery {

struct tensor_slice {
  int head_begin = 0, head_end = 0;        ///< query heads
  int kv_head_begin = 0, kv_head_end = 0;  ///< the KV heads those read
  int column_begin = 0, column_end = 0;    ///< MLP intermediate columns
  int vocab_begin = 0, vocab_end = 0;      ///< LM head rows, with the last layer

  int heads() const { return head_end - head_begin; }
  int kv_heads() const { return kv_head_end - kv_head_begin; }
  int columns() const { return column_end - column_begin; }
  int vocab() const { return vocab_end - vocab_begin; }
  /// `heads [0, 6) (kv [0, 2)), columns [0, 1024), vocab [0, 16000)`, for messages.
  std::string describe() const;
  bool operator==(const tensor_slice& other) const;
  bool operator!=(const tensor_slice& other) const { return !(*this == other); }
};

/// `total` in proportion to `shares` (non-negative, adding up to more than
/// 0): each its floor, then one more each to the largest remainders, ties to
/// the lower index. How a group splits its LM head rows and, under sequence
/// parallelism, a pass's tokens by its members' MLP columns. Throws
/// std::invalid_argument when the shares add up to 0 or less.
std::vector<std::int64_t> largest_remainder_split(std::int64_t total, const std::vector<std::int64_t>& shares);

/// Largest all-reduce, in fp32 bytes of the partial, that a group of three or
/// more runs by passing the whole partials round the ring (n - 1 steps)
/// rather than the bandwidth-optimal ring (2 (n - 1) steps of an n-th): a
/// decode step's few KB cost a ring step its fixed per-message work, not
/// bytes (actors/group_ring.hpp runs it, planning/galaxy.hpp costs it).
constexpr std::int64_t gathered_all_reduce_bytes = 64 << 10;

/// How a group all-reduces a partial: one member keeps it; two swap it; up
/// to gathered_all_reduce_bytes the whole partials go round the ring; larger
/// ones take the ring's reduce-scatter and all-gather.
enum class all_reduce_form { alone, swap, gathered, ring };

/// The form, its ring steps and the pieces the partial is cut into (each
/// step sends one piece per member), for `members` and a partial of
/// `fp32_bytes` (its elements x 4): what actors/group_ring.hpp runs and
/// planning and `bench parallel` count.
struct all_reduce_schedule {
  all_reduce_form form = all_reduce_form::alone;
  int steps = 0;
  int pieces = 1;
};

constexpr all_reduce_schedule all_reduce_schedule_of(int members, std::int64_t fp32_bytes) {
  if (members <= 1) return {all_reduce_form::alone, 0, 1};
  if (members == 2) return {all_reduce_form::swap, 1, 1};
  if (fp32_bytes <= gathered_all_reduce_bytes) return {all_reduce_form::gathered, members - 1, 1};
  return {all_reduce_form::ring, 2 * (members - 1), members};
}

/// How a tensor-parallel group runs its collectives (a topology's
/// `collectives:`), the same for every group.
struct group_collectives {
  /// A pass with at least one token for every member runs the connective
  /// blocks in sequence parallelism (reduce-scatter, connective block on the
  /// member's rows, all-gather); other passes, decode steps among them,
  /// all-reduce: one token cannot be split. Off by default: on loopback
  /// with 2 members (small, 512-token prefill) SP took 7% longer than the
  /// all-reduces, whose swap is one ring step where reduce-scatter and
  /// all-gather take two, for the same bytes; what SP saves, the connective
  /// blocks' work on the other members' rows, is under 1% of a layer there.
  bool sequence_parallel = false;
  /// Column tiles each partial sum is computed and sent in, so one tile
  /// travels while the next is computed; 1: the whole partial, then send
  /// (on loopback tiles only add products: the wire is not what waits).
  std::int32_t tiles = 1;
};

}  // namespace orrery
