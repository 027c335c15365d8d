#include <doctest/doctest.h>

#include "planning/auto_plan.hpp"
#include "planning/catalog.hpp"
#include "planning/pipeline.hpp"

using namespace orrery::planning;

namespace {

const style_result& find(const ranked_plans& r, const std::string& style) {
  for (const auto& s : r.styles)
    if (s.style == style)
      return s;
  FAIL("no style " << style);
  return r.styles.front();
}

void check_ranked(const ranked_plans& r) {
  REQUIRE(r.styles.front().feasible);
  for (std::size_t i = 1; i < r.styles.size(); ++i) {
    if (!r.styles[i].feasible)
      continue;
    if (r.goal == objective::latency)
      CHECK(r.styles[i - 1].latency <= r.styles[i].latency);
    else
      CHECK(r.styles[i - 1].throughput >= r.styles[i].throughput);
  }
}

}  // namespace

TEST_CASE("auto latency on four Jetsons: every style ranked, the infeasible ones explained") {
  profile p = catalog_profile({"nano", "nano", "nx", "tx2"}, "100mbit", "llama2-7b");
  ranked_plans r = plan_auto(p, objective::latency);
  check_ranked(r);
  CHECK(r.styles.size() == 4);
  const style_result& solo = find(r, "solo");
  CHECK_FALSE(solo.feasible);
  CHECK(solo.reason.find("holds 3.20 GB, the model needs 13.54 GB") != std::string::npos);
  // Chunking includes the unchunked prompt, so it never loses to plain EdgeShard.
  CHECK(find(r, "edgeshard+jupiter").latency <= find(r, "edgeshard").latency * (1 + 1e-9));
  for (const device_use& d : r.styles.front().devices)
    CHECK(d.peak_memory <= 7e9);
  nlohmann::json j = to_json(r);
  CHECK(j["chosen"] == r.styles.front().style);
  CHECK(j["styles"].size() == 4);
}

TEST_CASE("auto throughput: the pipelined batch beats one request at a time") {
  workload w;
  w.batch = 4;
  profile p = catalog_profile({"nano", "nano", "nx", "tx2"}, "100mbit", "llama2-7b", w);
  ranked_plans r = plan_auto(p, objective::throughput);
  check_ranked(r);
  const style_result& pipeline = find(r, "edgeshard-throughput");
  REQUIRE(pipeline.feasible);
  ranked_plans single = plan_auto(p, objective::latency);
  CHECK(pipeline.throughput > 2 * single.styles.front().throughput);
}

TEST_CASE("auto training: Asteroid's HPP never predicts a slower round than one data-parallel stage") {
  profile p = catalog_profile({"nano", "tx2", "nx", "nx"}, "1gbit", "small");
  ranked_plans r = plan_auto(p, objective::training);
  check_ranked(r);
  const style_result& hpp = find(r, "asteroid-hpp");
  const style_result& dp = find(r, "data-parallel");
  REQUIRE(hpp.feasible);
  REQUIRE(dp.feasible);
  CHECK(hpp.plan["formula_round_s"].get<double>() <= dp.plan["formula_round_s"].get<double>() * (1 + 1e-9));
  CHECK(hpp.throughput > 0);
}

TEST_CASE("a model that fits nowhere: every style's reason, with the missing memory") {
  profile p = catalog_profile({"nano", "nano", "nx", "tx2"}, "100mbit", "llama2-70b");
  CHECK_THROWS_WITH_AS(plan_auto(p, objective::latency), doctest::Contains("GB missing"), infeasible_error);
  CHECK_THROWS_WITH_AS(parse_objective("speed"), doctest::Contains("unknown objective 'speed'"), profile_error);
}
