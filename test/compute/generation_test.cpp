#include "compute/generation.hpp"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

struct tiny_model {
  temp_dir dir;
  std::unique_ptr<model_dir> model;
  std::unique_ptr<shard> whole;
  byte_tokenizer tok;

  tiny_model() {
    init_model(dir / "m", llama_config::preset("tiny"), {1, 0, {}});
    model = std::make_unique<model_dir>(dir / "m");
    whole = std::make_unique<shard>(*model, 0, 4, shard_options{at::kCPU, at::kFloat, std::make_shared<thread_pool>(2)});
  }
};

}  // namespace

TEST_CASE("generation streams every token, in order, and is reproducible") {
  tiny_model m;
  generation_request request;
  request.prompt = "Hello";
  request.max_new_tokens = 12;
  request.stop_at_eos = false;
  std::vector<token_id> streamed;
  auto first = generate(*m.whole, m.tok, request, [&](token_id id, const std::string& piece) {
    streamed.push_back(id);
    CHECK(piece == m.tok.decode(id));
  });
  CHECK(first.prompt_tokens.size() == 6);  // BOS + 5 bytes
  CHECK(first.prompt_tokens[0] == m.tok.bos());
  CHECK(first.tokens.size() == 12);
  CHECK(streamed == first.tokens);
  for (auto id : first.tokens) CHECK(id < m.whole->config().vocab_size);
  CHECK(first.kv_cache_bytes == 4 * 2 * 2 * (6 + 11) * 32 * 4);  // layers x K,V x KV heads x positions x dims x bytes
  CHECK(generate(*m.whole, m.tok, request).tokens == first.tokens);

  request.sampling.temperature = 0.8f;
  request.sampling.seed = 5;
  auto sampled = generate(*m.whole, m.tok, request);
  CHECK(generate(*m.whole, m.tok, request).tokens == sampled.tokens);
}

TEST_CASE("a prompt longer than the context is refused with both figures") {
  tiny_model m;
  generation_request request;
  request.prompt = std::string(300, 'x');
  CHECK_THROWS_WITH_AS(generate(*m.whole, m.tok, request),
                       doctest::Contains("prompt of 301 tokens (with BOS) plus 64 new tokens exceeds the model's context of 256"),
                       model_error);
  request.prompt = std::string(250, 'x');
  CHECK_THROWS_WITH_AS(generate(*m.whole, m.tok, request), doctest::Contains("use at most --max-tokens 6"), model_error);
}

TEST_CASE("generation needs the whole model") {
  tiny_model m;
  shard back(*m.model, 1, 4);
  CHECK_THROWS_WITH_AS(generate(back, m.tok, {}), doctest::Contains("needs the whole model"), model_error);
}

TEST_CASE("generation chooses among the model's whole vocabulary and shows ids the tokenizer cannot print") {
  tiny_model m;  // 512 ids; the byte tokenizer has text for 258 of them
  generation_request request;
  request.prompt = "vocabulary";
  request.max_new_tokens = 64;
  request.stop_at_eos = false;
  request.sampling.temperature = 1.0f;
  request.sampling.seed = 11;
  int beyond = 0;
  std::string text;
  auto result = generate(*m.whole, m.tok, request, [&](token_id id, const std::string& piece) {
    text += piece;
    if (id >= m.tok.vocab_size()) {
      ++beyond;
      CHECK(piece == "<" + std::to_string(id) + ">");
    }
  });
  CHECK(beyond > 0);  // at temperature 1, about half the draws of a random model
  for (auto id : result.tokens)
    if (id >= m.tok.vocab_size()) CHECK(text.find("<" + std::to_string(id) + ">") != std::string::npos);

  // Greedy is the argmax of the whole row at every step.
  request.sampling = {};
  auto greedy = generate(*m.whole, m.tok, request);
  auto cache = m.whole->new_cache(256);
  std::vector<std::int64_t> ids(greedy.prompt_tokens.begin(), greedy.prompt_tokens.end());
  auto logits = m.whole->forward(at::tensor(ids, at::kLong), {{&cache, static_cast<int>(ids.size())}});
  for (std::size_t step = 0; step < greedy.tokens.size(); ++step) {
    CAPTURE(step);
    CHECK(greedy.tokens[step] == logits.argmax(-1).item<std::int64_t>());
    logits = m.whole->forward(at::tensor(std::vector<std::int64_t>{greedy.tokens[step]}, at::kLong), {{&cache, 1}});
  }
}

TEST_CASE("a generation ends at max_new_tokens, or at EOS when asked, and keeps the history a replay sends") {
  generation_progress stops({256, 72}, 3, true, 257);
  CHECK(stops.step() == 0);
  CHECK_FALSE(stops.accept(10));
  CHECK_FALSE(stops.accept(11));
  CHECK(stops.step() == 2);
  CHECK(stops.history() == std::vector<token_id>{256, 72, 10, 11});
  CHECK(stops.accept(12));  // the third of three
  CHECK_FALSE(stops.result().stopped_at_eos);
  CHECK(stops.result().tokens == std::vector<token_id>{10, 11, 12});
  CHECK(stops.result().prompt_tokens == std::vector<token_id>{256, 72});

  generation_progress at_eos({256}, 10, true, 257);
  CHECK_FALSE(at_eos.accept(5));
  CHECK(at_eos.accept(257));
  CHECK(at_eos.result().stopped_at_eos);

  generation_progress past_eos({256}, 3, false, 257);
  CHECK_FALSE(past_eos.accept(257));  // EOS ignored: benchmarks time a fixed number of steps
  CHECK_FALSE(past_eos.accept(4));
  CHECK(past_eos.accept(5));
  CHECK(past_eos.result().prefill_ms >= 0);
  CHECK(past_eos.result().decode_ms >= 0);
}
