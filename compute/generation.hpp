#pragma once
// Local generation on one shard holding the whole model: tokenise, prefill,
// then sample and decode one token at a time, streaming each token out.

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "compute/sampler.hpp"
#include "compute/text/tokenizer.hpp"

namespace at {
class Tensor;
}

namespace orrery::compute {

class shard;

struct generation_request {
  std::string prompt;
  int max_new_tokens = 64;
  sampling_params sampling;
  /// Stop when the tokenizer's EOS is sampled (benchmarks turn this off to
  /// time a fixed number of steps).
  bool stop_at_eos = true;
};

struct generation_result {
  std::vector<token_id> prompt_tokens;  ///< BOS + the prompt's tokens
  std::vector<token_id> tokens;         ///< generated tokens
  double prefill_ms = 0;                ///< prompt forward pass + first sample
  double decode_ms = 0;                 ///< all later steps
  std::size_t kv_cache_bytes = 0;
  bool stopped_at_eos = false;

  double decode_ms_per_token() const;  ///< decode_ms_per_token(decode_ms, tokens.size())
  double tokens_per_s() const;  ///< decode steps per second
};

/// Decode time per generated token after the first, which the prefill makes:
/// `decode_ms` over `tokens` generated tokens (0 for fewer than 2). The local
/// result and a pipeline's generation_summary are both measured this way.
double decode_ms_per_token(double decode_ms, std::size_t tokens);

/// The token at `step` from a row of logits ([1, vocab] or [vocab], on any
/// device): a greedy choice is made where the logits are (one id crosses to
/// the host, not the row). Local generation and the pipeline's last stage
/// both sample here.
token_id sample(sampler& choose, const at::Tensor& logits, const std::vector<token_id>& history, std::uint32_t step);

/// BOS followed by the prompt's tokens: what every generation starts from.
std::vector<token_id> prompt_tokens(const tokenizer& tok, const std::string& prompt);

/// One sequence being generated, stepped the same way by local generation
/// (generate, below) and by the pipeline's driver (actors/driver.cpp): each
/// sampled token is accepted in turn, and the sequence ends at max_new_tokens
/// or, when asked, at EOS. Times the prefill (start to the first token) and
/// the decode (the rest).
class generation_progress {
 public:
  /// Starts the clock. `prompt` is BOS + the prompt's tokens.
  generation_progress(std::vector<token_id> prompt, int max_new_tokens, bool stop_at_eos, token_id eos);

  /// Records the token sampled at step(); true when the sequence ends with it.
  bool accept(token_id token);

  /// How many tokens have been generated: the step the next token samples at.
  std::uint32_t step() const { return static_cast<std::uint32_t>(result_.tokens.size()); }
  /// Tokens still to generate (at most: EOS may end the sequence first).
  int remaining() const { return max_new_tokens_ - static_cast<int>(result_.tokens.size()); }
  /// Prompt and generated tokens: what a replay sends again.
  const std::vector<token_id>& history() const { return history_; }
  const generation_result& result() const { return result_; }

 private:
  using clock_type = std::chrono::steady_clock;
  generation_result result_;
  std::vector<token_id> history_;
  int max_new_tokens_;
  bool stop_at_eos_;
  token_id eos_;
  clock_type::time_point started_ = clock_type::now();
  clock_type::time_point decode_started_;
};

/// Throws model_error naming both figures when `prompt_length` tokens (BOS
/// included) and `new_tokens` generated ones do not fit `context` positions.
/// 64-bit, so that no --max-tokens up to INT_MAX wraps the sum past the check.
void check_fits_context(std::int64_t prompt_length, std::int64_t new_tokens, std::int64_t context);

/// Everything generate() checks before its first step, for a caller that must
/// refuse a request before it prints anything: at least one new token, the
/// sampling parameters, and the prompt (`prompt_length` tokens, BOS included)
/// with max_new_tokens inside `context`. Throws as generate() does.
void check_request(const generation_request& request, std::int64_t prompt_length, int context);

/// Called with each generated token and its text as soon as it is sampled.
using token_callback = std::function<void(token_id, const std::string&)>;

/// Throws model_error when the prompt and max_new_tokens do not fit the
/// model's context (naming both figures), std::invalid_argument for bad
/// sampling parameters.
generation_result generate(shard& model, const tokenizer& tok, const generation_request& request,
                           const token_callback& on_token = {});

}  // namespace orrery::compute
