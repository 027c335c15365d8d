#include "deploy/console/progress.hpp"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <iostream>

namespace orrery::deploy {

progress_bar::progress_bar(std::string title)
    : title_(std::move(title)), terminal_(::isatty(STDERR_FILENO) != 0), start_(std::chrono::steady_clock::now()) {}

std::string duration_text(double seconds) {
  const auto s = static_cast<long>(std::lround(std::max(0.0, seconds)));
  char text[32];
  if (s >= 3600)
    std::snprintf(text, sizeof text, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else if (s >= 60)
    std::snprintf(text, sizeof text, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(text, sizeof text, "%lds", s);
  return text;
}

void progress_bar::show(std::int64_t done, std::int64_t total, const std::string& what, std::int64_t first) {
  constexpr std::int64_t width = 30;
  const std::int64_t filled = total > 0 ? std::min(width, done * width / total) : width;
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.resize(width, '.');
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string eta;
  if (done >= total)
    eta = "  took " + duration_text(elapsed);
  else if (done > first)
    eta = "  ETA " + duration_text(elapsed / static_cast<double>(done - first) * static_cast<double>(total - done));
  std::cerr << (terminal_ ? "\r\033[K" : "") << title_ << " [" << bar << "] " << done << "/" << total << "  " << what << eta
            << (terminal_ && done < total ? "" : "\n") << std::flush;
}

}  // namespace orrery::deploy
