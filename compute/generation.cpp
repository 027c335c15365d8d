#include "compute/generation.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>

#include "compute/model_error.hpp"
#include "compute/shard.hpp"

namespace orrery::compute {

namespace {

at::Tensor ids_tensor(const std::vector<token_id>& ids) {
  std::vector<std::int64_t> wide(ids.begin(), ids.end());
  return at::tensor(wide, at::TensorOptions().dtype(at::kLong));
}

}  // namespace

token_id sample(sampler& choose, const at::Tensor& logits, const std::vector<token_id>& history, std::uint32_t step) {
  // Ties go to the lowest id on every device, as in sampler::next.
  if (choose.plain_argmax()) return static_cast<token_id>(logits.argmax(-1).item<std::int64_t>());
  auto row = logits.to(at::kCPU).contiguous();
  return choose.next(row.data_ptr<float>(), static_cast<int>(row.size(-1)), history, step);
}

std::vector<token_id> prompt_tokens(const tokenizer& tok, const std::string& prompt) {
  std::vector<token_id> ids{tok.bos()};
  for (auto id : tok.encode(prompt)) ids.push_back(id);
  return ids;
}

void check_fits_context(std::int64_t prompt_length, std::int64_t new_tokens, std::int64_t context) {
  // The last generated token is sampled, never fed back: it needs no position.
  if (prompt_length + new_tokens - 1 > context)
    throw model_error("prompt of " + std::to_string(prompt_length) + " tokens (with BOS) plus " +
                      std::to_string(new_tokens) + " new tokens exceeds the model's context of " +
                      std::to_string(context) + " positions" +
                      (prompt_length < context ? "; use at most --max-tokens " + std::to_string(context - prompt_length + 1)
                                               : ""));
}

void check_request(const generation_request& request, std::int64_t prompt_length, int context) {
  if (request.max_new_tokens < 1)
    throw std::invalid_argument("max-tokens must be at least 1, got " + std::to_string(request.max_new_tokens));
  request.sampling.validate();
  check_fits_context(prompt_length, request.max_new_tokens, context);
}

double decode_ms_per_token(double decode_ms, std::size_t tokens) {
  return tokens > 1 ? decode_ms / static_cast<double>(tokens - 1) : 0.0;
}

generation_progress::generation_progress(std::vector<token_id> prompt, int max_new_tokens, bool stop_at_eos,
                                         token_id eos)
    : history_(prompt), max_new_tokens_(max_new_tokens), stop_at_eos_(stop_at_eos), eos_(eos) {
  result_.prompt_tokens = std::move(prompt);
}

bool generation_progress::accept(token_id token) {
  const auto now = clock_type::now();
  if (result_.tokens.empty()) {
    result_.prefill_ms = std::chrono::duration<double, std::milli>(now - started_).count();
    decode_started_ = now;
  }
  history_.push_back(token);
  result_.tokens.push_back(token);
  result_.decode_ms = std::chrono::duration<double, std::milli>(now - decode_started_).count();
  result_.stopped_at_eos = token == eos_;
  return static_cast<int>(result_.tokens.size()) >= max_new_tokens_ || (stop_at_eos_ && result_.stopped_at_eos);
}

double generation_result::decode_ms_per_token() const {
  return compute::decode_ms_per_token(decode_ms, tokens.size());
}

double generation_result::tokens_per_s() const {
  return decode_ms > 0 ? 1000.0 * static_cast<double>(tokens.size() - 1) / decode_ms : 0.0;
}

generation_result generate(shard& model, const tokenizer& tok, const generation_request& request,
                           const token_callback& on_token) {
  if (!model.has_embedding() || !model.has_head())
    throw model_error("local generation needs the whole model, not the shard [" + std::to_string(model.first_layer()) +
                      ", " + std::to_string(model.last_layer()) + ")");
  const auto prompt = prompt_tokens(tok, request.prompt);
  const int length = static_cast<int>(prompt.size());
  check_request(request, length, model.config().max_position_embeddings);

  sampler choose(request.sampling);
  kv_cache cache = model.new_cache(length + request.max_new_tokens - 1);
  generation_progress progress(prompt, request.max_new_tokens, request.stop_at_eos, tok.eos());
  at::Tensor logits = model.forward(ids_tensor(prompt), {{&cache, length}});
  for (;;) {
    const token_id next = sample(choose, logits, progress.history(), progress.step());
    const bool done = progress.accept(next);
    if (on_token) on_token(next, tok.decode(next));
    if (done) break;
    logits = model.forward(ids_tensor({next}), {{&cache, 1}});
  }
  auto result = progress.result();
  result.kv_cache_bytes = cache.bytes();
  return result;
}

}  // namespace orrery::compute
