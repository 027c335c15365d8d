// Fault tolerance with real `orrery node` processes and real signals: a node
// killed (SIGKILL) or frozen (SIGSTOP) mid-generation costs a pause, never a
// request; a node restarted under the same name rejoins; when every node is
// gone the client gets a clear error instead of a hang.

#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "deploy/cluster.hpp"
#include "deploy/local_cluster.hpp"
#include "test/loopback_cluster.hpp"
#include "test/run_process.hpp"
#include "test/single_device.hpp"

using namespace orrery;
using namespace std::chrono_literals;
using orrery::test::greedy_request;
using orrery::test::model_fixture;
using orrery::test::single_device;
using orrery::test::write_topology;

namespace {

const std::vector<std::pair<int, int>> four_nodes = {{0, 1}, {1, 2}, {2, 3}, {3, 4}};

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Runs `prompts` greedily while `act(tokens streamed so far)` does its damage,
// and checks every request against its single-device run: the same tokens,
// each streamed exactly once, final logits within the replay tolerance.
void generate_through(deploy::pipeline_client& client, const std::filesystem::path& model,
                      const std::vector<std::string>& prompts, int tokens, const std::function<void(int)>& act) {
  std::vector<generate_request> requests;
  for (const auto& p : prompts) requests.push_back(greedy_request(p, tokens));
  std::vector<std::vector<compute::token_id>> streamed(prompts.size());
  int total = 0;
  auto summaries = client.generate(requests, [&](std::size_t i, const token_event& e) {
    streamed[i].push_back(e.token);
    act(++total);
  });
  REQUIRE(summaries.size() == prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    auto reference = single_device(model, prompts[i], tokens);
    CHECK(summaries[i].tokens == reference.tokens);
    CHECK(streamed[i] == reference.tokens);
    CHECK(test::relative_error(summaries[i].final_logits, reference.final_logits) <= test::replay_tolerance);
  }
}

// Polls the client's recoveries until one satisfies `wanted` or 15 s pass.
std::optional<recovery_event> wait_for_recovery(deploy::pipeline_client& client,
                                                const std::function<bool(const recovery_event&)>& wanted) {
  for (auto deadline = std::chrono::steady_clock::now() + 15s; std::chrono::steady_clock::now() < deadline;) {
    for (const auto& e : client.recoveries())
      if (wanted(e)) return e;
    std::this_thread::sleep_for(100ms);
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("SIGKILL of 1 of 4 nodes under 8 concurrent requests: all complete with the single-device tokens") {
  model_fixture f;
  auto t = deploy::load_topology(write_topology(f.dir, "kill", four_nodes));
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  std::vector<std::string> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back("concurrent request " + std::to_string(i));
  std::int64_t killed_at = 0;
  generate_through(client, f.dir / "m", prompts, 24, [&](int streamed) {
    if (streamed != 30) return;
    killed_at = unix_ms();
    ::kill(cluster.pid("n2"), SIGKILL);
  });
  auto events = client.recoveries();
  REQUIRE(events.size() == 1);
  CHECK(events[0].node == "n2");
  CHECK(events[0].layers_moved == 1);  // layer 2 went to one neighbour; nothing else moved
  CHECK(events[0].requests_replayed >= 1);
  CHECK(events[0].verdict_unix_ms - killed_at <= 2000);
  CHECK(events[0].recover_ms >= 0);
}

TEST_CASE("a frozen node is declared dead within the deadline, and fenced and readmitted once resumed") {
  model_fixture f;
  auto file = write_topology(f.dir, "freeze", four_nodes);
  auto t = deploy::load_topology(file);
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  std::int64_t frozen_at = 0;
  generate_through(client, f.dir / "m", {"frozen in the middle"}, 30, [&](int streamed) {
    if (streamed != 5) return;
    frozen_at = unix_ms();
    ::kill(cluster.pid("n1"), SIGSTOP);
  });
  auto events = client.recoveries();
  REQUIRE(!events.empty());
  CHECK(events[0].node == "n1");
  CHECK(events[0].verdict_unix_ms - frozen_at <= t.heartbeat_deadline.count() + 1000);
  ::kill(cluster.pid("n1"), SIGCONT);
  // Resumed, it still runs its old incarnation: the supervisor fences it (it
  // drops its stage and draws a new incarnation) and only then admits it.
  auto rejoined = wait_for_recovery(client, [](const recovery_event& e) { return e.node == "n1" && e.reason == "rejoined"; });
  CHECK(rejoined.has_value());
  std::ifstream log(f.dir / "logs" / "n1.log");
  std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  CHECK(text.find("fenced by a supervisor") != std::string::npos);
  // The cluster keeps serving correctly after all of it.
  generate_through(client, f.dir / "m", {"after the thaw"}, 12, [](int) {});
}

TEST_CASE("a node stalled for less than the deadline is slow, not dead: nothing moves") {
  model_fixture f;
  auto t = deploy::load_topology(write_topology(f.dir, "slow", four_nodes));
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  generate_through(client, f.dir / "m", {"a hiccup"}, 20, [&](int streamed) {
    if (streamed != 5) return;
    ::kill(cluster.pid("n1"), SIGSTOP);
    std::this_thread::sleep_for(t.heartbeat_deadline / 2);
    ::kill(cluster.pid("n1"), SIGCONT);
  });
  CHECK(client.recoveries().empty());
  CHECK(client.stats().size() == 4);
}

TEST_CASE("two nodes killed one after the other, the second while layers migrate to it") {
  model_fixture f;
  auto t = deploy::load_topology(write_topology(f.dir, "twice", four_nodes));
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  generate_through(client, f.dir / "m", {"first one, then its neighbour"}, 40, [&](int streamed) {
    if (streamed != 5) return;
    ::kill(cluster.pid("n1"), SIGKILL);
    // n2 is about to load half of n1's layers: kill it during the move.
    std::this_thread::sleep_for(50ms);
    ::kill(cluster.pid("n2"), SIGKILL);
  });
  auto stats = client.stats();
  REQUIRE(stats.size() == 2);
  CHECK(stats[0].node == "n0");
  CHECK(stats[1].node == "n3");
}

TEST_CASE("a node restarted under the same name rejoins and, with rebalance: on_join, takes its layers back") {
  model_fixture f;
  auto file = write_topology(f.dir, "rejoin", four_nodes);
  std::ofstream(file, std::ios::app) << "rebalance: on_join\n";
  auto t = deploy::load_topology(file);
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  generate_through(client, f.dir / "m", {"before the restart"}, 20, [&](int streamed) {
    if (streamed == 5) ::kill(cluster.pid("n3"), SIGKILL);
  });
  CHECK(client.stats().size() == 3);
  for (auto deadline = std::chrono::steady_clock::now() + 5s; !cluster.exited_node() && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(20ms);
  cluster.restart("n3");
  auto rejoined = wait_for_recovery(client, [](const recovery_event& e) { return e.node == "n3" && e.reason == "rejoined"; });
  REQUIRE(rejoined.has_value());
  // The rebalance runs after the verdict: wait until it has loaded.
  for (auto deadline = std::chrono::steady_clock::now() + 10s;
       client.stats().size() != 4 && std::chrono::steady_clock::now() < deadline;)
    std::this_thread::sleep_for(100ms);
  auto stats = client.stats();
  REQUIRE(stats.size() == 4);
  CHECK(stats[3].node == "n3");
  CHECK(stats[3].first_layer == 3);
  generate_through(client, f.dir / "m", {"after the restart"}, 12, [](int) {});
}

TEST_CASE("every node killed: the client gets an error naming what is missing, without hanging") {
  model_fixture f;
  auto t = deploy::load_topology(write_topology(f.dir, "all", {{0, 2}, {2, 4}}));
  deploy::local_cluster cluster(t, f.dir / "logs", test::orrery_binary());
  cluster.wait_ready(20s);
  deploy::pipeline_client client(t);
  std::string error;
  auto start = std::chrono::steady_clock::now();
  try {
    client.generate({greedy_request("nobody left", 200)}, [&](std::size_t, const token_event&) {
      ::kill(cluster.pid("n0"), SIGKILL);
      ::kill(cluster.pid("n1"), SIGKILL);
    });
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  CHECK(error.find("cannot hold the model") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - start < 10s);
}

TEST_CASE("orrery bench recovery reports the verdict, what moved, and no lost request") {
  model_fixture f;
  auto file = write_topology(f.dir, "bench", four_nodes);
  for (const std::string action : {"kill", "freeze"}) {
    CAPTURE(action);
    auto r = test::run_orrery({"bench", "recovery", "--topology", file.string(), "--action", action, "--new-tokens", "16",
                               "--concurrent", "2"},
                              f.dir.path());
    REQUIRE(r.exit_code == 0);
    auto json = nlohmann::json::parse(r.out);
    CHECK(json["node"] == "n2");
    CHECK(json["requests_lost"] == 0);
    CHECK(json["requests_with_other_tokens"] == 0);
    CHECK(json["requests_with_lost_or_repeated_tokens"] == 0);
    CHECK(json["layers_moved"] == 1);
    CHECK(json["detect_ms"].get<double>() >= 0);
    CHECK(json["recover_ms"].get<double>() >= 0);
  }
}
