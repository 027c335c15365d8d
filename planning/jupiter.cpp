#include "planning/jupiter.hpp"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "planning/simulator.hpp"

namespace orrery::planning {

double chunked_prefill_seconds(const cost_model& costs, const std::vector<stage>& stages,
                               const std::vector<int>& lengths) {
  inference_options options;
  options.prefill_chunks = lengths;
  options.prefill_only = true;
  return simulate_inference(costs, stages, options).mean_latency;
}

std::vector<int> equal_chunks(int prompt, int count) {
  count = std::max(1, std::min(count, prompt));
  std::vector<int> lengths(static_cast<std::size_t>(count), prompt / count);
  for (int i = 0; i < prompt % count; ++i)
    ++lengths[static_cast<std::size_t>(i)];
  return lengths;
}

namespace {

// Moves `amount` tokens between neighbouring chunks while that helps.
bool improve_once(const cost_model& costs, const std::vector<stage>& stages,
                  std::vector<int>& lengths, double& seconds, int amount) {
  bool improved = false;
  for (std::size_t i = 0; i + 1 < lengths.size(); ++i)
    for (int direction : {+1, -1}) {
      std::vector<int> candidate = lengths;
      candidate[i] += direction * amount;
      candidate[i + 1] -= direction * amount;
      if (candidate[i] < 1 || candidate[i + 1] < 1)
        continue;
      double t = chunked_prefill_seconds(costs, stages, candidate);
      if (t < seconds * (1 - 1e-12)) {
        lengths = candidate;
        seconds = t;
        improved = true;
      }
    }
  return improved;
}

}  // namespace

chunk_plan jupiter_chunks(const cost_model& costs, const std::vector<stage>& stages,
                          int max_chunks) {
  int prompt = costs.source_profile().work.prompt_tokens;
  chunk_plan best;
  best.lengths = {prompt};
  best.seconds = best.equal_seconds = best.unchunked_seconds =
      chunked_prefill_seconds(costs, stages, best.lengths);
  for (int count = 2; count <= std::min(prompt, max_chunks); ++count) {
    std::vector<int> lengths = equal_chunks(prompt, count);
    double seconds = chunked_prefill_seconds(costs, stages, lengths);
    best.equal_seconds = std::min(best.equal_seconds, seconds);
    for (int amount = std::max(1, prompt / count / 2); amount >= 1; amount /= 2)
      while (improve_once(costs, stages, lengths, seconds, amount)) {
        // nop: each pass already applied its improvements
      }
    if (seconds < best.seconds) {
      best.seconds = seconds;
      best.lengths = lengths;
    }
  }
  return best;
}

nlohmann::json to_json(const chunk_plan& plan) {
  return {{"chunks", plan.lengths},
          {"prefill_s", plan.seconds},
          {"equal_chunks_prefill_s", plan.equal_seconds},
          {"unchunked_prefill_s", plan.unchunked_seconds}};
}

}  // namespace orrery::planning
