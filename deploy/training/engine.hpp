#pragma once
// What runs a training step's passes and holds the weights: the model on one
// device (local_engine, deploy/training/trainer.cpp) or a topology's training
// stages (pipeline_engine, deploy/training/pipeline_engine.hpp). The trainer
// draws the batches, keeps the schedule, the log and the checkpoints, and is
// the same for both, so one step over the pipeline is compared with one step
// on one device by running the same trainer on each.

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "compute/training/corpus.hpp"

namespace orrery::deploy {

/// A node the engine trains on was lost (its process ended, its connection
/// broke); the engine can go on without it after recover().
class training_node_lost : public std::runtime_error {
 public:
  training_node_lost(std::string node, const std::string& what) : std::runtime_error(what), node_(std::move(node)) {}
  const std::string& node() const { return node_; }

 private:
  std::string node_;
};

/// Where training goes on after a lost node: the step, and what the weights
/// came from ("the in-memory backup of round 40", "the checkpoint at step
/// 30", "the starting model").
struct resume_point {
  std::int64_t step = 0;
  std::string source;
};

class training_engine {
 public:
  virtual ~training_engine() = default;
  /// Forward and backward of each micro-batch, gradients accumulating, each
  /// backward from its summed loss over the step's global batch tokens;
  /// returns each micro-batch's summed loss, in order.
  virtual std::vector<double> accumulate(const std::vector<compute::token_batch>& micro_batches) = 0;
  /// The square of the global gradient norm.
  virtual double squared_gradient_norm() = 0;
  /// One AdamW update with every gradient times `gradient_scale`; clears them.
  virtual void step(double learning_rate, double gradient_scale) = 0;
  /// Each batch's summed loss, forward only.
  virtual std::vector<double> evaluate(const std::vector<compute::token_batch>& batches) = 0;
  /// Writes the weights (an HF model) and the optimizer's moments into the
  /// new directory `dir`.
  virtual void save(const std::filesystem::path& dir) = 0;
  /// Restores the optimizer's moments from checkpoint `dir`.
  virtual void restore(const std::filesystem::path& dir) = 0;
  /// Backs up the weights and optimizer state in memory on other nodes, so
  /// that a lost node costs only the steps since; returns the bytes backed
  /// up (0: nothing to back up on, one device).
  virtual std::uint64_t backup() { return 0; }
  /// After training_node_lost: lays the lost node's layers onto the
  /// survivors and puts every stage back at one step: the newest backup
  /// whose every part survived, or, when that is older than
  /// `checkpoint_step` or gone, the model directory `checkpoint` (the last
  /// checkpoint with its optimizer state, or the starting model at step 0).
  /// Throws std::runtime_error when no node is left.
  virtual resume_point recover(const std::string& lost_node, const std::filesystem::path& checkpoint,
                               std::int64_t checkpoint_step) = 0;
  /// Where it trains, for the first line of progress ("cpu", "3 stages: …").
  virtual std::string describe() const = 0;
};

}  // namespace orrery::deploy
