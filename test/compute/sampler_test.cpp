#include "compute/sampler.hpp"

#include <doctest/doctest.h>

#include <map>
#include <stdexcept>

#include "compute/splitmix.hpp"

using namespace orrery::compute;

namespace {

const std::vector<float> logits = {1.0f, 3.0f, 2.5f, -1.0f, 0.5f, 2.9f};

std::vector<token_id> draw(sampling_params p, int n) {
  sampler s(p);
  std::vector<token_id> out;
  for (int i = 0; i < n; ++i) out.push_back(s.next(logits.data(), 6, {}, static_cast<std::uint32_t>(i)));
  return out;
}

}  // namespace

TEST_CASE("greedy picks the argmax over the whole row") {
  CHECK(draw({}, 1)[0] == 1);
  auto last_wins = logits;
  last_wins.back() = 9.0f;  // an id past any byte tokenizer's range is still a candidate
  CHECK(sampler({}).next(last_wins.data(), 6, {}, 0) == 5);
}

TEST_CASE("repetition penalty lowers tokens already in the sequence, once per distinct token") {
  sampling_params p;
  p.repetition_penalty = 1.25f;
  sampler s(p);
  // 3.0 / 1.25 = 2.4 < 2.9: token 5 wins once token 1 is penalised, even if 1 repeats.
  CHECK(s.next(logits.data(), 6, {1, 1, 1}, 0) == 5);
  CHECK(s.next(logits.data(), 6, {0}, 0) == 1);
}

TEST_CASE("sampling is reproducible for a seed and varies with it") {
  sampling_params p;
  p.temperature = 1.0f;
  p.seed = 42;
  auto a = draw(p, 64), b = draw(p, 64);
  CHECK(a == b);
  p.seed = 43;
  CHECK(draw(p, 64) != a);
}

TEST_CASE("the draw for a step depends on seed and step alone, as a generator advanced once per token gives") {
  sampling_params p;
  p.temperature = 1.0f;
  p.seed = 7;
  const auto run = draw(p, 32);
  // A fresh sampler asked for step 20 alone (a stage that took the request
  // over) picks what the one that sampled steps 0..19 first picked.
  CHECK(sampler(p).next(logits.data(), 6, {}, 20) == run[20]);
  std::uint64_t state = p.seed;
  std::vector<double> advanced;
  for (int i = 0; i < 32; ++i) advanced.push_back(unit_interval(state));
  std::uint64_t at_20 = p.seed + 20 * 0x9e3779b97f4a7c15ull;
  CHECK(unit_interval(at_20) == advanced[20]);
}

TEST_CASE("top-k and top-p restrict the candidates") {
  sampling_params p;
  p.temperature = 1.0f;
  p.top_k = 2;
  for (auto id : draw(p, 200)) CHECK((id == 1 || id == 5));
  p.top_k = 0;
  p.top_p = 0.01f;  // the most likely token alone reaches 1%
  for (auto id : draw(p, 50)) CHECK(id == 1);
  p.top_p = 1.0f;
  std::map<token_id, int> seen;
  for (auto id : draw(p, 2000)) ++seen[id];
  CHECK(seen.size() == 6);            // every token has some probability
  CHECK(seen[1] > seen[3] * 10);      // e^4 ~ 55 times likelier
}

TEST_CASE("bad sampling parameters are refused by name") {
  sampling_params p;
  p.top_p = 0.0f;
  CHECK_THROWS_WITH_AS(sampler{p}, doctest::Contains("top-p"), std::invalid_argument);
  p = {};
  p.temperature = -1.0f;
  CHECK_THROWS_WITH_AS(sampler{p}, doctest::Contains("temperature"), std::invalid_argument);
}
