// Sessions and model identity on node actors in one process: a node refuses
// layers of a copy that is not the client's, naming the file; two sessions on
// one node keep their own stages and caches and share one copy of the weights;
// a stage computes only on frames that continue its KV cache.

#include <ATen/ATen.h>
#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <fstream>

#include "actors/blocking_client.hpp"
#include "actors/driver.hpp"
#include "actors/error_text.hpp"
#include "actors/model_identity.hpp"
#include "actors/node.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/model_init.hpp"
#include "messages/types.hpp"
#include "test/registered_config.hpp"
#include "test/single_device.hpp"
#include "test/temp_dir.hpp"

using namespace orrery;
using orrery::test::greedy_request;
using orrery::test::single_device;
using orrery::test::temp_dir;

namespace {

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

void flip_a_byte(const std::filesystem::path& file, std::uint64_t at) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  io.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  io.get(c);
  io.seekp(static_cast<std::streamoff>(at));
  io.put(static_cast<char>(c ^ 0x01));
}

// What the node answers to an assignment of layers [0, 4) in `session`.
std::string load(caf::actor_system& system, const actors::node_actor& node, std::uint64_t session,
                 const std::filesystem::path& dir, const std::vector<model_file>& files) {
  caf::scoped_actor self{system};
  stage_assignment a{session, 1, 0, 0, 4, dir.string(), files, "", 1};
  std::string outcome = "ok";
  self->request(node, std::chrono::seconds(20), load_stage_atom_v, a)
      .receive([](stage_ready&) {}, [&](caf::error& e) { outcome = actors::error_text(e); });
  return outcome;
}

}  // namespace

TEST_CASE("a model's identity tells copies apart by content and names the file that differs") {
  temp_dir dir;
  compute::init_model(dir / "a", compute::llama_config::preset("tiny"), {1, 0, {}});
  compute::init_model(dir / "b", compute::llama_config::preset("tiny"), {1, 0, {}});
  compute::init_model(dir / "c", compute::llama_config::preset("tiny"), {2, 0, {}});
  const auto a = actors::identify_model(dir / "a");
  CHECK(actors::model_difference(a, actors::identify_model(dir / "b")).empty());  // same seed, same bytes
  CHECK(actors::model_fingerprint(a) == actors::model_fingerprint(actors::identify_model(dir / "b")));
  CHECK(actors::model_difference(a, actors::identify_model(dir / "c")) ==
        "model.safetensors holds other bytes (same size, another content hash)");

  flip_a_byte(dir / "b" / "model.safetensors", std::filesystem::file_size(dir / "b" / "model.safetensors") / 2);
  CHECK(contains(actors::model_difference(a, actors::identify_model(dir / "b")), "model.safetensors holds other bytes"));
  std::filesystem::resize_file(dir / "b" / "model.safetensors", 1000);
  CHECK(contains(actors::model_difference(a, actors::identify_model(dir / "b")), "model.safetensors has 1000 bytes, the client's "));
  std::ofstream(dir / "b" / "config.json", std::ios::app) << " ";
  CHECK(contains(actors::model_difference(a, actors::identify_model(dir / "b")), "config.json has "));
  CHECK_THROWS_WITH_AS(actors::identify_model(dir / "missing"), doctest::Contains("does not exist"), std::exception);
}

TEST_CASE("a node refuses layers of a copy that is not the client's, naming the file") {
  temp_dir dir;
  compute::init_model(dir / "mine", compute::llama_config::preset("tiny"), {1, 0, {}});
  compute::init_model(dir / "other", compute::llama_config::preset("tiny"), {2, 0, {}});
  test::registered_config config;
  caf::actor_system system{config};
  auto node = actors::spawn_node(system, {"n", "cpu", "fp32", 0, 1, "127.0.0.1", 0});
  // The client holds `other`; the node's copy at the path it is sent is `mine`.
  auto refused = load(system, node, 7, dir / "mine", actors::identify_model(dir / "other"));
  CHECK(contains(refused, "cannot load layers [0, 4) on cpu: its copy of the model at " + (dir / "mine").string() +
                              " differs from the client's: model.safetensors holds other bytes"));
  CHECK(load(system, node, 7, dir / "mine", actors::identify_model(dir / "mine")) == "ok");
  CHECK(contains(load(system, node, 0, dir / "mine", actors::identify_model(dir / "mine")), "session 0 is reserved"));
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
}

TEST_CASE("two sessions on one node have their own stages and share one copy of the weights") {
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {21, 0, {}});
  const auto weights = static_cast<std::uint64_t>(compute::llama_config::preset("tiny").parameter_count()) * 4;
  test::registered_config config;
  caf::actor_system system{config};
  // A budget of one copy and a half: two sessions fit only when they share.
  auto node = actors::spawn_node(system, {"n", "cpu", "fp32", weights * 3 / 2, 1, "127.0.0.1", 0});
  std::vector<actors::driver_actor> drivers;
  for (int session = 0; session < 2; ++session) {
    actors::driver_config dc;
    dc.model = dir / "m";
    dc.request_timeout = std::chrono::seconds(20);
    dc.stages.push_back({"n", "", 0, node, 0, 4, 1});
    drivers.push_back(actors::spawn_driver(system, dc));
    actors::deploy_blocking(system, drivers.back(), std::chrono::seconds(20));
  }
  // Both sessions number their requests from 1 and their stage 0: were they
  // one stage, the second request would extend the first one's KV cache.
  const std::vector<std::string> prompts = {"one session", "the other session"};
  std::vector<std::thread> clients;
  std::vector<generation_summary> results(2);
  for (std::size_t i = 0; i < 2; ++i)
    clients.emplace_back([&, i] {
      results[i] = actors::generate_blocking(system, drivers[i], {greedy_request(prompts[i], 40)}, std::chrono::seconds(20))[0];
    });
  for (auto& c : clients) c.join();
  for (std::size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    auto reference = single_device(dir / "m", prompts[i], 40);
    CHECK(results[i].tokens == reference.tokens);
    CHECK(results[i].final_logits == reference.final_logits);
  }
  // Another model's layers are other weights: they do not fit beside them.
  compute::init_model(dir / "y", compute::llama_config::preset("tiny"), {22, 0, {}});
  CHECK(contains(load(system, node, 99, dir / "y", actors::identify_model(dir / "y")), "the memory budget is"));
  for (auto& d : drivers) caf::anon_send_exit(d, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
}

TEST_CASE("a frame that does not continue where the stage's KV cache ends fails its request, naming both positions") {
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {21, 0, {}});
  test::registered_config config;
  caf::actor_system system{config};
  auto node = actors::spawn_node(system, {"n", "cpu", "fp32", 0, 1, "127.0.0.1", 0});
  caf::scoped_actor driver{system};
  stage_assignment a{7, 1, 0, 0, 4, (dir / "m").string(), actors::identify_model(dir / "m"), "", 1};
  stage_ready ready;
  driver->request(node, std::chrono::seconds(20), load_stage_atom_v, a)
      .receive([&](stage_ready& r) { ready = r; }, [&](caf::error& e) { FAIL(actors::error_text(e)); });
  // The stage sends its tokens to the node's own data plane, where no session listens: only its failures count here.
  auto stage = caf::actor_cast<actors::stage_actor>(ready.stage);
  driver->request(stage, std::chrono::seconds(5), connect_next_atom_v, std::uint64_t{1},
                  std::vector<next_hop>{{ready.data_host, ready.data_port, 0}}, next_hop{},
                  caf::actor_cast<caf::actor>(driver), std::int64_t{2000})
      .receive([] {}, [&](caf::error& e) { FAIL(actors::error_text(e)); });
  auto frame_at = [&](std::uint32_t position, std::vector<std::int64_t> tokens) {
    actors::tensor_frame f;
    f.descriptor.session = 7;
    f.descriptor.deployment = 1;
    f.descriptor.route = messages::forward_route{0, 9, position, position, {}};
    f.descriptor.tensors.push_back({messages::tensor_role::tokens, element_type::i64,
                                    {static_cast<std::int64_t>(tokens.size())}, tokens.size() * 8});
    f.tensors.push_back(at::tensor(tokens, at::kLong));
    return f;
  };
  auto failure_of = [&](actors::tensor_frame f) {
    std::string problem;
    driver->send(stage, std::move(f));
    driver->receive([&](request_failure& failure) { problem = failure.problem; },
                    caf::after(std::chrono::seconds(5)) >> [&] { problem = "no failure"; });
    return problem;
  };
  CHECK(contains(failure_of(frame_at(5, {1})),
                 "a frame at position 5 of request 9, but the stage holds no KV cache for it"));
  driver->send(stage, frame_at(0, {1, 72, 105}));  // starts the sequence: 3 tokens held
  CHECK(contains(failure_of(frame_at(7, {1})), "a frame at position 7 of request 9, but the stage holds 3 tokens of it"));
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
}

TEST_CASE("a node outlives a session whose driver goes down while its stage's exit is on the way") {
  // The driver of a session ends its stage and goes away at once (a trainer
  // done with a layout): the node hears the driver's down first, drops the
  // session's stages, and the stage's own exit, already sent, arrives after.
  // That exit once ended the node, which then refused every later session.
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {3, 0, {}});
  const auto files = actors::identify_model(dir / "m");
  test::registered_config config;
  caf::actor_system system{config};
  auto node = actors::spawn_node(system, {"n", "cpu", "fp32", 0, 1, "127.0.0.1", 0});
  for (std::uint64_t session = 1; session <= 20; ++session) {
    CAPTURE(session);
    caf::actor stage;
    {
      caf::scoped_actor driver{system};
      stage_assignment a{session, 1, 0, 0, 4, (dir / "m").string(), files, "", 1};
      std::string outcome = "ok";
      driver->request(node, std::chrono::seconds(20), load_stage_atom_v, a)
          .receive([&](stage_ready& ready) { stage = ready.stage; }, [&](caf::error& e) { outcome = actors::error_text(e); });
      REQUIRE(outcome == "ok");
      caf::anon_send_exit(stage, caf::exit_reason::user_shutdown);
    }  // the driver goes down here
    caf::scoped_actor self{system};
    self->wait_for(stage);
  }
  CHECK(load(system, node, 99, dir / "m", files) == "ok");
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
}
