#include <doctest/doctest.h>

#include "deploy/bench/dataplane_bench.hpp"

using namespace orrery::messages;

TEST_CASE("the data-plane benchmark measures both sides between two processes") {
  dataplane_bench_options options;
  options.sizes = {4096, 1 << 20};
  options.bytes_per_run = 8 << 20;
  options.repeats = 1;
  std::vector<std::string> lines;
  auto result = run_dataplane_bench(options, [&](const std::string& line) { lines.push_back(line); });
  REQUIRE(result.sizes.size() == 2);
  CHECK(lines.size() == 2);
  CHECK(result.checksum_gb_per_s > 0);
  for (const auto& row : result.sizes) {
    CHECK(row.dataplane_mb_per_s > 0);
    CHECK(row.raw_mb_per_s > 0);
    CHECK(row.dataplane_round_trip_us > 0);
    CHECK(row.raw_round_trip_us > 0);
  }
  CHECK(result.sizes[0].frames_per_run == 2048);
  CHECK(result.sizes[1].frames_per_run == 8);
}
