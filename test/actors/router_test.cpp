// The router: each route reaches the handler registered for it, with its
// tensors intact; a route nobody handles, or of a kind this build does not
// know, is counted and named, never delivered and never a crash.

#include <ATen/ATen.h>
#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "actors/node.hpp"
#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"
#include "test/registered_config.hpp"

using namespace orrery;
using actors::router;

namespace {

// A received frame as the data plane hands it over: `tensors` packed into a
// payload that tensor_allocator made.
messages::received_frame frame_of(std::uint64_t session, messages::frame_route route,
                                  const std::vector<actors::outgoing_tensor>& tensors) {
  messages::frame_descriptor d;
  d.session = session;
  d.route = route;
  for (const auto& t : tensors)
    d.tensors.push_back({t.role, t.tensor.scalar_type() == at::kLong ? element_type::i64 : element_type::f32,
                         t.tensor.sizes().vec(), static_cast<std::uint64_t>(t.tensor.nbytes())});
  REQUIRE(messages::payload_length(d.tensors, 1 << 20, d.byte_length).empty());
  auto [storage, data] = actors::tensor_allocator()(d);
  const auto offsets = messages::tensor_offsets(d.tensors);
  for (std::size_t i = 0; i < tensors.size(); ++i)
    std::memcpy(data + offsets[i], tensors[i].tensor.data_ptr(), tensors[i].tensor.nbytes());
  return {d, storage, data, "127.0.0.1:9"};
}

}  // namespace

TEST_CASE("a router hands each route to its handler and names every frame it rejects") {
  test::registered_config config;
  caf::actor_system system{config};
  caf::scoped_actor stage{system}, session{system};
  auto r = std::make_shared<router>("test");
  r->add(router::handler_kind::stage, 5, 2, caf::actor_cast<caf::actor_addr>(stage));
  r->add(router::handler_kind::session, 5, 0, caf::actor_cast<caf::actor_addr>(session));

  const auto hidden = at::arange(6, at::kFloat).view({2, 3});
  const auto tokens = at::tensor(std::vector<std::int64_t>{7, 8}, at::kLong);
  r->dispatch(frame_of(5, messages::forward_route{2, 41, 3, 10, {}},
                       {{messages::tensor_role::hidden, hidden}, {messages::tensor_role::tokens, tokens}}));
  stage->receive([&](actors::tensor_frame& f) {
    CHECK(std::get<messages::forward_route>(f.descriptor.route).request == 41);
    REQUIRE(f.tensors.size() == 2);
    CHECK(at::equal(f.tensor(messages::tensor_role::hidden), hidden));
    CHECK(at::equal(f.tensor(messages::tensor_role::tokens), tokens));
    CHECK_THROWS_WITH(f.tensor(messages::tensor_role::logits), doctest::Contains("without a logits tensor (it has: hidden, tokens)"));
  });
  r->dispatch(frame_of(5, messages::session_route{41, 3}, {{messages::tensor_role::tokens, tokens.narrow(0, 0, 1)}}));
  session->receive([&](actors::tensor_frame& f) { CHECK(f.tensors.at(0).item<std::int64_t>() == 7); });
  CHECK(r->counts().delivered == 2);

  struct stray {
    std::uint64_t session;
    messages::frame_route route;
    const char* reason;
  };
  const std::vector<stray> strays = {
      {5, messages::forward_route{3, 1, 0, 0, {}}, "a forward frame for stage 3 of session 5, which is not here"},
      {6, messages::forward_route{2, 1, 0, 0, {}}, "a forward frame for stage 2 of session 6, which is not here"},
      {5, messages::backward_route{4, 1, 0}, "a backward frame for stage 4 of session 5"},
      {5, messages::collective_route{7, 1, messages::collective_op::all_reduce, 0, 1, 0}, "a collective frame for group 7 of session 5"},
      {9, messages::session_route{1, 0}, "a to-session frame for session 9, which is not here"},
      {0, messages::probe_route{1, 0}, "a probe frame from 127.0.0.1:9, but nothing here measures links"},
      {5, messages::unknown_route{9}, "a route of unknown kind 9 from 127.0.0.1:9"},
  };
  for (std::size_t i = 0; i < strays.size(); ++i) {
    CAPTURE(strays[i].reason);
    r->dispatch(frame_of(strays[i].session, strays[i].route, {{messages::tensor_role::tokens, tokens}}));
    CHECK(r->counts().last_rejection.find(strays[i].reason) != std::string::npos);
  }
  const auto counts = r->counts();
  CHECK(counts.delivered == 2);
  CHECK(counts.no_handler == strays.size() - 1);
  CHECK(counts.unknown_route == 1);

  r->remove(router::handler_kind::stage, 5, 2);
  r->dispatch(frame_of(5, messages::forward_route{2, 41, 3, 10, {}}, {{messages::tensor_role::tokens, tokens}}));
  CHECK(r->counts().no_handler == strays.size());
  bool delivered = false;
  stage->receive([&](actors::tensor_frame&) { delivered = true; }, caf::after(std::chrono::milliseconds(50)) >> [] {});
  CHECK_FALSE(delivered);
}

TEST_CASE("a node counts a frame for a stage it does not hold, sent over a real socket, and keeps serving") {
  test::registered_config config;
  caf::actor_system system{config};
  auto node = actors::spawn_node(system, {"n0", "cpu", "fp32", 0, 1, "127.0.0.1", 0});
  caf::scoped_actor self{system};
  node_info info;
  self->request(node, std::chrono::seconds(5), info_atom_v).receive([&](node_info& i) { info = i; }, [](caf::error&) {});
  REQUIRE(info.data_port != 0);
  messages::data_plane plane({}, actors::tensor_allocator(), [](messages::received_frame) {}, {});
  auto link = plane.connect("127.0.0.1", info.data_port, std::chrono::seconds(3));
  messages::frame_descriptor d;
  d.session = 77;
  d.route = messages::forward_route{4, 1, 0, 0, {}};
  actors::send_tensors(*link, d, {{messages::tensor_role::tokens, at::ones({3}, at::kLong)}}, {});
  route_counts counts;
  for (int attempt = 0; attempt < 100 && counts.no_handler == 0; ++attempt) {
    self->request(node, std::chrono::seconds(5), stats_atom_v).receive([&](route_counts& c) { counts = c; }, [](caf::error&) {});
    if (counts.no_handler == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(counts.no_handler == 1);
  CHECK(counts.last_rejection.find("stage 4 of session 77, which is not here") != std::string::npos);
  // The link stays open and the node answers: a stray frame costs nothing else.
  CHECK(link->is_open());
  node_info again;
  self->request(node, std::chrono::seconds(5), info_atom_v).receive([&](node_info& i) { again = i; }, [](caf::error&) {});
  CHECK(again.name == "n0");
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
}

TEST_CASE("a backup frame goes to the node's backup store whatever its session, and with restore set to the stage") {
  test::registered_config config;
  caf::actor_system system{config};
  caf::scoped_actor stage{system};
  auto r = std::make_shared<router>("test");
  r->add(router::handler_kind::stage, 5, 2, caf::actor_cast<caf::actor_addr>(stage));
  std::vector<actors::tensor_frame> stored;  // dispatch runs the sink on this thread
  r->add_sink(router::handler_kind::backup, 0, 0, [&](actors::tensor_frame f) { stored.push_back(std::move(f)); });

  const auto w = at::arange(6, at::kFloat).view({2, 3}), m = w * 2, v = w * w;
  const std::vector<actors::outgoing_tensor> state = {
      {messages::tensor_role::state, w}, {messages::tensor_role::state, m}, {messages::tensor_role::state, v}};
  // To the store: in any session, to any stage id (it is not the stage's).
  std::uint64_t delivered = 0;
  for (std::uint64_t session : {5, 0, 6, 123456789}) {
    CAPTURE(session);
    r->dispatch(frame_of(session, messages::backup_route{17, 40, "model.norm.weight", false, 2}, state));
    REQUIRE(stored.size() == ++delivered);
    const auto& f = stored.back();
    CHECK(f.descriptor.session == session);
    const auto& route = std::get<messages::backup_route>(f.descriptor.route);
    CHECK(route.run == 17);
    CHECK(route.round == 40);
    CHECK(route.name == "model.norm.weight");
    CHECK_FALSE(route.restore);
    REQUIRE(f.tensors.size() == 3);
    CHECK(at::equal(f.tensors[0], w));
    CHECK(at::equal(f.tensors[1], m));
    CHECK(at::equal(f.tensors[2], v));
  }
  bool at_stage = false;
  stage->receive([&](actors::tensor_frame&) { at_stage = true; }, caf::after(std::chrono::milliseconds(50)) >> [] {});
  CHECK_FALSE(at_stage);

  // Restored: to stage 2 of the frame's session, never into the store.
  r->dispatch(frame_of(5, messages::backup_route{17, 40, "lm_head.weight", true, 2}, state));
  bool restored = false;
  stage->receive(
      [&](actors::tensor_frame& f) {
        restored = true;
        const auto& route = std::get<messages::backup_route>(f.descriptor.route);
        CHECK(route.restore);
        CHECK(route.stage == 2);
        CHECK(route.name == "lm_head.weight");
        REQUIRE(f.tensors.size() == 3);
        CHECK(at::equal(f.tensors[2], v));
      },
      caf::after(std::chrono::seconds(5)) >> [] {});
  CHECK(restored);
  CHECK(stored.size() == delivered);
  CHECK(r->counts().delivered == delivered + 1);

  // A restore for a stage or session not here is rejected, not stored.
  r->dispatch(frame_of(6, messages::backup_route{17, 40, "w", true, 2}, state));
  CHECK(r->counts().last_rejection.find("a backup frame for stage 2 of session 6, which is not here") != std::string::npos);
  r->dispatch(frame_of(5, messages::backup_route{17, 40, "w", true, 3}, state));
  CHECK(r->counts().last_rejection.find("a backup frame for stage 3 of session 5, which is not here") != std::string::npos);
  CHECK(stored.size() == delivered);
  CHECK(r->counts().no_handler == 2);

  // Without a store, a backup frame is counted and named.
  r->remove(router::handler_kind::backup, 0, 0);
  r->dispatch(frame_of(5, messages::backup_route{17, 40, "w", false, 0}, state));
  auto counts = r->counts();
  CHECK(counts.no_handler == 3);
  CHECK(counts.unknown_route == 0);
  CHECK(counts.delivered == delivered + 1);
  CHECK(counts.last_rejection.find("a backup frame from 127.0.0.1:9, but nothing here holds backups") != std::string::npos);
  CHECK(stored.size() == delivered);

  auto bare = std::make_shared<router>("bare");
  bare->dispatch(frame_of(0, messages::backup_route{1, 2, "w", false, 0}, state));
  counts = bare->counts();
  CHECK(counts.delivered == 0);
  CHECK(counts.no_handler == 1);
  CHECK(counts.last_rejection.find("nothing here holds backups") != std::string::npos);
}
