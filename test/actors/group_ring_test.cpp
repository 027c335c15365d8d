// A tensor-parallel group's ring over real data planes (actors/group_ring.hpp):
// every member ends an all-reduce with the same bits, equal to the sum of
// the partials, for 2, 3 and 5 members and tensors that do not divide
// evenly; pieces of another deployment are dropped; a member that does not
// take part fails the others' step by its deadline, named.

#include "actors/group_ring.hpp"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "actors/router.hpp"
#include "actors/tensor_frame.hpp"
#include "messages/data_plane.hpp"

using namespace orrery;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t session = 77;
constexpr std::uint32_t group = 3;

// One member: its data plane, its router and its ring.
struct member {
  std::shared_ptr<actors::router> routes;
  std::unique_ptr<messages::data_plane> plane;
  std::shared_ptr<actors::group_ring> ring;
};

std::vector<member> ring_of(int n, std::chrono::milliseconds deadline = 5000ms, std::uint64_t deployment = 1) {
  std::vector<std::string> names;
  for (int m = 0; m < n; ++m) names.push_back("m" + std::to_string(m));
  std::vector<member> members(static_cast<std::size_t>(n));
  for (int m = 0; m < n; ++m) {
    auto& me = members[static_cast<std::size_t>(m)];
    me.routes = std::make_shared<actors::router>(names[static_cast<std::size_t>(m)]);
    me.plane = std::make_unique<messages::data_plane>(messages::data_plane_options{}, actors::tensor_allocator(),
                                                      actors::router::handler_of(me.routes),
                                                      [](const std::string&, const std::string&) {});
    me.ring = std::make_shared<actors::group_ring>(actors::group_ring::options{session, group, m, names, deadline});
    me.routes->add_sink(actors::router::handler_kind::group, session, group,
                        [ring = std::weak_ptr<actors::group_ring>(me.ring)](actors::tensor_frame f) {
                          if (auto r = ring.lock()) r->deliver(std::move(f));
                        });
  }
  for (int m = 0; m < n; ++m) {
    const auto& next = members[static_cast<std::size_t>((m + 1) % n)];
    members[static_cast<std::size_t>(m)].ring->connect(members[static_cast<std::size_t>(m)].plane->connect("127.0.0.1", next.plane->port(), 2000ms),
                                                       deployment);
  }
  return members;
}

// Every member's all-reduce of its partial, run at once.
std::vector<at::Tensor> all_reduce(std::vector<member>& members, const std::vector<at::Tensor>& partials,
                                   actors::collective_key key) {
  std::vector<at::Tensor> sums(members.size());
  std::vector<std::string> errors(members.size());
  std::vector<std::thread> threads;
  for (std::size_t m = 0; m < members.size(); ++m)
    threads.emplace_back([&, m] {
      try {
        sums[m] = members[m].ring->all_reduce(partials[m], key);
      } catch (const std::exception& e) {
        errors[m] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE(e.empty());
  return sums;
}

}  // namespace

TEST_CASE("a ring all-reduce gives every member the same bits, the sum of the partials") {
  for (int n : {2, 3, 5}) {
    CAPTURE(n);
    auto members = ring_of(n);
    for (auto shape : {std::vector<std::int64_t>{1, 768}, std::vector<std::int64_t>{7, 13}}) {
      std::vector<at::Tensor> partials;
      at::Tensor expected;
      for (int m = 0; m < n; ++m) {
        partials.push_back(at::randn(shape, at::kFloat));
        expected = m == 0 ? partials.back().clone() : expected + partials.back();
      }
      for (std::uint32_t sequence = 0; sequence < 3; ++sequence) {
        auto sums = all_reduce(members, partials, {41, 2, sequence});
        for (const auto& sum : sums) {
          CHECK(sum.sizes() == expected.sizes());
          CHECK(at::equal(sum, sums.front()));  // bitwise, on every member
          CHECK(at::allclose(sum, expected, 1e-5, 1e-6));
        }
      }
    }
    for (const auto& m : members) CHECK(m.ring->pieces_received() > 0);
  }
}

TEST_CASE("a member that sends nothing fails the step by the deadline, named; another deployment's pieces are dropped") {
  auto members = ring_of(3, 300ms);
  // m2 never takes part: m0 waits on it (its ring predecessor) and says so.
  std::string error;
  std::thread m1([&] {
    try {
      members[1].ring->all_reduce(at::ones({4}), {5, 0, 0});
    } catch (const std::exception&) {
    }
  });
  try {
    members[0].ring->all_reduce(at::ones({4}), {5, 0, 0});
  } catch (const std::exception& e) {
    error = e.what();
  }
  m1.join();
  CHECK(error.find("group member 'm2' sent no piece of collective 0") != std::string::npos);
  CHECK(error.find("of request 5 step 0 within 300 ms") != std::string::npos);

  // m1 rewired for deployment 2: what m0 sends for deployment 1 no longer counts.
  members[1].ring->connect(members[1].plane->connect("127.0.0.1", members[2].plane->port(), 2000ms), 2);
  const auto dropped = members[1].ring->pieces_dropped();
  std::thread late([&] {
    try {
      members[0].ring->all_reduce(at::ones({4}), {6, 0, 0});
    } catch (const std::exception&) {
    }
  });
  late.join();
  CHECK(members[1].ring->pieces_dropped() > dropped);
}
