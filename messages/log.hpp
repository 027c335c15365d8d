#pragma once
// orrery's loggers: one named logger per subsystem ("node", "stage", "driver",
// "supervisor", "router", "data-plane", "cluster"), all on one stderr sink,
// each line as
//
//   [12:01:02.345] [stage] node 'n1' stage 2 of session 7261 (layers [4, 8)): dropping frames of deployment 3 (now 4)
//
// The subsystem is the logger's name; the text names the node, stage or
// session the line is about. spdlog does the work, behind this header: its
// fmt must not meet the one a CUDA build of libtorch carries in the same
// translation unit. messages/ is the lowest layer that logs (the data plane),
// so the loggers live here for every layer above.

#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace orrery {

class logger {
 public:
  /// The logger of `subsystem`, made on first use; safe from any thread.
  explicit logger(const std::string& subsystem);

  void info(const std::string& line) const;
  void warn(const std::string& line) const;
  void error(const std::string& line) const;

 private:
  std::shared_ptr<spdlog::logger> log_;
};

}  // namespace orrery
