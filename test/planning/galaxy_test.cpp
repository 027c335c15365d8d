#include <doctest/doctest.h>

#include <numeric>

#include "planning/catalog.hpp"
#include "planning/galaxy.hpp"
#include "planning/pipeline.hpp"
#include "planning/split.hpp"

using namespace orrery::planning;

namespace {

int sum(const std::vector<int>& v) {
  return std::accumulate(v.begin(), v.end(), 0);
}

}  // namespace

TEST_CASE("galaxy splits every head, column and token, faster devices taking more") {
  profile p = catalog_profile({"nano", "nx", "orin"}, "1gbit", "small");
  tp_split split = galaxy_split(p, {0, 1, 2}, 128);
  CHECK(sum(split.heads) == 12);
  CHECK(sum(split.columns) == 2048);
  CHECK(sum(split.tokens) == 128);
  CHECK(split.columns[0] < split.columns[1]);
  CHECK(split.columns[1] < split.columns[2]);
  std::vector<double> memory = tp_memory(p, split);
  for (std::size_t i = 0; i < 3; ++i)
    CHECK(memory[i] <= p.devices[i].memory_bytes);
}

TEST_CASE("galaxy caps shares by memory and says what is missing") {
  profile p = catalog_profile({"orin", "orin"}, "1gbit", "llama2-7b");
  p.devices[1].memory_bytes = 5e9;  // an even split would put ~6.5 GB there
  tp_split split = galaxy_split(p, {0, 1}, 32);
  std::vector<double> memory = tp_memory(p, split);
  CHECK(memory[1] <= 5e9);
  CHECK(memory[0] <= p.devices[0].memory_bytes);
  CHECK(split.heads[1] < split.heads[0]);
  CHECK(split.columns[1] < split.columns[0]);
  p.devices[0].memory_bytes = 3e9;
  CHECK_THROWS_WITH_AS(galaxy_split(p, {0, 1}, 32), doctest::Contains("GB of block memory missing"),
                       infeasible_error);
}

TEST_CASE("the exact rounding is never slower than the paper's proportional rounding") {
  profile p = catalog_profile({"nano", "tx2", "nx", "rpi5"}, "100mbit", "small");
  std::vector<std::size_t> group{0, 1, 2, 3};
  tp_split exact = galaxy_split(p, group, 100, rounding::exact);
  tp_split paper = galaxy_split(p, group, 100, rounding::proportional);
  CHECK(tp_block_serial_closed_form(p, exact, 100) <= tp_block_serial_closed_form(p, paper, 100) + 1e-12);
}

TEST_CASE("a simulated serial block matches the closed form on a homogeneous ring") {
  profile p = catalog_profile({"nx", "nx", "nx", "nx"}, "100mbit", "small");
  tp_split split = galaxy_split(p, {0, 1, 2, 3}, 128);
  CHECK(split.tokens == std::vector<int>{32, 32, 32, 32});
  tp_layer_time t = tp_block_time(p, split, 128);
  CHECK(t.serial == doctest::Approx(tp_block_serial_closed_form(p, split, 128)).epsilon(1e-9));
}

TEST_CASE("tile overlap hides communication, never adds time") {
  for (const char* link : {"100mbit", "1gbit", "wifi"}) {
    profile p = catalog_profile({"nano", "tx2", "nx", "orin"}, link, "small");
    tp_split split = galaxy_split(p, {0, 1, 2, 3}, 256);
    tp_layer_time t = tp_block_time(p, split, 256);
    CHECK(t.overlapped <= t.serial * (1 + 1e-9));
  }
  // Compute and communication of similar size: overlap must save a clear share.
  profile p = catalog_profile({"nx", "nx"}, "1gbit", "small");
  p.links = link_matrix({2e9, 0});
  tp_split split = galaxy_split(p, {0, 1}, 512);
  tp_layer_time t = tp_block_time(p, split, 512);
  MESSAGE("2 x nx, small, 512 tokens: serial ", t.serial * 1e3, " ms, overlapped ", t.overlapped * 1e3, " ms");
  CHECK(t.overlapped < 0.95 * t.serial);
}

TEST_CASE("one device: no collectives, the block is its compute") {
  profile p = catalog_profile({"orin"}, "1gbit", "small");
  tp_split split = galaxy_split(p, {0}, 64);
  const tp_costs& c = *p.devices[0].tp;
  double compute = 12 * c.per_head * 64 + 2048 * c.per_column * 64 + 2 * 64 * c.per_token;
  tp_layer_time t = tp_block_time(p, split, 64);
  CHECK(t.serial == doctest::Approx(compute));
  CHECK(t.overlapped == doctest::Approx(compute));
}

TEST_CASE("a calibrated ring step floor lengthens the steps shorter than it and leaves longer ones") {
  profile p = catalog_profile({"nx", "nx", "nx", "nx"}, "1gbit", "small");
  tp_split split = galaxy_split(p, {0, 1, 2, 3}, 1);
  const double plain = simulate_all_reduced_block(p, split, 1).makespan;
  // A decode row's step on these links: latency + 768 x 4 bytes of wire.
  const link_spec l = p.links.between(0, 1);
  const double step = l.latency + 768.0 * p.shape->dtype_bytes / l.bandwidth;
  // Two gathered all-reduces of 3 steps each in a block of 4 members.
  p.ring_step_floor = step + 1e-3;
  CHECK(simulate_all_reduced_block(p, split, 1).makespan == doctest::Approx(plain + 2 * 3 * 1e-3).epsilon(1e-9));
  p.ring_step_floor = step / 2;
  CHECK(simulate_all_reduced_block(p, split, 1).makespan == doctest::Approx(plain).epsilon(1e-9));
}
