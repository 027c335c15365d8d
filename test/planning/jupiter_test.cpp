#include <doctest/doctest.h>

#include <numeric>
#include <random>

#include "planning/catalog.hpp"
#include "planning/edgeshard.hpp"
#include "planning/exhaustive.hpp"
#include "planning/jupiter.hpp"
#include "planning/random_profile.hpp"

using namespace orrery::planning;

TEST_CASE("chunked prefill beats the whole prompt on a slow-link pipeline") {
  workload w;
  w.prompt_tokens = 256;
  profile p = catalog_profile({"nx", "nx", "nx", "nx"}, "1gbit", "llama2-7b", w);
  cost_model costs(p);
  std::vector<stage> stages{{0, 0, 9}, {1, 9, 18}, {2, 18, 26}, {3, 26, 34}};
  chunk_plan plan = jupiter_chunks(costs, stages);
  CHECK(std::accumulate(plan.lengths.begin(), plan.lengths.end(), 0) == 256);
  CHECK(plan.lengths.size() > 1);
  CHECK(plan.seconds < 0.7 * plan.unchunked_seconds);
  CHECK(plan.seconds <= plan.equal_seconds);
  CHECK(plan.seconds == doctest::Approx(chunked_prefill_seconds(costs, stages, plan.lengths)));
  MESSAGE("llama2-7b on 4 x nx, 256-token prompt: unchunked ", plan.unchunked_seconds,
          " s, equal chunks ", plan.equal_seconds, " s, Jupiter ", plan.seconds, " s in ",
          plan.lengths.size(), " chunks");
}

TEST_CASE("jupiter chunking against every composition of short prompts") {
  std::mt19937_64 rng(31);
  double worst = 0, total = 0;
  int count = 0;
  for (int i = 0; i < 100; ++i) {
    profile p = random_profile(rng, {6, 3, 2.0, 4.0});
    p.work.prompt_tokens = std::uniform_int_distribution<int>(1, 10)(rng);
    cost_model costs(p);
    pipeline_plan plan;
    try {
      plan = edgeshard_latency(costs);
    } catch (const infeasible_error&) {
      continue;
    }
    chunk_plan found = jupiter_chunks(costs, plan.stages);
    chunk_plan best = exhaustive_chunks(costs, plan.stages);
    CHECK(found.seconds >= best.seconds * (1 - 1e-9));
    CHECK(found.seconds <= found.unchunked_seconds);
    double gap = found.seconds / best.seconds - 1;
    worst = std::max(worst, gap);
    total += gap;
    ++count;
  }
  MESSAGE("jupiter: mean gap ", total / count, ", worst gap ", worst);
  CHECK(total / count < 0.02);
  CHECK(worst < 0.15);
}
