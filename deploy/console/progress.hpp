#pragma once
// A progress bar on stderr for long work (profiling, training): redrawn in
// place on a terminal, one line per update otherwise (logs, CI), with the
// time left estimated from the rate so far.

#include <chrono>
#include <cstdint>
#include <string>

namespace orrery::deploy {

class progress_bar {
 public:
  explicit progress_bar(std::string title);

  /// Shows `done` of `total` and `what`, then the ETA (once some work is
  /// done); ends the line when done reaches total. `first` is where this
  /// run's work began (a resumed training run starts past 0), so the rate
  /// counts only what this run did.
  void show(std::int64_t done, std::int64_t total, const std::string& what, std::int64_t first = 0);

 private:
  std::string title_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
};

/// "1h02m", "3m07s", "42s".
std::string duration_text(double seconds);

}  // namespace orrery::deploy
