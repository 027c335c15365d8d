// `orrery testbed up | down | exec | status`: builds the testbed piece by
// piece (deploy/testbed/emulation.hpp) and starts its nodes, waits until the
// client namespace reaches them, and tears down what the state file records.

#include "deploy/testbed/testbed.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <deque>
#include <exception>
#include <fstream>
#include <iomanip>
#include <iterator>
#include <ostream>
#include <stdexcept>
#include <thread>

#include "compute/message_text.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/cluster/run_registry.hpp"
#include "deploy/testbed/emulation.hpp"
#include "deploy/testbed/process.hpp"
#include "deploy/testbed/testbed_state.hpp"

namespace orrery::deploy {

using namespace detail;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using std::chrono::steady_clock;

// -- building ------------------------------------------------------------------------

/// `orrery node …` in the node's cgroups and namespace, in a session of its
/// own (it outlives `testbed up`), writing to its log.
void start_node(testbed_state& s, testbed_node& n, const std::vector<fs::path>& cgroups, const fs::path& executable) {
  const int log = ::open(n.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log < 0) throw std::runtime_error(compute::errno_text("cannot create " + n.log.string()));
  auto argv = node_arguments(s.topology, n.name);
  argv.insert(argv.begin(), executable.string());
  try {
    n.pid = spawn(argv, {cgroups, n.netns, true, log});
  } catch (...) {
    ::close(log);
    throw;
  }
  ::close(log);
  save_state(s);
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
  build_bridge_and_client(s, tb);
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
  save_state(s);
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
      problems.push_back(compute::errno_text("cannot remove cgroup " + it->string()));
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
    throw std::runtime_error("could not remove all of testbed '" + s.cluster + "': " + compute::join(problems, "; ") + "; " +
                             state.string() + " still lists what is left");
  std::error_code ignored;
  if (s.registry && fs::remove(registry_path(s.cluster), ignored)) out << "removed " << registry_path(s.cluster).string() << "\n";
  for (const auto& n : s.nodes) fs::remove(n.log, ignored);
  fs::remove(state, ignored);
  fs::remove(state.parent_path(), ignored);  // only if empty
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
      << std::setw(address_width) << "address" << "  " << std::setw(14) << "cpu" << "  " << std::setw(10) << "memory"
      << "  " << std::setw(11) << "egress" << "  " << std::setw(11) << "ingress" << "  pid\n";
  for (const auto& n : s.nodes) {
    const auto e = t.node(n.name).emulate.value_or(emulation{});
    std::string cpu = "-";
    if (e.cpu_share) {
      char share[32];
      std::snprintf(share, sizeof share, "%g core", *e.cpu_share);
      cpu = share;
      for (std::size_t c = 0; c < n.cpus.size(); ++c) cpu += (c == 0 ? ", cpu " : ",") + std::to_string(n.cpus[c]);
    }
    out << "  " << std::setw(name_width) << n.name << "  " << std::setw(netns_width) << n.netns << "  "
        << std::setw(address_width) << n.address << "  " << std::setw(14) << cpu << "  " << std::setw(10)
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

void testbed_up(const testbed_up_options& o, std::ostream& out) {
  if (auto missing = testbed_unavailable(); !missing.empty()) throw std::runtime_error(missing);
  // Absolute, so the nodes find it (and its model) wherever they run.
  const auto t = load_topology(fs::absolute(o.topology).lexically_normal());
  check_testbed(t, o.topology);
  clear_earlier(t, o.topology, out);
  block_stop_signals();  // Ctrl-C midway rolls back rather than leaving half a testbed
  auto s = planned_state(t);
  make_runtime_directory();
  if (::mkdir(testbed_state_path(t.cluster).parent_path().c_str(), 0700) != 0 && errno != EEXIST)
    throw std::runtime_error(compute::errno_text("cannot create " + testbed_state_path(t.cluster).parent_path().string()));
  try {
    save_state(s);
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

// -- links ---------------------------------------------------------------------------

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

}  // namespace orrery::deploy
