#pragma once
// The core of `orrery bench dataplane`: the data plane beside a bare Asio
// socket moving the same bytes between the same two processes in the same run.
// The caller's process forks a child that echoes (or acknowledges) both kinds
// of traffic; sizes and sides are interleaved so that load from elsewhere on
// the machine hits both alike.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace orrery::messages {

/// What to measure.
struct dataplane_bench_options {
  /// Tensor sizes in bytes: 4 KiB to 64 MiB in powers of 4.
  std::vector<std::uint64_t> sizes = {4ull << 10, 16ull << 10, 64ull << 10, 256ull << 10,
                                      1ull << 20, 4ull << 20,  16ull << 20, 64ull << 20};
  /// Bytes streamed per throughput run (frames per run = this / size, within [4, 8192]).
  std::uint64_t bytes_per_run = 256ull << 20;
  /// Throughput runs per size and side; the median is reported.
  int repeats = 3;
  /// The data plane's credit window (data_plane_options::credit_bytes).
  std::uint64_t credit_bytes = 64ull << 20;
};

/// Figures for one size. Throughput: a one-way stream of frames until the
/// child acknowledges the last, median over repeats. Latency: round trip
/// through the child's echo, median over every sample.
struct dataplane_bench_size {
  std::uint64_t bytes = 0;
  int frames_per_run = 0;
  int round_trips = 0;
  double dataplane_mb_per_s = 0;
  double raw_mb_per_s = 0;
  double dataplane_round_trip_us = 0;
  double raw_round_trip_us = 0;

  double ratio_to_raw() const { return dataplane_mb_per_s / raw_mb_per_s; }
  double latency_ratio() const { return dataplane_round_trip_us / raw_round_trip_us; }
};

/// Everything one run measured.
struct dataplane_bench_result {
  std::vector<dataplane_bench_size> sizes;
  /// frame_checksum over 64 MiB in this process, GB/s.
  double checksum_gb_per_s = 0;
  bool vector_checksum = false;
};

/// Forks the echo process, measures, and stops it. Call it before the process
/// starts any thread of its own (fork copies only the calling thread).
/// @param progress receives one line per measured size.
/// @throws std::runtime_error when the child or a link fails.
dataplane_bench_result run_dataplane_bench(const dataplane_bench_options& options,
                                           const std::function<void(const std::string&)>& progress);

}  // namespace orrery::messages
