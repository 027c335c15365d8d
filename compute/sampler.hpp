#pragma once
// Choosing the next token from a row of logits: greedy, or temperature with
// top-k and top-p, after HF's repetition penalty. Seeded with splitmix64
// (compute/splitmix.hpp) so a seed gives the same tokens on every machine and
// libtorch version.

#include <cstdint>
#include <vector>

#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

struct sampling_params {
  /// 0 means greedy (argmax).
  float temperature = 0.0f;
  /// Keep the k most likely tokens; 0 keeps all.
  int top_k = 0;
  /// Keep the smallest set whose probability reaches p; 1 keeps all.
  float top_p = 1.0f;
  /// HF's CTRL-style penalty on tokens already in the sequence; 1 is off.
  float repetition_penalty = 1.0f;
  std::uint64_t seed = 0;

  /// Throws std::invalid_argument naming the bad field.
  void validate() const;
};

/// Chooses over the model's whole vocabulary (every id a logits row has,
/// whether or not the tokenizer can print it). Holds no random state between
/// tokens: the draw for the token at `step` comes from (seed, step) alone, so
/// a stage that takes over a request (after a recovery) samples what the one
/// before it would have, and local and distributed generation agree.
class sampler {
 public:
  /// Throws std::invalid_argument naming a bad parameter.
  explicit sampler(sampling_params params);

  /// The token at `step` (0 for the first generated token), given the logits
  /// of the last position and the sequence so far (prompt and generated
  /// tokens).
  token_id next(const float* logits, int vocab_size, const std::vector<token_id>& history, std::uint32_t step);

  /// Whether next() is a plain argmax (greedy, no penalty), which the caller
  /// may compute where the logits are (on the GPU, bringing back one id
  /// instead of a row).
  bool plain_argmax() const { return params_.temperature == 0.0f && params_.repetition_penalty == 1.0f; }

 private:
  sampling_params params_;
  std::vector<float> scratch_;
  std::vector<token_id> order_;
  std::vector<bool> penalized_;
};

}  // namespace orrery::compute
