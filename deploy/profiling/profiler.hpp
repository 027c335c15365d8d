#pragma once
// `orrery profile`: measures a running cluster for the planners — each node's
// per-layer prefill and decode times and usable memory (measured on the node
// itself, actors/profiling.hpp) and every link between two nodes over the data
// plane — and assembles them into a planning::profile (planning/profile.hpp).
//
// Measurements are cached per model and node, and links per pair of nodes,
// under `${XDG_CACHE_HOME:-$HOME/.cache}/orrery/profiles`; a key changes with
// what the measurement depends on (the model's files; a node's address,
// device, threads, budget and emulated limits), so a changed node is measured
// afresh and an unchanged one is not.
//
// The profile uses orrery's own layer granularity: one entry per decoder
// layer, with the embedding's cost in layer 0 and the final norm and LM head
// in the last layer, as the runtime's shards hold them. The first node listed
// is the source (it holds layer 0), and the last stage samples, so a
// generated token returns to the client as one id (planning::workload::return_bytes).
//
// The profile also has the model's shape and each device's tensor-parallel
// costs (per head, per MLP column, per connective token), derived from its
// measured middle block by the bytes each piece reads
// (planning::tp_costs_from_block), so `placement: auto` can weigh groups.

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "deploy/cluster/topology.hpp"
#include "planning/profile.hpp"

namespace orrery::deploy {

struct profiler_options {
  std::vector<int> prefill_lengths = {8, 32, 128};
  std::vector<int> decode_contexts = {16, 128, 512};
  /// Wall time each timed point's repeats add up to.
  double min_seconds = 0.3;
  /// Measure again even what the cache holds.
  bool refresh = false;
  /// Also time training passes (samples of work.train_tokens tokens in
  /// micro-batches of work.micro_batch_size), for training placements.
  bool training = false;
  std::filesystem::path cache_dir;  ///< empty: default_profile_cache()
  /// The workload the profile describes (what the planners optimise for).
  planning::workload work;
};

/// `${XDG_CACHE_HOME:-$HOME/.cache}/orrery/profiles`.
std::filesystem::path default_profile_cache();

/// One step of profiling done: `done` of `total`, and what it was.
using profile_progress = std::function<void(int done, int total, const std::string& what)>;

/// Profiles the nodes of `t` (they must be running) and returns the profile;
/// throws std::runtime_error naming the node or link that failed.
planning::profile profile_cluster(const topology& t, const profiler_options& options,
                                  const profile_progress& progress = {});

/// Keeps `seconds` as the ring step floor (planning::profile::ring_step_floor)
/// of `t`'s nodes, which profile_cluster then puts in their profile. It is
/// kept beside the nodes' measurements under a key of what they compute on
/// (name, address, device, dtype, threads, cpu share), not their links, so
/// a floor measured at one link speed carries over to another.
void save_ring_step_floor(const topology& t, double seconds, const std::filesystem::path& cache_dir = {});

/// Progress as a bar on stderr (deploy/console/progress.hpp).
profile_progress profile_bar(const std::string& title);

}  // namespace orrery::deploy
