#include "compute/training/optimizer.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>

#include "compute/model_error.hpp"

namespace orrery::compute {

adamw::adamw(std::vector<named_parameter> parameters, adamw_options options)
    : parameters_(std::move(parameters)), options_(options) {
  for (const auto& p : parameters_) {
    exp_avg_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Contiguous));
  }
}

void adamw::step(double lr, double gradient_scale) {
  c10::NoGradGuard no_grad;
  ++steps_;
  const double b1 = options_.beta1, b2 = options_.beta2;
  const double correction1 = 1 - std::pow(b1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(b2, static_cast<double>(steps_));
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    auto grad = p.tensor.grad();
    if (!grad.defined()) continue;
    if (gradient_scale != 1.0) grad = grad * gradient_scale;
    if (p.decays && options_.weight_decay > 0) p.tensor.mul_(1 - lr * options_.weight_decay);
    exp_avg_[i].mul_(b1).add_(grad, 1 - b1);
    exp_avg_sq_[i].mul_(b2).addcmul_(grad, grad, 1 - b2);
    auto denominator = (exp_avg_sq_[i] / correction2).sqrt_().add_(options_.eps);
    p.tensor.addcdiv_(exp_avg_[i], denominator, -lr / correction1);
    p.tensor.mutable_grad() = at::Tensor();
  }
}

std::map<std::string, at::Tensor> adamw::state() const {
  std::map<std::string, at::Tensor> out;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    out["exp_avg/" + parameters_[i].name] = exp_avg_[i];
    out["exp_avg_sq/" + parameters_[i].name] = exp_avg_sq_[i];
  }
  return out;
}

void adamw::load_state(const std::map<std::string, at::Tensor>& moments, std::int64_t steps) {
  c10::NoGradGuard no_grad;
  for (std::size_t i = 0; i < parameters_.size(); ++i) {
    for (auto* kind : {"exp_avg/", "exp_avg_sq/"}) {
      const auto name = kind + parameters_[i].name;
      auto found = moments.find(name);
      if (found == moments.end()) throw model_error("optimizer state: '" + name + "' is missing");
      auto& into = std::string(kind) == "exp_avg/" ? exp_avg_[i] : exp_avg_sq_[i];
      if (!found->second.sizes().equals(into.sizes()))
        throw model_error("optimizer state: '" + name + "' has " + std::to_string(found->second.numel()) +
                          " values, the parameter " + std::to_string(into.numel()));
      into.copy_(found->second);
    }
  }
  steps_ = steps;
}

double squared_gradient_norm(const std::vector<named_parameter>& parameters) {
  // Summed where the gradients are, read once: on a GPU one wait, not one per parameter.
  at::Tensor sum;
  for (const auto& p : parameters) {
    const auto& grad = p.tensor.grad();
    if (!grad.defined()) continue;
    auto squares = grad.to(at::kDouble).pow(2).sum();
    sum = sum.defined() ? sum + squares : squares;
  }
  return sum.defined() ? sum.item<double>() : 0.0;
}

double clipping_scale(double gradient_norm, double max_norm) {
  if (max_norm <= 0 || gradient_norm <= max_norm) return 1.0;
  return max_norm / (gradient_norm + 1e-6);
}

double learning_rate_schedule::at(std::int64_t step) const {
  if (step < warmup_steps) return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  const auto decay_steps = std::max<std::int64_t>(1, total_steps - 1 - warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps));
  return floor + 0.5 * (peak - floor) * (1 + std::cos(M_PI * progress));
}

}  // namespace orrery::compute
