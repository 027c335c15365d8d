// A node's store of weight backups: what it keeps (the newest rounds of the
// newest runs), what it refuses (frames that are not one parameter's weights
// and two moments), and send_backup filling a neighbour's store over a real
// data plane, bit for bit.

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <chrono>
#include <limits>
#include <stdexcept>
#include <thread>

#include "actors/backup_store.hpp"
#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/scalar_type.hpp"
#include "messages/data_plane.hpp"

using namespace orrery;
using actors::backed_up_parameter;
using actors::backup_store;
using namespace std::chrono_literals;

namespace {

// A parameter of `shape` whose weights and moments are told apart by `seed`.
backed_up_parameter parameter(const std::string& name, std::vector<std::int64_t> shape, double seed = 0) {
  const auto n = at::ones(shape, at::kFloat).numel();
  std::vector<at::Tensor> state;
  for (int k = 0; k < 3; ++k) state.push_back((at::arange(n, at::kFloat) + seed + 1000 * k).view(shape));
  return {name, state};
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.contiguous().view(at::kInt), b.contiguous().view(at::kInt));
}

// A backup frame as the router hands it over, its layouts matching `tensors`
// (of role `role` each).
actors::tensor_frame backup_frame(const std::string& name, std::vector<at::Tensor> tensors,
                                  messages::tensor_role role = messages::tensor_role::state) {
  actors::tensor_frame f;
  f.descriptor.session = 3;
  f.descriptor.route = messages::backup_route{21, 8, name, false, 0};
  for (const auto& t : tensors)
    f.descriptor.tensors.push_back({role, compute::element_type_of(t.scalar_type()), t.sizes().vec(), static_cast<std::uint64_t>(t.nbytes())});
  f.tensors = std::move(tensors);
  return f;
}

}  // namespace

TEST_CASE("a backup store holds each parameter of a round, names those it lacks and refuses a missing one by name") {
  backup_store store;
  CHECK(store.bytes() == 0);
  CHECK(store.missing(1, 2, {"a", "b"}) == std::vector<std::string>{"a", "b"});
  CHECK(store.missing(1, 2, {}).empty());

  const auto a = parameter("a", {2, 3}, 1), b = parameter("b", {4}, 2);
  store.put(1, 2, a);
  store.put(1, 2, b);
  CHECK(store.missing(1, 2, {"c", "a", "d", "b"}) == std::vector<std::string>{"c", "d"});
  CHECK(store.missing(1, 4, {"a"}) == std::vector<std::string>{"a"});  // another round
  CHECK(store.missing(7, 2, {"a"}) == std::vector<std::string>{"a"});  // another run
  CHECK(store.bytes() == 3 * (6 + 4) * sizeof(float));

  // In the order asked, each with its three tensors as put.
  const auto got = store.get(1, 2, {"b", "a"});
  REQUIRE(got.size() == 2);
  CHECK(got[0].name == "b");
  CHECK(got[1].name == "a");
  for (const auto& [held, put] : {std::pair{got[0], b}, std::pair{got[1], a}}) {
    REQUIRE(held.state.size() == 3);
    for (std::size_t k = 0; k < 3; ++k) CHECK(bit_equal(held.state[k], put.state[k]));
  }
  CHECK(store.get(1, 2, {}).empty());

  CHECK_THROWS_WITH_AS(store.get(1, 2, {"a", "missing.weight", "b"}), doctest::Contains("'missing.weight'"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(store.get(1, 4, {"a"}), doctest::Contains("no backup of 'a' after round 4 of run 1"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(store.get(9, 2, {"b"}), doctest::Contains("'b'"), std::invalid_argument);

  // A second copy of a parameter in the same round replaces the first.
  const auto newer = parameter("a", {2, 3}, 50);
  store.put(1, 2, newer);
  CHECK(bit_equal(store.get(1, 2, {"a"})[0].state[0], newer.state[0]));
  CHECK(store.bytes() == 3 * (6 + 4) * sizeof(float));
}

TEST_CASE("a backup store keeps the newest two rounds of a run and the four runs written last") {
  static_assert(backup_store::rounds_kept == 2 && backup_store::runs_kept == 4);
  backup_store store;
  const std::vector<std::string> names = {"w"};
  store.put(1, 2, parameter("w", {3}, 2));
  store.put(1, 4, parameter("w", {3}, 4));
  CHECK(store.missing(1, 2, names).empty());
  CHECK(store.missing(1, 4, names).empty());
  store.put(1, 6, parameter("w", {3}, 6));  // the oldest round goes
  CHECK(store.missing(1, 2, names) == names);
  CHECK(store.missing(1, 4, names).empty());
  CHECK(store.missing(1, 6, names).empty());
  CHECK(store.bytes() == 2 * 3 * 3 * sizeof(float));
  // Writing the newest round again drops nothing.
  store.put(1, 6, parameter("v", {3}, 6));
  CHECK(store.missing(1, 4, names).empty());
  CHECK(store.missing(1, 6, {"w", "v"}).empty());
  CHECK(bit_equal(store.get(1, 6, names)[0].state[2], parameter("w", {3}, 6).state[2]));
  // An older round written after a newer one (the run went back to a
  // checkpoint before it) drops the newer: those steps are done again.
  store.put(1, 5, parameter("w", {3}, 5));
  CHECK(store.missing(1, 6, {"w", "v"}) == std::vector<std::string>{"w", "v"});
  CHECK(store.missing(1, 4, names).empty());
  CHECK(store.missing(1, 5, names).empty());
  store.put(1, 2, parameter("w", {3}, 2));  // older than both kept: it is kept, they go
  CHECK(store.missing(1, 2, names).empty());
  CHECK(store.missing(1, 4, names) == names);
  CHECK(store.missing(1, 5, names) == names);
  store.put(1, 4, parameter("w", {3}, 4));
  store.put(1, 4, parameter("v", {3}, 4));
  store.put(1, 6, parameter("w", {3}, 6));

  // Runs 2, 3, 4 written after 1; then 1 again: run 2 is the least recently
  // written and goes when a fifth run comes.
  for (std::uint64_t run : {2, 3, 4}) store.put(run, 2, parameter("w", {3}, static_cast<double>(run)));
  store.put(1, 6, parameter("w", {3}, 6));
  for (std::uint64_t run : {1, 2, 3, 4}) {
    CAPTURE(run);
    CHECK(store.missing(run, run == 1 ? 6 : 2, names).empty());
  }
  store.put(5, 2, parameter("w", {3}));
  CHECK(store.missing(2, 2, names) == names);
  for (std::uint64_t run : {1, 3, 4, 5}) {
    CAPTURE(run);
    CHECK(store.missing(run, run == 1 ? 6 : 2, names).empty());
  }
  CHECK(store.missing(1, 4, {"w", "v"}).empty());  // a run that stays keeps its rounds
}

TEST_CASE("a forgotten run's backups are gone, and the runs kept are counted without it") {
  backup_store store;
  for (std::uint64_t run : {1, 2, 3, 4}) store.put(run, 5, parameter("w", {2, 2}));
  CHECK(store.bytes() == 4 * 3 * 4 * sizeof(float));
  store.forget(2);
  CHECK(store.missing(2, 5, {"w"}) == std::vector<std::string>{"w"});
  CHECK_THROWS_AS(store.get(2, 5, {"w"}), std::invalid_argument);
  CHECK(store.bytes() == 3 * 3 * 4 * sizeof(float));
  store.forget(2);   // again: nothing happens
  store.forget(99);  // never held
  CHECK(store.bytes() == 3 * 3 * 4 * sizeof(float));

  // Three runs left: a fourth drops none of them, a fifth the oldest.
  store.put(6, 1, parameter("w", {2, 2}));
  for (std::uint64_t run : {1, 3, 4, 6}) CHECK(store.missing(run, run == 6 ? 1 : 5, {"w"}).empty());
  store.put(7, 1, parameter("w", {2, 2}));
  CHECK(store.missing(1, 5, {"w"}) == std::vector<std::string>{"w"});
  for (std::uint64_t run : {3, 4}) CHECK(store.missing(run, 5, {"w"}).empty());
  for (std::uint64_t run : {6, 7}) CHECK(store.missing(run, 1, {"w"}).empty());

  // A forgotten run written again is a run like any other.
  store.forget(3);
  store.put(3, 9, parameter("w", {2, 2}));
  CHECK(store.missing(3, 5, {"w"}) == std::vector<std::string>{"w"});
  CHECK(store.missing(3, 9, {"w"}).empty());
  CHECK(store.bytes() == 4 * 3 * 4 * sizeof(float));
  for (auto run : {3, 4, 6, 7}) store.forget(static_cast<std::uint64_t>(run));
  CHECK(store.bytes() == 0);
}

TEST_CASE("a backup frame is stored only when it is one parameter's three float32 state tensors of one shape") {
  const auto p = parameter("model.layers.1.mlp.down_proj.weight", {3, 4}, 7);
  const auto& name = p.name;

  backup_store store;
  auto good = backup_frame(name, p.state);
  const auto state = actors::backup_state_of(good);
  REQUIRE(state.size() == 3);
  for (std::size_t k = 0; k < 3; ++k) CHECK(bit_equal(state[k], p.state[k]));
  store.receive(good);
  // Under the route's run, round and name.
  CHECK(store.missing(21, 8, {name}).empty());
  const auto held = store.get(21, 8, {name});
  for (std::size_t k = 0; k < 3; ++k) CHECK(bit_equal(held[0].state[k], p.state[k]));
  CHECK(store.bytes() == 3 * 12 * sizeof(float));

  const auto w = p.state[0], m = p.state[1], v = p.state[2];
  struct malformed {
    const char* what;
    actors::tensor_frame frame;
  };
  const std::vector<malformed> frames = {
      {"two tensors", backup_frame(name, {w, m})},
      {"four tensors", backup_frame(name, {w, m, v, v})},
      {"no tensors", backup_frame(name, {})},
      {"a float16 moment", backup_frame(name, {w, m, v.to(at::kHalf)})},
      {"int32 moments", backup_frame(name, {w, m.to(at::kInt), v.to(at::kInt)})},
      {"bfloat16 weights", backup_frame(name, {w.to(at::kBFloat16), m, v})},
      {"a moment of another shape", backup_frame(name, {w, m.reshape({4, 3}), v})},
      {"a moment of other size", backup_frame(name, {w, m, at::zeros({3, 5})})},
      {"hidden tensors", backup_frame(name, {w, m, v}, messages::tensor_role::hidden)},
  };
  for (const auto& [what, frame] : frames) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(actors::backup_state_of(frame), doctest::Contains(("'" + name + "'").c_str()), std::invalid_argument);
    backup_store empty;
    CHECK_THROWS_WITH_AS(empty.receive(frame), doctest::Contains("three float32 state tensors of one shape"),
                         std::invalid_argument);
    CHECK(empty.bytes() == 0);
    CHECK(empty.missing(21, 8, {name}) == std::vector<std::string>{name});
  }
  // One state layout among others of another role.
  auto mixed = backup_frame(name, {w, m, v});
  mixed.descriptor.tensors[1].role = messages::tensor_role::gradient;
  CHECK_THROWS_AS(actors::backup_state_of(mixed), std::invalid_argument);

  // A frame of another route is no backup at all.
  auto forward = backup_frame(name, {w, m, v});
  forward.descriptor.route = messages::forward_route{1, 2, 3, 4, {}};
  CHECK_THROWS_WITH_AS(actors::backup_state_of(forward), doctest::Contains("not a backup frame"), std::invalid_argument);
  CHECK_THROWS_AS(store.receive(forward), std::invalid_argument);
  CHECK(store.bytes() == 3 * 12 * sizeof(float));  // what it held before stays
}

TEST_CASE("send_backup puts every parameter, bit for bit, into the store behind the receiving data plane's router") {
  // The receiving node, as spawn_node sets it up: its router hands backup
  // frames of every session to its store, on the io thread.
  auto store = std::make_shared<backup_store>();
  auto routes = std::make_shared<actors::router>("holder");
  routes->add_sink(actors::router::handler_kind::backup, 0, 0,
                   [store](actors::tensor_frame frame) { store->receive(std::move(frame)); });
  messages::data_plane holder({}, actors::tensor_allocator(), actors::router::handler_of(routes),
                              [](const std::string&, const std::string&) {});
  messages::data_plane sender({}, actors::tensor_allocator(), [](messages::received_frame) {},
                              [](const std::string&, const std::string&) {});
  auto link = sender.connect("127.0.0.1", holder.port(), 3s);

  // Sizes from a few bytes (sent on the caller's thread) to megabytes; odd
  // bit patterns (NaN, infinities, negative zero, denormals) included.
  std::vector<backed_up_parameter> parameters;
  at::manual_seed(5);
  for (auto [name, shape] : std::vector<std::pair<std::string, std::vector<std::int64_t>>>{
           {"model.embed_tokens.weight", {256, 128}},
           {"model.layers.0.input_layernorm.weight", {128}},
           {"model.layers.0.self_attn.qkv", {384, 128}},
           {"model.layers.0.mlp.gate_up", {704, 128}},
           {"model.norm.weight", {1}},
           {"lm_head.weight", {1024, 1024}}}) {
    backed_up_parameter p{name, {at::randn(shape), at::randn(shape), at::rand(shape)}};
    auto flat = p.state[0].view(-1);
    flat[0] = std::numeric_limits<float>::quiet_NaN();
    if (flat.numel() > 4) {
      flat[1] = -0.0f;
      flat[2] = std::numeric_limits<float>::infinity();
      flat[3] = std::numeric_limits<float>::denorm_min();
    }
    parameters.push_back(std::move(p));
  }
  // A transposed (non-contiguous) weight goes as its values.
  parameters.push_back({"model.layers.0.mlp.down_proj.weight",
                        {at::randn({352, 128}).t(), at::randn({128, 352}), at::rand({128, 352})}});

  messages::backup_route route;
  route.run = 0xABCDEF12345ull;
  route.round = 40;
  route.name = "overwritten by each parameter's";
  actors::send_backup(*link, /*session=*/9, /*deployment=*/2, route, parameters);

  std::vector<std::string> names;
  for (const auto& p : parameters) names.push_back(p.name);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (!store->missing(route.run, route.round, names).empty() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  REQUIRE(store->missing(route.run, route.round, names).empty());
  CHECK(store->missing(route.run, route.round, {route.name}) == std::vector<std::string>{route.name});
  const auto held = store->get(route.run, route.round, names);
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < parameters.size(); ++i) {
    CAPTURE(parameters[i].name);
    REQUIRE(held[i].state.size() == 3);
    for (std::size_t k = 0; k < 3; ++k) {
      CHECK(bit_equal(held[i].state[k], parameters[i].state[k]));
      bytes += parameters[i].state[k].nbytes();
    }
    // Finite values compare equal too (NaN never does).
    CHECK(at::equal(held[i].state[1], parameters[i].state[1]));
  }
  CHECK(store->bytes() == bytes);
  const auto counts = routes->counts();
  CHECK(counts.delivered == parameters.size());
  CHECK(counts.no_handler == 0);

  // Nothing to send: returns at once.
  actors::send_backup(*link, 9, 2, route, {});
  CHECK(store->bytes() == bytes);
}

TEST_CASE("send_backup over a closed link throws naming the link") {
  messages::data_plane holder({}, actors::tensor_allocator(), [](messages::received_frame) {},
                              [](const std::string&, const std::string&) {});
  messages::data_plane sender({}, actors::tensor_allocator(), [](messages::received_frame) {},
                              [](const std::string&, const std::string&) {});
  auto link = sender.connect("127.0.0.1", holder.port(), 3s);
  link->close();
  messages::backup_route route;
  route.run = 1;
  route.round = 2;
  const std::vector<backed_up_parameter> parameters = {parameter("a", {4}), parameter("b", {100000})};
  CHECK_THROWS_WITH_AS(actors::send_backup(*link, 1, 1, route, parameters),
                       doctest::Contains(("sending backups to " + link->peer() + " failed").c_str()), std::runtime_error);
}
