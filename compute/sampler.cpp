#include "compute/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

#include "compute/splitmix.hpp"

namespace orrery::compute {

void sampling_params::validate() const {
  if (!(temperature >= 0.0f)) throw std::invalid_argument("temperature must be >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw std::invalid_argument("top-k must be >= 0, got " + std::to_string(top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) throw std::invalid_argument("top-p must be in (0, 1], got " + std::to_string(top_p));
  if (!(repetition_penalty > 0.0f))
    throw std::invalid_argument("repetition-penalty must be > 0, got " + std::to_string(repetition_penalty));
}

sampler::sampler(sampling_params params) : params_(params) { params_.validate(); }

token_id sampler::next(const float* logits, int vocab_size, const std::vector<token_id>& history, std::uint32_t step) {
  const int n = vocab_size;
  scratch_.assign(logits, logits + n);
  if (params_.repetition_penalty != 1.0f) {
    // Once per distinct token, as HF's gather/scatter does.
    penalized_.assign(static_cast<std::size_t>(n), false);
    for (token_id id : history) {
      if (id < 0 || id >= n || penalized_[id]) continue;
      penalized_[id] = true;
      float& x = scratch_[static_cast<std::size_t>(id)];
      x = x > 0 ? x / params_.repetition_penalty : x * params_.repetition_penalty;
    }
  }
  if (params_.temperature == 0.0f)
    return static_cast<token_id>(std::max_element(scratch_.begin(), scratch_.end()) - scratch_.begin());

  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  auto by_logit = [&](token_id a, token_id b) {
    return scratch_[a] != scratch_[b] ? scratch_[a] > scratch_[b] : a < b;
  };
  std::size_t keep = params_.top_k > 0 ? std::min<std::size_t>(params_.top_k, order_.size()) : order_.size();
  std::partial_sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(keep), order_.end(), by_logit);
  order_.resize(keep);

  // Softmax over the kept tokens at the given temperature.
  std::vector<double> probs(keep);
  double top = scratch_[order_[0]] / params_.temperature, sum = 0;
  for (std::size_t i = 0; i < keep; ++i) sum += probs[i] = std::exp(scratch_[order_[i]] / params_.temperature - top);
  for (auto& p : probs) p /= sum;
  if (params_.top_p < 1.0f) {
    double mass = 0;
    std::size_t cut = 0;
    while (cut < keep && mass < params_.top_p) mass += probs[cut++];
    probs.resize(cut);
    order_.resize(cut);
    for (auto& p : probs) p /= mass;
  }
  // splitmix64's state after `step` draws from `seed`: the same numbers a
  // generator advanced once per sampled token would give.
  std::uint64_t state = params_.seed + std::uint64_t{step} * 0x9e3779b97f4a7c15ull;
  double r = unit_interval(state), acc = 0;
  for (std::size_t i = 0; i < probs.size(); ++i)
    if (r < (acc += probs[i])) return order_[i];
  return order_.back();
}

}  // namespace orrery::compute
