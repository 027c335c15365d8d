#include "deploy/testbed/testbed.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <nlohmann/json.hpp>
#include <ostream>
#include <sstream>
#include <system_error>
#include <thread>

#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/cluster/run_registry.hpp"

namespace orrery::deploy {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using std::chrono::steady_clock;

std::system_error os_error(const std::string& what) {
  return std::system_error(errno, std::generic_category(), what);
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

// -- names -------------------------------------------------------------------------

// Namespaces and cgroups are `orrery-CLUSTER-WHO` (WHO: a node, `client` or
// `bridge`), with anything but letters, digits, `_` and `-` replaced by `_`.
std::string resource_name(const std::string& cluster, const std::string& who) {
  std::string name = "orrery-" + cluster + "-" + who;
  for (auto& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') c = '_';
  return name;
}

const std::vector<std::string> reserved_node_names = {"client", "bridge"};

// Interfaces live in the testbed's own namespaces, so their names need not
// carry the cluster's: `eth0` in a node's or the client's namespace, and in the
// bridge namespace `br0` with one port per node. Names hold at most 15 bytes
// (IFNAMSIZ): a port is `v-NODE`, or `v.INDEX` for a long node name (`.` is
// never part of a node name, so the two cannot clash).
const char* const host_device = "eth0";
const char* const bridge_device = "br0";
const char* const client_port = "v.client";

std::string bridge_port_name(const std::string& node, std::size_t index) {
  const auto port = "v-" + node;
  return port.size() <= 15 ? port : "v." + std::to_string(index);
}

fs::path netns_path(const std::string& netns) {
  return fs::path("/var/run/netns") / netns;
}

fs::path cgroup_root(const std::string& controller) {
  return fs::path("/sys/fs/cgroup") / controller;
}

// -- running programs ----------------------------------------------------------------

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

/// Where and how spawn() starts a child; all of it happens before the child
/// runs any of its own code.
struct child_setup {
  /// Cgroup directories the child joins.
  std::vector<fs::path> cgroups;
  /// The network namespace it joins; empty: this process's.
  std::string netns;
  /// Detached from this process's session and terminal.
  bool new_session = false;
  /// Its stdout and stderr go here and its stdin reads /dev/null; -1: it
  /// inherits all three.
  int output = -1;
};

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
  if (::pipe2(report, O_CLOEXEC) != 0) throw os_error("cannot create a pipe to start " + argv[0]);
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(report[0]), ::close(report[1]);
    throw os_error("cannot fork to start " + argv[0]);
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
  throw std::runtime_error("cannot " + steps.at(static_cast<std::size_t>(failure.step)) + ": " + std::strerror(failure.error));
}

/// Runs a tool (`ip`, `tc`) to completion; throws std::runtime_error quoting
/// the command and what it printed when it fails.
void run_tool(const std::vector<std::string>& argv) {
  int output[2];
  if (::pipe2(output, O_CLOEXEC) != 0) throw os_error("cannot create a pipe to run " + argv[0]);
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
  throw std::runtime_error("`" + join(argv, " ") + "` failed (" + node_exit{argv[0], status}.describe() + ")" +
                           (printed.empty() ? "" : ": " + printed));
}

// -- preflight -----------------------------------------------------------------------

std::string needs_root() {
  return ::geteuid() == 0 ? "" : "orrery testbed needs root (running as uid " + std::to_string(::getuid()) + ")";
}

void require_root() {
  if (auto missing = needs_root(); !missing.empty()) throw std::runtime_error(missing);
}

/// What this kernel lacks of veth, bridge and tbf, tried in a throw-away
/// namespace that is removed again; "" if nothing.
std::string missing_kernel_feature() {
  const auto probe = "orrery-probe-" + std::to_string(::getpid());
  try {
    run_tool({"ip", "netns", "add", probe});
  } catch (const std::exception& e) {
    return std::string("cannot create a network namespace: ") + e.what();
  }
  const std::pair<std::string, std::vector<std::string>> probes[] = {
      {"a bridge", {"ip", "-n", probe, "link", "add", bridge_device, "type", "bridge"}},
      {"a veth pair", {"ip", "-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1"}},
      {"a tbf qdisc", {"tc", "-n", probe, "qdisc", "add", "dev", "v0", "root", "tbf", "rate", "1mbit", "burst", "4kb", "limit", "16kb"}}};
  std::string missing;
  for (const auto& [feature, command] : probes) {
    try {
      run_tool(command);
    } catch (const std::exception& e) {
      missing = "this kernel cannot make " + feature + ": " + e.what();
      break;
    }
  }
  try {
    run_tool({"ip", "netns", "delete", probe});
  } catch (const std::exception& e) {
    if (missing.empty()) missing = std::string("cannot remove the probe namespace: ") + e.what();
  }
  return missing;
}

// -- the state file ----------------------------------------------------------------

nlohmann::json to_json(const testbed_state& s) {
  auto nodes = nlohmann::json::array();
  for (const auto& n : s.nodes)
    nodes.push_back({{"name", n.name}, {"netns", n.netns}, {"address", n.address}, {"bridge_port", n.bridge_port},
                     {"pid", n.pid}, {"log", n.log.string()}});
  std::vector<std::string> cgroups;
  for (const auto& c : s.cgroups) cgroups.push_back(c.string());
  return {{"cluster", s.cluster}, {"topology", s.topology.string()},
          {"bridge_netns", s.bridge_netns}, {"client_netns", s.client_netns},
          {"namespaces", s.namespaces}, {"cgroups", cgroups},
          {"nodes", nodes}, {"registry", s.registry}};
}

testbed_state state_from_json(const nlohmann::json& j) {
  testbed_state s;
  s.cluster = j.at("cluster").get<std::string>();
  s.topology = j.at("topology").get<std::string>();
  s.bridge_netns = j.at("bridge_netns").get<std::string>();
  s.client_netns = j.at("client_netns").get<std::string>();
  s.namespaces = j.at("namespaces").get<std::vector<std::string>>();
  for (const auto& c : j.at("cgroups")) s.cgroups.emplace_back(c.get<std::string>());
  for (const auto& n : j.at("nodes"))
    s.nodes.push_back({n.at("name").get<std::string>(), n.at("netns").get<std::string>(), n.at("address").get<std::string>(),
                       n.at("bridge_port").get<std::string>(), n.at("pid").get<pid_t>(), n.at("log").get<std::string>()});
  s.registry = j.at("registry").get<bool>();
  return s;
}

void save(const testbed_state& s) {
  write_atomically(testbed_state_path(s.cluster), to_json(s).dump(2) + "\n");
}

/// The state of the testbed `up` is about to build: every name decided, nothing created.
testbed_state plan(const topology& t) {
  testbed_state s;
  s.cluster = t.cluster;
  s.topology = t.file;
  s.bridge_netns = resource_name(t.cluster, "bridge");
  s.client_netns = resource_name(t.cluster, "client");
  const auto dir = testbed_state_path(t.cluster).parent_path();
  for (std::size_t i = 0; i < t.nodes.size(); ++i) {
    const auto& n = t.nodes[i];
    s.nodes.push_back({n.name, resource_name(t.cluster, n.name), n.address(), bridge_port_name(n.name, i), 0,
                       dir / (n.name + ".log")});
  }
  return s;
}

testbed_state require_up(const topology& t, const fs::path& topology_file) {
  auto s = read_testbed_state(t.cluster);
  if (!s)
    throw std::runtime_error("the testbed of cluster '" + t.cluster + "' is not up (no state at " +
                             testbed_state_path(t.cluster).string() + "): start it with `orrery testbed up " +
                             topology_file.string() + "`");
  return *s;
}

/// The live process of node `n`, if it still runs the node's command line.
std::optional<node_process> process_of(const testbed_state& s, const testbed_node& n) {
  if (n.pid == 0) return std::nullopt;
  return node_process::open({n.name, n.pid, n.address}, s.topology);
}

// -- building --------------------------------------------------------------------------

// tbf lets `burst` bytes leave back to back and queues up to `limit` bytes
// behind them. The burst is 2 ms of traffic (never under two full frames), the
// queue 10 ms more (never under 16 frames: with fewer, TCP reached 0.7 of
// 1 Mbit/s). tbf segments a GSO packet larger than its burst itself, so GSO
// and TSO stay on (there is no ethtool here, and segmenting in the sender
// costs more CPU). TCP goodput measured through a testbed on this 2-core
// machine, node to client and client to node, 2 s each way
// (test/deploy/testbed_test.cpp):
//   100 Mbit/s (burst 25000 B, limit 150000 B): 95.8 and 95.3 Mbit/s
//   1 Gbit/s (burst 250000 B, limit 1500000 B): 957.7 and 956.7 Mbit/s
// — the rate less the 4.4% that TCP/IP headers take of a 1514-byte frame
// (python3 with a build running beside: 95.2/94.4 and 928.8/941.4). A 1 ms
// burst measured the same, a 5 ms one 1-2% more at 1 Gbit/s; the shorter burst
// keeps a slow link from passing long bursts at full speed.
struct token_bucket {
  std::uint64_t burst_bytes;
  std::uint64_t limit_bytes;
};

token_bucket token_bucket_for(std::uint64_t bits_per_s) {
  constexpr std::uint64_t frame_bytes = 1514;
  const std::uint64_t bytes_per_ms = bits_per_s / 8 / 1000;
  const std::uint64_t burst = std::max(2 * bytes_per_ms, 2 * frame_bytes);
  return {burst, burst + std::max(10 * bytes_per_ms, 16 * frame_bytes)};
}

void shape(const std::string& netns, const std::string& device, std::uint64_t bits_per_s) {
  const auto bucket = token_bucket_for(bits_per_s);
  run_tool({"tc", "-n", netns, "qdisc", "replace", "dev", device, "root", "tbf", "rate", std::to_string(bits_per_s) + "bit",
            "burst", std::to_string(bucket.burst_bytes), "limit", std::to_string(bucket.limit_bytes)});
}

// A 10 ms CFS period instead of the default 100 ms: a 0.2-core node then runs
// 2 ms in every 10 ms rather than 20 ms in every 100 ms, so a token's time
// (tens of ms) is not a lottery of whether it straddles an 80 ms stall. The
// kernel refuses quotas under 1 ms, so shares under 0.1 core get a longer
// period (1 ms in every 1/share ms).
constexpr std::int64_t cfs_period_us = 10'000;
constexpr std::int64_t min_cfs_quota_us = 1'000;

std::pair<std::int64_t, std::int64_t> cfs_period_and_quota(double cpu_share) {
  const auto period = std::max(cfs_period_us, static_cast<std::int64_t>(std::ceil(min_cfs_quota_us / cpu_share)));
  return {period, std::llround(cpu_share * static_cast<double>(period))};
}

void write_setting(const fs::path& file, std::int64_t value) {
  const auto text = std::to_string(value);
  const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw os_error("cannot open " + file.string());
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int error = errno;
  ::close(fd);
  if (!written) throw std::system_error(error, std::generic_category(), "cannot write " + text + " to " + file.string());
}

void add_namespace(testbed_state& s, const std::string& netns) {
  run_tool({"ip", "netns", "add", netns});
  s.namespaces.push_back(netns);
  save(s);
  run_tool({"ip", "-n", netns, "link", "set", "lo", "up"});
}

fs::path add_cgroup(testbed_state& s, const std::string& controller, const std::string& name) {
  const auto dir = cgroup_root(controller) / name;
  if (::mkdir(dir.c_str(), 0755) != 0) throw os_error("cannot create cgroup " + dir.string());
  s.cgroups.push_back(dir);
  save(s);
  return dir;
}

/// A veth pair from `netns`'s eth0, holding `address`, to `port` on the
/// bridge; both ends are created right in their namespaces.
void link_to_bridge(const testbed_state& s, const testbed_spec& tb, const std::string& netns, const std::string& port,
                    const std::string& address) {
  run_tool({"ip", "link", "add", host_device, "netns", netns, "type", "veth", "peer", "name", port, "netns", s.bridge_netns});
  run_tool({"ip", "-n", s.bridge_netns, "link", "set", port, "master", bridge_device, "up"});
  run_tool({"ip", "-n", netns, "addr", "add", address + "/" + std::to_string(tb.prefix_length), "dev", host_device});
  run_tool({"ip", "-n", netns, "link", "set", host_device, "up"});
}

/// The node's namespace and link, shaped: egress on its own end, ingress on
/// the bridge's end towards it.
void build_node_network(testbed_state& s, const testbed_spec& tb, const node_spec& spec, const testbed_node& n) {
  add_namespace(s, n.netns);
  link_to_bridge(s, tb, n.netns, n.bridge_port, spec.host);
  if (!spec.emulate) return;
  if (auto egress = spec.emulate->egress_bits_per_s) shape(n.netns, host_device, *egress);
  if (auto ingress = spec.emulate->ingress_bits_per_s) shape(s.bridge_netns, n.bridge_port, *ingress);
}

/// The node's cpu and memory cgroups, for the limits it has.
std::vector<fs::path> build_cgroups(testbed_state& s, const node_spec& spec, const testbed_node& n) {
  std::vector<fs::path> cgroups;
  if (!spec.emulate) return cgroups;
  if (auto share = spec.emulate->cpu_share) {
    const auto [period, quota] = cfs_period_and_quota(*share);
    const auto dir = add_cgroup(s, "cpu", n.netns);
    write_setting(dir / "cpu.cfs_period_us", period);
    write_setting(dir / "cpu.cfs_quota_us", quota);
    cgroups.push_back(dir);
  }
  if (auto bytes = spec.emulate->memory_bytes) {
    const auto dir = add_cgroup(s, "memory", n.netns);
    write_setting(dir / "memory.limit_in_bytes", static_cast<std::int64_t>(*bytes));
    cgroups.push_back(dir);
  }
  return cgroups;
}

/// `orrery node …` in the node's cgroups and namespace, in a session of its
/// own (it outlives `testbed up`), writing to its log.
void start_node(testbed_state& s, testbed_node& n, const std::vector<fs::path>& cgroups, const fs::path& executable) {
  const int log = ::open(n.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) throw os_error("cannot create " + n.log.string());
  auto argv = node_arguments(s.topology, n.name);
  argv.insert(argv.begin(), executable.string());
  try {
    n.pid = spawn(argv, {cgroups, n.netns, true, log});
  } catch (...) {
    ::close(log);
    throw;
  }
  ::close(log);
  save(s);
}

/// Throws if SIGINT or SIGTERM (blocked by block_stop_signals) is pending.
void throw_if_stop_requested() {
  sigset_t pending;
  ::sigpending(&pending);
  for (int signal : {SIGINT, SIGTERM})
    if (sigismember(&pending, signal)) throw std::runtime_error("interrupted by signal " + std::to_string(signal));
}

void build(testbed_state& s, const topology& t) {
  const auto& tb = *t.testbed;
  add_namespace(s, s.bridge_netns);
  run_tool({"ip", "-n", s.bridge_netns, "link", "add", bridge_device, "type", "bridge"});
  run_tool({"ip", "-n", s.bridge_netns, "link", "set", bridge_device, "up"});
  add_namespace(s, s.client_netns);
  link_to_bridge(s, tb, s.client_netns, client_port, tb.client);
  const auto executable = fs::canonical("/proc/self/exe");
  for (auto& n : s.nodes) {
    throw_if_stop_requested();
    const auto& spec = t.node(n.name);
    try {
      build_node_network(s, tb, spec, n);
      start_node(s, n, build_cgroups(s, spec, n), executable);
    } catch (const std::exception& e) {
      throw std::runtime_error("setting up " + spec.label() + ": " + e.what());
    }
  }
  s.registry = true;
  save(s);
  run_record registry{t.cluster, t.file, 0, {}, true};
  for (const auto& n : s.nodes) registry.nodes.push_back({n.name, n.pid, n.address});
  write_registry(registry);
}

/// `; the end of its log FILE:` and its last lines, indented.
std::string log_tail(const fs::path& log) {
  std::ifstream in(log);
  std::deque<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
    if (lines.size() > 15) lines.pop_front();
  }
  if (lines.empty()) return "; its log " + log.string() + " is empty";
  std::string tail = "; the end of its log " + log.string() + ":";
  for (const auto& line : lines) tail += "\n    " + line;
  return tail;
}

/// `host:port` split; the port is 0 if there is none.
std::pair<std::string, std::uint16_t> host_and_port(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) return {address, 0};
  return {address.substr(0, colon), static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1)))};
}

/// Waits until every node accepts connections on its control port from the
/// client namespace, where clients of the testbed run; throws naming a node
/// that exited or did not come up, with the end of its log.
void wait_until_serving(const testbed_state& s, std::chrono::milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  in_network_namespace(s.client_netns, [&] {
    for (const auto& n : s.nodes) {
      const auto [host, port] = host_and_port(n.address);
      while (!accepts_on_link(host, port, 200ms)) {
        throw_if_stop_requested();
        int status = 0;
        if (::waitpid(n.pid, &status, WNOHANG) == n.pid)
          throw std::runtime_error("node '" + n.name + "' exited during start-up (" + node_exit{n.name, status}.describe() +
                                   ")" + log_tail(n.log));
        if (steady_clock::now() > deadline)
          throw std::runtime_error("node '" + n.name + "' (" + n.address + ") did not accept connections from " +
                                   s.client_netns + " within " + std::to_string(timeout.count()) +
                                   " ms (a node with a small cpu share starts slowly: --ready-timeout gives it longer)" +
                                   log_tail(n.log));
        std::this_thread::sleep_for(50ms);
      }
    }
  });
}

// -- tearing down ----------------------------------------------------------------------

/// SIGTERM to every recorded node that still runs its command line, SIGKILL
/// to those left after 3 s; one line each, problems appended.
void stop_nodes(const testbed_state& s, std::ostream& out, std::vector<std::string>& problems) {
  std::vector<node_process> live;
  for (const auto& n : s.nodes)
    if (auto process = process_of(s, n)) live.push_back(std::move(*process));
  // A node frozen by `orrery chaos --action freeze` acts on SIGTERM once continued.
  for (const auto& p : live) p.send(SIGTERM), p.send(SIGCONT);
  const auto deadline = steady_clock::now() + 3s;
  for (const auto& p : live) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady_clock::now());
    const bool terminated = p.exited_within(std::max(left, 0ms));
    if (!terminated) p.send(SIGKILL);
    if (terminated || p.exited_within(2s))
      out << "stopped " << p.label() << (terminated ? "" : " (SIGKILL: still running 3 s after SIGTERM)") << "\n";
    else
      problems.push_back(p.label() + " still runs after SIGKILL");
  }
  // The nodes are this process's children when `up` rolls back: reap them.
  for (const auto& n : s.nodes)
    if (n.pid != 0) ::waitpid(n.pid, nullptr, WNOHANG);
}

/// rmdir of a cgroup directory; a process that has just exited can keep its
/// cgroup busy (EBUSY) for a moment after it was reaped, so that is retried
/// for up to 2 s. False with errno set otherwise.
bool remove_cgroup(const fs::path& cgroup) {
  const auto deadline = steady_clock::now() + 2s;
  while (::rmdir(cgroup.c_str()) != 0) {
    if (errno != EBUSY || steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

/// Removes what `s` records, the most dependent first: processes (they keep
/// cgroups busy and namespaces alive), cgroups, namespaces (their veths go
/// with them), the run registry, logs, the state file. What is already gone is
/// skipped; throws listing what could not be removed, keeping the state file.
void remove_testbed(const testbed_state& s, std::ostream& out) {
  std::vector<std::string> problems;
  stop_nodes(s, out, problems);
  for (auto it = s.cgroups.rbegin(); it != s.cgroups.rend(); ++it) {
    if (remove_cgroup(*it))
      out << "removed cgroup " << it->string() << "\n";
    else if (errno != ENOENT)
      problems.push_back(os_error("cannot remove cgroup " + it->string()).what());
  }
  for (auto it = s.namespaces.rbegin(); it != s.namespaces.rend(); ++it) {
    if (!fs::exists(netns_path(*it))) continue;
    try {
      run_tool({"ip", "netns", "delete", *it});
      out << "removed netns " << *it << "\n";
    } catch (const std::exception& e) {
      problems.push_back(e.what());
    }
  }
  const auto state = testbed_state_path(s.cluster);
  if (!problems.empty())
    throw std::runtime_error("could not remove all of testbed '" + s.cluster + "': " + join(problems, "; ") + "; " +
                             state.string() + " still lists what is left");
  std::error_code ignored;
  if (s.registry && fs::remove(registry_path(s.cluster), ignored)) out << "removed " << registry_path(s.cluster).string() << "\n";
  for (const auto& n : s.nodes) fs::remove(n.log, ignored);
  fs::remove(state, ignored);
  fs::remove(state.parent_path(), ignored);  // only if empty
}

/// What `s` records that still exists, e.g. `netns orrery-lab-a`.
std::vector<std::string> live_resources(const testbed_state& s) {
  std::vector<std::string> live;
  for (const auto& netns : s.namespaces)
    if (fs::exists(netns_path(netns))) live.push_back("netns " + netns);
  for (const auto& cgroup : s.cgroups)
    if (fs::exists(cgroup)) live.push_back("cgroup " + cgroup.string());
  for (const auto& n : s.nodes)
    if (process_of(s, n)) live.push_back("node '" + n.name + "' pid " + std::to_string(n.pid));
  return live;
}

// -- up ------------------------------------------------------------------------------

void check_testbed(const topology& t, const std::string& topology_file) {
  if (!t.testbed)
    throw std::runtime_error(topology_file + " describes no testbed: it has no `testbed:` section and no node with "
                             "`emulate:` (see deploy/topologies/README.md, \"Emulated clusters\")");
  for (const auto& n : t.nodes)
    if (std::find(reserved_node_names.begin(), reserved_node_names.end(), n.name) != reserved_node_names.end())
      throw topology_error(t.file.string() + ":" + std::to_string(n.line) + ": node name '" + n.name +
                           "' is taken in a testbed: " + resource_name(t.cluster, n.name) + " is the testbed's own " +
                           n.name + " namespace");
}

/// Refuses a testbed whose recorded resources still exist; removes the
/// leftover state of one that is wholly gone (after a reboot, say).
void clear_earlier(const topology& t, const std::string& topology_file, std::ostream& out) {
  auto earlier = read_testbed_state(t.cluster);
  if (!earlier) return;
  if (auto live = live_resources(*earlier); !live.empty())
    throw std::runtime_error("testbed '" + t.cluster + "' is already up (" + testbed_state_path(t.cluster).string() +
                             " lists " + std::to_string(live.size()) + " live resource(s), " + live.front() +
                             " among them); run `orrery testbed down " + topology_file + "` first");
  out << "removing the leftover state of an earlier testbed '" << t.cluster << "', none of which exists any more\n";
  remove_testbed(*earlier, out);
}

std::string rate_text(const std::optional<std::uint64_t>& bits_per_s) {
  if (!bits_per_s) return "-";
  static const char* const units[] = {"bit/s", "kbit/s", "Mbit/s", "Gbit/s"};
  double value = static_cast<double>(*bits_per_s);
  std::size_t unit = 0;
  for (; value >= 1000 && unit + 1 < std::size(units); ++unit) value /= 1000;
  char text[32];
  std::snprintf(text, sizeof text, "%g %s", value, units[unit]);
  return text;
}

void print_summary(const testbed_state& s, const topology& t, const std::string& topology_file, std::ostream& out) {
  const auto& tb = *t.testbed;
  out << "testbed '" << t.cluster << "' is up: " << s.nodes.size() << " node(s) on " << tb.subnet << ", client "
      << tb.client << " in netns " << s.client_netns << "\n";
  std::size_t name_width = 4, netns_width = 5, address_width = 7;
  for (const auto& n : s.nodes) {
    name_width = std::max(name_width, n.name.size());
    netns_width = std::max(netns_width, n.netns.size());
    address_width = std::max(address_width, n.address.size());
  }
  out << std::left << "  " << std::setw(name_width) << "node" << "  " << std::setw(netns_width) << "netns" << "  "
      << std::setw(address_width) << "address" << "  " << std::setw(9) << "cpu" << "  " << std::setw(10) << "memory"
      << "  " << std::setw(11) << "egress" << "  " << std::setw(11) << "ingress" << "  pid\n";
  for (const auto& n : s.nodes) {
    const auto e = t.node(n.name).emulate.value_or(emulation{});
    char cpu[32] = "-";
    if (e.cpu_share) std::snprintf(cpu, sizeof cpu, "%g core", *e.cpu_share);
    out << "  " << std::setw(name_width) << n.name << "  " << std::setw(netns_width) << n.netns << "  "
        << std::setw(address_width) << n.address << "  " << std::setw(9) << cpu << "  " << std::setw(10)
        << (e.memory_bytes ? human_bytes(*e.memory_bytes) : "-") << "  " << std::setw(11) << rate_text(e.egress_bits_per_s)
        << "  " << std::setw(11) << rate_text(e.ingress_bits_per_s) << "  " << n.pid << "\n";
  }
  out << std::right << "Node logs and the state file: " << testbed_state_path(t.cluster).parent_path().string() << "\n"
      << "Only the client namespace reaches the nodes; run commands there:\n"
      << "  orrery testbed exec " << topology_file << " -- orrery generate --topology " << topology_file
      << " --prompt 'Hello'\n"
      << "Kill, freeze or cut off a node: orrery chaos --topology " << topology_file
      << " --action kill|freeze|partition --node NAME\n"
      << "Tear it down: orrery testbed down " << topology_file << std::endl;
}

}  // namespace

std::string testbed_unavailable() {
  if (auto missing = needs_root(); !missing.empty()) return missing;
  for (const char* tool : {"ip", "tc"})
    if (find_in_path(tool).empty())
      return std::string("orrery testbed needs `") + tool + "` (iproute2), which is not in PATH (" +
             (std::getenv("PATH") != nullptr ? std::getenv("PATH") : "") + ")";
  for (const auto& [controller, file] : {std::pair{"cpu", "cpu.cfs_quota_us"}, std::pair{"memory", "memory.limit_in_bytes"}})
    if (!fs::exists(cgroup_root(controller) / file))
      return std::string("orrery testbed needs the cgroup v1 ") + controller + " controller mounted at " +
             cgroup_root(controller).string() + " (there is no " + file + " there)";
  return missing_kernel_feature();
}

std::filesystem::path testbed_state_path(const std::string& cluster) {
  // registry_path's file name, so both name a cluster the same way.
  return runtime_directory() / ("testbed-" + registry_path(cluster).stem().string()) / "state.json";
}

std::optional<testbed_state> read_testbed_state(const std::string& cluster) {
  const auto path = testbed_state_path(cluster);
  std::ifstream in(path);
  if (!in) return std::nullopt;
  try {
    return state_from_json(nlohmann::json::parse(in));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path.string() + " is not a testbed state file: " + e.what());
  }
}

void testbed_up(const testbed_up_options& o, std::ostream& out) {
  if (auto missing = testbed_unavailable(); !missing.empty()) throw std::runtime_error(missing);
  // Absolute, so the nodes find it (and its model) wherever they run.
  const auto t = load_topology(fs::absolute(o.topology).lexically_normal());
  check_testbed(t, o.topology);
  clear_earlier(t, o.topology, out);
  block_stop_signals();  // Ctrl-C midway rolls back rather than leaving half a testbed
  auto s = plan(t);
  make_runtime_directory();
  if (::mkdir(testbed_state_path(t.cluster).parent_path().c_str(), 0700) != 0 && errno != EEXIST)
    throw os_error("cannot create " + testbed_state_path(t.cluster).parent_path().string());
  try {
    save(s);
    build(s, t);
    wait_until_serving(s, std::chrono::milliseconds(std::llround(o.ready_timeout_s * 1000)));
  } catch (const std::exception& failure) {
    std::string message = "testbed '" + t.cluster + "' did not come up: " + failure.what();
    try {
      remove_testbed(s, out);
      message += "; everything it had created is removed";
    } catch (const std::exception& cleanup) {
      message += "; removing what it had created failed too: " + std::string(cleanup.what());
    }
    throw std::runtime_error(message);
  }
  print_summary(s, t, o.topology, out);
}

void testbed_down(const std::filesystem::path& topology_file, std::ostream& out) {
  require_root();
  const auto t = load_topology(topology_file);
  const auto s = read_testbed_state(t.cluster);
  if (!s) {
    out << "testbed '" << t.cluster << "': nothing to remove (no state at " << testbed_state_path(t.cluster).string()
        << ")" << std::endl;
    return;
  }
  remove_testbed(*s, out);
  out << "testbed '" << t.cluster << "' is down" << std::endl;
}

int testbed_exec(const std::filesystem::path& topology_file, const std::vector<std::string>& command) {
  require_root();
  const auto s = require_up(load_topology(topology_file), topology_file);
  const pid_t pid = spawn(command, {{}, s.client_netns, false, -1});
  // As a shell does: Ctrl-C is for the command, this process waits for its end.
  struct sigaction ignore {}, old_interrupt {}, old_quit {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGINT, &ignore, &old_interrupt);
  ::sigaction(SIGQUIT, &ignore, &old_quit);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ::sigaction(SIGINT, &old_interrupt, nullptr);
  ::sigaction(SIGQUIT, &old_quit, nullptr);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

void testbed_status(const std::filesystem::path& topology_file, std::ostream& out) {
  require_root();
  const auto t = load_topology(topology_file);
  const auto s = read_testbed_state(t.cluster);
  if (!s) {
    out << "testbed '" << t.cluster << "' is not up (no state at " << testbed_state_path(t.cluster).string() << ")"
        << std::endl;
    return;
  }
  out << "testbed '" << s->cluster << "' of " << s->topology.string() << " (state " << testbed_state_path(t.cluster).string()
      << ")\n";
  for (const auto& netns : s->namespaces)
    out << "  netns " << netns << (fs::exists(netns_path(netns)) ? "" : " (gone)") << "\n";
  for (const auto& cgroup : s->cgroups) out << "  cgroup " << cgroup.string() << (fs::exists(cgroup) ? "" : " (gone)") << "\n";
  std::vector<char> serving(s->nodes.size(), 0);
  if (fs::exists(netns_path(s->client_netns)))
    in_network_namespace(s->client_netns, [&] {
      for (std::size_t i = 0; i < s->nodes.size(); ++i) {
        const auto [host, port] = host_and_port(s->nodes[i].address);
        serving[i] = accepts_on_link(host, port, 500ms);
      }
    });
  for (std::size_t i = 0; i < s->nodes.size(); ++i) {
    const auto& n = s->nodes[i];
    out << "  node '" << n.name << "' " << n.address << " in " << n.netns << ", pid " << n.pid << ": "
        << (process_of(*s, n) ? "running" : "not running") << ", "
        << (serving[i] ? "accepting connections from " : "not reachable from ") << s->client_netns << "\n";
  }
  out << std::flush;
}

// -- links and namespaces ------------------------------------------------------------

testbed_link::testbed_link(const topology& t, const std::string& node) {
  const auto s = require_up(t, t.file);
  auto it = std::find_if(s.nodes.begin(), s.nodes.end(), [&](const testbed_node& n) { return n.name == node; });
  if (it == s.nodes.end())
    throw std::runtime_error("the testbed of cluster '" + t.cluster + "' has no node '" + node + "' (" +
                             testbed_state_path(t.cluster).string() + ")");
  netns_ = s.bridge_netns;
  port_ = it->bridge_port;
}

void testbed_link::cut() const {
  run_tool({"ip", "-n", netns_, "link", "set", port_, "down"});
}

void testbed_link::restore() const {
  run_tool({"ip", "-n", netns_, "link", "set", port_, "up"});
}

std::string testbed_link::describe() const {
  return "veth " + port_ + " in netns " + netns_;
}

void in_network_namespace(const std::string& netns, const std::function<void()>& work) {
  std::exception_ptr failure;
  std::thread worker([&] {
    try {
      const auto path = netns_path(netns);
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw os_error("cannot open network namespace " + path.string());
      const int joined = ::setns(fd, CLONE_NEWNET), error = errno;
      ::close(fd);
      if (joined != 0) throw std::system_error(error, std::generic_category(), "cannot enter network namespace " + path.string());
      work();
    } catch (...) {
      failure = std::current_exception();
    }
  });
  worker.join();
  if (failure) std::rethrow_exception(failure);
}

bool accepts_on_link(const std::string& ipv4, std::uint16_t port, std::chrono::milliseconds timeout) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  if (::inet_pton(AF_INET, ipv4.c_str(), &address.sin_addr) != 1) return false;
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const int on = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_DONTROUTE, &on, sizeof on);
  bool connected = ::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0;
  if (!connected && errno == EINPROGRESS) {
    pollfd writable{fd, POLLOUT, 0};
    int error = 0;
    socklen_t length = sizeof error;
    connected = ::poll(&writable, 1, static_cast<int>(timeout.count())) == 1 &&
                ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
  }
  ::close(fd);
  return connected;
}

}  // namespace orrery::deploy
