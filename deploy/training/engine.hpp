#pragma once
// What runs a training step's passes and holds the weights: the model on one
// device (local_engine, deploy/training/trainer.cpp) or a topology's training
// stages (pipeline_engine, deploy/training/pipeline_engine.hpp). The trainer
// draws the batches, keeps the schedule, the log and the checkpoints, and is
// the same for both, so one step over the pipeline is compared with one step
// on one device by running the same trainer on each.

#include <filesystem>
#include <string>
#include <vector>

#include "compute/training/corpus.hpp"

namespace orrery::deploy {

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
  /// Where it trains, for the first line of progress ("cpu", "3 stages: …").
  virtual std::string describe() const = 0;
};

}  // namespace orrery::deploy
