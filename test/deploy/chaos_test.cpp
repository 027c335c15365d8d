// `orrery chaos` against `orrery up`: real processes, real signals, bounded
// waits. Every process a test starts is stopped when the test ends, passed or
// failed.

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "deploy/cluster/run_registry.hpp"
#include "test/loopback_cluster.hpp"
#include "test/run_process.hpp"

using namespace std::chrono_literals;
using orrery::test::accepts_connections;
using orrery::test::model_fixture;
using orrery::test::process_result;
using orrery::test::run_orrery;
using orrery::test::eventually;
using orrery::test::slurp;
using orrery::test::temp_dir;
using orrery::test::write_topology;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}



/// The state letter of /proc/PID/stat (`R`, `S`, `T` for stopped, …); 0 if
/// the process is gone.
char process_state(pid_t pid) {
  auto stat = slurp("/proc/" + std::to_string(pid) + "/stat");
  auto end_of_name = stat.rfind(')');
  return end_of_name == std::string::npos || end_of_name + 2 >= stat.size() ? 0 : stat[end_of_name + 2];
}

bool gone(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

/// `orrery ARGS…` started in the background with its output in files; sent
/// SIGTERM (SIGKILL after 10 s) and reaped when destroyed, and sent SIGTERM
/// by the kernel if this process dies first.
class background_orrery {
 public:
  background_orrery(std::vector<std::string> args, const std::filesystem::path& cwd) {
    args.insert(args.begin(), orrery::test::orrery_binary());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const auto out = (capture_ / "out").string(), err = (capture_ / "err").string();
    std::fflush(nullptr);  // else the child's freopen writes this process's buffered output again
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // even a crashed or timed-out test leaves nothing running
      if (::chdir(cwd.c_str()) != 0) ::_exit(126);
      if (!std::freopen(out.c_str(), "w", stdout) || !std::freopen(err.c_str(), "w", stderr)) ::_exit(126);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  ~background_orrery() {
    if (exit_code_) return;
    ::kill(pid_, SIGTERM);
    if (!wait(10s)) {
      ::kill(pid_, SIGKILL);
      wait(10s);
    }
  }
  background_orrery(const background_orrery&) = delete;
  background_orrery& operator=(const background_orrery&) = delete;

  pid_t pid() const { return pid_; }
  std::string out() const { return slurp(capture_ / "out"); }
  std::string err() const { return slurp(capture_ / "err"); }

  /// The exit code (128 + signal if killed) once it has exited within
  /// `timeout`; nothing if it is still running.
  std::optional<int> wait(std::chrono::milliseconds timeout) {
    eventually(
        [&] {
          int status = 0;
          if (!exit_code_ && ::waitpid(pid_, &status, WNOHANG) == pid_)
            exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          return exit_code_.has_value();
        },
        timeout);
    return exit_code_;
  }

 private:
  temp_dir capture_;
  pid_t pid_ = -1;
  std::optional<int> exit_code_;
};

/// `orrery up` of three tiny-model nodes n0, n1, n2 in the background, up
/// once its run registry exists.
struct up_cluster {
  model_fixture model;
  /// Unique per process, so a parallel run of the suite has its own registry.
  std::string name;
  std::filesystem::path topology;
  std::unique_ptr<background_orrery> up;

  explicit up_cluster(const std::string& test, std::vector<std::string> up_options = {})
      : name("chaos-" + test + "-" + std::to_string(::getpid())),
        topology(write_topology(model.dir, name, {{0, 2}, {2, 3}, {3, 4}})) {
    up_options.insert(up_options.begin(), {"up", topology.string()});
    up = std::make_unique<background_orrery>(up_options, model.dir.path());
    INFO("orrery up printed: " << up->out() << up->err());
    REQUIRE(eventually([&] { return std::filesystem::exists(orrery::deploy::registry_path(name)); }, 30s));
  }

  orrery::deploy::registered_node registered(const std::string& node) const {
    for (const auto& n : orrery::deploy::read_registry(name, topology).nodes)
      if (n.name == node) return n;
    FAIL("the registry lists no node " << node);
    return {};
  }

  std::uint16_t port(const std::string& node) const {
    auto address = registered(node).address;
    return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
  }

  std::vector<std::string> chaos_args(std::vector<std::string> options) const {
    options.insert(options.begin(), {"chaos", "--topology", topology.string()});
    return options;
  }

  process_result chaos(std::vector<std::string> options) const {
    return run_orrery(chaos_args(std::move(options)), model.dir.path());
  }
};

}  // namespace

TEST_CASE("chaos kills a named node; up reports it and keeps the other nodes serving") {
  up_cluster c("kill");
  const auto n1 = c.registered("n1");
  auto r = c.chaos({"--node", "n1"});
  REQUIRE(r.exit_code == 0);
  CHECK(std::regex_search(r.out, std::regex("\n\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{3}Z kill node 'n1' pid " +
                                            std::to_string(n1.pid) + "\n")));
  CHECK(eventually([&] { return gone(n1.pid); }, 5s));
  CHECK(eventually([&] { return contains(c.up->out(), "Z node 'n1' exited (killed by signal 9)\n"); }, 5s));
  CHECK(accepts_connections(c.port("n0")));
  CHECK(accepts_connections(c.port("n2")));
  CHECK_FALSE(c.up->wait(0ms));

  // The dead node is skipped; the random choice takes the live ones only.
  auto dead = c.chaos({"--node", "n1"});
  CHECK(dead.exit_code == 0);
  CHECK(contains(dead.out, "skip node 'n1' (registered pid " + std::to_string(n1.pid) + "): not running"));
  CHECK_FALSE(contains(dead.out, "Z kill "));
  auto random = c.chaos({"--times", "2", "--every", "0.5", "--seed", "7"});
  CHECK(random.exit_code == 0);
  CHECK(contains(random.out, "kill node 'n0'"));
  CHECK(contains(random.out, "kill node 'n2'"));
  CHECK(contains(random.out, "(seed 7)"));

  // With no node left, up exits and reports it.
  CHECK(c.up->wait(5s) == 1);
  CHECK(contains(c.up->err(), "every node of '" + c.name + "' has exited"));
  CHECK_FALSE(std::filesystem::exists(orrery::deploy::registry_path(c.name)));
}

namespace {

// `orrery generate --topology` of the cluster in the background, `disturb`
// called once tokens flow; it must finish with the text one device writes.
void check_generation_survives(up_cluster& c, const std::function<void(background_orrery&)>& disturb) {
  const std::vector<std::string> sampling = {"--prompt", "Chaos is a ladder", "--max-tokens", "150", "--temperature", "0"};
  auto args = sampling;
  args.insert(args.begin(), {"generate", "--topology", c.topology.string()});
  background_orrery generate(args, c.model.dir.path());
  REQUIRE(eventually([&] { return generate.out().size() > std::string("Chaos is a ladder").size() + 10; }, 30s));
  disturb(generate);
  INFO("generate printed: " << generate.out() << generate.err());
  REQUIRE(generate.wait(60s) == 0);
  args = sampling;
  args.insert(args.begin(), {"generate", "--model", "m"});
  auto local = run_orrery(args, c.model.dir.path());
  REQUIRE(local.exit_code == 0);
  auto text = [](const std::string& out) { return out.substr(0, out.find("\n-- ")); };
  CHECK(text(generate.out()) == text(local.out));
  CHECK(contains(generate.err(), "replaying 1 request(s)"));
}

}  // namespace

TEST_CASE("orrery generate over orrery up keeps streaming while a node is killed: the same text as one device") {
  up_cluster c("serve");
  check_generation_survives(c, [&](background_orrery& generate) {
    // The tiny model streams ~200 tokens/s, faster than `orrery chaos`
    // starts: hold the client still for the moment of the kill, so the node
    // surely dies mid-generation.
    ::kill(generate.pid(), SIGSTOP);
    ::kill(c.registered("n1").pid, SIGKILL);
    ::kill(generate.pid(), SIGCONT);
  });
}

TEST_CASE("a client that stood still past the connection timeout finds its nodes again and finishes") {
  up_cluster c("stall");
  check_generation_survives(c, [&](background_orrery& generate) {
    // Every node drops the silent client (4 heartbeats of 200 ms); on waking
    // it sees them all gone, holds the request, redials, and replays.
    ::kill(generate.pid(), SIGSTOP);
    std::this_thread::sleep_for(1500ms);
    ::kill(generate.pid(), SIGCONT);
  });
}

TEST_CASE("chaos freezes a node for --freeze-for and continues it, also when interrupted") {
  up_cluster c("freeze");
  const auto n0 = c.registered("n0");
  {
    background_orrery chaos(c.chaos_args({"--node", "n0", "--action", "freeze", "--freeze-for", "1"}), c.model.dir.path());
    CHECK(eventually([&] { return process_state(n0.pid) == 'T'; }, 5s));
    CHECK(chaos.wait(5s) == 0);
    CHECK(contains(chaos.out(), "freeze node 'n0' pid " + std::to_string(n0.pid) + " for 1 s"));
    CHECK(contains(chaos.out(), "continue node 'n0' pid " + std::to_string(n0.pid)));
  }
  CHECK(eventually([&] { return process_state(n0.pid) == 'S' || process_state(n0.pid) == 'R'; }, 1s));

  // Ctrl-C in the middle of a long freeze continues the node first.
  background_orrery held(c.chaos_args({"--node", "n0", "--action", "freeze", "--freeze-for", "60"}), c.model.dir.path());
  REQUIRE(eventually([&] { return process_state(n0.pid) == 'T'; }, 5s));
  ::kill(held.pid(), SIGINT);
  CHECK(held.wait(5s) == 0);
  CHECK(contains(held.out(), "continue node 'n0'"));
  CHECK(contains(held.out(), "chaos stopped by signal 2"));
  CHECK(eventually([&] { return process_state(n0.pid) == 'S' || process_state(n0.pid) == 'R'; }, 1s));
  CHECK_FALSE(contains(c.up->out(), "exited"));
}

TEST_CASE("up --restart-after starts a killed node again with a new pid, which the registry lists") {
  up_cluster c("restart", {"--restart-after", "1"});
  const auto old = c.registered("n1").pid;
  REQUIRE(c.chaos({"--node", "n1"}).exit_code == 0);
  pid_t now = old;
  CHECK(eventually(
      [&] {
        now = c.registered("n1").pid;
        return now != old && accepts_connections(c.port("n1"));
      },
      15s));
  CHECK(gone(old));
  CHECK(contains(c.up->out(), "node 'n1' exited (killed by signal 9); restarting it in 1 s"));
  CHECK(contains(c.up->out(), "node 'n1' restarted (pid " + std::to_string(now) + ")"));
  // chaos re-reads the registry, so it finds the new process.
  auto again = c.chaos({"--node", "n1"});
  CHECK(contains(again.out, "kill node 'n1' pid " + std::to_string(now)));
}

TEST_CASE("chaos names what is wrong: no registry, unknown node, partition, --times without --every") {
  model_fixture f;
  const auto name = "chaos-idle-" + std::to_string(::getpid());
  const auto file = write_topology(f.dir, name, {{0, 2}, {2, 4}}).string();
  auto chaos = [&](std::vector<std::string> options) {
    options.insert(options.begin(), {"chaos", "--topology", file});
    return run_orrery(options, f.dir.path());
  };

  auto none = chaos({});
  CHECK(none.exit_code == 1);
  CHECK(contains(none.err, "orrery: error: no run registry of cluster '" + name + "' at " +
                               orrery::deploy::registry_path(name).string()));
  CHECK(contains(none.err, "start the cluster with `orrery up " + file + "`"));

  auto unknown = chaos({"--node", "n7"});
  CHECK(unknown.exit_code == 1);
  CHECK(contains(unknown.err, "no node named 'n7'"));
  CHECK(contains(unknown.err, "n0, n1"));

  auto partition = chaos({"--action", "partition", "--node", "n0"});
  CHECK(partition.exit_code == 1);
  CHECK(contains(partition.err, "needs nodes started by `orrery testbed up`"));

  auto times = chaos({"--times", "3"});
  CHECK(times.exit_code == 1);
  CHECK(contains(times.err, "--times 3 needs --every SECONDS"));

  auto help = chaos({"--help"});
  CHECK(help.exit_code == 0);
  for (const char* part : {"--action", "--node", "--seed", "--times", "--every", "--freeze-for", "--delay", "orrery-UID",
                           "cmdline", "SIGCONT", "testbed"})
    CHECK(contains(help.out, part));
}

TEST_CASE("orrery chaos kills a node of orrery up mid-training: the run trains around it and ends bitwise where one device ends") {
  up_cluster c("train");
  // Without weight backups: the recovery resumes from the checkpoint on disk.
  const std::vector<std::string> common = {"--data", "/usr/share/common-licenses/GPL-3", "--steps", "60", "--batch", "4",
                                           "--micro-batch", "2", "--length", "32", "--checkpoint-every", "10",
                                           "--backup-every", "0", "--threads", "1", "--quiet"};
  auto args = [&](std::vector<std::string> head) {
    head.insert(head.end(), common.begin(), common.end());
    return head;
  };
  background_orrery train(args({"train", "--topology", c.topology.string(), "--out", "over-nodes"}), c.model.dir.path());
  const auto state = c.model.dir / "over-nodes" / "training.json";
  REQUIRE(eventually([&] { return std::filesystem::exists(state); }, 60s));
  auto kill = c.chaos({"--node", "n1"});
  REQUIRE(kill.exit_code == 0);
  CHECK(contains(kill.out, "kill node 'n1'"));
  INFO("train printed: " << train.out() << train.err());
  REQUIRE(train.wait(120s) == 0);
  CHECK(contains(train.err(), "recovered: node 'n1' lost at step"));
  CHECK(contains(train.err(), "from the checkpoint at step"));
  CHECK(contains(train.out(), "recovery: node 'n1'"));

  auto local = run_orrery(args({"train", "--model", "m", "--out", "local"}), c.model.dir.path());
  REQUIRE(local.exit_code == 0);
  // A pipeline's arithmetic is one device's: every step's loss, bitwise.
  const auto log = slurp(c.model.dir / "over-nodes" / "train_log.jsonl");
  const auto local_log = slurp(c.model.dir / "local" / "train_log.jsonl");
  auto losses = [](const std::string& text) {
    std::vector<std::string> out;
    const std::regex loss("\"loss\":([-0-9.e+]+)");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), loss); it != std::sregex_iterator(); ++it)
      out.push_back((*it)[1]);
    return out;
  };
  CHECK(losses(log).size() == 60);
  CHECK(losses(log) == losses(local_log));
}
