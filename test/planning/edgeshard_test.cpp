#include <doctest/doctest.h>

#include <limits>
#include <random>

#include "planning/edgeshard.hpp"
#include "planning/exhaustive.hpp"
#include "planning/random_profile.hpp"

using namespace orrery::planning;

namespace {

constexpr int instances = 1000;

random_profile_options small_instance(std::mt19937_64& rng) {
  random_profile_options o;
  o.layers = std::uniform_int_distribution<std::size_t>(1, 8)(rng);
  o.devices = std::uniform_int_distribution<std::size_t>(1, 5)(rng);
  return o;
}

// Two devices, three equal layers: the source is slow, the other fast and the
// link cheap, so the optimum moves everything after layer 0 to the fast device.
profile two_device_profile() {
  profile p;
  p.model = "toy";
  for (int l = 0; l < 3; ++l)
    p.layers.push_back({"l" + std::to_string(l), 100, 10, 0, 0});
  for (double per_token : {1.0, 0.1}) {
    device_profile d;
    d.name = per_token > 0.5 ? "slow" : "fast";
    d.memory_bytes = 1000;
    d.layers.assign(3, {time_curve::constant(per_token), time_curve::constant(per_token), 0, 0});
    p.devices.push_back(d);
  }
  p.links = link_matrix({1000, 0});
  p.work.prompt_tokens = 1;
  p.work.output_tokens = 1;
  p.work.batch = 1;
  p.validate();
  return p;
}

}  // namespace

TEST_CASE("edgeshard latency: a hand-checked two-device case") {
  profile p = two_device_profile();
  cost_model costs(p);
  pipeline_plan plan = edgeshard_latency(costs);
  REQUIRE(plan.stages.size() == 2);
  CHECK(plan.stages[0] == stage{0, 0, 1});
  CHECK(plan.stages[1] == stage{1, 1, 3});
  // 1.0 (layer 0 slow) + 10 B / 1000 B/s + 2 * 0.1 (fast) + 4 B token back / 1000 B/s
  CHECK(plan.seconds == doctest::Approx(1.0 + 0.01 + 0.2 + 0.004));
}

TEST_CASE("edgeshard latency: memory forces a device to be reused or a slower one") {
  profile p = two_device_profile();
  p.devices[1].memory_bytes = 150;  // the fast device holds one layer only
  cost_model costs(p);
  pipeline_plan plan = edgeshard_latency(costs);
  CHECK(fits_memory(costs, plan.stages, 1));
  CHECK(plan.seconds == doctest::Approx(exhaustive_latency(costs).seconds));
}

TEST_CASE("a device storing values at half the size the profile counts holds twice the layers, and reports its own bytes") {
  profile p = two_device_profile();
  p.devices[1].memory_bytes = 150;  // one 100 B layer as the profile counts it
  cost_model narrow(p);
  CHECK_FALSE(edgeshard_latency(narrow).stages.back() == stage{1, 1, 3});
  profile half = p;  // cost models keep a pointer to their profile
  half.devices[1].state_scale = 0.5;  // bf16 where the layers count fp32: two fit
  cost_model costs(half);
  pipeline_plan plan = edgeshard_latency(costs);
  REQUIRE(plan.stages.size() == 2);
  CHECK(plan.stages[1] == stage{1, 1, 3});
  auto used = memory_per_device(costs, plan.stages, 1);
  CHECK(used[0] == 100);
  CHECK(used[1] == 100);
  CHECK(fits_memory(costs, plan.stages, 1));
  CHECK(fits_memory(costs, {{1, 0, 3}}, 1));  // all three layers take 150 B there
  CHECK_FALSE(fits_memory(narrow, {{1, 0, 3}}, 1));
}

TEST_CASE("edgeshard latency DP equals the exhaustive optimum on random instances") {
  std::mt19937_64 rng(4);
  int feasible = 0, heuristic_suboptimal = 0, heuristic_failed = 0;
  for (int i = 0; i < instances; ++i) {
    profile p = random_profile(rng, small_instance(rng));
    // Devices of other dtypes than the one the layers are counted in.
    for (auto& d : p.devices) d.state_scale = std::uniform_real_distribution<double>(0.5, 1.5)(rng);
    cost_model costs(p);
    pipeline_plan best = exhaustive_latency(costs);
    if (best.stages.empty()) {
      CHECK_THROWS_AS(edgeshard_latency(costs), infeasible_error);
      continue;
    }
    ++feasible;
    pipeline_plan plan = edgeshard_latency(costs);
    REQUIRE(plan.exact);
    CHECK(plan.seconds == doctest::Approx(best.seconds).epsilon(1e-9));
    CHECK(request_latency(costs, plan.stages) == doctest::Approx(plan.seconds).epsilon(1e-9));
    CHECK(fits_memory(costs, plan.stages, 1));
    CHECK(plan.stages.front().device == p.source);
    CHECK(plan.stages.front().begin == 0);
    CHECK(plan.stages.back().end == p.layers.size());
    pipeline_plan paper = edgeshard_latency_heuristic(costs);
    if (paper.stages.empty())
      ++heuristic_failed;
    else if (paper.seconds > best.seconds * (1 + 1e-9))
      ++heuristic_suboptimal;
  }
  MESSAGE("latency: ", feasible, " feasible instances; the paper's path-tracked DP was ",
          "suboptimal on ", heuristic_suboptimal, " and found nothing on ", heuristic_failed);
  CHECK(feasible > instances / 2);
}

TEST_CASE("edgeshard throughput DP equals the exhaustive optimum on random instances") {
  std::mt19937_64 rng(5);
  int feasible = 0;
  for (int i = 0; i < instances; ++i) {
    profile p = random_profile(rng, small_instance(rng));
    cost_model costs(p);
    pipeline_plan best = exhaustive_throughput(costs);
    if (best.stages.empty()) {
      CHECK_THROWS_AS(edgeshard_throughput(costs), infeasible_error);
      continue;
    }
    ++feasible;
    pipeline_plan plan = edgeshard_throughput(costs);
    CHECK(plan.seconds == doctest::Approx(best.seconds).epsilon(1e-9));
    CHECK(bottleneck_seconds(costs, plan.stages) == doctest::Approx(plan.seconds).epsilon(1e-9));
    CHECK(fits_memory(costs, plan.stages, p.work.batch));
    CHECK(plan.stages.front().device == p.source);
    std::vector<bool> seen(p.devices.size(), false);
    for (const stage& s : plan.stages) {
      CHECK_FALSE(seen[s.device]);
      seen[s.device] = true;
    }
  }
  MESSAGE("throughput: ", feasible, " feasible instances");
  CHECK(feasible > instances / 3);
}

// Every placement with layer 0 on the source and each device holding at most
// one contiguous range, by brute force over device-per-layer assignments.
double exhaustive_one_stage_per_device_latency(const cost_model& costs) {
  const profile& p = costs.source_profile();
  std::size_t n = p.layers.size(), m = p.devices.size();
  std::vector<std::size_t> device_of(n, 0);
  device_of[0] = p.source;
  double best = std::numeric_limits<double>::infinity();
  for (;;) {
    auto stages = stages_from_assignment(device_of);
    std::vector<int> stages_on(m, 0);
    bool distinct = true;
    for (const stage& s : stages) distinct = distinct && ++stages_on[s.device] == 1;
    if (distinct && fits_memory(costs, stages, 1)) best = std::min(best, request_latency(costs, stages));
    std::size_t l = 1;
    for (; l < n && ++device_of[l] == m; ++l) device_of[l] = 0;
    if (l == n) return best;
  }
}

TEST_CASE("edgeshard latency with one stage per device equals the exhaustive optimum on random instances") {
  std::mt19937_64 rng(11);
  int feasible = 0;
  for (int i = 0; i < instances; ++i) {
    profile p = random_profile(rng, small_instance(rng));
    cost_model costs(p);
    double best = exhaustive_one_stage_per_device_latency(costs);
    if (best == std::numeric_limits<double>::infinity()) {
      CHECK_THROWS_AS(edgeshard_latency_one_stage_per_device(costs), infeasible_error);
      continue;
    }
    ++feasible;
    pipeline_plan plan = edgeshard_latency_one_stage_per_device(costs);
    CHECK(plan.seconds == doctest::Approx(best).epsilon(1e-9));
    CHECK(request_latency(costs, plan.stages) == doctest::Approx(plan.seconds).epsilon(1e-9));
    CHECK(fits_memory(costs, plan.stages, 1));
    CHECK(plan.stages.front().device == p.source);
    // Reuse can only help, never hurt.
    CHECK(edgeshard_latency(costs).seconds <= plan.seconds * (1 + 1e-9));
  }
  MESSAGE("latency, one stage per device: ", feasible, " feasible instances");
  CHECK(feasible > instances / 3);
}

TEST_CASE("an infeasible cluster says how much memory is missing") {
  profile p = two_device_profile();
  p.devices[0].memory_bytes = 100;
  p.devices[1].memory_bytes = 100;
  cost_model costs(p);
  try {
    edgeshard_latency(costs);
    FAIL("expected infeasible_error");
  } catch (const infeasible_error& e) {
    std::string what = e.what();
    // three layers of 100 B, two devices of 100 B
    CHECK(what.find("needs 300 B") != std::string::npos);
    CHECK(what.find("has 200 B: 100 B missing") != std::string::npos);
  }
}
