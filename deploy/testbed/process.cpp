// Starting the testbed's programs: fork, the child's steps before exec (only
// async-signal-safe calls), and how a failed step is reported to the parent.

#include "deploy/testbed/process.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "compute/message_text.hpp"
#include "deploy/cluster/local_cluster.hpp"

namespace orrery::deploy::detail {

namespace fs = std::filesystem;

namespace {

/// What a child writes to its close-on-exec pipe when a step before exec
/// fails: which step, and errno.
struct child_failure {
  int step;
  int error;
};

[[noreturn]] void fail_in_child(int report, int step) {
  const child_failure failure{step, errno};
  [[maybe_unused]] auto written = ::write(report, &failure, sizeof failure);
  ::_exit(127);
}

/// The child's side of spawn(): only async-signal-safe calls, as the child of
/// a multi-threaded parent must.
[[noreturn]] void become_child(char* const* argv, const std::vector<std::string>& cgroup_procs, const std::string& netns,
                               const child_setup& setup, int report) {
  // The parent may block SIGINT and SIGTERM (block_stop_signals); a node must not.
  sigset_t none;
  sigemptyset(&none);
  ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
  int step = 0;
  for (const auto& procs : cgroup_procs) {
    // "0" in cgroup.procs moves the writing process itself.
    const int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ::write(fd, "0", 1) != 1) fail_in_child(report, step);
    ::close(fd);
    ++step;
  }
  if (!netns.empty()) {
    const int fd = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || ::setns(fd, CLONE_NEWNET) != 0) fail_in_child(report, step);
    ::close(fd);
  }
  ++step;
  if (setup.new_session && ::setsid() < 0) fail_in_child(report, step);
  ++step;
  if (setup.output >= 0) {
    const int null = ::open("/dev/null", O_RDONLY);
    if (null < 0 || ::dup2(null, STDIN_FILENO) < 0 || ::dup2(setup.output, STDOUT_FILENO) < 0 ||
        ::dup2(setup.output, STDERR_FILENO) < 0)
      fail_in_child(report, step);
  }
  ++step;
  ::execvp(argv[0], argv);
  fail_in_child(report, step);
}

}  // namespace

fs::path netns_path(const std::string& netns) {
  return fs::path("/var/run/netns") / netns;
}

/// `name` in PATH; empty if it is nowhere there.
std::string find_in_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const auto candidate = fs::path(dir.empty() ? "." : dir) / name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

/// Forks and execs `argv` (searched in PATH) as `setup` says; returns its pid
/// once it runs. Throws std::runtime_error naming the step that failed in the
/// child: joining a cgroup, entering the namespace, running the program.
pid_t spawn(std::vector<std::string> argv, const child_setup& setup) {
  // Built before fork: the child may not allocate.
  std::vector<std::string> steps, cgroup_procs;
  for (const auto& cgroup : setup.cgroups) {
    cgroup_procs.push_back((cgroup / "cgroup.procs").string());
    steps.push_back("join cgroup " + cgroup.string());
  }
  const auto netns = setup.netns.empty() ? std::string() : netns_path(setup.netns).string();
  steps.insert(steps.end(), {"enter network namespace " + setup.netns, "start a new session",
                             "redirect the output of " + argv[0], "run " + argv[0]});
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) throw std::runtime_error(compute::errno_text("cannot create a pipe to start " + argv[0]));
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(report[0]), ::close(report[1]);
    throw std::runtime_error(compute::errno_text("cannot fork to start " + argv[0]));
  }
  if (pid == 0) become_child(args.data(), cgroup_procs, netns, setup, report[1]);
  ::close(report[1]);
  child_failure failure{};
  ssize_t got = 0;
  do got = ::read(report[0], &failure, sizeof failure);
  while (got < 0 && errno == EINTR);
  ::close(report[0]);
  if (got != sizeof failure) return pid;  // the pipe closed on exec
  ::waitpid(pid, nullptr, 0);
  throw std::runtime_error(compute::errno_text("cannot " + steps.at(static_cast<std::size_t>(failure.step)), failure.error));
}

/// Runs a tool (`ip`, `tc`) to completion; throws std::runtime_error quoting
/// the command and what it printed when it fails.
void run_tool(const std::vector<std::string>& argv) {
  int output[2];
  if (::pipe2(output, O_CLOEXEC) != 0) throw std::runtime_error(compute::errno_text("cannot create a pipe to run " + argv[0]));
  pid_t pid = 0;
  try {
    pid = spawn(argv, {{}, {}, false, output[1]});
  } catch (...) {
    ::close(output[0]), ::close(output[1]);
    throw;
  }
  ::close(output[1]);
  std::string printed;
  char buffer[4096];
  for (ssize_t n; (n = ::read(output[0], buffer, sizeof buffer)) != 0;) {
    if (n > 0) printed.append(buffer, static_cast<std::size_t>(n));
    else if (errno != EINTR) break;
  }
  ::close(output[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  while (!printed.empty() && std::isspace(static_cast<unsigned char>(printed.back()))) printed.pop_back();
  throw std::runtime_error("`" + compute::join(argv, " ") + "` failed (" + node_exit{argv[0], status}.describe() + ")" +
                           (printed.empty() ? "" : ": " + printed));
}


}  // namespace orrery::deploy::detail
