#pragma once
// Runs a real child process (the `orrery` binary under test) and captures its
// exit code, stdout and stderr. Output goes through files, so a chatty child
// can never block on a full pipe.

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "test/temp_dir.hpp"

namespace orrery::test {

/// The whole of `file` (empty if it cannot be read).
inline std::string slurp(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
template <class Condition>
bool eventually(Condition condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

struct process_result {
  int exit_code = -1;
  std::string out;
  std::string err;
};

/// The orrery binary CTest passes in ORRERY_BINARY.
inline std::string orrery_binary() {
  const char* path = std::getenv("ORRERY_BINARY");
  if (path == nullptr) throw std::runtime_error("ORRERY_BINARY is not set: run the suite through ctest");
  return path;
}

/// Starts `argv` in `cwd` with its stdout and stderr written to those files
/// (/dev/null to drop them) and returns its pid, for a test that signals it.
inline pid_t start_process(const std::vector<std::string>& argv, const std::filesystem::path& cwd,
                           const std::filesystem::path& out_path, const std::filesystem::path& err_path) {
  std::fflush(nullptr);  // or the child's freopen writes the test's buffered output again
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    if (::chdir(cwd.c_str()) != 0) ::_exit(126);
    if (!std::freopen(out_path.c_str(), "w", stdout) || !std::freopen(err_path.c_str(), "w", stderr)) ::_exit(126);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  return pid;
}

/// Waits for a child start_process started: its exit code, or 128 + the signal that ended it.
inline int wait_process(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline process_result run_process(const std::vector<std::string>& argv, const std::filesystem::path& cwd) {
  temp_dir capture;
  auto out_path = capture / "out", err_path = capture / "err";
  const int code = wait_process(start_process(argv, cwd, out_path, err_path));
  return {code, slurp(out_path), slurp(err_path)};
}

/// Runs `orrery args...` in `cwd`.
inline process_result run_orrery(std::vector<std::string> args, const std::filesystem::path& cwd) {
  args.insert(args.begin(), orrery_binary());
  return run_process(args, cwd);
}

}  // namespace orrery::test
