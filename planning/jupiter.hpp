#pragma once
// Jupiter (INFOCOM 2025): intra-sequence pipelined prefill. The prompt is cut
// into chunks that flow through the pipeline's stages one after another, so
// stage s works on chunk k while stage s-1 works on chunk k+1; each stage keeps
// the chunks' KV, so causal attention needs no extra traffic. Later chunks
// attend to more context and cost more per token, so equal chunks are not
// optimal: the planner searches the number of chunks and their lengths.

#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "planning/cost.hpp"
#include "planning/pipeline.hpp"

namespace orrery::planning {

/// A chunking of the prompt and its predicted prefill latency.
struct chunk_plan {
  std::vector<int> lengths;         ///< in prompt order, summing to the prompt length
  double seconds = 0;               ///< prefill latency (first token at the source)
  double equal_seconds = 0;         ///< best latency with equal chunks
  double unchunked_seconds = 0;     ///< the whole prompt at once
};

/// Prefill latency of `lengths` through the stages (simulated: device and link contention).
double chunked_prefill_seconds(const cost_model& costs, const std::vector<stage>& stages,
                               const std::vector<int>& lengths);

/// `prompt` tokens in `count` chunks (at least 1, at most one a token) whose
/// lengths differ by at most one, the longer first.
std::vector<int> equal_chunks(int prompt, int count);

/// Searches 1..max_chunks chunks: from equal lengths, moves tokens between
/// neighbouring chunks while the latency improves (halving the amount moved).
chunk_plan jupiter_chunks(const cost_model& costs, const std::vector<stage>& stages,
                          int max_chunks = 16);

/// The chunking as JSON.
nlohmann::json to_json(const chunk_plan& plan);

}  // namespace orrery::planning
