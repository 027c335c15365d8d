#include "deploy/cluster/run_registry.hpp"

#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compute/message_text.hpp"

namespace orrery::deploy {

namespace {

/// The arguments of process `pid`; empty if it is gone or a zombie.
std::vector<std::string> command_line(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  std::vector<std::string> args;
  for (std::string arg; std::getline(in, arg, '\0');) args.push_back(arg);
  return args;
}

nlohmann::json to_json(const run_record& r) {
  auto nodes = nlohmann::json::array();
  for (const auto& n : r.nodes) nodes.push_back({{"name", n.name}, {"pid", n.pid}, {"address", n.address}});
  return {{"cluster", r.cluster}, {"topology", r.topology.string()}, {"launcher_pid", r.launcher},
          {"testbed", r.testbed}, {"nodes", nodes}};
}

run_record from_json(const nlohmann::json& j) {
  run_record r{j.at("cluster").get<std::string>(), j.at("topology").get<std::string>(), j.at("launcher_pid").get<pid_t>(),
               {}, j.value("testbed", false)};
  for (const auto& n : j.at("nodes"))
    r.nodes.push_back({n.at("name").get<std::string>(), n.at("pid").get<pid_t>(), n.at("address").get<std::string>()});
  return r;
}

}  // namespace

std::string utc_timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  const std::time_t whole = std::chrono::system_clock::to_time_t(now);
  std::tm utc{};
  ::gmtime_r(&whole, &utc);
  char text[40];
  const auto length = std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(text + length, sizeof text - length, ".%03dZ", static_cast<int>(ms));
  return text;
}

// -- the run registry ----------------------------------------------------------

std::filesystem::path runtime_directory() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  const std::filesystem::path base = runtime != nullptr && *runtime != '\0' ? runtime : "/tmp";
  return base / ("orrery-" + std::to_string(::getuid()));
}

void make_runtime_directory() {
  const auto dir = runtime_directory();
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw std::runtime_error(compute::errno_text("cannot create the run registry directory " + dir.string()));
  struct stat info {};
  if (::lstat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode) || info.st_uid != ::getuid())
    throw std::runtime_error(dir.string() + " is not a directory owned by this user (uid " + std::to_string(::getuid()) +
                             "): refusing to keep the run registry there");
}

std::filesystem::path registry_path(const std::string& cluster) {
  std::string file = cluster;
  for (auto& c : file)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  return runtime_directory() / (file + ".json");
}

void write_atomically(const std::filesystem::path& file, const std::string& text) {
  auto temporary = file;
  temporary += ".tmp";
  std::ofstream out(temporary);
  out << text;
  out.close();
  if (!out) throw std::runtime_error("cannot write " + temporary.string());
  std::filesystem::rename(temporary, file);
}

void write_registry(const run_record& r) {
  make_runtime_directory();
  write_atomically(registry_path(r.cluster), to_json(r).dump(2) + '\n');
}

run_record read_registry(const std::string& cluster, const std::filesystem::path& topology_file) {
  const auto path = registry_path(cluster);
  const auto start_it = "start the cluster with `orrery up " + topology_file.string() + "` or `orrery testbed up " +
                        topology_file.string() + "`";
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("no run registry of cluster '" + cluster + "' at " + path.string() + ": " + start_it +
                             " (chaos acts on the nodes it started)");
  run_record r;
  try {
    r = from_json(nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path.string() + " is not a run registry: " + e.what());
  }
  // A testbed's nodes run on after `testbed up` exits; node_process::open
  // still checks each one before it is signalled.
  if (r.testbed) return r;
  const auto launcher = command_line(r.launcher);
  if (launcher.size() < 2 || launcher[1] != "up")
    throw std::runtime_error(path.string() + " is stale: the `orrery up` that wrote it (pid " + std::to_string(r.launcher) +
                             ") is no longer running; " + start_it);
  return r;
}

run_registry::run_registry(const topology& t, const local_cluster& cluster)
    : path_(registry_path(t.cluster)), record_{t.cluster, t.file, ::getpid(), {}, false} {
  for (const auto& n : t.nodes) record_.nodes.push_back({n.name, cluster.pid(n.name), n.address()});
  write_registry(record_);
}

run_registry::~run_registry() {
  std::error_code ignored;
  std::filesystem::remove(path_, ignored);
}

void run_registry::record(const std::string& name, pid_t pid) {
  auto it = std::find_if(record_.nodes.begin(), record_.nodes.end(), [&](const registered_node& n) { return n.name == name; });
  if (it == record_.nodes.end()) throw std::logic_error("the run registry has no node '" + name + "'");
  it->pid = pid;
  write_registry(record_);
}

// -- node processes --------------------------------------------------------------

std::optional<node_process> node_process::open(const registered_node& node, const std::filesystem::path& topology_file) {
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, node.pid, 0));
  if (pidfd < 0) {
    if (errno == ESRCH) return std::nullopt;
    throw std::runtime_error(compute::errno_text("cannot open node '" + node.name + "' pid " + std::to_string(node.pid)));
  }
  node_process process(node, pidfd);
  // The command line is read after the pidfd was opened and the process is
  // checked alive after it was read: had the node exited and its pid been
  // reused in between, the pidfd's process is dead and the check fails.
  const auto expected = node_arguments(topology_file, node.name);
  const auto args = command_line(node.pid);
  const bool is_node = args.size() == expected.size() + 1 && std::equal(expected.begin(), expected.end(), args.begin() + 1);
  if (!is_node || !process.send(0)) return std::nullopt;
  return process;
}

node_process::~node_process() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

node_process::node_process(node_process&& other) noexcept : node_(std::move(other.node_)), pidfd_(other.pidfd_) {
  other.pidfd_ = -1;
}

bool node_process::send(int signal) const {
  if (::syscall(SYS_pidfd_send_signal, pidfd_, signal, nullptr, 0) == 0) return true;
  if (errno == ESRCH) return false;
  throw std::runtime_error(compute::errno_text("cannot send signal " + std::to_string(signal) + " to " + label()));
}

bool node_process::exited_within(std::chrono::milliseconds timeout) const {
  // A pidfd turns readable once its process has exited (zombie or reaped).
  pollfd exited{pidfd_, POLLIN, 0};
  return ::poll(&exited, 1, static_cast<int>(timeout.count())) == 1;
}

std::string node_process::label() const {
  return "node '" + node_.name + "' pid " + std::to_string(node_.pid);
}

}  // namespace orrery::deploy
