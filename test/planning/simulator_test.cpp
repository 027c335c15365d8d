#include <doctest/doctest.h>

#include <random>

#include "planning/asteroid.hpp"
#include "planning/edgeshard.hpp"
#include "planning/random_profile.hpp"
#include "planning/simulator.hpp"

using namespace orrery::planning;

namespace {

// k devices, k layers, every layer t seconds per token everywhere, free links:
// the textbook pipeline of k equal stages.
profile equal_stages(std::size_t k, double t, int tokens) {
  profile p;
  p.model = "equal";
  for (std::size_t l = 0; l < k; ++l)
    p.layers.push_back({"l", 1, 0, 0, 0});
  for (std::size_t d = 0; d < k; ++d) {
    device_profile dev;
    dev.name = "d" + std::to_string(d);
    dev.memory_bytes = 1e9;
    dev.layers.assign(k, {time_curve::constant(t), time_curve::constant(t), 0, 0});
    p.devices.push_back(dev);
  }
  p.links = link_matrix({1e300, 0});
  p.work.prompt_tokens = 1;
  p.work.output_tokens = tokens;
  p.validate();
  return p;
}

std::vector<stage> one_layer_each(std::size_t k) {
  std::vector<stage> stages;
  for (std::size_t s = 0; s < k; ++s)
    stages.push_back({s, s, s + 1});
  return stages;
}

}  // namespace

TEST_CASE("a k-stage pipeline of equal stages matches the closed forms") {
  const double t = 0.01;
  for (std::size_t k = 1; k <= 5; ++k)
    for (int tokens : {1, 3, 8}) {
      profile p = equal_stages(k, t, tokens);
      cost_model costs(p);
      int requests = static_cast<int>(k);
      // No bubbles: the first stage never idles once started.
      simulation flowing = simulate_inference(costs, one_layer_each(k), {requests, true, {}});
      CHECK(flowing.makespan == doctest::Approx(tokens * requests * t + (k - 1) * t));
      CHECK(flowing.devices[0].utilisation == doctest::Approx(tokens * requests * t / flowing.makespan));
      CHECK(flowing.throughput == doctest::Approx(requests * tokens / flowing.makespan));
      // Rounds: each round waits for its last request, (2k - 1) t.
      simulation rounds = simulate_inference(costs, one_layer_each(k), {requests, false, {}});
      CHECK(rounds.makespan == doctest::Approx(tokens * (2.0 * k - 1) * t));
    }
}

TEST_CASE("one request through any plan takes exactly the planners' request latency") {
  std::mt19937_64 rng(21);
  for (int i = 0; i < 200; ++i) {
    random_profile_options o;
    o.layers = std::uniform_int_distribution<std::size_t>(1, 12)(rng);
    o.devices = std::uniform_int_distribution<std::size_t>(1, 6)(rng);
    o.min_memory_ratio = 1.2;
    profile p = random_profile(rng, o);
    cost_model costs(p);
    pipeline_plan plan;
    try {
      plan = edgeshard_latency(costs);
    } catch (const infeasible_error&) {
      continue;
    }
    simulation s = simulate_inference(costs, plan.stages, {1, true, {}});
    CHECK(s.mean_latency == doctest::Approx(plan.seconds).epsilon(1e-9));
    for (const device_use& d : s.devices) {
      CHECK(d.utilisation >= 0);
      CHECK(d.utilisation <= 1 + 1e-9);
    }
  }
}

TEST_CASE("one request's decode steps run as bursts from idle; more requests, or a device with two stages, at the sustained times") {
  // 3 stages of 0.02 s sustained each; device 1 runs bursts twice as fast
  // (full-speed work at 2x the sustained pace, every point at full speed).
  profile p = equal_stages(3, 0.02, 5);
  p.devices[1].burst = {{{0.005, 0.005}, {0.01, 0.01}}, 2.0};
  cost_model costs(p);
  const auto plain = simulate_inference(costs, one_layer_each(3), {1, true, {}});
  const auto sustained = 5 * 3 * 0.02;
  // The prefill step at the sustained time, 4 decode steps with device 1 at half.
  CHECK(plain.mean_latency == doctest::Approx(sustained - 4 * 0.01));
  const auto two = simulate_inference(costs, one_layer_each(3), {2, false, {}});
  CHECK(two.makespan == doctest::Approx(5 * (3 + 2 - 1) * 0.02));  // rounds of k + 2 - 1 sustained steps
  // Device 1 holding layers 1 and 2 as two stages: no idle between them.
  const auto twice = simulate_inference(costs, {{0, 0, 1}, {1, 1, 2}, {1, 2, 3}}, {1, true, {}});
  CHECK(twice.mean_latency == doctest::Approx(sustained));
}

TEST_CASE("a single device runs the whole request back to back") {
  profile p = equal_stages(3, 0.02, 5);
  cost_model costs(p);
  simulation s = simulate_inference(costs, {{0, 0, 3}}, {2, true, {}});
  CHECK(s.makespan == doctest::Approx(2 * 5 * 3 * 0.02));
  CHECK(s.devices[0].utilisation == doctest::Approx(1.0));
  CHECK(s.devices[1].busy_seconds == 0);
  CHECK(s.devices[0].peak_memory == doctest::Approx(3.0));
}

TEST_CASE("no-bubble ordering never loses to rounds") {
  std::mt19937_64 rng(22);
  for (int i = 0; i < 50; ++i) {
    profile p = random_profile(rng, {10, 4, 2.0, 4.0});
    cost_model costs(p);
    pipeline_plan plan = edgeshard_throughput(costs);
    simulation flowing = simulate_inference(costs, plan.stages, {p.work.batch, true, {}});
    simulation rounds = simulate_inference(costs, plan.stages, {p.work.batch, false, {}});
    CHECK(flowing.makespan <= rounds.makespan * (1 + 1e-9));
  }
}

TEST_CASE("a simulated 1F1B round of equal stages is (M + P - 1)(E_f + E_b) + T_a") {
  profile p = equal_stages(4, 0.01, 1);
  for (int stages = 1; stages <= 4; ++stages)
    for (int m = 1; m <= 6; ++m) {
      p.work.micro_batches = m;
      hpp_plan plan;
      for (int s = 0; s < stages; ++s) {
        hpp_stage st;
        st.layout = {static_cast<std::size_t>(s), static_cast<std::size_t>(s) + 1, {static_cast<std::size_t>(s)}};
        st.samples = {1};
        st.memory = {0};
        st.step = {1.0, 2.0, 0.25};
        plan.stages.push_back(st);
        if (s > 0)
          plan.transfers.push_back(0);
      }
      simulation sim = simulate_training(p, plan);
      double closed = (m + stages - 1) * 3.0 + 0.25;
      CHECK(sim.makespan == doctest::Approx(closed));
      CHECK(round_latency(plan.steps(), m) == doctest::Approx(closed));
    }
}

TEST_CASE("Asteroid's formula against the simulated 1F1B round on planned instances") {
  std::mt19937_64 rng(23);
  double low = 0, high = 0;
  for (int i = 0; i < 100; ++i) {
    profile p = random_profile(rng, {6, 4, 3.0, 8.0});
    hpp_plan plan;
    try {
      plan = asteroid_plan(p);
    } catch (const infeasible_error&) {
      continue;
    }
    double simulated = simulate_training(p, plan).makespan;
    double difference = plan.round_seconds / simulated - 1;
    low = std::min(low, difference);
    high = std::max(high, difference);
  }
  MESSAGE("Asteroid's round formula vs simulated 1F1B: from ", low, " to ", high);
  // A closed form of a max over a dominant step: it may err either way, but not wildly.
  CHECK(low > -0.2);
  CHECK(high < 0.4);
}
