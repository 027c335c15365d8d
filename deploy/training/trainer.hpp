#pragma once
// `orrery train`: next-token training of a Llama model, on one device
// (`--model DIR`) or over a running topology's nodes as a pipeline
// (`--topology F`, deploy/training/pipeline_engine.hpp). Each step reads `batch` sequences (compute/training/corpus.hpp),
// in micro-batches whose gradients accumulate, clips the global gradient
// norm, and takes one AdamW step on the warm-up + cosine schedule. Every
// `eval_every` steps it measures the held-out loss; every
// `checkpoint_every` steps, and at the end, it replaces `out` with a
// checkpoint: the model in HF layout, the optimizer's moments, the run's
// options and position, the JSON log of every step and the loss curve as an
// SVG. `resume` continues a run from its checkpoint; since a step's
// sequences depend only on (seed, step), a run stopped and resumed ends
// bitwise where the same run without the stop does.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "deploy/cluster/topology.hpp"

namespace orrery::deploy {

struct training_options {
  std::filesystem::path model;  ///< where training starts (ignored when resuming; empty: the topology's model)
  std::filesystem::path topology;  ///< empty: train on this machine's `device`
  std::filesystem::path data;   ///< a text file
  std::filesystem::path out;    ///< the checkpoint directory, and the result
  std::int64_t steps = 0;       ///< 0: from `epochs`
  double epochs = 0;            ///< passes over the training tokens, when steps is 0
  int batch = 16;               ///< sequences per step
  int micro_batch = 4;          ///< sequences per forward/backward; divides batch
  int length = 128;             ///< tokens per sequence
  double learning_rate = 1e-3;
  double min_learning_rate = 1e-4;
  std::int64_t warmup_steps = -1;  ///< -1: 5% of the steps, at most 100
  double clip = 1.0;               ///< max global gradient norm; 0: none
  double weight_decay = 0.1;
  double validation_fraction = 0.05;
  int validation_sequences = 64;  ///< at most this many held-out sequences per evaluation
  std::int64_t eval_every = 50;
  std::int64_t checkpoint_every = 200;  ///< 0: only at the end
  /// Over a topology: steps between in-memory weight backups on neighbouring
  /// nodes (0: none; a lost node then costs the steps since the checkpoint).
  std::int64_t backup_every = 50;
  std::uint64_t seed = 0;
  bool resume = false;
  std::string device = "cpu";
  int threads = 0;  ///< 0: every core
  bool quiet = false;  ///< no progress bar
  /// Called after each step with the next step's index (benchmarks time
  /// their faults by it); none: nothing.
  std::function<void(std::int64_t)> after_step;

  /// Throws std::invalid_argument naming the flag when an option is out of range.
  void check() const;
};

struct training_result {
  std::int64_t steps = 0;       ///< the run's last step + 1
  std::int64_t first_step = 0;  ///< where this invocation began (past 0 when resumed)
  double loss = 0;              ///< the last step's training loss
  double validation_loss = 0;   ///< at the end
  double tokens_per_s = 0;      ///< this invocation's training tokens per second
  double seconds = 0;
  /// A node lost and trained around (over a topology).
  struct recovery {
    std::string node;
    std::int64_t lost_at_step = 0;     ///< the step that failed
    std::int64_t resumed_at_step = 0;  ///< the backup's or the checkpoint's (or 0)
    std::string source;                ///< what it resumed from (resume_point::source)
    double seconds = 0;                ///< from the failed step's error to resumed
    std::int64_t resumed_unix_ms = 0;  ///< when training resumed
  };
  std::vector<recovery> recoveries;
  /// In-memory weight backups made (over a topology): how many, the bytes of
  /// the last, their mean time.
  std::int64_t backups = 0;
  std::uint64_t backup_bytes = 0;
  double backup_seconds = 0;
  /// `placement: auto`: the plan's simulated round and the mean step after
  /// the first as measured; 0 otherwise.
  double predicted_round_s = 0;
  double measured_round_s = 0;
  /// Its parts: the micro-batches, the gradient norm with the groups'
  /// all-reduces, the update.
  double measured_passes_s = 0, measured_norm_s = 0, measured_update_s = 0;
};

/// Trains as above; progress on stderr, one summary line on `figures`.
training_result train(const training_options& options, std::ostream& figures);

/// Trains over the nodes of `cluster` as placed (options.topology is not
/// read), reporting the measured round beside `predicted_round_s` where > 0:
/// for benchmarks weighing layouts of one cluster.
training_result train(const training_options& options, const topology& cluster, double predicted_round_s,
                      std::ostream& figures);

/// The options as a checkpoint stores them (those that decide the result).
nlohmann::json to_json(const training_options& options);

inline constexpr const char* training_state_file = "training.json";
inline constexpr const char* training_log_file = "train_log.jsonl";
inline constexpr const char* loss_curve_file = "loss.svg";

}  // namespace orrery::deploy
