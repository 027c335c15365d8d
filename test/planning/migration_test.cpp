#include <doctest/doctest.h>

#include "planning/migration.hpp"

using namespace orrery::planning;

namespace {

cluster_state cluster(std::vector<bool> alive, std::vector<std::uint64_t> memory, std::size_t layers) {
  return {std::move(alive), std::move(memory), std::vector<std::uint64_t>(layers, 10), {}};
}

// Stages cover every layer once, in order, on alive devices only.
void check_cover(const std::vector<stage>& stages, const cluster_state& state) {
  std::size_t at = 0;
  for (const auto& s : stages) {
    CHECK(s.begin == at);
    CHECK(s.end > s.begin);
    CHECK(state.alive[s.device]);
    at = s.end;
  }
  CHECK(at == state.layer_bytes.size());
}

}  // namespace

TEST_CASE("a lost middle stage is split between its neighbours; the others do not move") {
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}, {2, 8, 12}, {3, 12, 16}};
  auto state = cluster({true, false, true, true}, {0, 0, 0, 0}, 16);
  auto m = plan_after_loss(current, state);
  CHECK(m.how == "neighbours");
  CHECK(m.stages == std::vector<stage>{{0, 0, 6}, {2, 6, 12}, {3, 12, 16}});
  check_cover(m.stages, state);
}

TEST_CASE("the first and the last stage go to their one neighbour") {
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}, {2, 8, 12}};
  auto first = plan_after_loss(current, cluster({false, true, true}, {0, 0, 0}, 12));
  CHECK(first.stages == std::vector<stage>{{1, 0, 8}, {2, 8, 12}});
  auto last = plan_after_loss(current, cluster({true, true, false}, {0, 0, 0}, 12));
  CHECK(last.stages == std::vector<stage>{{0, 0, 4}, {1, 4, 12}});
}

TEST_CASE("memory decides which neighbour takes the layers") {
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}, {2, 8, 12}};
  // Device 0 holds at most 5 layers: half of the lost stage (2) fits, not all.
  auto m = plan_after_loss(current, cluster({true, false, true}, {50, 0, 90}, 12));
  CHECK(m.stages == std::vector<stage>{{0, 0, 4}, {2, 4, 12}});
  // With 60 bytes, device 0 takes half (6 layers) instead.
  auto half = plan_after_loss(current, cluster({true, false, true}, {60, 0, 80}, 12));
  CHECK(half.stages == std::vector<stage>{{0, 0, 6}, {2, 6, 12}});
}

TEST_CASE("two adjacent losses, and neighbours without room, lead to a fresh plan or to the one living neighbour") {
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}, {2, 8, 12}, {3, 12, 16}};
  auto adjacent = cluster({true, false, false, true}, {0, 0, 0, 0}, 16);
  auto m = plan_after_loss(current, adjacent);
  CHECK(m.how == "neighbours");
  check_cover(m.stages, adjacent);
  CHECK(m.stages.size() == 2);
  // Neighbours of device 1 hold 5 layers each: they cannot absorb 4 more, a
  // fresh plan over 3 devices of 50 bytes (5 layers) each still fits 12 layers.
  std::vector<stage> three{{0, 0, 4}, {1, 4, 8}, {2, 8, 12}, {3, 12, 12}};
  three.pop_back();
  auto tight = cluster({true, false, true, true}, {50, 0, 50, 50}, 12);
  auto fresh = plan_after_loss(three, tight);
  CHECK(fresh.how == "fresh plan");
  check_cover(fresh.stages, tight);
  CHECK(fresh.stages.size() == 3);
}

TEST_CASE("survivors that cannot hold the model: an error naming the layers that fit nowhere") {
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}};
  auto state = cluster({true, false}, {50, 0}, 8);
  CHECK_THROWS_WITH_AS(plan_after_loss(current, state), doctest::Contains("layers [5, 8) (30 bytes) fit on no surviving node"),
                       infeasible_error);
  auto none = cluster({false, false}, {0, 0}, 8);
  CHECK_THROWS_WITH_AS(plan_after_loss(current, none), doctest::Contains("layers [0, 8) (80 bytes)"), infeasible_error);
}

TEST_CASE("even_layout spreads layers over the alive devices and respects budgets") {
  auto state = cluster({true, true, false, true}, {0, 0, 0, 0}, 10);
  auto stages = even_layout(state);
  CHECK(stages == std::vector<stage>{{0, 0, 4}, {1, 4, 7}, {3, 7, 10}});
  auto tight = cluster({true, true}, {30, 0}, 10);
  CHECK(even_layout(tight) == std::vector<stage>{{0, 0, 3}, {1, 3, 10}});
  // Even shares would give device 0 two layers and leave device 1 two it
  // cannot hold; filling device 0 to its budget fits.
  auto uneven = cluster({true, true}, {30, 10}, 4);
  CHECK(even_layout(uneven) == std::vector<stage>{{0, 0, 3}, {1, 3, 4}});
}

TEST_CASE("a node of a smaller dtype holds more layers of the same budget") {
  // Layers of 10 fp32 bytes; the neighbour of the lost stage has a 60-byte
  // budget: 6 fp32 layers, or 12 at half the element size.
  std::vector<stage> current{{0, 0, 4}, {1, 4, 8}};
  auto fp32 = cluster({true, false}, {60, 0}, 8);
  CHECK_THROWS_AS(plan_after_loss(current, fp32), infeasible_error);
  auto bf16 = fp32;
  bf16.state_scale = {0.5, 1.0};
  auto m = plan_after_loss(current, bf16);
  CHECK(m.stages == std::vector<stage>{{0, 0, 8}});
}
