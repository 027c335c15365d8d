#include "planning/cost.hpp"

#include <algorithm>

namespace orrery::planning {

cost_model::cost_model(const profile& p) : profile_(&p) {
  const workload& w = p.work;
  // Steady-state decode is costed at the mean context of a request's decode steps.
  double mid_context = w.prompt_tokens + 0.5 * (w.output_tokens - 1);
  request_.resize(layers() * devices());
  step_.resize(layers() * devices());
  for (std::size_t l = 0; l < layers(); ++l) {
    for (std::size_t d = 0; d < devices(); ++d) {
      double total = prefill_seconds(l, d, 0, w.prompt_tokens);
      for (int t = 1; t < w.output_tokens; ++t)
        total += decode_seconds(l, d, w.prompt_tokens + t - 1);
      request_[l * devices() + d] = total;
      step_[l * devices() + d] = decode_seconds(l, d, mid_context);
    }
  }
}

double cost_model::prefill_seconds(std::size_t l, std::size_t d, double position,
                                   double length) const {
  const time_curve& curve = profile_->devices[d].layers[l].prefill;
  double alone = length * curve.at(length);
  double grown = (position + length) * curve.at(position + length) -
                 (position > 0 ? position * curve.at(position) : 0.0);
  return alone + std::max(0.0, grown - alone);
}

double cost_model::decode_seconds(std::size_t l, std::size_t d, double context) const {
  return profile_->devices[d].layers[l].decode.at(context);
}

double cost_model::request_transfer(std::size_t l, std::size_t a, std::size_t b) const {
  if (a == b)
    return 0.0;
  const workload& w = profile_->work;
  double bytes = profile_->layers[l].activation_bytes_per_token;
  return profile_->links.transfer_seconds(a, b, bytes * w.prompt_tokens) +
         (w.output_tokens - 1) * profile_->links.transfer_seconds(a, b, bytes);
}

double cost_model::step_transfer(std::size_t l, std::size_t a, std::size_t b) const {
  return profile_->links.transfer_seconds(a, b, profile_->layers[l].activation_bytes_per_token);
}

double cost_model::request_return(std::size_t d) const {
  return profile_->work.output_tokens * step_return(d);
}

double cost_model::step_return(std::size_t d) const {
  return profile_->links.transfer_seconds(d, profile_->source, profile_->work.return_bytes);
}

double cost_model::memory_bytes(std::size_t l, int requests) const {
  const layer_profile& layer = profile_->layers[l];
  return layer.weight_bytes + layer.kv_bytes_per_token * context_tokens() * requests;
}

int cost_model::context_tokens() const {
  return profile_->work.prompt_tokens + profile_->work.output_tokens;
}

}  // namespace orrery::planning
