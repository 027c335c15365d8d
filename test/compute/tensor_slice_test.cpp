// Tensor-parallel slices of a shard (compute/tensor_slice.hpp): members that
// hold whole query heads with the KV heads they read and a range of MLP
// columns, their partial sums added after the attention and the MLP, give
// the whole model's logits within 1e-5 relative (fp32: only the order of
// the sums differs) and its greedy tokens, for even and uneven splits, cuts
// inside a KV group, 2 and 3 members. The sums here are in memory; the
// data-plane ring is actors/group_ring's (test/actors/group_ring_test.cpp).

#include "compute/tensor_slice.hpp"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::tensor_slice;
using orrery::test::temp_dir;

namespace {

// Every member's tensor handed to every member, in rank order: what the
// ring's collectives move, without the wire.
class memory_group {
 public:
  explicit memory_group(int members) : parts_(static_cast<std::size_t>(members)) {}

  std::vector<at::Tensor> exchange(int rank, const at::Tensor& mine) {
    std::unique_lock lock(mutex_);
    const auto round = round_;
    parts_[static_cast<std::size_t>(rank)] = mine;
    if (++arrived_ == static_cast<int>(parts_.size())) {
      all_ = parts_;
      arrived_ = 0;
      ++round_;
      done_.notify_all();
    } else {
      done_.wait(lock, [&] { return round_ != round; });
    }
    return all_;
  }

  // Summed in rank order, as the ring's sums are within rounding.
  at::Tensor all_reduce(int rank, const at::Tensor& partial) {
    auto parts = exchange(rank, partial);
    auto sum = parts.front().clone();
    for (std::size_t m = 1; m < parts.size(); ++m) sum += parts[m];
    return sum;
  }

 private:
  std::mutex mutex_;
  std::condition_variable done_;
  std::vector<at::Tensor> parts_, all_;
  int arrived_ = 0;
  std::uint64_t round_ = 0;
};

struct split {
  std::vector<int> heads, columns;
  /// Prefill rows per member under sequence parallelism; empty: all-reduces.
  std::vector<std::int64_t> prefill_rows{};
};

// Prefill of `prompt`, then `steps` greedy decode steps: each step's logits.
std::vector<at::Tensor> run_whole(const model_dir& model, const std::vector<std::int64_t>& prompt, int steps) {
  shard whole(model, 0, model.config().num_layers, {at::kCPU, at::kFloat, nullptr});
  auto cache = whole.new_cache(64);
  std::vector<at::Tensor> out;
  at::Tensor input = at::tensor(prompt, at::kLong);
  for (int s = 0; s <= steps; ++s) {
    out.push_back(whole.forward(input, {{&cache, static_cast<int>(input.size(0))}}));
    input = out.back().argmax(-1).reshape({1});
  }
  return out;
}

// The same over a group: member m holds slice m; every member feeds the
// leader's greedy token back in (as the pipeline does); the leader's logits.
std::vector<at::Tensor> run_group(const model_dir& model, const split& shares, const std::vector<std::int64_t>& prompt,
                                  int steps) {
  const auto slices = tensor_slices(model.config(), shares.heads, shares.columns);
  const int n = static_cast<int>(slices.size());
  memory_group group(n);
  std::vector<shard> members;
  for (int m = 0; m < n; ++m) {
    shard_options options{at::kCPU, at::kFloat, nullptr};
    options.slice = slices[static_cast<std::size_t>(m)];
    members.emplace_back(model, 0, model.config().num_layers, options);
  }
  std::vector<std::vector<at::Tensor>> outputs(static_cast<std::size_t>(n));
  std::mutex next_mutex;
  std::condition_variable next_ready;
  std::vector<at::Tensor> next(static_cast<std::size_t>(steps + 1));
  std::vector<std::thread> threads;
  for (int m = 0; m < n; ++m) {
    threads.emplace_back([&, m] {
      auto& member = members[static_cast<std::size_t>(m)];
      auto cache = member.new_cache(64);
      layer_context reduced, sequence_parallel;
      reduced.collective = [&](int, collective_point, const partial_sum& partial) {
        return group.all_reduce(m, partial.whole());
      };
      if (!shares.prefill_rows.empty()) {
        std::int64_t begin = 0;
        for (int r = 0; r < m; ++r) begin += shares.prefill_rows[static_cast<std::size_t>(r)];
        const auto end = begin + shares.prefill_rows[static_cast<std::size_t>(m)];
        sequence_parallel.sequence = sequence_split{
            begin, end,
            [&, begin, end](int, collective_point, const partial_sum& partial) {
              return group.all_reduce(m, partial.whole()).narrow(0, begin, end - begin);
            },
            [&](int, collective_point, const at::Tensor& rows) { return at::cat(group.exchange(m, rows)); }};
      }
      at::Tensor input = at::tensor(prompt, at::kLong);
      for (int s = 0; s <= steps; ++s) {
        // Sequence parallelism splits the prompt's rows; a decode step's one
        // row all-reduces.
        const auto& context = s == 0 && sequence_parallel.sequence ? sequence_parallel : reduced;
        // Each member's logits are its vocabulary rows': put side by side.
        auto out = at::cat(group.exchange(m, member.forward(input, {{&cache, static_cast<int>(input.size(0))}}, context)), 1);
        std::unique_lock lock(next_mutex);
        if (m == 0) {
          outputs[0].push_back(out);
          next[static_cast<std::size_t>(s)] = out.argmax(-1).reshape({1});
          next_ready.notify_all();
        } else {
          next_ready.wait(lock, [&] { return next[static_cast<std::size_t>(s)].defined(); });
        }
        input = next[static_cast<std::size_t>(s)];
      }
    });
  }
  for (auto& t : threads) t.join();
  return outputs[0];
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

}  // namespace

TEST_CASE("slices cover every head and column once; a cut inside a KV group replicates that KV head") {
  auto config = llama_config::preset("small");  // 12 heads over 4 KV heads: 3 query heads a KV head
  auto even = tensor_slices(config, {6, 6}, {1024, 1024});
  // The LM head's 32000 rows go in proportion to the columns.
  CHECK(even[0] == tensor_slice{0, 6, 0, 2, 0, 1024, 0, 16000});
  CHECK(even[1] == tensor_slice{6, 12, 2, 4, 1024, 2048, 16000, 32000});
  auto uneven = tensor_slices(config, {4, 8}, {700, 1348});
  CHECK(uneven[0] == tensor_slice{0, 4, 0, 2, 0, 700, 0, 10938});  // head 3 reads KV head 1 ...; 10937.5 rounds up (tie: lower rank)
  CHECK(uneven[1] == tensor_slice{4, 12, 1, 4, 700, 2048, 10938, 32000});  // ... and so do heads 4 and 5: both hold it
  CHECK(kv_head_of(config, uneven[1], 0) == 0);  // global head 4 -> KV head 1, local 0
  CHECK(kv_head_of(config, uneven[1], 2) == 1);  // global head 6 -> KV head 2
  auto five = tensor_slices(config, {2, 3, 2, 3, 2}, {400, 400, 400, 400, 448});
  CHECK(five.back() == tensor_slice{10, 12, 3, 4, 1600, 2048, 25000, 32000});
  CHECK(whole_layer(config).describe() == "heads [0, 12) (kv [0, 4)), columns [0, 2048), vocab [0, 32000)");
  CHECK_THROWS_WITH_AS(tensor_slices(config, {6, 5}, {1024, 1024}),
                       "a tensor-parallel split of 11 heads (6, 5) and 2048 MLP columns (1024, 1024) does not cover "
                       "the model's 12 heads and 2048 columns",
                       model_error);
  CHECK_THROWS_WITH_AS(tensor_slices(config, {12, 0}, {1024, 1024}),
                       "member 1 of a tensor-parallel split gets 0 heads and 1024 MLP columns; every member needs at "
                       "least one of each",
                       model_error);
}

TEST_CASE("a group's summed partials give the whole model's logits within 1e-5 and its greedy tokens, with and without sequence parallelism") {
  temp_dir dir;
  init_model(dir / "m", llama_config::preset("tiny"), {21, 0, {}});  // 4 heads over 2 KV heads
  model_dir model(dir / "m");
  const std::vector<std::int64_t> prompt = {256, 72, 101, 108, 108, 111, 44, 32, 111, 114};
  const int steps = 12;
  const auto whole = run_whole(model, prompt, steps);
  for (const split& shares : {split{{2, 2}, {176, 176}},          // even, on KV-group boundaries
                              split{{1, 3}, {100, 252}},          // uneven, cut inside KV group 0
                              split{{1, 2, 1}, {88, 176, 88}},    // three members, speeds 1:2:1
                              split{{1, 1, 1, 1}, {1, 1, 1, 349}},  // one column is a share too
                              split{{2, 2}, {176, 176}, {5, 5}},     // sequence parallelism, even rows
                              split{{1, 2, 1}, {88, 176, 88}, {2, 6, 2}},  // SP, rows 1:3:1
                              split{{1, 3}, {100, 252}, {1, 9}}}) {  // SP, one row for a member
    CAPTURE(shares.heads.size());
    CAPTURE(shares.heads[0]);
    CAPTURE(shares.prefill_rows.size());
    const auto group = run_group(model, shares, prompt, steps);
    REQUIRE(group.size() == whole.size());
    for (std::size_t s = 0; s < whole.size(); ++s) {
      CAPTURE(s);
      CHECK(relative_error(group[s], whole[s]) < 1e-5);
      CHECK(group[s].argmax(-1).item<std::int64_t>() == whole[s].argmax(-1).item<std::int64_t>());
    }
  }
}

TEST_CASE("a member loads only its rows and columns, and its rows of the LM head") {
  temp_dir dir;
  init_model(dir / "m", llama_config::preset("tiny"), {22, 0, {}});
  model_dir model(dir / "m");
  const auto& c = model.config();
  auto slices = tensor_slices(c, {1, 3}, {100, 252});
  shard_options options{at::kCPU, at::kFloat, nullptr};
  options.slice = slices[1];
  shard member(model, 0, c.num_layers, options);
  shard whole(model, 0, c.num_layers, {at::kCPU, at::kFloat, nullptr});
  const auto& w = member.layers().front();
  CHECK(w.qkv.size(0) == (3 + 2 * 2) * c.head_dim);  // heads 1..3 read KV heads 0 and 1
  CHECK(w.qkv.size(1) == c.hidden_size);
  CHECK(w.o.size(0) == c.hidden_size);
  CHECK(w.o.size(1) == 3 * c.head_dim);
  CHECK(w.gate_up.size(0) == 2 * 252);
  CHECK(w.down.size(1) == 252);
  // The LM head's rows in proportion to the columns: 252 of 352.
  CHECK(slices[1].vocab_begin == slices[0].vocab_end);
  CHECK(slices[1].vocab_end == c.vocab_size);
  CHECK(slices[1].vocab() == 367);  // 512 x 252 / 352 = 366.5: the larger remainder rounds up
  CHECK(member.has_head());
  CHECK(at::equal(member.head(), whole.head().narrow(0, slices[1].vocab_begin, slices[1].vocab())));
  CHECK(member.new_cache(8).keys(0).size(0) == 2);
  // The leader's own slice at the same place as the whole model's rows.
  options.slice = slices[0];
  shard leader(model, 0, c.num_layers, options);
  CHECK(leader.has_head());
  CHECK(at::equal(leader.layers().front().down, whole.layers().front().down.narrow(1, 0, 100)));
  CHECK(at::equal(leader.layers().front().qkv.narrow(0, 0, c.head_dim), whole.layers().front().qkv.narrow(0, 0, c.head_dim)));
  CHECK(leader.weight_bytes() < whole.weight_bytes());
  // A slice whose KV heads are not those its query heads read, or that lies
  // outside the layer, is refused, named.
  for (const auto& bad : {tensor_slice{0, 2, 0, 2, 0, 100, 0, 10}, tensor_slice{2, 5, 1, 3, 0, 100, 0, 10},
                          tensor_slice{0, 2, 0, 1, 300, 400, 0, 10}, tensor_slice{0, 2, 0, 1, 0, 100, 0, 0},
                          tensor_slice{0, 2, 0, 1, 0, 100, 10, c.vocab_size + 1}}) {
    options.slice = bad;
    CHECK_THROWS_WITH_AS(shard(model, 0, c.num_layers, options),
                         doctest::Contains((bad.describe() + " is not a slice of a layer of 4 heads (2 KV heads), 352 MLP columns and a vocabulary of " + std::to_string(c.vocab_size)).c_str()),
                         model_error);
  }
}
