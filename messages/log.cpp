#include "messages/log.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <mutex>

namespace orrery {

logger::logger(const std::string& subsystem) {
  // One sink for all: lines of different subsystems never interleave mid-line.
  static const auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  log_ = spdlog::get(subsystem);
  if (log_) return;
  log_ = std::make_shared<spdlog::logger>(subsystem, sink);
  log_->set_pattern("[%H:%M:%S.%e] [%n] %v");
  // Every line matters to someone reading a node's log after a failure.
  log_->flush_on(spdlog::level::info);
  spdlog::register_logger(log_);
}

void logger::info(const std::string& line) const { log_->info(line); }
void logger::warn(const std::string& line) const { log_->warn(line); }
void logger::error(const std::string& line) const { log_->error(line); }

}  // namespace orrery
