#pragma once
// Weight backups of a training run, held in a node's memory (Asteroid's fault
// tolerance). Every K optimizer steps each pipeline stage's first member puts
// a copy of its parameters and their AdamW moments into its own node's store
// and sends another over the data plane to the store of the next stage's node
// (the last stage's to the first's). When a node is lost, every stage goes
// back to that round: the survivors' stores hold every layer of it, the lost
// node's own stage at its neighbour, the stage it held for at its owner.
//
// One store per node process, shared by its sessions (a recovery starts a new
// session, the backups must outlive the old one): keyed by training run,
// round (the optimizer steps taken) and parameter name. It keeps the newest
// two rounds of each run (a round being written leaves the one before it
// whole) and the newest few runs; a client forgets its run when it ends.
//
// Threads: the data plane's io thread puts what arrives from a neighbour;
// stages and senders read from their own. One mutex.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "messages/data_plane.hpp"

namespace orrery::actors {

struct tensor_frame;

/// One parameter as backed up: its weights, then its two AdamW moments.
struct backed_up_parameter {
  std::string name;
  std::vector<at::Tensor> state;
};

class backup_store {
 public:
  /// Rounds of a run kept, and runs kept.
  static constexpr std::size_t rounds_kept = 2, runs_kept = 4;

  /// Keeps `p` as of `round` of `run` (replacing an earlier copy of it), and
  /// drops the run's rounds past `round` (steps it went back on).
  void put(std::uint64_t run, std::int64_t round, backed_up_parameter p);
  /// Of `names`, those not held for (run, round), in order.
  std::vector<std::string> missing(std::uint64_t run, std::int64_t round, const std::vector<std::string>& names) const;
  /// The parameters named, as held for (run, round); throws
  /// std::invalid_argument naming the first that is not.
  std::vector<backed_up_parameter> get(std::uint64_t run, std::int64_t round, const std::vector<std::string>& names) const;
  void forget(std::uint64_t run);
  /// Bytes held, over every run.
  std::uint64_t bytes() const;

  /// Stores a backup frame a neighbour sent (the router's sink); throws
  /// std::invalid_argument when the frame is not one parameter's three
  /// state tensors of one shape.
  void receive(tensor_frame frame);

 private:
  using round_map = std::map<std::int64_t, std::map<std::string, std::vector<at::Tensor>>>;
  mutable std::mutex mutex_;
  std::map<std::uint64_t, round_map> runs_;
  std::list<std::uint64_t> recent_;  // runs, most recently written first
};

/// The three state tensors of a backup frame, checked: one shape, float.
/// Throws std::invalid_argument naming the frame's parameter.
std::vector<at::Tensor> backup_state_of(const tensor_frame& frame);

/// Sends `parameters` over `link`, one backup frame each (`route` with each
/// one's name), in session `session`; returns once every frame is written.
/// Throws std::runtime_error naming the link and the problem.
void send_backup(messages::link& link, std::uint64_t session, std::uint64_t deployment, messages::backup_route route,
                 const std::vector<backed_up_parameter>& parameters);

}  // namespace orrery::actors
