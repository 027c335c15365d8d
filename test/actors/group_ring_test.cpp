// A tensor-parallel group's ring over real data planes (actors/group_ring.hpp):
// every member ends an all-reduce with the same bits, equal to the sum of
// the partials, for 2, 3 and 5 members and tensors that do not divide
// evenly, computed whole or in column tiles; reduce-scatters by uneven rows
// and all-gathers by rows or columns give the pieces; pieces of another
// deployment are dropped; a member that does not take part fails the others'
// step by its deadline, named.

#include "actors/group_ring.hpp"
#include "base/tensor_slice.hpp"

#include <ATen/ATen.h>
#include <numeric>
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <functional>
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

std::vector<member> ring_of(int n, std::chrono::milliseconds deadline = 5000ms, std::uint64_t deployment = 1,
                            int tiles = 1) {
  std::vector<std::string> names;
  for (int m = 0; m < n; ++m) names.push_back("m" + std::to_string(m));
  std::vector<member> members(static_cast<std::size_t>(n));
  for (int m = 0; m < n; ++m) {
    auto& me = members[static_cast<std::size_t>(m)];
    me.routes = std::make_shared<actors::router>(names[static_cast<std::size_t>(m)]);
    me.plane = std::make_unique<messages::data_plane>(messages::data_plane_options{}, actors::tensor_allocator(),
                                                      actors::router::handler_of(me.routes),
                                                      [](const std::string&, const std::string&) {});
    me.ring = std::make_shared<actors::group_ring>(actors::group_ring::options{session, group, m, names, deadline, nullptr, tiles});
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

// `op(m)` on every member m at once (each blocks until the others' pieces come).
std::vector<at::Tensor> on_every_member(std::vector<member>& members, const std::function<at::Tensor(std::size_t)>& op) {
  std::vector<at::Tensor> out(members.size());
  std::vector<std::string> errors(members.size());
  std::vector<std::thread> threads;
  for (std::size_t m = 0; m < members.size(); ++m)
    threads.emplace_back([&, m] {
      try {
        out[m] = op(m);
      } catch (const std::exception& e) {
        errors[m] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  for (const auto& e : errors) REQUIRE_MESSAGE(e.empty(), e);
  return out;
}

std::vector<at::Tensor> all_reduce(std::vector<member>& members, const std::vector<at::Tensor>& partials,
                                   actors::collective_key key) {
  return on_every_member(members, [&](std::size_t m) { return members[m].ring->all_reduce(partials[m], key); });
}

// A partial sum that counts the column tiles asked of it.
compute::partial_sum counted(const at::Tensor& whole, std::atomic<int>& tiles) {
  return compute::partial_sum(whole.size(0), whole.size(1), [whole, &tiles](std::int64_t b, std::int64_t e) {
    ++tiles;
    return whole.narrow(1, b, e - b);
  });
}

}  // namespace

TEST_CASE("a ring all-reduce gives every member the same bits, the sum of the partials") {
  for (int n : {2, 3, 5}) {
    CAPTURE(n);
    auto members = ring_of(n);
    // A decode row and a small block gather whole partials (n - 1 pieces in,
    // or 1 for a swap); 32 rows of 768 are over gathered_all_reduce_bytes and
    // take the ring (2 (n - 1) pieces in).
    for (auto shape : {std::vector<std::int64_t>{1, 768}, std::vector<std::int64_t>{7, 13},
                       std::vector<std::int64_t>{32, 768}}) {
      CAPTURE(shape);
      const bool gathered = shape[0] * shape[1] * 4 <= gathered_all_reduce_bytes;
      const auto pieces_each = static_cast<std::uint64_t>(n == 2 ? 1 : gathered ? n - 1 : 2 * (n - 1));
      std::vector<std::uint64_t> before;
      for (const auto& m : members) before.push_back(m.ring->pieces_received());
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
      for (std::size_t m = 0; m < members.size(); ++m)
        CHECK(members[m].ring->pieces_received() - before[m] == 3 * pieces_each);
    }
  }
}

TEST_CASE("tiled all-reduces, reduce-scatters by uneven rows and all-gathers give the sums and pieces, the same on every member") {
  for (int n : {2, 3, 5}) {
    for (int tiles : {1, 3}) {
      CAPTURE(n);
      CAPTURE(tiles);
      auto members = ring_of(n, 5000ms, 1, tiles);
      // Wide enough to be over gathered_all_reduce_bytes: tiles apply to the ring.
      const std::int64_t rows = 2 * n + 1, width = 4000;
      std::vector<at::Tensor> partials;
      at::Tensor expected;
      for (int m = 0; m < n; ++m) {
        partials.push_back(at::randn({rows, width}, at::kFloat));
        expected = m == 0 ? partials.back().clone() : expected + partials.back();
      }
      // Tiles: each member computes its partial in `tiles` column ranges.
      std::atomic<int> asked{0};
      auto sums = on_every_member(members, [&](std::size_t m) {
        return members[m].ring->all_reduce(counted(partials[m], asked), {8, 1, 4});
      });
      CHECK(asked.load() == n * tiles);
      for (const auto& sum : sums) {
        CHECK(at::equal(sum, sums.front()));
        CHECK(at::allclose(sum, expected, 1e-5, 1e-6));
      }
      // Member m's rows: 1, 2, 1, 2, ... plus the remainder on the last.
      std::vector<std::int64_t> split;
      for (int m = 0; m < n; ++m) split.push_back(1 + m % 2);
      split.back() += rows - std::accumulate(split.begin(), split.end(), std::int64_t{0});
      asked = 0;
      auto mine = on_every_member(members, [&](std::size_t m) {
        return members[m].ring->reduce_scatter(counted(partials[m], asked), split, {8, 1, 5});
      });
      CHECK(asked.load() == n * tiles);
      std::int64_t begin = 0;
      for (int m = 0; m < n; ++m) {
        const auto count = split[static_cast<std::size_t>(m)];
        CHECK(mine[static_cast<std::size_t>(m)].sizes() == at::IntArrayRef{count, width});
        CHECK(at::allclose(mine[static_cast<std::size_t>(m)], expected.narrow(0, begin, count), 1e-5, 1e-6));
        begin += count;
      }
      // The all-gather puts the members' rows back together, in rank order, bitwise.
      auto gathered = on_every_member(members, [&](std::size_t m) { return members[m].ring->all_gather(mine[m], {8, 1, 6}); });
      for (const auto& g : gathered) CHECK(at::equal(g, at::cat(mine)));
      // And along columns, members of different widths (a vocabulary split).
      auto columns = on_every_member(members, [&](std::size_t m) {
        return members[m].ring->all_gather(partials[m].narrow(1, 0, static_cast<std::int64_t>(m) + 1), {8, 1, 7}, 1);
      });
      std::vector<at::Tensor> expected_columns;
      for (int m = 0; m < n; ++m) expected_columns.push_back(partials[static_cast<std::size_t>(m)].narrow(1, 0, m + 1));
      for (const auto& c : columns) CHECK(at::equal(c, at::cat(expected_columns, 1)));
    }
  }
  CHECK(actors::proportional_rows({88, 176, 88}, 10) == std::vector<std::int64_t>{3, 5, 2});
  CHECK(actors::proportional_rows({1, 1}, 1) == std::vector<std::int64_t>{1, 0});
  CHECK(actors::proportional_rows({}, 7) == std::vector<std::int64_t>{7});
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
