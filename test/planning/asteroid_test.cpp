#include <doctest/doctest.h>

#include <random>

#include "planning/asteroid.hpp"
#include "planning/exhaustive.hpp"
#include "planning/random_profile.hpp"
#include "planning/simulator.hpp"

using namespace orrery::planning;

TEST_CASE("round latency of P equal stages is (M + P - 1)(E_f + E_b) + T_a") {
  for (int stages = 1; stages <= 5; ++stages)
    for (int m = 1; m <= 6; ++m) {
      std::vector<hpp_step> steps(static_cast<std::size_t>(stages), {1.0, 2.0, 0.5});
      CHECK(round_latency(steps, m) == doctest::Approx((m + stages - 1) * 3.0 + 0.5));
    }
}

TEST_CASE("round latency with the dominant step last: fill, M dominant pairs, drain") {
  std::vector<hpp_step> steps{{1, 1, 0}, {1, 1, 0}, {3, 3, 0}};
  CHECK(round_latency(steps, 4) == doctest::Approx(2 + 4 * 6 + 2));
  steps[0].allreduce = 5;
  CHECK(round_latency(steps, 4) == doctest::Approx(2 + 4 * 6 + 2 + 5));
}

TEST_CASE("the optimizer update follows the round once, at the slowest stage's update, in the formula and the simulation") {
  std::vector<hpp_step> steps{{1, 2, 0.5, 0.25}, {1, 2, 0, 0}, {1, 2, 0, 2.0}};
  // Three equal-time stages' round ends at (M + P - 1)·3 + T_a; the updates
  // run side by side after it, so only the slowest (2.0) adds.
  CHECK(round_latency(steps, 4) == doctest::Approx((4 + 3 - 1) * 3.0 + 0.5 + 2.0));

  // A layer's update counts once per member of a group (replicas update
  // alike), not per sample; and the simulated round adds the same.
  std::mt19937_64 rng(5);
  random_profile_options o;
  o.layers = 4;
  o.devices = 3;
  profile p = random_profile(rng, o);
  for (auto& d : p.devices) d.memory_bytes = 1e15;  // memory is not what this is about
  auto without = evaluate_hpp(p, {{0, 2, {0, 1}}, {2, 4, {2}}});
  REQUIRE(without);
  for (auto& d : p.devices)
    for (auto& l : d.layers) l.update = 0.125;
  p.devices[1].layers[0].update = 1.0;  // the group's slow member
  auto with = evaluate_hpp(p, {{0, 2, {0, 1}}, {2, 4, {2}}});
  REQUIRE(with);
  CHECK(with->stages[0].step.update == doctest::Approx(1.125));
  CHECK(with->stages[1].step.update == doctest::Approx(0.25));
  CHECK(with->round_seconds == doctest::Approx(without->round_seconds + 1.125));
  CHECK(simulate_training(p, *with).makespan == doctest::Approx(simulate_training(p, *without).makespan + 1.125));
}

TEST_CASE("asteroid plans against the exhaustive optimum on random instances") {
  std::mt19937_64 rng(11);
  int feasible = 0, optimal = 0, missed = 0;
  double total_gap = 0, worst_gap = 0;
  for (int i = 0; i < 1000; ++i) {
    random_profile_options o;
    o.layers = std::uniform_int_distribution<std::size_t>(1, 5)(rng);
    o.devices = std::uniform_int_distribution<std::size_t>(1, 4)(rng);
    o.min_memory_ratio = 1.5;
    o.max_memory_ratio = 8;
    profile p = random_profile(rng, o);
    p.work.micro_batch_size = std::min(p.work.micro_batch_size, 4);
    hpp_plan best = exhaustive_hpp(p);
    if (best.stages.empty()) {
      CHECK_THROWS_AS(asteroid_plan(p), infeasible_error);
      continue;
    }
    ++feasible;
    hpp_plan plan;
    try {
      plan = asteroid_plan(p);
    } catch (const infeasible_error&) {
      // Groups are contiguous runs of the memory-sorted devices: a placement
      // outside that family may be the only one that fits.
      ++missed;
      continue;
    }
    // The plan's figures are what evaluating its layout gives.
    std::vector<stage_layout> layouts;
    for (const auto& s : plan.stages)
      layouts.push_back(s.layout);
    auto again = evaluate_hpp(p, layouts);
    REQUIRE(again);
    CHECK(again->round_seconds == doctest::Approx(plan.round_seconds));
    std::vector<int> users(p.devices.size(), 0);
    for (const auto& s : plan.stages)
      for (std::size_t k = 0; k < s.layout.devices.size(); ++k) {
        ++users[s.layout.devices[k]];
        CHECK(s.memory[k] <= p.devices[s.layout.devices[k]].memory_bytes);
      }
    for (int u : users)
      CHECK(u == 1);
    CHECK(plan.round_seconds >= best.round_seconds * (1 - 1e-9));
    double gap = plan.round_seconds / best.round_seconds - 1;
    optimal += gap < 1e-9;
    total_gap += gap;
    worst_gap = std::max(worst_gap, gap);
  }
  int planned = feasible - missed;
  MESSAGE("asteroid: ", feasible, " feasible, no plan found on ", missed, ", optimal on ", optimal,
          ", mean gap ", total_gap / std::max(planned, 1), ", worst gap ", worst_gap);
  CHECK(feasible > 300);
  CHECK(missed <= feasible / 10);
  CHECK(total_gap / planned < 0.10);
  CHECK(worst_gap < 5);
}

TEST_CASE("a group's all-reduce takes the wire's time or its slowest member's own work on the bytes, whichever is longer") {
  std::mt19937_64 rng(11);
  random_profile_options o;
  o.layers = 4;
  o.devices = 3;
  profile p = random_profile(rng, o);
  for (auto& d : p.devices) d.memory_bytes = 1e15;
  p.work.micro_batch_size = 2;
  const stage_layout group{0, 2, {0, 1}};
  auto allreduce = [&] {
    auto stage = evaluate_stage(p, group, 0, 2, {1, 1});
    REQUIRE(stage);
    return stage->step.allreduce;
  };
  const double wire = allreduce();
  REQUIRE(wire > 0);
  p.devices[1].reduce_seconds_per_byte = 1e-30;  // far below the wire: the wire's time stands
  CHECK(allreduce() == doctest::Approx(wire));
  // Far above: the time is the member's work on the bytes it moves, twice
  // the work per byte twice the time; the slowest member counts.
  p.devices[1].reduce_seconds_per_byte = 1e-3;
  const double work = allreduce();
  CHECK(work > 100 * wire);
  p.devices[1].reduce_seconds_per_byte = 2e-3;
  CHECK(allreduce() == doctest::Approx(2 * work));
  p.devices[0].reduce_seconds_per_byte = 1e-3;
  CHECK(allreduce() == doctest::Approx(2 * work));
  auto alone = evaluate_stage(p, {2, 4, {2}}, 1, 2, {2});  // a stage of one all-reduces nothing
  REQUIRE(alone);
  CHECK(alone->step.allreduce == 0);
}

TEST_CASE("a group member given no samples (left out of the placed group) adds no all-reduce, update or memory") {
  std::mt19937_64 rng(12);
  random_profile_options o;
  o.layers = 4;
  o.devices = 3;
  profile p = random_profile(rng, o);
  for (auto& d : p.devices) d.memory_bytes = 1e15;
  p.work.micro_batch_size = 2;
  for (auto& l : p.devices[1].layers) l.update = 100;  // the idle member's update would dominate
  p.devices[1].reduce_seconds_per_byte = 1.0;
  auto idle = evaluate_stage(p, {0, 2, {0, 1}}, 0, 1, {2, 0});
  auto alone = evaluate_stage(p, {0, 2, {0}}, 0, 1, {2});
  REQUIRE(idle);
  REQUIRE(alone);
  CHECK(idle->step.allreduce == 0);
  CHECK(idle->step.update == doctest::Approx(alone->step.update));
  CHECK(idle->step.forward == doctest::Approx(alone->step.forward));
  CHECK(idle->memory.at(1) == 0);
  p.devices[1].memory_bytes = 0;  // it need not fit what it does not hold
  CHECK(evaluate_stage(p, {0, 2, {0, 1}}, 0, 1, {2, 0}));
}
