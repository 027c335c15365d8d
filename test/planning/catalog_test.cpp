#include <doctest/doctest.h>

#include "planning/catalog.hpp"
#include "planning/cost.hpp"
#include "planning/pipeline.hpp"

using namespace orrery::planning;

TEST_CASE("llama2-7b from presets has the published parameter count") {
  const model_spec& m = find_model("llama2-7b");
  double weights = 0;
  for (const auto& l : model_layers(m, {}))
    weights += l.weight_bytes;
  // 6.74 B parameters at 2 bytes (Touvron et al. 2023, table 1).
  CHECK(weights / 2 == doctest::Approx(6.74e9).epsilon(0.01));
  CHECK(model_layers(m, {}).size() == 34);
}

TEST_CASE("preset profiles are valid and the roofline orders devices") {
  profile p = catalog_profile({"nano", "nano", "nx", "tx2", "orin", "rpi5", "desktop", "rtx3090"},
                              "100mbit", "llama2-7b");
  CHECK(p.devices.size() == 8);
  CHECK(p.devices[0].name == "nano#0");
  cost_model costs(p);
  // Decode is memory-bound: a block's step time is its bytes over the bandwidth.
  double nano = costs.step_seconds(5, 0), rtx = costs.step_seconds(5, 7);
  CHECK(nano > 10 * rtx);
  double block_bytes = p.layers[5].weight_bytes;
  CHECK(nano >= block_bytes / (25.6e9 * 0.6));
  // Prefill per token is cheaper than decode per token (weights are reused across the prompt).
  CHECK(p.devices[2].layers[5].prefill.at(128) < p.devices[2].layers[5].decode.at(128));
  CHECK(p.devices[0].tp.has_value());
}

TEST_CASE("unknown presets list the known ones") {
  CHECK_THROWS_WITH_AS(catalog_profile({"nano", "pi4"}, "100mbit", "tiny"),
                       doctest::Contains("unknown device 'pi4' (known: nano, tx2"), profile_error);
  CHECK_THROWS_WITH_AS(catalog_profile({"nano"}, "10mbit", "tiny"),
                       doctest::Contains("unknown link '10mbit' (known: 100mbit"), profile_error);
  CHECK_THROWS_WITH_AS(catalog_profile({"nano"}, "1gbit", "gpt5"),
                       doctest::Contains("unknown model 'gpt5'"), profile_error);
}

TEST_CASE("llama2-70b does not fit four Jetsons: the error says how much is missing") {
  profile p = catalog_profile({"nano", "nano", "nx", "tx2"}, "100mbit", "llama2-70b");
  CHECK_THROWS_WITH_AS(require_total_memory(cost_model(p), 1),
                       doctest::Contains("GB missing"), infeasible_error);
}
