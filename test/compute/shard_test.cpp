#include "compute/shard.hpp"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include "compute/decode_graph.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/thread_pool.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

// `tiny` (4 layers), with its head tied to the embedding or not.
llama_config tiny(bool tied = false) {
  auto c = llama_config::preset("tiny");
  c.tie_word_embeddings = tied;
  return c;
}

at::Tensor ids(std::vector<std::int64_t> v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

std::vector<std::int64_t> prompt_ids() {
  return {256, 72, 101, 108, 108, 111, 44, 32, 111, 114, 114, 101, 114, 121};
}

shard_options with_pool(int threads) {
  return {at::kCPU, at::kFloat, std::make_shared<thread_pool>(threads)};
}

// Runs the pipeline of shards cut at `cuts` (e.g. {0, 2, 4}) for a prompt and
// `steps` greedy decode steps; returns the logits of every step.
std::vector<at::Tensor> run_cut(const model_dir& model, const std::vector<int>& cuts, int steps) {
  std::vector<shard> shards;
  std::vector<kv_cache> caches;
  for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
    shards.emplace_back(model, cuts[i], cuts[i + 1], with_pool(2));
    caches.push_back(shards.back().new_cache(64));
  }
  auto pass = [&](at::Tensor x, int tokens) {
    for (std::size_t i = 0; i < shards.size(); ++i) x = shards[i].forward(x, {{&caches[i], tokens}});
    return x;
  };
  std::vector<at::Tensor> out{pass(ids(prompt_ids()), static_cast<int>(prompt_ids().size()))};
  for (int s = 0; s < steps; ++s) out.push_back(pass(out.back().argmax(-1), 1));
  return out;
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

}  // namespace

TEST_CASE("shards [0,k) then [k,N) give bitwise the logits of [0,N), prefill and 16 decode steps") {
  temp_dir dir;
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    auto path = dir / (tied ? "tied" : "untied");
    init_model(path, tiny(tied), {3, 0, {}});
    model_dir model(path);
    auto whole = run_cut(model, {0, 4}, 16);
    for (const auto& cuts : std::vector<std::vector<int>>{{0, 1, 4}, {0, 2, 4}, {0, 3, 4}, {0, 1, 2, 3, 4}}) {
      CAPTURE(cuts.size());
      CAPTURE(cuts[1]);
      auto split = run_cut(model, cuts, 16);
      REQUIRE(split.size() == whole.size());
      for (std::size_t step = 0; step < whole.size(); ++step) CHECK(at::equal(split[step], whole[step]));
    }
  }
}

TEST_CASE("incremental decode with the KV cache matches a full recompute (relative error <= 1e-5)") {
  // Decode steps use orrery's gemv, the full recompute libtorch's GEMM: the
  // same arithmetic in another summation order, so equal up to fp32 rounding.
  temp_dir dir;
  init_model(dir / "m", tiny(), {5, 0, {}});
  model_dir model(dir / "m");
  shard whole(model, 0, 4, with_pool(2));
  auto sequence = prompt_ids();
  auto cache = whole.new_cache(64);
  auto logits = whole.forward(ids(sequence), {{&cache, static_cast<int>(sequence.size())}});
  for (int step = 0; step < 16; ++step) {
    sequence.push_back(logits.argmax(-1).item<std::int64_t>());
    logits = whole.forward(ids({sequence.back()}), {{&cache, 1}});
    auto fresh = whole.new_cache(64);
    auto all = whole.forward(ids(sequence), {{&fresh, static_cast<int>(sequence.size())}}, logits_rows::all);
    CHECK(all.size(0) == static_cast<std::int64_t>(sequence.size()));
    CHECK(relative_error(logits[0], all[all.size(0) - 1]) <= 1e-5);
  }
}

TEST_CASE("a batched decode step gives bitwise the logits of decoding each sequence alone") {
  temp_dir dir;
  init_model(dir / "m", tiny(), {9, 0, {}});
  model_dir model(dir / "m");
  shard whole(model, 0, 4, with_pool(2));
  const std::vector<std::vector<std::int64_t>> prompts = {{256, 1, 2, 3}, {256, 50, 60, 70, 80, 90, 100}, {256, 7}};
  auto prefill = [&](std::vector<kv_cache>& caches) {
    std::vector<at::Tensor> last;
    for (const auto& p : prompts) {
      caches.push_back(whole.new_cache(64));
      last.push_back(whole.forward(ids(p), {{&caches.back(), static_cast<int>(p.size())}}));
    }
    return last;
  };
  std::vector<kv_cache> alone_caches, batched_caches;
  auto alone = prefill(alone_caches);
  prefill(batched_caches);
  std::vector<std::int64_t> next;
  for (auto& l : alone) next.push_back(l.argmax(-1).item<std::int64_t>());
  for (int step = 0; step < 8; ++step) {
    auto batched = whole.forward(ids(next), {{&batched_caches[0], 1}, {&batched_caches[1], 1}, {&batched_caches[2], 1}});
    REQUIRE(batched.size(0) == 3);
    for (std::size_t s = 0; s < prompts.size(); ++s) {
      auto single = whole.forward(ids({next[s]}), {{&alone_caches[s], 1}});
      CHECK(at::equal(single[0], batched[static_cast<std::int64_t>(s)]));
      next[s] = single.argmax(-1).item<std::int64_t>();
    }
  }
}

TEST_CASE("the gemv path agrees with libtorch's GEMM path (relative error <= 1e-5)") {
  temp_dir dir;
  init_model(dir / "m", tiny(), {11, 0, {}});
  model_dir model(dir / "m");
  shard fast(model, 0, 4, with_pool(2));
  shard stock(model, 0, 4, {at::kCPU, at::kFloat, nullptr});
  auto a = fast.new_cache(32), b = stock.new_cache(32);
  fast.forward(ids(prompt_ids()), {{&a, 14}});
  stock.forward(ids(prompt_ids()), {{&b, 14}});
  auto x = fast.forward(ids({42}), {{&a, 1}}), y = stock.forward(ids({42}), {{&b, 1}});
  CHECK(relative_error(x, y) <= 1e-5);
}

TEST_CASE("the KV cache reports its size and refuses to overflow") {
  temp_dir dir;
  init_model(dir / "m", tiny(), {});
  model_dir model(dir / "m");
  shard back(model, 2, 4, with_pool(1));
  auto cache = back.new_cache(10);
  // 2 layers x (K and V) x 2 KV heads x 10 positions x 32 dims x 4 bytes
  CHECK(cache.bytes() == 2 * 2 * 2 * 10 * 32 * 4);
  auto hidden = at::randn({11, 128});
  CHECK_THROWS_WITH_AS(back.forward(hidden, {{&cache, 11}}),
                       doctest::Contains("exceeds its context of 10 positions"), model_error);
  CHECK(cache.length() == 0);
  CHECK_THROWS_WITH_AS(back.forward(at::randn({3, 64}), {{&cache, 3}}), doctest::Contains("hidden states"), model_error);
  CHECK_THROWS_AS(shard(model, 3, 5), model_error);
}

TEST_CASE("attention over a wider window, the rows past each query masked, equals the exact window (graph replays)") {
  at::manual_seed(3);
  const int position = 37, tokens = 1, window = 64;
  auto table = llama_ops::rotary_table::build(16, 10000.0, 128, at::TensorOptions());
  auto q = at::randn({tokens, 4, 16});
  auto keys = at::randn({2, 80, 16}), values = at::randn({2, 80, 16});
  auto exact = llama_ops::attention(q, keys, values, llama_ops::token_positions::consecutive(position, tokens, table));
  auto wide = llama_ops::token_positions::of(at::full({1}, position, at::TensorOptions().dtype(at::kLong)), window, table);
  keys.narrow(1, position + 1, window - position - 1).fill_(1e4);  // what a later step would overwrite
  auto widened = llama_ops::attention(q, keys, values, wide);
  CHECK(at::allclose(widened, exact, 1e-6, 1e-6));
  CHECK(graph_window(0, 1000) == 64);
  CHECK(graph_window(63, 1000) == 64);
  CHECK(graph_window(64, 1000) == 128);
  CHECK(graph_window(700, 1000) == 1000);
  CHECK(graph_window(10, 20) == 20);
}
