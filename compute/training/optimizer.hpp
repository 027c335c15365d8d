#pragma once
// AdamW (decoupled weight decay, as torch.optim.AdamW computes it), gradient
// clipping by global norm, and a linear warm-up followed by a cosine decay of
// the learning rate.
//
// Written out rather than torch::optim::AdamW: its state is keyed by tensor
// address and saved only in torch's archive format, while orrery stores a
// stage's moments by parameter name in safetensors (checkpoints, and backups
// a neighbour holds for a stage of a pipeline), and restores them into a
// stage that loads the same layers in another process.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compute/training/pass.hpp"

namespace orrery::compute {

struct adamw_options {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class adamw {
 public:
  adamw(std::vector<named_parameter> parameters, adamw_options options = {});

  /// One update at learning rate `lr`, every gradient multiplied by
  /// `gradient_scale` first (clipping); then clears the gradients. A
  /// parameter without a gradient is left as it is.
  void step(double lr, double gradient_scale = 1.0);

  /// Updates so far (the bias corrections' t).
  std::int64_t steps() const { return steps_; }
  const std::vector<named_parameter>& parameters() const { return parameters_; }

  /// The moments, as "exp_avg/<name>" and "exp_avg_sq/<name>".
  std::map<std::string, at::Tensor> state() const;
  /// Restores moments saved by state() after `steps` updates; throws
  /// model_error naming a moment that is missing or misshapen.
  void load_state(const std::map<std::string, at::Tensor>& moments, std::int64_t steps);

 private:
  std::vector<named_parameter> parameters_;
  adamw_options options_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  std::int64_t steps_ = 0;
};

/// The sum of squares of every gradient of `parameters` (a pipeline adds its
/// stages' sums before taking the root).
double squared_gradient_norm(const std::vector<named_parameter>& parameters);

/// What gradients are multiplied by so their global norm is at most
/// `max_norm` (1 when it already is, or when max_norm is 0: no clipping).
double clipping_scale(double gradient_norm, double max_norm);

struct learning_rate_schedule {
  double peak = 1e-3;
  double floor = 1e-4;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;

  /// Step `step` (from 0): peak·(step+1)/warmup during the warm-up, then a
  /// cosine from peak down to floor at the last step.
  double at(std::int64_t step) const;
};

}  // namespace orrery::compute
