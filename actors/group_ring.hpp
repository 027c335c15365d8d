#pragma once
// The collectives of a tensor-parallel group (Galaxy) over the data plane:
// the members form a ring (rank r sends to r + 1 and hears from r - 1).
// - all-reduce: a reduce-scatter then an all-gather, n - 1 ring steps each,
//   every step moving one n-th of the tensor (the bandwidth-optimal
//   2 (n - 1) / n of it per member);
// - reduce-scatter: each member ends with its rows of the sum (sequence
//   parallelism's split, by the members' shares), n - 1 steps;
// - all-gather: every member's rows (or columns) to every member, n - 1 steps.
// Two members swap instead of circling: the same bytes, one step. An
// all-reduce of at most gathered_all_reduce_bytes (a decode step's rows)
// gathers the whole partials instead, n - 1 steps rather than 2 (n - 1): on
// the testbed a ring step of a few KB costs ~0.6 ms of per-message work and
// waiting, its bytes a few microseconds.
//
// Each chunk of a sum is added up at one member, in ring order, and then
// copied around (or, for two, added in either order, which IEEE addition
// makes the same; or, gathered whole, added on each member in rank order):
// every member gets bitwise the same tensor, so their
// residual streams, and what the leader samples from, never drift apart.
//
// Partial sums come as columns on demand (compute/layer_program.hpp): with
// `tiles` > 1 a reduction computes its partial a tile of columns at a time
// and sends each tile's first ring step before computing the next, so the
// data plane's io thread moves one tile while this thread computes the next
// (Galaxy's overlap). The rest of each tile's ring follows once all are sent.
//
// Threads: all_reduce runs on the stage's own thread, inside its forward
// pass (compute/layer_program.hpp's collective), and blocks until its pieces
// arrive or the deadline passes. deliver runs on the data plane's io thread
// (the router's sink for the group's route) and only files the piece.

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "actors/tensor_frame.hpp"
#include "compute/layer_program.hpp"
#include "messages/data_plane.hpp"

namespace orrery::actors {

/// A collective that cannot complete: a member sent nothing by the deadline,
/// the link to the next member failed, or a newer deployment replaced the
/// ring's. The supervisor judges the members; the driver's recovery
/// replays the request.
class ring_interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Which collective of a forward pass a piece belongs to.
struct collective_key {
  std::uint64_t request = 0;
  std::uint32_t step = 0;
  /// The collective's index in the pass (compute::collective_index).
  std::uint32_t sequence = 0;
  /// The pass's position: a prompt's chunks share a step. (A window the head
  /// drops and the window after it may share step and position too; their
  /// keys stay apart in time because every member runs every pass, in order.)
  std::uint32_t position = 0;
};

/// `rows` split in proportion to `shares` (base's largest_remainder_split);
/// no shares: all of them to one member.
std::vector<std::int64_t> proportional_rows(const std::vector<std::int32_t>& shares, std::int64_t rows);

/// Held by shared_ptr: a send's completion may run after the stage let go.
class group_ring : public std::enable_shared_from_this<group_ring> {
 public:
  struct options {
    std::uint64_t session = 0;
    /// The group's id on every member: the pipeline stage it runs.
    std::uint32_t group = 0;
    int rank = 0;
    /// Member names in rank order, for messages.
    std::vector<std::string> members;
    /// How long one ring step may wait for its piece.
    std::chrono::milliseconds deadline{10000};
    /// The newest deployment announced to the member's node; a wait for a
    /// ring of an older one ends at once. Null: none announced.
    std::shared_ptr<const std::atomic<std::uint64_t>> announced = nullptr;
    /// Column tiles a reduction computes and sends its partial in.
    int tiles = 1;
  };

  explicit group_ring(options o);

  int rank() const { return options_.rank; }
  int size() const { return static_cast<int>(options_.members.size()); }

  /// The link to rank + 1 and the deployment whose pieces count; pieces of
  /// any other deployment are dropped, and what was filed is cleared.
  void connect(std::shared_ptr<messages::link> next, std::uint64_t deployment);

  /// Files a collective piece that arrived (io thread).
  void deliver(tensor_frame frame);

  /// The sum of every member's `partial` ([rows, features], any float
  /// dtype), the same bits on every member. Throws ring_interrupted naming
  /// the member it waited for when a piece does not come by the deadline,
  /// the link to the next member failed or a newer deployment was announced.
  at::Tensor all_reduce(const compute::partial_sum& partial, const collective_key& key);
  at::Tensor all_reduce(const at::Tensor& partial, const collective_key& key);

  /// This member's rows of the sum of every member's `partial`: member m's
  /// are `rows[m]` rows, after those of the members before it (the counts
  /// add up to the partial's rows). Throws as all_reduce.
  at::Tensor reduce_scatter(const compute::partial_sum& partial, const std::vector<std::int64_t>& rows,
                            const collective_key& key);

  /// Every member's `mine`, concatenated along `dim` in rank order (the
  /// members' sizes along `dim` may differ). Throws as all_reduce.
  at::Tensor all_gather(const at::Tensor& mine, const collective_key& key, int dim = 0);

  /// Drops what was filed for `request` (it ended, or starts over).
  void forget(std::uint64_t request);

  /// Pieces received and dropped (another deployment, or a request forgotten).
  std::uint64_t pieces_received() const;
  std::uint64_t pieces_dropped() const;
  /// Tensor bytes sent to the next member so far.
  std::uint64_t bytes_sent() const;
  /// Milliseconds spent waiting for pieces so far.
  double wait_ms() const;

 private:
  /// (request, step, sequence, tile, ring step)
  // request, step, position, sequence, tile, ring step
  using piece_key =
      std::tuple<std::uint64_t, std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t, std::uint16_t>;
  /// Which piece of which collective a send or receive is.
  struct piece {
    messages::collective_op op;
    std::uint32_t tile;
    std::uint16_t ring_step;
  };
  void send(const at::Tensor& chunk, const collective_key& key, piece p);
  /// Every member's `mine` in rank order, passed around the ring as `op`'s pieces.
  std::vector<at::Tensor> all_gather_pieces(const at::Tensor& mine, const collective_key& key,
                                            messages::collective_op op);
  at::Tensor receive(const collective_key& key, piece p);
  /// The partial's column tiles, each computed and passed to `first_step`
  /// (which sends it on) before the next is computed.
  std::vector<at::Tensor> tiled(const compute::partial_sum& partial,
                                const std::function<void(std::uint32_t tile, at::Tensor&)>& first_step) const;

  options options_;
  std::shared_ptr<messages::link> next_;
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::uint64_t deployment_ = 0;
  std::map<piece_key, at::Tensor> pieces_;
  std::string send_error_;
  std::uint64_t received_ = 0, dropped_ = 0, bytes_sent_ = 0;
  std::chrono::steady_clock::duration waited_{};
};

}  // namespace orrery::actors
