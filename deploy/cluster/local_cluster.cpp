#include "deploy/cluster/local_cluster.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
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

std::vector<std::string> node_arguments(const std::filesystem::path& topology_file, const std::string& name) {
  return {"node", "--topology", topology_file.string(), "--name", name};
}

std::string node_exit::describe() const {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "exit status " + std::to_string(WEXITSTATUS(status));
}

local_cluster::local_cluster(const topology& t, std::filesystem::path log_dir, std::filesystem::path executable)
    : topology_(t), log_dir_(std::move(log_dir)), executable_(std::filesystem::canonical(executable)) {
  if (!log_dir_.empty()) std::filesystem::create_directories(log_dir_);
  try {
    for (const auto& n : t.nodes) pids_[n.name] = start(n);
  } catch (...) {
    stop();
    throw;
  }
}

local_cluster::~local_cluster() {
  stop();
}

pid_t local_cluster::start(const node_spec& n) const {
  // Built before fork: the child of a multi-threaded parent may only make
  // async-signal-safe calls, so no allocation there.
  auto args = node_arguments(topology_.file, n.name);
  args.insert(args.begin(), executable_.string());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const auto log = log_dir_.empty() ? std::string() : (log_dir_ / (n.name + ".log")).string();
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("cannot start " + n.label() + ": fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);  // the launcher died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &none, nullptr);
    if (!log.empty()) {
      // Appending keeps what a restarted node printed before it died.
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) ::dup2(fd, STDOUT_FILENO), ::dup2(fd, STDERR_FILENO), ::close(fd);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

void local_cluster::restart(const std::string& name) {
  if (pids_.count(name) != 0) throw std::logic_error("cannot restart node '" + name + "': it is still running");
  pids_[name] = start(topology_.node(name));
}

std::optional<node_exit> local_cluster::exited_node() {
  for (auto it = pids_.begin(); it != pids_.end(); ++it) {
    int status = 0;
    if (::waitpid(it->second, &status, WNOHANG) == it->second) {
      node_exit gone{it->first, status};
      pids_.erase(it);
      return gone;
    }
  }
  return std::nullopt;
}

void local_cluster::wait_ready(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (const auto& n : topology_.nodes) {
    while (!accepts_connections(n.host, n.port)) {
      if (auto gone = exited_node())
        throw std::runtime_error("node '" + gone->name + "' exited during start-up (" + gone->describe() + ")" +
                                 (log_dir_.empty() ? "" : "; see " + (log_dir_ / (gone->name + ".log")).string()));
      if (std::chrono::steady_clock::now() > deadline)
        throw std::runtime_error(n.label() + " did not start listening within " + std::to_string(timeout.count()) + " ms");
      std::this_thread::sleep_for(20ms);
    }
  }
}

void local_cluster::stop() {
  // A node frozen by `orrery chaos --action freeze` acts on SIGTERM only once continued.
  for (const auto& [name, pid] : pids_) ::kill(pid, SIGTERM), ::kill(pid, SIGCONT);
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (!pids_.empty()) {
    for (auto it = pids_.begin(); it != pids_.end();) {
      int status = 0;
      // ECHILD: reaped already (by a caller's own waitpid); gone all the same.
      const pid_t reaped = ::waitpid(it->second, &status, WNOHANG);
      it = reaped == it->second || (reaped < 0 && errno == ECHILD) ? pids_.erase(it) : std::next(it);
    }
    if (pids_.empty()) break;
    if (std::chrono::steady_clock::now() > deadline)
      for (const auto& [name, pid] : pids_) ::kill(pid, SIGKILL);
    std::this_thread::sleep_for(10ms);
  }
}

}  // namespace orrery::deploy
