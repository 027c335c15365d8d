// The testbed's pieces: namespaces, veths, tbf shaping and cgroup limits, how
// each is made and recorded, and the preflight that checks this machine can
// make them.

#include "deploy/testbed/emulation.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <stdexcept>
#include <thread>
#include <utility>

#include "compute/message_text.hpp"
#include "deploy/testbed/process.hpp"
#include "deploy/testbed/testbed_state.hpp"

namespace orrery::deploy {

namespace detail {

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using std::chrono::steady_clock;

// Interfaces live in the testbed's own namespaces, so their names need not
// carry the cluster's: `eth0` in a node's or the client's namespace, and in the
// bridge namespace `br0` with one port per node. Names hold at most 15 bytes
// (IFNAMSIZ): a port is `v-NODE`, or `v.INDEX` for a long node name (`.` is
// never part of a node name, so the two cannot clash).
const char* const host_device = "eth0";
const char* const bridge_device = "br0";
const char* const client_port = "v.client";

fs::path cgroup_root(const std::string& controller) {
  return fs::path("/sys/fs/cgroup") / controller;
}


std::string needs_root() {
  return ::geteuid() == 0 ? "" : "orrery testbed needs root (running as uid " + std::to_string(::getuid()) + ")";
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

// A 2 ms CFS period instead of the default 100 ms: a node at half a core runs
// 1 ms in every 2 ms, so a stall when it runs out of quota is at most 1 ms, not
// 50 ms: a group's members meet at dozens of ring steps a token, and each
// would wait out whichever member stalled. The kernel refuses quotas under
// 1 ms, so shares under half a core get a longer period (1 ms in every
// 1/share ms).
constexpr std::int64_t cfs_period_us = 2'000;
constexpr std::int64_t min_cfs_quota_us = 1'000;

std::pair<std::int64_t, std::int64_t> cfs_period_and_quota(double cpu_share) {
  const auto period = std::max(cfs_period_us, static_cast<std::int64_t>(std::ceil(min_cfs_quota_us / cpu_share)));
  return {period, std::llround(cpu_share * static_cast<double>(period))};
}

void write_text(const fs::path& file, const std::string& text) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(compute::errno_text("cannot open " + file.string()));
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const int error = errno;
  ::close(fd);
  if (!written) throw std::runtime_error(compute::errno_text("cannot write " + text + " to " + file.string(), error));
}

void write_setting(const fs::path& file, std::int64_t value) { write_text(file, std::to_string(value)); }

void add_namespace(testbed_state& s, const std::string& netns) {
  run_tool({"ip", "netns", "add", netns});
  s.namespaces.push_back(netns);
  save_state(s);
  run_tool({"ip", "-n", netns, "link", "set", "lo", "up"});
}

fs::path add_cgroup(testbed_state& s, const std::string& controller, const std::string& name) {
  const auto dir = cgroup_root(controller) / name;
  if (::mkdir(dir.c_str(), 0755) != 0) throw std::runtime_error(compute::errno_text("cannot create cgroup " + dir.string()));
  s.cgroups.push_back(dir);
  save_state(s);
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

}  // namespace

// Namespaces and cgroups are `orrery-CLUSTER-WHO` (WHO: a node, `client` or
// `bridge`), with anything but letters, digits, `_` and `-` replaced by `_`.
std::string resource_name(const std::string& cluster, const std::string& who) {
  std::string name = "orrery-" + cluster + "-" + who;
  for (auto& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-') c = '_';
  return name;
}

const std::vector<std::string> reserved_node_names = {"client", "bridge"};

std::string bridge_port_name(const std::string& node, std::size_t index) {
  const auto port = "v-" + node;
  return port.size() <= 15 ? port : "v." + std::to_string(index);
}



void require_root() {
  if (auto missing = needs_root(); !missing.empty()) throw std::runtime_error(missing);
}

/// The bridge namespace with its bridge, and the client namespace linked to it.
void build_bridge_and_client(testbed_state& s, const testbed_spec& tb) {
  add_namespace(s, s.bridge_netns);
  run_tool({"ip", "-n", s.bridge_netns, "link", "add", bridge_device, "type", "bridge"});
  run_tool({"ip", "-n", s.bridge_netns, "link", "set", bridge_device, "up"});
  add_namespace(s, s.client_netns);
  link_to_bridge(s, tb, s.client_netns, client_port, tb.client);
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

std::vector<int> parse_cpu_list(const std::string& text, const std::string& where) {
  const auto bad = [&] { return std::runtime_error(where + ": '" + text + "' is not a CPU list such as 0-3,8"); };
  // One CPU number: digits only, and few of them.
  const auto cpu = [&](const std::string& digits) {
    if (digits.empty() || digits.size() > 6 ||
        !std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isdigit(c) != 0; }))
      throw bad();
    return std::stoi(digits);
  };
  std::string list = text;
  while (!list.empty() && std::isspace(static_cast<unsigned char>(list.back()))) list.pop_back();
  if (list.empty()) throw bad();
  std::vector<int> cpus;
  std::size_t start = 0;
  while (true) {
    const auto comma = list.find(',', start);
    const auto range = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const auto dash = range.find('-');
    const int first = cpu(range.substr(0, dash));
    const int last = dash == std::string::npos ? first : cpu(range.substr(dash + 1));
    if (last < first) throw bad();
    for (int c = first; c <= last; ++c) cpus.push_back(c);
    if (comma == std::string::npos) return cpus;
    start = comma + 1;
  }
}

std::vector<int> host_cpus() {
  const auto file = cgroup_root("cpuset") / "cpuset.cpus";
  std::ifstream in(file);
  std::string text;
  if (!std::getline(in, text)) throw std::runtime_error(compute::errno_text("cannot read " + file.string()));
  return parse_cpu_list(text, file.string());
}

// Why nodes are pinned: a CPU quota alone does not make a node a slow
// device. CFS hands a cgroup's quota to one CPU's run queue at a time (up to
// 5 ms, sched_cfs_bandwidth_slice_us), so a half-core node whose io thread
// wakes on the other CPU than its compute thread finds no quota there and
// waits for the next period, and four such nodes on two CPUs measured half
// of a token's time waiting on the ring. On one CPU, a node's threads share
// one run queue and its quota, as they would share a small device's core.
std::vector<std::vector<int>> pin_to_cpus(const std::vector<std::optional<double>>& shares, const std::vector<int>& cpus) {
  std::vector<std::vector<int>> pins(shares.size());
  if (cpus.empty()) return pins;
  std::vector<double> load(cpus.size(), 0.0);
  for (std::size_t i = 0; i < shares.size(); ++i) {
    if (!shares[i]) continue;
    const auto count = std::min(cpus.size(), static_cast<std::size_t>(std::max(1.0, std::ceil(*shares[i] - 1e-9))));
    std::vector<std::size_t> order(cpus.size());
    for (std::size_t c = 0; c < order.size(); ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return load[a] < load[b] - 1e-9; });
    order.resize(count);
    std::sort(order.begin(), order.end());
    for (std::size_t c : order) {
      load[c] += *shares[i] / static_cast<double>(count);
      pins[i].push_back(cpus[c]);
    }
  }
  return pins;
}

/// The node's cpu, cpuset and memory cgroups, for the limits it has.
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
  if (!n.cpus.empty()) {
    const auto dir = add_cgroup(s, "cpuset", n.netns);
    std::string list;
    for (int cpu : n.cpus) list += (list.empty() ? "" : ",") + std::to_string(cpu);
    write_text(dir / "cpuset.cpus", list);
    // cgroup v1 takes no task into a cpuset without memory nodes: the root's.
    std::ifstream mems(cgroup_root("cpuset") / "cpuset.mems");
    std::string nodes;
    std::getline(mems, nodes);
    write_text(dir / "cpuset.mems", nodes);
    cgroups.push_back(dir);
  }
  if (auto bytes = spec.emulate->memory_bytes) {
    const auto dir = add_cgroup(s, "memory", n.netns);
    write_setting(dir / "memory.limit_in_bytes", static_cast<std::int64_t>(*bytes));
    cgroups.push_back(dir);
  }
  return cgroups;
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

}  // namespace detail

using namespace detail;

std::string testbed_unavailable() {
  if (auto missing = needs_root(); !missing.empty()) return missing;
  for (const char* tool : {"ip", "tc"})
    if (find_in_path(tool).empty())
      return std::string("orrery testbed needs `") + tool + "` (iproute2), which is not in PATH (" +
             (std::getenv("PATH") != nullptr ? std::getenv("PATH") : "") + ")";
  for (const auto& [controller, file] : {std::pair{"cpu", "cpu.cfs_quota_us"}, std::pair{"cpuset", "cpuset.cpus"},
                                         std::pair{"memory", "memory.limit_in_bytes"}})
    if (!fs::exists(cgroup_root(controller) / file))
      return std::string("orrery testbed needs the cgroup v1 ") + controller + " controller mounted at " +
             cgroup_root(controller).string() + " (there is no " + file + " there)";
  return missing_kernel_feature();
}

void in_network_namespace(const std::string& netns, const std::function<void()>& work) {
  std::exception_ptr failure;
  std::thread worker([&] {
    try {
      const auto path = netns_path(netns);
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) throw std::runtime_error(compute::errno_text("cannot open network namespace " + path.string()));
      const int joined = ::setns(fd, CLONE_NEWNET), error = errno;
      ::close(fd);
      if (joined != 0) throw std::runtime_error(compute::errno_text("cannot enter network namespace " + path.string(), error));
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
