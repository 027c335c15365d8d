// Pipelines of 1, 2 and 4 stages on node actors in one process: the same
// tokens and bitwise the same final logits as the single-device model.

#include <ATen/ATen.h>
#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <functional>
#include <thread>

#include "actors/blocking_client.hpp"
#include "actors/driver.hpp"
#include "actors/node.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "compute/tokenizer.hpp"
#include "messages/types.hpp"
#include "test/registered_config.hpp"
#include "test/single_device.hpp"
#include "test/temp_dir.hpp"

using namespace orrery;
using orrery::test::greedy_request;
using orrery::test::single_device;
using orrery::test::temp_dir;

namespace {

// `cuts` = {0, a, b, ..., N}: one node actor per stage in this process.
struct in_process_pipeline {
  test::registered_config config;
  caf::actor_system system{config};
  std::vector<actors::node_actor> nodes;
  actors::driver_actor driver;

  in_process_pipeline(const std::filesystem::path& model, const std::vector<int>& cuts) {
    actors::driver_config dc;
    dc.model = model;
    dc.request_timeout = std::chrono::seconds(20);
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      auto name = "n" + std::to_string(i);
      nodes.push_back(actors::spawn_node(system, {name, "cpu", "fp32", 0, 1, "127.0.0.1", 0}));
      dc.stages.push_back({name, "", 0, nodes.back(), cuts[i], cuts[i + 1], 1});
    }
    driver = actors::spawn_driver(system, dc);
    actors::deploy_blocking(system, driver, std::chrono::seconds(20));
  }
  ~in_process_pipeline() {
    caf::anon_send_exit(driver, caf::exit_reason::user_shutdown);
    for (auto& n : nodes) caf::anon_send_exit(n, caf::exit_reason::user_shutdown);
  }
};

// `tiny` has 4 layers: enough for 4 stages of one layer each.
std::filesystem::path tiny_model(const temp_dir& dir) {
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {21, 0, {}});
  return dir / "m";
}

}  // namespace

TEST_CASE("1, 2 and 4 in-process stages give the single-device tokens and bitwise its final logits") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const std::string prompt = "Pipelines of stages";
  auto reference = single_device(path, prompt, 33);  // the prefill's token + 32 decode steps
  for (const auto& cuts : std::vector<std::vector<int>>{{0, 4}, {0, 2, 4}, {0, 1, 3, 4}, {0, 1, 2, 3, 4}}) {
    CAPTURE(cuts.size() - 1);
    in_process_pipeline pipeline(path, cuts);
    std::vector<compute::token_id> streamed;
    auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, {greedy_request(prompt, 33)},
                                               std::chrono::seconds(20),
                                               [&](std::size_t, const token_event& e) { streamed.push_back(e.token); });
    REQUIRE(summaries.size() == 1);
    CHECK(summaries[0].tokens == reference.tokens);
    CHECK(streamed == reference.tokens);
    CHECK(summaries[0].final_logits == reference.final_logits);  // bitwise: the same arithmetic in the same order
  }
}

TEST_CASE("4 concurrent requests share a 4-stage pipeline and each matches its single-device run") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const std::vector<std::string> prompts = {"alpha", "a longer second prompt", "3", "the fourth one"};
  in_process_pipeline pipeline(path, {0, 1, 2, 3, 4});
  std::vector<generate_request> requests;
  for (const auto& p : prompts) requests.push_back(greedy_request(p, 33));
  auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, requests, std::chrono::seconds(30));
  REQUIRE(summaries.size() == prompts.size());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    CAPTURE(i);
    auto reference = single_device(path, prompts[i], 33);
    CHECK(summaries[i].tokens == reference.tokens);
    CHECK(summaries[i].final_logits == reference.final_logits);
  }
  auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(stats.size() == 4);
  for (const auto& s : stats) {
    CHECK(s.frames == 4 * 33);  // every request's prefill and decode steps passed every stage
    CHECK(s.compute_ms > 0);
  }
}

TEST_CASE("the last stage samples: a seed gives local generation's tokens, and only token ids come back") {
  temp_dir dir;
  auto path = tiny_model(dir);
  compute::generation_request local;
  local.prompt = "sampled where the logits are";
  local.max_new_tokens = 40;
  local.stop_at_eos = false;
  local.sampling = {0.9f, 50, 0.95f, 1.1f, 1234};
  compute::model_dir model(path);
  compute::shard whole(model, 0, 4, {at::kCPU, at::kFloat, compute::configure_cpu_threads(1)});
  const auto expected = compute::generate(whole, compute::byte_tokenizer{}, local).tokens;
  generate_request remote;
  remote.prompt = local.prompt;
  remote.max_new_tokens = local.max_new_tokens;
  remote.stop_at_eos = false;
  remote.sampling = {0.9f, 50, 0.95f, 1.1f, 1234, false};
  for (const auto& cuts : std::vector<std::vector<int>>{{0, 4}, {0, 2, 4}, {0, 1, 2, 3, 4}}) {
    CAPTURE(cuts.size() - 1);
    in_process_pipeline pipeline(path, cuts);
    auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, {remote}, std::chrono::seconds(20));
    REQUIRE(summaries.size() == 1);
    CHECK(summaries[0].tokens == expected);
    CHECK(summaries[0].final_logits.empty());  // not asked for
    // The last stage sent one 8-byte token id per step, never a logits row.
    // A send is counted when the data plane reports it written, which may
    // come after the driver has the token: wait for the count to settle.
    auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
    for (int attempt = 0; attempt < 50 && stats.back().bytes_sent < 8 * 40; ++attempt) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
    }
    CHECK(stats.back().frames == 40);
    CHECK(stats.back().bytes_sent == 8 * 40);
  }
}

// Runs test::check_survives on the in-process pipeline.
void check_survives(in_process_pipeline& pipeline, const std::filesystem::path& path,
                    const std::vector<std::string>& prompts, int tokens, const std::function<void(int)>& kill) {
  test::check_survives(
      [&](const auto& requests, const auto& on_token) {
        return actors::generate_blocking(pipeline.system, pipeline.driver, requests, std::chrono::seconds(30), on_token);
      },
      path, prompts, tokens, kill);
}

TEST_CASE("a node killed mid-generation: its layers go to its neighbours and the request goes on unchanged") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 1, 2, 3, 4});
  check_survives(pipeline, path, {"a request that outlives a node"}, 40, [&](int streamed) {
    if (streamed == 5) caf::anon_send_exit(pipeline.nodes[1], caf::exit_reason::kill);
  });
  auto events = actors::recoveries_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(events.size() == 1);
  CHECK(events[0].node == "n1");
  CHECK(events[0].layers_moved == 1);  // only the lost layer was loaded, by one neighbour
  CHECK(events[0].requests_replayed == 1);
  CHECK(events[0].recover_ms >= 0);
  auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(stats.size() == 3);
  CHECK(stats[0].node == "n0");
  CHECK(stats[0].last_layer == 2);  // the lost layer [1, 2) joined the stage before it
}

TEST_CASE("8 concurrent requests while nodes are killed one after the other: all complete, none lost or duplicated") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 1, 2, 3, 4});
  std::vector<std::string> prompts;
  for (int i = 0; i < 8; ++i) prompts.push_back("request number " + std::to_string(i));
  check_survives(pipeline, path, prompts, 24, [&](int streamed) {
    if (streamed == 20) caf::anon_send_exit(pipeline.nodes[2], caf::exit_reason::kill);
    if (streamed == 90) caf::anon_send_exit(pipeline.nodes[0], caf::exit_reason::kill);
  });
  auto events = actors::recoveries_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(events.size() == 2);
  CHECK(events[0].node == "n2");
  CHECK(events[1].node == "n0");
}

TEST_CASE("every node killed: requests fail naming what is missing, without hanging") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 2, 4});
  std::string error;
  try {
    actors::generate_blocking(pipeline.system, pipeline.driver, {greedy_request("x", 200)}, std::chrono::seconds(10),
                              [&](std::size_t, const token_event& e) {
                                static_cast<void>(e);
                                for (auto& node : pipeline.nodes) caf::anon_send_exit(node, caf::exit_reason::kill);
                              });
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  CHECK(error.find("cannot hold the model") != std::string::npos);
  CHECK(error.find("waiting for nodes to return") != std::string::npos);
}

TEST_CASE("a prompt beyond the context fails with both figures") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 4});
  std::string error;
  try {
    actors::generate_blocking(pipeline.system, pipeline.driver, {greedy_request(std::string(300, 'y'), 4)},
                              std::chrono::seconds(10));
  } catch (const std::runtime_error& e) {
    error = e.what();
  }
  CHECK(error.find("exceeds the model's context of 256 positions") != std::string::npos);
}
