#include <doctest/doctest.h>

#include "planning/cost.hpp"
#include "planning/galaxy.hpp"
#include "planning/group_pipeline.hpp"

using namespace orrery::planning;

namespace {

// The tiny model's shape (4 heads reading 2 KV heads, 352 columns) in fp32.
transformer_shape tiny_shape() {
  return {128, 352, 4, 2, 512, 256, 4};
}

// Four decoder blocks as the profiler measures them (the embedding folded
// into the first, the head into the last, which costs `head_extra` more);
// device d takes 1 ms / speeds[d] per block and token, prefill and decode.
profile folded(const std::vector<double>& speeds, link_spec link, double head_extra = 0) {
  profile p;
  p.model = "tiny";
  p.shape = tiny_shape();
  for (int l = 0; l < 4; ++l) p.layers.push_back({"layer " + std::to_string(l), 1e6, 128 * 4, 2 * 2 * 32 * 4, 0});
  for (std::size_t d = 0; d < speeds.size(); ++d) {
    device_profile device{"n" + std::to_string(d), 1e9, {}, {}};
    for (int l = 0; l < 4; ++l) {
      double seconds = 1e-3 / speeds[d] + (l == 3 ? head_extra : 0.0);
      device.layers.push_back({time_curve::constant(seconds), time_curve::constant(seconds), 0, 0});
    }
    device.tp = tp_costs_from_block(*p.shape, 1e-3 / speeds[d]);
    p.devices.push_back(device);
  }
  p.links = link_matrix(link);
  p.validate();
  return p;
}

}  // namespace

TEST_CASE("tp costs derived from a block's cost add up to it, shared out by the bytes each piece reads") {
  transformer_shape s = tiny_shape();
  tp_costs c = tp_costs_from_block(s, 2e-3);
  CHECK(s.heads * c.per_head + s.intermediate * c.per_column + 2 * c.per_token == doctest::Approx(2e-3));
  // A head reads Q and O slices of 128 x 32 and, at 2 of 4 KV heads, half a
  // K and a V slice: 3 x 128 x 32 values; a column 3 x 128; a connective block 4 x 128.
  CHECK(c.per_head / c.per_column == doctest::Approx(32.0));
  CHECK(c.per_token / c.per_column == doctest::Approx(4.0 / 3));
}

TEST_CASE("a group of one is its device; a group of two equal devices on a free link takes half a block") {
  profile p = folded({1.0, 1.0}, {1e15, 0});
  auto single = plan_group_pipeline(p, {{0}, {1}});
  REQUIRE(single.stages.devices.size() == 2);
  CHECK(single.stages.devices[1].layers[2].decode.at(40) == doctest::Approx(1e-3));
  CHECK(single.stages.source == 0);

  auto pair = plan_group_pipeline(p, {{0, 1}});
  REQUIRE(pair.stages.devices.size() == 1);
  CHECK(pair.stages.devices[0].name == "n0+n1");
  CHECK(pair.splits[0].heads == std::vector<int>{2, 2});
  CHECK(pair.splits[0].columns == std::vector<int>{176, 176});
  // Half of the heads and columns each, plus the two connective blocks of
  // the one decode token on the member that holds it.
  tp_costs c = *p.devices[0].tp;
  double block = 0.5 * (4 * c.per_head + 352 * c.per_column) + 2 * c.per_token;
  CHECK(pair.stages.devices[0].layers[1].decode.at(40) == doctest::Approx(block));
  CHECK(pair.stages.devices[0].layers[1].prefill.at(32) == doctest::Approx(0.5e-3).epsilon(0.01));
  CHECK(pair.stages.devices[0].memory_bytes == 2e9);
}

TEST_CASE("a group's block pays its all-reduces' ring steps, and its members the head beyond a block by their vocabulary rows") {
  // 1 Mbit/s with 1 ms a message: a decode block all-reduces twice (after
  // the attention, after the MLP), each a swap of one token's 512 bytes.
  profile p = folded({1.0, 1.0}, {125e3, 1e-3}, 0.4e-3);
  auto pair = plan_group_pipeline(p, {{0, 1}});
  tp_costs c = *p.devices[0].tp;
  double compute = 0.5 * (4 * c.per_head + 352 * c.per_column) + 2 * c.per_token;
  double ring = 2 * (1e-3 + 512 / 125e3);
  CHECK(pair.stages.devices[0].layers[1].decode.at(40) == doctest::Approx(compute + ring));
  // Two equal members: each computes half the head's logits.
  CHECK(pair.stages.devices[0].layers[3].decode.at(40) == doctest::Approx(compute + ring + 0.2e-3));

  // Four members pass the whole rows round in 3 steps per all-reduce.
  profile four = folded({1.0, 1.0, 1.0, 1.0}, {125e3, 1e-3});
  auto quad = plan_group_pipeline(four, {{0, 1, 2, 3}});
  const auto& split = quad.splits[0];
  double slowest = 0;
  for (std::size_t i = 0; i < 4; ++i) slowest = std::max(slowest, split.heads[i] * c.per_head);
  double mlp = 0;
  for (std::size_t i = 0; i < 4; ++i) mlp = std::max(mlp, split.columns[i] * c.per_column);
  CHECK(quad.stages.devices[0].layers[1].decode.at(40) ==
        doctest::Approx(slowest + mlp + 2 * c.per_token + 2 * 3 * (1e-3 + 512 / 125e3)));
}

TEST_CASE("a faster member gets a larger share; the source must lead its group") {
  profile p = folded({1.0, 3.0}, {1e15, 0});
  auto pair = plan_group_pipeline(p, {{0, 1}});
  CHECK(pair.splits[0].heads == std::vector<int>{1, 3});
  CHECK(pair.splits[0].columns[1] == doctest::Approx(3 * pair.splits[0].columns[0]).epsilon(0.02));
  CHECK(pair.splits[0].columns[0] + pair.splits[0].columns[1] == 352);
  CHECK_THROWS_WITH_AS(plan_group_pipeline(p, {{1, 0}}),
                       doctest::Contains("the source device n0 must lead its group n1+n0"), profile_error);
  p.devices[1].tp.reset();
  CHECK_THROWS_WITH_AS(plan_group_pipeline(p, {{0, 1}}), doctest::Contains("every device's tp costs"), profile_error);
  CHECK(!has_tp_costs(p));
  CHECK(plan_group_pipeline(p, {{0}, {1}}).stages.devices.size() == 2);
}
