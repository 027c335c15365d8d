#include "deploy/local_cluster.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

namespace orrery::deploy {

namespace {

using namespace std::chrono_literals;

bool accepts_connections(const std::string& host, std::uint16_t port) {
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return false;
  int fd = ::socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  bool ok = fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0;
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(found);
  return ok;
}

}  // namespace

local_cluster::local_cluster(const topology& t, std::filesystem::path log_dir, std::filesystem::path executable)
    : topology_(t), log_dir_(std::move(log_dir)) {
  if (!log_dir_.empty()) std::filesystem::create_directories(log_dir_);
  const auto self = std::filesystem::canonical(executable);
  const pid_t parent = ::getpid();
  for (const auto& n : t.nodes) {
    pid_t pid = ::fork();
    if (pid < 0) {
      stop();
      throw std::runtime_error("cannot start " + n.label() + ": fork failed");
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl took effect
      sigset_t none;
      sigemptyset(&none);
      pthread_sigmask(SIG_SETMASK, &none, nullptr);
      if (!log_dir_.empty()) {
        int fd = ::open((log_dir_ / (n.name + ".log")).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) ::dup2(fd, STDOUT_FILENO), ::dup2(fd, STDERR_FILENO), ::close(fd);
      }
      ::execl(self.c_str(), self.c_str(), "node", "--topology", t.file.c_str(), "--name", n.name.c_str(),
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pids_[n.name] = pid;
  }
}

local_cluster::~local_cluster() {
  stop();
}

std::string local_cluster::exited_node() {
  for (auto it = pids_.begin(); it != pids_.end(); ++it) {
    int status = 0;
    if (::waitpid(it->second, &status, WNOHANG) == it->second) {
      auto name = it->first;
      pids_.erase(it);
      return name;
    }
  }
  return {};
}

void local_cluster::wait_ready(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& n : topology_.nodes) {
    while (!accepts_connections(n.host, n.port)) {
      if (auto gone = exited_node(); !gone.empty())
        throw std::runtime_error("node '" + gone + "' exited during start-up" +
                                 (log_dir_.empty() ? "" : " (see " + (log_dir_ / (gone + ".log")).string() + ")"));
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error(n.label() + " did not start listening within " + std::to_string(timeout.count()) + " ms");
      std::this_thread::sleep_for(20ms);
    }
  }
}

void local_cluster::stop() {
  for (const auto& [name, pid] : pids_) ::kill(pid, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (!pids_.empty()) {
    for (auto it = pids_.begin(); it != pids_.end();) {
      int status = 0;
      it = ::waitpid(it->second, &status, WNOHANG) == it->second ? pids_.erase(it) : std::next(it);
    }
    if (pids_.empty()) break;
    if (std::chrono::steady_clock::now() > deadline)
      for (const auto& [name, pid] : pids_) ::kill(pid, SIGKILL);
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace orrery::deploy
