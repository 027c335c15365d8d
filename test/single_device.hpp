#pragma once
// The single-device run every distributed result is compared with: the whole
// model as one shard, the prompt prefilled, then one token per step, greedy
// over the tokenizer's ids — what a pipeline does, on one device — and the
// request that asks a pipeline for the same run.

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "compute/cpu_threads.hpp"
#include "compute/model_dir.hpp"
#include "compute/sampler.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"
#include "messages/types.hpp"

namespace orrery::test {

struct reference_run {
  std::vector<compute::token_id> tokens;
  std::vector<float> final_logits;  ///< the logits the last token was sampled from
};

inline reference_run single_device(const std::filesystem::path& path, const std::string& prompt, int new_tokens) {
  compute::model_dir model(path);
  compute::byte_tokenizer tok;
  // One thread, as the test nodes run: libtorch's and OpenBLAS's products
  // split over two threads round differently on some CPUs (seen on this
  // project's CI machines for prefills of ~20 tokens), and bitwise equality
  // holds for the same arithmetic only.
  compute::shard whole(model, 0, model.config().num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(1)});
  compute::sampler greedy({});
  std::vector<std::int64_t> ids{tok.bos()};
  for (auto id : tok.encode(prompt)) ids.push_back(id);
  std::vector<compute::token_id> history(ids.begin(), ids.end());
  auto cache = whole.new_cache(model.config().max_position_embeddings);
  auto as_tensor = [](std::vector<std::int64_t> v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); };
  auto logits = whole.forward(as_tensor(ids), {{&cache, static_cast<int>(ids.size())}});
  reference_run run;
  for (int step = 0; step < new_tokens; ++step) {
    if (step > 0) logits = whole.forward(as_tensor({run.tokens.back()}), {{&cache, 1}});
    auto next = greedy.next(logits.data_ptr<float>(), static_cast<int>(logits.size(-1)), history,
                            static_cast<std::uint32_t>(step));
    history.push_back(next);
    run.tokens.push_back(next);
  }
  run.final_logits.assign(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
  return run;
}

/// ‖a − b‖ / ‖b‖ of two logit vectors of the same length.
inline double relative_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return a.size() == b.size() && norm > 0 ? std::sqrt(diff / norm) : 1.0;
}

/// A replayed request rebuilds its KV caches with one prefill (matrix-matrix
/// products) where the failure-free run decoded token by token (matrix-vector
/// products); the sums round differently, by about 1e-6 relative here.
constexpr double replay_tolerance = 1e-4;

/// The pipeline request matching single_device(path, prompt, new_tokens),
/// with the last token's logits brought back to compare.
inline generate_request greedy_request(const std::string& prompt, int new_tokens) {
  generate_request r;
  r.prompt = prompt;
  r.max_new_tokens = new_tokens;
  r.stop_at_eos = false;
  r.sampling.return_logits = true;
  return r;
}

/// How a suite generates: requests in, summaries out, each token streamed to
/// the callback first (generate_blocking, pipeline_client::generate).
using generate_function = std::function<std::vector<generation_summary>(
    const std::vector<generate_request>&, const std::function<void(std::size_t, const token_event&)>&)>;

/// Greedy requests for `prompts` while `act(tokens streamed so far)` does its
/// damage (kills, freezes); every request must end with its single-device
/// tokens, each streamed exactly once, and final logits within
/// replay_tolerance.
/// `adjust` changes each request before it is sent (chunks, guesses).
inline void check_survives(const generate_function& generate, const std::filesystem::path& model,
                           const std::vector<std::string>& prompts, int tokens, const std::function<void(int)>& act,
                           const std::function<void(generate_request&)>& adjust = {}) {
  std::vector<generate_request> requests;
  for (const auto& p : prompts) {
    requests.push_back(greedy_request(p, tokens));
    if (adjust) adjust(requests.back());
  }
  std::vector<std::vector<compute::token_id>> streamed(prompts.size());
  int total = 0;
  auto summaries = generate(requests, [&](std::size_t i, const token_event& e) {
    streamed[i].push_back(e.token);
    act(++total);
  });
  REQUIRE(summaries.size() == prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    auto reference = single_device(model, prompts[i], tokens);
    CHECK(summaries[i].tokens == reference.tokens);
    CHECK(streamed[i] == reference.tokens);  // none lost, none repeated
    CHECK(relative_error(summaries[i].final_logits, reference.final_logits) <= replay_tolerance);
  }
}

}  // namespace orrery::test
