// `orrery bench dataplane`: data-plane throughput and latency between two
// processes beside a raw Asio socket moving the same bytes (issue 3 targets).

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/dataplane_bench.hpp"
#include "deploy/cli/flag_checks.hpp"

namespace orrery::deploy {
namespace {

// Issue 3: >= 0.8 of raw throughput from 1 MiB up; 4 KiB latency <= 2x raw.
constexpr double throughput_target = 0.8;
constexpr std::uint64_t throughput_target_from = 1 << 20;
constexpr double latency_target = 2.0;
constexpr std::uint64_t latency_target_size = 4 << 10;

nlohmann::json to_json(const messages::dataplane_bench_result& result,
                       const messages::dataplane_bench_options& options) {
  nlohmann::json sizes = nlohmann::json::array();
  double worst_ratio = -1;
  nlohmann::json latency_4k = nullptr;
  for (const auto& s : result.sizes) {
    sizes.push_back({{"bytes", s.bytes},
                     {"frames_per_run", s.frames_per_run},
                     {"round_trips", s.round_trips},
                     {"dataplane_mb_per_s", s.dataplane_mb_per_s},
                     {"raw_mb_per_s", s.raw_mb_per_s},
                     {"ratio_to_raw", s.ratio_to_raw()},
                     {"dataplane_round_trip_us", s.dataplane_round_trip_us},
                     {"raw_round_trip_us", s.raw_round_trip_us},
                     {"latency_ratio", s.latency_ratio()}});
    if (s.bytes >= throughput_target_from)
      worst_ratio = worst_ratio < 0 ? s.ratio_to_raw() : std::min(worst_ratio, s.ratio_to_raw());
    if (s.bytes == latency_target_size) latency_4k = s.latency_ratio();
  }
  auto target = [](const nlohmann::json& value, double bound, bool at_least) -> nlohmann::json {
    if (value.is_null()) return {{"value", nullptr}, {"target", bound}, {"met", nullptr}};
    double v = value.get<double>();
    return {{"value", v}, {"target", bound}, {"met", at_least ? v >= bound : v <= bound}};
  };
  auto throughput =
      target(worst_ratio < 0 ? nlohmann::json(nullptr) : nlohmann::json(worst_ratio), throughput_target, true);
  auto latency = target(latency_4k, latency_target, false);
  return {{"benchmark", "dataplane"},
          {"between", "two processes over loopback TCP (this one and a forked echo process)"},
          {"throughput",
           "one-way stream of frames_per_run frames until the echo process acknowledges the last; "
           "median of repeats; MB = 1e6 bytes"},
          {"latency", "round trip: the frame goes to the echo process and comes back whole; median of all round trips"},
          {"raw", "bare Boost.Asio socket, 16-byte header + payload, blocking reads/writes, no checksum, no credit"},
          {"cpu_cores", std::thread::hardware_concurrency()},
          {"repeats", options.repeats},
          {"credit_bytes", options.credit_bytes},
          {"checksum",
           {{"kind", result.vector_checksum ? "lane sums x8, AVX2" : "lane sums x8, portable"},
            {"gb_per_s_64mib", result.checksum_gb_per_s}}},
          {"sizes", sizes},
          {"targets", {{"worst_ratio_to_raw_from_1mib", throughput}, {"latency_ratio_4kib", latency}}},
          {"targets_met", throughput["met"] == true && latency["met"] == true}};
}

}  // namespace

void add_dataplane_bench(CLI::App& bench) {
  auto opts = std::make_shared<messages::dataplane_bench_options>();
  auto* cmd = bench.add_subcommand("dataplane",
                                   "Data-plane throughput and latency between two processes beside a raw Asio socket");
  cmd->add_option("--sizes", opts->sizes, "Tensor sizes in bytes (multiples of 4)")->capture_default_str();
  cmd->add_option("--bytes-per-run", opts->bytes_per_run, "Bytes streamed per throughput run")
      ->capture_default_str()
      ->check(at_least<std::uint64_t>(1));
  cmd->add_option("--repeats", opts->repeats, "Runs per size and side; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--credit-bytes", opts->credit_bytes, "The data plane's credit window")
      ->capture_default_str()
      ->check(at_least<std::uint64_t>(1));
  cmd->callback([opts] {
    auto result =
        messages::run_dataplane_bench(*opts, [](const std::string& line) { std::cerr << "bench: " << line << "\n"; });
    std::cout << to_json(result, *opts).dump(2) << std::endl;
  });
}

}  // namespace orrery::deploy
