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
#include "compute/tensor_slice.hpp"
#include "compute/outline.hpp"
#include "compute/text/tokenizer.hpp"
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

  in_process_pipeline(const std::filesystem::path& model, const std::vector<int>& cuts)
      : in_process_pipeline(model, stages_of(cuts)) {}

  // One node actor per stage of `stages` (a group's members each), node i
  // with a memory budget of budgets[i] bytes where given.
  in_process_pipeline(const std::filesystem::path& model, std::vector<actors::placement_stage> stages,
                      const std::vector<std::uint64_t>& budgets = {}, group_collectives collectives = {}) {
    actors::driver_config dc;
    dc.model = model;
    dc.collectives = collectives;
    dc.request_timeout = std::chrono::seconds(20);
    for (auto& stage : stages) {
      const auto budget = nodes.size() < budgets.size() ? budgets[nodes.size()] : 0;
      nodes.push_back(actors::spawn_node(system, {stage.node_name, "cpu", "fp32", budget, 1, "127.0.0.1", 0}));
      stage.node = nodes.back();
      dc.stages.push_back(stage);
    }
    driver = actors::spawn_driver(system, dc);
    try {
      actors::deploy_blocking(system, driver, std::chrono::seconds(20));
    } catch (...) {
      stop();  // the actor system waits for its actors when it goes
      throw;
    }
  }

  static std::vector<actors::placement_stage> stages_of(const std::vector<int>& cuts) {
    std::vector<actors::placement_stage> stages;
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i)
      stages.push_back({"n" + std::to_string(i), "", 0, {}, cuts[i], cuts[i + 1], 1});
    return stages;
  }
  ~in_process_pipeline() { stop(); }

  void stop() {
    caf::anon_send_exit(driver, caf::exit_reason::user_shutdown);
    for (auto& n : nodes) caf::anon_send_exit(n, caf::exit_reason::user_shutdown);
  }
};

// Layers [first, last) on a tensor-parallel group of `heads.size()` nodes
// named PREFIX0, PREFIX1, …, member m holding heads[m] heads and columns[m]
// MLP columns of each layer.
std::vector<actors::placement_stage> group(const compute::llama_config& config, const std::string& prefix, int first,
                                           int last, const std::vector<int>& heads, const std::vector<int>& columns) {
  std::vector<actors::placement_stage> members;
  const auto slices = compute::tensor_slices(config, heads, columns);
  for (std::size_t m = 0; m < slices.size(); ++m)
    members.push_back({prefix + std::to_string(m), "", 0, {}, first, last, 1, prefix, slices[m]});
  return members;
}

std::vector<actors::placement_stage> operator+(std::vector<actors::placement_stage> a,
                                               const std::vector<actors::placement_stage>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Stages for an in-process pipeline, and how its groups add up their sums.
struct named_layout {
  const char* what;
  std::vector<actors::placement_stage> stages;
  group_collectives collectives{};
};

// `tiny` has 4 layers: enough for 4 stages of one layer each.
std::filesystem::path tiny_model(const temp_dir& dir) {
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {21, 0, {}});
  return dir / "m";
}

}  // namespace

// One greedy request over `pipeline`: its tokens, returned and streamed, are
// the reference run's; its summary for further checks.
generation_summary check_tokens(in_process_pipeline& pipeline, const generate_request& request,
                                const test::reference_run& reference) {
  std::vector<compute::token_id> streamed;
  auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20),
                                             [&](std::size_t, const token_event& e) { streamed.push_back(e.token); });
  REQUIRE(summaries.size() == 1);
  CHECK(summaries[0].tokens == reference.tokens);
  CHECK(streamed == reference.tokens);
  return summaries[0];
}

generation_summary check_tokens(in_process_pipeline& pipeline, const std::string& prompt,
                                const test::reference_run& reference) {
  return check_tokens(pipeline, greedy_request(prompt, static_cast<int>(reference.tokens.size())), reference);
}

TEST_CASE("1, 2 and 4 in-process stages give the single-device tokens and bitwise its final logits") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const std::string prompt = "Pipelines of stages";
  auto reference = single_device(path, prompt, 33);  // the prefill's token + 32 decode steps
  for (const auto& cuts : std::vector<std::vector<int>>{{0, 4}, {0, 2, 4}, {0, 1, 3, 4}, {0, 1, 2, 3, 4}}) {
    CAPTURE(cuts.size() - 1);
    in_process_pipeline pipeline(path, cuts);
    auto summary = check_tokens(pipeline, prompt, reference);
    CHECK(summary.final_logits == reference.final_logits);  // bitwise: the same arithmetic in the same order
  }
}

TEST_CASE("tensor-parallel groups of 2 and 3, alone and as pipeline stages, give the single-device tokens and its logits within 1e-5") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");  // 4 heads over 2 KV heads, 352 MLP columns
  const auto alone = in_process_pipeline::stages_of({0, 2});
  const std::string prompt = "Groups of devices";
  auto reference = single_device(path, prompt, 33);
  struct layout {
    const char* what;
    std::vector<actors::placement_stage> stages;
  };
  const std::vector<layout> layouts = {
      {"a group of 2, even", group(config, "g", 0, 4, {2, 2}, {176, 176})},
      {"a group of 3, speeds 1:2:1", group(config, "g", 0, 4, {1, 2, 1}, {88, 176, 88})},
      {"a stage, then a group of 2 cutting a KV group", alone + group(config, "g", 2, 4, {1, 3}, {100, 252})},
      {"a group of 2, then a group of 3", group(config, "a", 0, 2, {2, 2}, {176, 176}) +
                                              group(config, "b", 2, 4, {1, 1, 2}, {120, 120, 112})},
  };
  // The prompt's tokens split over the members (sequence parallelism) or
  // all-reduced; partial sums whole or in 3 column tiles.
  const group_collectives settings[] = {{true, 1}, {false, 1}, {true, 3}, {false, 3}};
  for (const auto& l : layouts)
    for (const auto& collectives : settings) {
      CAPTURE(l.what);
      CAPTURE(collectives.sequence_parallel);
      CAPTURE(collectives.tiles);
      in_process_pipeline pipeline(path, l.stages, {}, collectives);
      auto summary = check_tokens(pipeline, prompt, reference);
      CHECK(test::relative_error(summary.final_logits, reference.final_logits) < 1e-5);
      // Every member ran every step; only the leaders sent anything on.
      auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
      REQUIRE(stats.size() == l.stages.size());
      for (std::size_t i = 0; i < stats.size(); ++i) {
        CAPTURE(stats[i].node);
        CHECK(stats[i].frames == 33);
        const bool leader = l.stages[i].group.empty() || l.stages[i].slice.head_begin == 0;
        CHECK((stats[i].bytes_sent > 0) == leader);
        // The prefill alone is split: a decode step's one token is not.
        CHECK(stats[i].sequence_parallel_frames == (collectives.sequence_parallel && !l.stages[i].group.empty() ? 1u : 0u));
      }
    }
}

TEST_CASE("a greedy request without logits over a group gathers each member's best token, not its logits: the same tokens, the bytes counted") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");  // 512 vocabulary rows
  const std::string prompt = "Only the best";
  auto reference = single_device(path, prompt, 33);
  const auto members = group(config, "g", 0, 4, {1, 2, 1}, {88, 176, 88});
  in_process_pipeline pipeline(path, members);
  auto ring_bytes = [&] {
    std::vector<std::uint64_t> out;
    for (const auto& s : actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5)))
      out.push_back(s.collective_bytes_sent);
    return out;
  };
  auto before = ring_bytes();
  check_tokens(pipeline, prompt, reference);  // logits asked back: the logits are gathered
  auto with_logits = ring_bytes();
  auto request = greedy_request(prompt, 33);
  request.sampling.return_logits = false;
  auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20));
  REQUIRE(summaries.size() == 1);
  CHECK(summaries[0].tokens == reference.tokens);
  CHECK(summaries[0].final_logits.empty());
  auto without = ring_bytes();
  // Each of the 33 passes: member r passes on the pieces of members r, r - 1
  // (n - 1 = 2 ring steps): 4 bytes a vocabulary row of theirs with logits,
  // 16 bytes (a value and an id) without.
  const int n = 3;
  for (int r = 0; r < n; ++r) {
    CAPTURE(r);
    std::int64_t per_pass = 0;
    for (int s = 0; s < n - 1; ++s) per_pass += 4 * members[static_cast<std::size_t>((r - s + n) % n)].slice.vocab() - 16;
    const auto logit_bytes = static_cast<std::int64_t>(with_logits[r] - before[r]);
    const auto best_bytes = static_cast<std::int64_t>(without[r] - with_logits[r]);
    CHECK(logit_bytes - best_bytes == 33 * per_pass);
  }
}

TEST_CASE("on small, groups of 2 and 3 (even, 1:2:1), alone and as a pipeline stage, with and without SP and tiles: 64 greedy steps as on one device") {
  // small: 12 layers, 12 heads over 4 KV heads, 2048 MLP columns, 32000 vocabulary rows.
  temp_dir dir;
  compute::init_model(dir / "small", compute::llama_config::preset("small"), {15, 0, {}});
  const auto path = dir / "small";
  const auto config = compute::llama_config::preset("small");
  const std::string prompt = "Galaxy splits one token's work";
  auto reference = single_device(path, prompt, 65);  // the prefill's token + 64 decode steps
  const std::vector<named_layout> layouts = {
      {"a group of 2, even, SP", group(config, "g", 0, 12, {6, 6}, {1024, 1024}), {true, 1}},
      {"a group of 3, speeds 1:2:1, tiles", group(config, "g", 0, 12, {3, 6, 3}, {512, 1024, 512}), {false, 3}},
      {"a stage, then a group of 2 cutting a KV group, SP and tiles",
       in_process_pipeline::stages_of({0, 6}) + group(config, "g", 6, 12, {4, 8}, {700, 1348}), {true, 3}},
  };
  for (const auto& l : layouts) {
    CAPTURE(l.what);
    in_process_pipeline pipeline(path, l.stages, {}, l.collectives);
    auto summary = check_tokens(pipeline, prompt, reference);
    CHECK(test::relative_error(summary.final_logits, reference.final_logits) < 1e-5);
  }
}

TEST_CASE("a group member's memory budget is held against its slice, not the whole layers") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");
  const auto members = group(config, "g", 0, 4, {1, 3}, {100, 252});
  std::vector<std::uint64_t> budgets;
  for (std::size_t m = 0; m < members.size(); ++m)
    budgets.push_back(static_cast<std::uint64_t>(compute::parameter_count(config, 0, 4, members[m].slice)) * 4);
  CHECK(budgets[1] < static_cast<std::uint64_t>(config.parameter_count(0, 4)) * 4);
  {
    in_process_pipeline pipeline(path, members, budgets);
    auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, {greedy_request("budget", 4)},
                                               std::chrono::seconds(20));
    CHECK(summaries.at(0).tokens == single_device(path, "budget", 4).tokens);
  }
  budgets[1] -= 1;
  const auto needed = "they need " + std::to_string(budgets[1] + 1) + " bytes";
  CHECK_THROWS_WITH(in_process_pipeline(path, members, budgets), doctest::Contains(needed.c_str()));
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
                    const std::vector<std::string>& prompts, int tokens, const std::function<void(int)>& kill,
                    const std::function<void(generate_request&)>& adjust = {}) {
  test::check_survives(
      [&](const auto& requests, const auto& on_token) {
        return actors::generate_blocking(pipeline.system, pipeline.driver, requests, std::chrono::seconds(30), on_token);
      },
      path, prompts, tokens, kill, adjust);
}

TEST_CASE("concurrent requests over a group, and a member killed mid-generation: the group's layers move, nothing is lost") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");
  in_process_pipeline pipeline(path, in_process_pipeline::stages_of({0, 2}) + group(config, "g", 2, 4, {2, 2}, {176, 176}));
  check_survives(pipeline, path, {"first of three", "the second request", "3"}, 24, [&](int streamed) {
    if (streamed == 10) caf::anon_send_exit(pipeline.nodes[2], caf::exit_reason::kill);  // g1
  });
  auto events = actors::recoveries_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(events.size() == 1);
  CHECK(events[0].node == "g1");
  CHECK(events[0].requests_replayed == 3);
  auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  REQUIRE(stats.size() == 2);
  CHECK(stats[1].node == "g0");  // the surviving member holds the group's layers whole
  CHECK(stats[1].first_layer == 2);
  CHECK(stats[1].last_layer == 4);
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

TEST_CASE("nodes killed while prompts go in chunks and windows of guesses are in flight: replayed, none lost or duplicated") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 1, 2, 3, 4});
  const std::vector<std::string> prompts = {"one two three, one two three, one two", "la la la la la la la",
                                            "a prompt of its own words", "x"};
  check_survives(
      pipeline, path, prompts, 40,
      [&](int streamed) {
        if (streamed == 3) caf::anon_send_exit(pipeline.nodes[2], caf::exit_reason::kill);  // prompts still going in
        if (streamed == 70) caf::anon_send_exit(pipeline.nodes[0], caf::exit_reason::kill);
      },
      [](generate_request& r) {
        r.max_drafts = 5;
        r.overlap_windows = r.prompt.size() % 2 == 0;
        const auto tokens = static_cast<std::int32_t>(r.prompt.size() + 1);
        if (tokens >= 3) r.prefill_chunks = {1, tokens / 2 - 1, tokens - tokens / 2};
      });
  auto events = actors::recoveries_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
  CHECK(events.size() == 2);
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

// -- Jupiter: pipelined prefill and speculative decoding ------------------------

TEST_CASE("a prompt sent in chunks through 4 stages and through groups: the logits of unchunked prefill within 1e-5, the same tokens") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");
  const std::string prompt = "A prompt cut into chunks that flow through the stages one behind the other";
  const auto tokens = static_cast<std::int32_t>(prompt.size() + 1);  // bytes and BOS
  const std::vector<std::int32_t> chunks = {9, 30, 1, tokens - 40};
  const std::vector<named_layout> layouts = {
      {"4 stages", in_process_pipeline::stages_of({0, 1, 2, 3, 4}), {}},
      {"a stage, then a group of 3 with SP", in_process_pipeline::stages_of({0, 2}) + group(config, "g", 2, 4, {1, 2, 1}, {88, 176, 88}), {true, 1}},
      {"a group of 2, all-reduced in tiles", group(config, "g", 0, 4, {2, 2}, {176, 176}), {false, 3}},
  };
  const auto first = single_device(path, prompt, 1);  // the prefill's logits
  const auto reference = single_device(path, prompt, 33);
  for (const auto& l : layouts) {
    CAPTURE(l.what);
    in_process_pipeline pipeline(path, l.stages, {}, l.collectives);
    auto request = greedy_request(prompt, 1);
    request.prefill_chunks = chunks;
    auto prefill = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20));
    CHECK(prefill.at(0).tokens == first.tokens);
    CHECK(test::relative_error(prefill.at(0).final_logits, first.final_logits) < 1e-5);
    // Every stage ran each chunk; a leading chunk sent nothing back.
    auto stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
    for (const auto& s : stats) CHECK(s.frames == chunks.size());
    request.max_new_tokens = 33;
    auto whole = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20));
    CHECK(whole.at(0).tokens == reference.tokens);
    CHECK(test::relative_error(whole.at(0).final_logits, reference.final_logits) < 1e-5);
  }
}

TEST_CASE("prefill chunks that do not add up to the prompt, or an empty chunk, are refused naming the figures") {
  temp_dir dir;
  auto path = tiny_model(dir);
  in_process_pipeline pipeline(path, {0, 2, 4});
  auto refused = [&](std::vector<std::int32_t> chunks) {
    auto request = greedy_request("abc", 2);  // 4 tokens with BOS
    request.prefill_chunks = std::move(chunks);
    try {
      actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(10));
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  CHECK(refused({1, 2}).find("the prefill chunks add up to 3 tokens, but the prompt has 4 (with BOS)") != std::string::npos);
  CHECK(refused({4, 0}).find("prefill chunk 1 has 0 tokens") != std::string::npos);
  auto request = greedy_request("abc", 2);
  request.max_drafts = 33;
  CHECK_THROWS_WITH(actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(10)),
                    doctest::Contains("max_drafts must be in [0, 32], got 33"));
}

TEST_CASE("speculative decoding over 4 stages and over groups: the tokens of one token per trip, in fewer trips") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");
  // tiny's greedy text falls into a loop soon: what prompt lookup guesses.
  const std::string prompt = "one two three, one two three, one two";
  const int new_tokens = 64;
  const auto reference = single_device(path, prompt, new_tokens);
  const std::vector<named_layout> layouts = {
      {"4 stages", in_process_pipeline::stages_of({0, 1, 2, 3, 4}), {}},
      {"a stage, then a group of 2", in_process_pipeline::stages_of({0, 2}) + group(config, "g", 2, 4, {2, 2}, {176, 176}), {false, 1}},
  };
  for (const auto& l : layouts)
    for (const bool logits : {true, false})  // with logits asked back, and greedy's gathered best ids
      for (const bool overlap : {false, true}) {  // one window at a time, or the next sent ahead
        CAPTURE(l.what);
        CAPTURE(logits);
        CAPTURE(overlap);
        in_process_pipeline pipeline(path, l.stages, {}, l.collectives);
        auto request = greedy_request(prompt, new_tokens);
        request.sampling.return_logits = logits;
        request.max_drafts = 6;
        request.overlap_windows = overlap;
        auto summary = check_tokens(pipeline, request, reference);
        if (logits) CHECK(test::relative_error(summary.final_logits, reference.final_logits) < 1e-5);
        CHECK(summary.accepted > 0);
        CHECK(summary.drafted >= summary.accepted);
        // Every trip answered after the first token brings its kept guesses
        // and one more; a window sent ahead and dropped brings nothing.
        CHECK(summary.decode_trips - summary.cancelled_trips + summary.accepted == new_tokens - 1);
        CHECK(summary.decode_trips - summary.cancelled_trips < new_tokens - 1);
        if (!overlap) CHECK(summary.cancelled_trips == 0);
      }
}

TEST_CASE("a request's end follows its frames through every stage and group member: nothing of it is held after, also with windows sent ahead") {
  temp_dir dir;
  auto path = tiny_model(dir);
  const auto config = compute::llama_config::preset("tiny");
  in_process_pipeline pipeline(path, in_process_pipeline::stages_of({0, 1, 2}) + group(config, "g", 2, 4, {1, 3}, {100, 252}));
  std::vector<generate_request> requests;
  for (const std::string prompt : {"one two three, one two three, one two", "la la la la la la", "x"}) {
    requests.push_back(greedy_request(prompt, 30));
    requests.back().max_drafts = 6;
    requests.back().overlap_windows = true;
  }
  auto summaries = actors::generate_blocking(pipeline.system, pipeline.driver, requests, std::chrono::seconds(20));
  REQUIRE(summaries.size() == 3);
  // The ends travel behind the last frames: wait for them to arrive.
  std::vector<stage_stats> stats;
  for (int attempt = 0; attempt < 100; ++attempt) {
    stats = actors::stats_blocking(pipeline.system, pipeline.driver, std::chrono::seconds(5));
    if (std::all_of(stats.begin(), stats.end(), [](const stage_stats& st) { return st.requests_held == 0; })) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(stats.size() == 4);
  for (const auto& st : stats) {
    CAPTURE(st.node);
    CHECK(st.requests_held == 0);
    CHECK(st.frames > 0);
  }
}

TEST_CASE("speculative decoding with sampling keeps a guess exactly when the step's own draw is that guess: every seed's tokens as without guesses") {
  temp_dir dir;
  auto path = tiny_model(dir);
  int accepted = 0, drafted = 0;
  in_process_pipeline pipeline(path, {0, 2, 4});
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    CAPTURE(seed);
    generate_request request;
    request.prompt = "one two three, one two three, one two";
    request.max_new_tokens = 40;
    request.stop_at_eos = false;
    request.sampling = {0.7f, 20, 0.95f, 1.05f, seed, false};
    const auto plain = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20));
    request.max_drafts = 4;
    request.overlap_windows = seed % 2 == 0;
    const auto guessed = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20));
    CHECK(guessed.at(0).tokens == plain.at(0).tokens);
    CHECK(guessed.at(0).decode_trips - guessed.at(0).cancelled_trips + guessed.at(0).accepted == 39);
    accepted += guessed.at(0).accepted;
    drafted += guessed.at(0).drafted;
  }
  // Kept and rejected guesses both happened, so both branches were compared.
  CHECK(accepted > 0);
  CHECK(accepted < drafted);
}

namespace {

// Greedy tokens after `ids` on one device (the whole model, one thread).
std::vector<compute::token_id> greedy_after(const std::filesystem::path& path, const std::vector<compute::token_id>& ids,
                                            int count) {
  compute::model_dir model(path);
  compute::shard whole(model, 0, model.config().num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(1)});
  auto cache = whole.new_cache(model.config().max_position_embeddings);
  std::vector<std::int64_t> wide(ids.begin(), ids.end());
  auto logits = whole.forward(at::tensor(wide, at::kLong), {{&cache, static_cast<int>(wide.size())}});
  std::vector<compute::token_id> out;
  for (int step = 0; step < count; ++step) {
    if (step > 0) logits = whole.forward(at::tensor(std::vector<std::int64_t>{out.back()}, at::kLong), {{&cache, 1}});
    out.push_back(static_cast<compute::token_id>(logits.argmax(-1).item<std::int64_t>()));
  }
  return out;
}

}  // namespace

TEST_CASE("outline-based decoding: the outline, then each point continuing it from a copy of its KV, side by side, as one device writes them") {
  temp_dir dir;
  auto path = tiny_model(dir);
  compute::byte_tokenizer tok;
  const int max_points = 4, outline_tokens = 48, point_tokens = 12;
  // A random-weight model rarely writes a line break: questions whose
  // outline has points (found on one device), and one whose outline has none.
  auto points_of = [&](const std::string& question) {
    std::string text;
    for (auto t : greedy_after(path, compute::prompt_tokens(tok, compute::outline_prompt(question)), outline_tokens))
      text += tok.decode(t);
    return compute::outline_points(text, max_points);
  };
  std::vector<std::string> questions;
  for (int i = 0; i < 300 && questions.empty(); ++i)
    if (points_of("question " + std::to_string(i)).size() >= 2) questions.push_back("question " + std::to_string(i));
  REQUIRE(questions.size() == 1);
  for (int i = 0; i < 300 && questions.size() == 1; ++i)
    if (points_of("plain " + std::to_string(i)).size() < 2) questions.push_back("plain " + std::to_string(i));
  REQUIRE(questions.size() == 2);
  for (const auto& question : questions) {
    CAPTURE(question);
    // As one device: the outline, its points, each point's continuation.
    const auto prompt = compute::prompt_tokens(tok, compute::outline_prompt(question));
    const auto outline = greedy_after(path, prompt, outline_tokens);
    std::string text;
    for (auto t : outline) text += tok.decode(t);
    auto points = compute::outline_points(text, max_points);
    if (points.size() < 2) points = {std::string()};
    auto expected = outline;
    for (std::size_t i = 0; i < points.size(); ++i) {
      auto sequence = prompt;
      sequence.insert(sequence.end(), outline.begin(), outline.end());
      auto header = points.size() > 1 ? tok.encode(compute::point_header(points[i], i)) : std::vector<compute::token_id>{};
      if (header.size() > static_cast<std::size_t>(compute::max_point_header_tokens)) header.resize(compute::max_point_header_tokens);
      sequence.insert(sequence.end(), header.begin(), header.end());
      expected.insert(expected.end(), header.begin(), header.end());
      const auto continued = greedy_after(path, sequence, point_tokens);
      expected.insert(expected.end(), continued.begin(), continued.end());
    }
    // Over 4 stages, with guesses.
    in_process_pipeline pipeline(path, {0, 1, 2, 3, 4});
    auto request = greedy_request(question, point_tokens);
    request.sampling.return_logits = false;
    request.outline_points = max_points;
    request.outline_tokens = outline_tokens;
    request.max_drafts = 4;
    request.overlap_windows = true;
    std::vector<compute::token_id> streamed;
    auto summary = actors::generate_blocking(pipeline.system, pipeline.driver, {request}, std::chrono::seconds(20),
                                             [&](std::size_t, const token_event& e) { streamed.push_back(e.token); })
                       .at(0);
    CHECK(summary.tokens == expected);
    CHECK(streamed == expected);
    CHECK(summary.outline_points == static_cast<int>(points.size()));
    CHECK((question == questions.front()) == (summary.outline_points >= 2));
  }
}
