// A shard as a per-layer program with a context (compute/layer_program.hpp):
// the empty context is the plain forward, taps read the residual stream a
// shard cut there would hand on, collectives run between the named parts and
// act exactly as the equivalent weight change, grad mode gives the same
// output and true gradients, and the KV cache's truncate and copy_prefix
// reproduce runs that never went past the kept prefix.

#include "compute/layer_program.hpp"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/safetensors.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

constexpr int tiny_layers = 4, tiny_hidden = 128;

at::Tensor ids(std::vector<std::int64_t> v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

const std::vector<std::int64_t> prompt = {256, 72, 101, 108, 108, 111, 44, 32, 111, 114, 114, 101, 114, 121};
const int prompt_length = static_cast<int>(prompt.size());

shard_options with_pool() {
  return {at::kCPU, at::kFloat, std::make_shared<thread_pool>(2)};
}

// Every product through libtorch's GEMM, whatever the row count.
shard_options stock() {
  return {at::kCPU, at::kFloat, nullptr};
}

// A fresh `tiny` model (4 layers, hidden 128) under `dir`.
std::filesystem::path tiny_model(const temp_dir& dir, std::uint64_t seed) {
  auto path = dir / ("tiny-" + std::to_string(seed));
  init_model(path, llama_config::preset("tiny"), {seed, 0, {}});
  return path;
}

// A copy of the model at `from` with the tensor `name` multiplied by `factor`.
std::filesystem::path scaled_copy(const std::filesystem::path& from, const std::string& name, double factor) {
  auto to = from.parent_path() / (from.filename().string() + "-" + name + "-x" + std::to_string(factor));
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  auto file = safetensors_file::open(from / "model.safetensors");
  std::vector<tensor_source> tensors;
  for (const auto& [tensor_name, view] : file->tensors()) {
    const auto* source = &view;
    const double scale = tensor_name == name ? factor : 1.0;
    tensors.push_back({tensor_name, view.type, view.shape, [source, scale](std::byte* out) {
                         auto original = at::from_blob(const_cast<std::byte*>(source->data), source->shape,
                                                       at::TensorOptions().dtype(scalar_type_of(source->type)));
                         std::memcpy(out, (original * scale).contiguous().data_ptr(), source->nbytes);
                       }});
  }
  write_safetensors(to / "model.safetensors", tensors, file->metadata());
  return to;
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

}  // namespace

TEST_CASE("an empty context, and hooks that change nothing, give bitwise the plain forward") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 3));
  for (const auto& range : {std::pair{0, 4}, std::pair{1, 3}}) {
    const int first = range.first;
    CAPTURE(first);
    shard s(model, first, range.second, with_pool());
    layer_context identity;
    identity.collective = [](int, collective_point, const partial_sum& partial) { return partial.whole(); };
    identity.taps.push_back([](int, layer_point, const at::Tensor&) {});
    const layer_context empty{};
    for (bool hooks : {false, true}) {
      CAPTURE(hooks);
      const layer_context& context = hooks ? identity : empty;
      auto plain_cache = s.new_cache(32), context_cache = s.new_cache(32);
      auto run = [&](const at::Tensor& input, int tokens) {
        CHECK(at::equal(s.forward(input, {{&context_cache, tokens}}, context, logits_rows::all),
                        s.forward(input, {{&plain_cache, tokens}}, logits_rows::all)));
      };
      at::manual_seed(1);
      // A prefill (libtorch's GEMM), then decode steps (orrery's gemv).
      run(first == 0 ? ids(prompt) : at::randn({prompt_length, tiny_hidden}), prompt_length);
      for (int step = 0; step < 4; ++step) run(first == 0 ? ids({40 + step}) : at::randn({1, tiny_hidden}), 1);
    }
  }
}

TEST_CASE("a tap at layer k reads bitwise what the shard [0, k+1) outputs, in layer order, with model layer numbers") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 4));
  shard whole(model, 0, tiny_layers, with_pool());
  std::vector<std::tuple<int, layer_point, at::Tensor>> read;
  layer_context context;
  context.taps.push_back([&](int layer, layer_point point, const at::Tensor& hidden) {
    read.emplace_back(layer, point, hidden.clone());
  });
  auto cache = whole.new_cache(32);
  whole.forward(ids(prompt), {{&cache, prompt_length}}, context);
  REQUIRE(read.size() == 2 * tiny_layers);
  for (int k = 0; k < tiny_layers; ++k) {
    CAPTURE(k);
    const auto& [in_layer, in_point, input] = read[static_cast<std::size_t>(2 * k)];
    const auto& [out_layer, out_point, output] = read[static_cast<std::size_t>(2 * k + 1)];
    CHECK(in_layer == k);
    CHECK(in_point == layer_point::input);
    CHECK(out_layer == k);
    CHECK(out_point == layer_point::output);
    CHECK(output.sizes() == at::IntArrayRef{prompt_length, tiny_hidden});
    if (k > 0) CHECK(at::equal(input, std::get<2>(read[static_cast<std::size_t>(2 * k - 1)])));
    if (k + 1 < tiny_layers) {
      shard front(model, 0, k + 1, with_pool());
      auto front_cache = front.new_cache(32);
      CHECK(at::equal(output, front.forward(ids(prompt), {{&front_cache, prompt_length}})));
    }
  }

  // A middle shard numbers its taps by the model's layers.
  shard middle(model, 1, 3, with_pool());
  read.clear();
  auto middle_cache = middle.new_cache(32);
  at::manual_seed(2);
  auto input = at::randn({3, tiny_hidden});
  auto out = middle.forward(input, {{&middle_cache, 3}}, context);
  REQUIRE(read.size() == 4);
  CHECK(std::get<0>(read[0]) == 1);
  CHECK(at::equal(std::get<2>(read[0]), input));
  CHECK(std::get<0>(read[3]) == 2);
  CHECK(at::equal(std::get<2>(read[3]), out));
}

TEST_CASE("the collective runs after attention and MLP of every layer, on [tokens, hidden] partials whose column tiles make the whole") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 5));
  shard whole(model, 0, tiny_layers, with_pool());
  std::vector<std::tuple<int, collective_point, std::vector<std::int64_t>>> calls;
  layer_context context;
  context.collective = [&](int layer, collective_point point, const partial_sum& partial) {
    auto all = partial.whole();
    calls.emplace_back(layer, point, all.sizes().vec());
    CHECK(partial.rows() == all.size(0));
    CHECK(partial.width() == all.size(1));
    // Tiles of uneven widths, put side by side: the product's own columns
    // (the tiles' GEMMs may block the sum differently: within rounding).
    auto tiles = at::cat({partial.columns(0, 5), partial.columns(5, 77), partial.columns(77, partial.width())}, 1);
    CHECK((tiles - all).abs().max().item<double>() <= 1e-6 * all.abs().max().item<double>());
    return all;
  };
  // A batch of two sequences: the partials hold the rows of both.
  auto a = whole.new_cache(32), b = whole.new_cache(32);
  std::vector<std::int64_t> both = prompt;
  both.insert(both.end(), {256, 7, 8, 9, 10});
  whole.forward(ids(both), {{&a, prompt_length}, {&b, 5}}, context);
  REQUIRE(calls.size() == 2 * tiny_layers);
  const collective_point order[] = {collective_point::attention, collective_point::mlp};
  for (std::size_t i = 0; i < calls.size(); ++i) {
    CAPTURE(i);
    CHECK(std::get<0>(calls[i]) == static_cast<int>(i / 2));
    CHECK(std::get<1>(calls[i]) == order[i % 2]);
    CHECK(std::get<2>(calls[i]) == std::vector<std::int64_t>{prompt_length + 5, tiny_hidden});
  }
  // A decode step's one row goes through orrery's gemv: tiles are bitwise its columns.
  context.collective = [&](int, collective_point, const partial_sum& partial) {
    auto all = partial.whole();
    CHECK(at::equal(at::cat({partial.columns(0, 40), partial.columns(40, partial.width())}, 1), all));
    return all;
  };
  whole.forward(ids({77}), {{&a, 1}}, context);
}

TEST_CASE("sequence parallelism over one member's rows is the plain program, bitwise; it refuses taps and grad mode") {
  // With one member the reduce-scatter hands back the whole sum and the
  // all-gather the rows it got: what is left is the SP program's own order
  // of residual adds and norms, which must be the plain program's.
  temp_dir dir;
  model_dir model(tiny_model(dir, 9));
  for (const auto& range : {std::pair{0, 4}, std::pair{1, 3}}) {
    CAPTURE(range.first);
    shard s(model, range.first, range.second, with_pool());
    std::vector<collective_point> points;
    layer_context sp;
    sp.sequence = sequence_split{0, prompt_length,
                                 [&](int, collective_point point, const partial_sum& partial) {
                                   points.push_back(point);
                                   return partial.whole();
                                 },
                                 [&](int, collective_point point, const at::Tensor& rows) {
                                   points.push_back(point);
                                   return rows;
                                 }};
    at::manual_seed(3);
    auto input = range.first == 0 ? ids(prompt) : at::randn({prompt_length, tiny_hidden});
    auto plain_cache = s.new_cache(32), sp_cache = s.new_cache(32);
    CHECK(at::equal(s.forward(input, {{&sp_cache, prompt_length}}, sp, logits_rows::all),
                    s.forward(input, {{&plain_cache, prompt_length}}, logits_rows::all)));
    const int layers = range.second - range.first;
    REQUIRE(points.size() == static_cast<std::size_t>(4 * layers));
    const collective_point order[] = {collective_point::attention, collective_point::post_norm, collective_point::mlp,
                                      collective_point::layer_end};
    for (std::size_t i = 0; i < points.size(); ++i) CHECK(points[i] == order[i % 4]);
    CHECK(at::equal(sp_cache.keys(0), plain_cache.keys(0)));

    layer_context tapped = sp;
    tapped.taps.push_back([](int, layer_point, const at::Tensor&) {});
    auto cache = s.new_cache(32);
    CHECK_THROWS_WITH_AS(s.forward(input, {{&cache, prompt_length}}, tapped),
                         doctest::Contains("sequence parallelism splits the residual stream"), model_error);
    CHECK(cache.length() == 0);
  }
}

TEST_CASE("a collective that changes a part's output acts bitwise as the equivalent weight change") {
  // attention output = o_proj(...): zeroing it is a zero o-projection;
  // MLP output = down_proj(...): doubling it is a doubled down-projection.
  // Scaling by 0 or 2 is exact in floating point.
  temp_dir dir;
  const auto original = tiny_model(dir, 6);
  struct change {
    int layer;
    collective_point point;
    double factor;
    std::string weight;
  };
  const change changes[] = {{1, collective_point::attention, 0.0, "model.layers.1.self_attn.o_proj.weight"},
                            {3, collective_point::mlp, 2.0, "model.layers.3.mlp.down_proj.weight"}};
  model_dir model(original);
  shard hooked(model, 0, tiny_layers, with_pool());
  for (const auto& c : changes) {
    CAPTURE(c.weight);
    model_dir changed_model(scaled_copy(original, c.weight, c.factor));
    shard changed(changed_model, 0, tiny_layers, with_pool());
    layer_context context;
    context.collective = [&](int layer, collective_point point, const partial_sum& partial) {
      return layer == c.layer && point == c.point ? partial.whole() * c.factor : partial.whole();
    };
    auto hooked_cache = hooked.new_cache(32), changed_cache = changed.new_cache(32);
    auto expected = changed.forward(ids(prompt), {{&changed_cache, prompt_length}}, logits_rows::all);
    auto got = hooked.forward(ids(prompt), {{&hooked_cache, prompt_length}}, context, logits_rows::all);
    CHECK(at::equal(got, expected));
    auto unchanged_cache = hooked.new_cache(32);
    CHECK_FALSE(at::equal(got, hooked.forward(ids(prompt), {{&unchanged_cache, prompt_length}}, logits_rows::all)));
    for (std::int64_t token : {33, 44}) {
      auto step = hooked.forward(ids({token}), {{&hooked_cache, 1}}, context);
      CHECK(at::equal(step, changed.forward(ids({token}), {{&changed_cache, 1}})));
    }
  }
}

TEST_CASE("grad mode gives the no-grad output and, through a middle shard, the finite-difference gradient") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 7));
  at::manual_seed(7);
  const int tokens = 6;  // few rows: the no-grad pass takes orrery's gemv, the recorded one libtorch's GEMM
  auto input = at::randn({tokens, tiny_hidden});
  auto weights = at::randn({tokens, tiny_hidden});  // loss = sum(weights * output)
  layer_context grad;
  grad.grad = true;

  SUBCASE("the output, and the cache it leaves, equal a no-grad pass's (bitwise with the same products)") {
    shard middle(model, 1, 3, stock());
    auto plain_cache = middle.new_cache(16), grad_cache = middle.new_cache(16);
    auto plain = middle.forward(input, {{&plain_cache, tokens}});
    auto leaf = input.clone().requires_grad_(true);
    auto recorded = middle.forward(leaf, {{&grad_cache, tokens}}, grad);
    CHECK(recorded.requires_grad());
    CHECK_FALSE(plain.requires_grad());
    CHECK(at::equal(recorded.detach(), plain));
    // The cache holds values, no autograd history: a later pass reads it as any other.
    for (int layer = 0; layer < 2; ++layer) {
      CHECK_FALSE(grad_cache.keys(layer).requires_grad());
      CHECK(at::equal(grad_cache.keys(layer), plain_cache.keys(layer)));
      CHECK(at::equal(grad_cache.values(layer), plain_cache.values(layer)));
    }
    auto next = at::randn({1, tiny_hidden});
    CHECK(at::equal(middle.forward(next, {{&grad_cache, 1}}), middle.forward(next, {{&plain_cache, 1}})));

    // The whole model from token ids: nothing requires grad, the logits are the plain ones.
    shard whole(model, 0, tiny_layers, stock());
    auto a = whole.new_cache(16), b = whole.new_cache(16);
    CHECK(at::equal(whole.forward(ids(prompt), {{&a, prompt_length}}, grad, logits_rows::all),
                    whole.forward(ids(prompt), {{&b, prompt_length}}, logits_rows::all)));
  }

  SUBCASE("the gradient w.r.t. the input hidden states matches central differences") {
    shard middle(model, 1, 3, with_pool());
    auto loss_of = [&](const at::Tensor& x) {
      auto cache = middle.new_cache(16);
      return (middle.forward(x, {{&cache, tokens}}) * weights).sum().item<double>();
    };
    auto leaf = input.clone().requires_grad_(true);
    auto cache = middle.new_cache(16);
    (middle.forward(leaf, {{&cache, tokens}}, grad) * weights).sum().backward();
    REQUIRE(leaf.grad().defined());
    const auto gradient = leaf.grad();

    // Central differences of fp32 forward passes with a step of 1e-2 on
    // inputs of unit scale. Measured here: 1.0e-4 relative error on the
    // directional derivative (15.03), at most 1.4e-4 on single coordinates
    // against a largest gradient entry of 3.4; a tolerance of 1e-3 leaves 10x
    // and 25x.
    const double step = 1e-2, tolerance = 1e-3;
    at::manual_seed(8);
    auto direction = at::randn({tokens, tiny_hidden});
    const double directional = (loss_of(input + step * direction) - loss_of(input - step * direction)) / (2 * step);
    const double exact = (gradient * direction).sum().item<double>();
    CAPTURE(directional);
    CAPTURE(exact);
    CHECK(std::abs(directional - exact) <= tolerance * std::abs(exact));
    const double largest = gradient.abs().max().item<double>();
    CAPTURE(largest);
    // Single coordinates, the first token's (which every later token attends
    // to) and the last's.
    for (const auto& coordinate : {std::pair{0, 0}, std::pair{0, 77}, std::pair{tokens - 1, 5}}) {
      const int row = coordinate.first, column = coordinate.second;
      CAPTURE(row);
      CAPTURE(column);
      auto bump = at::zeros({tokens, tiny_hidden});
      bump[row][column] = step;
      const double estimate = (loss_of(input + bump) - loss_of(input - bump)) / (2 * step);
      const double derivative = gradient[row][column].item<double>();
      CAPTURE(estimate);
      CAPTURE(derivative);
      CHECK(std::abs(estimate - derivative) <= tolerance * largest);
    }
  }
}

TEST_CASE("truncating the KV cache and feeding tokens again gives bitwise the logits of the first run") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 9));
  shard whole(model, 0, tiny_layers, with_pool());
  const std::vector<std::int64_t> accepted = {65, 66, 67, 68, 69, 70}, draft = {90, 91, 92, 93, 94, 95, 96, 97, 98};
  const int kept = prompt_length, fed = static_cast<int>(accepted.size());

  SUBCASE("speculation: feed, truncate, feed a longer draft, truncate, feed the first tokens again") {
    auto cache = whole.new_cache(64);
    whole.forward(ids(prompt), {{&cache, kept}});
    auto first = whole.forward(ids(accepted), {{&cache, fed}}, logits_rows::all);
    cache.truncate(kept);
    CHECK(cache.length() == kept);
    whole.forward(ids(draft), {{&cache, static_cast<int>(draft.size())}}, logits_rows::all);
    CHECK(cache.length() == kept + static_cast<int>(draft.size()));
    cache.truncate(kept);
    auto again = whole.forward(ids(accepted), {{&cache, fed}}, logits_rows::all);
    CHECK(at::equal(again, first));
    // Decode goes on as from a cache that never speculated, step by step.
    auto straight = whole.new_cache(64);
    whole.forward(ids(prompt), {{&straight, kept}});
    whole.forward(ids(accepted), {{&straight, fed}});
    for (int token = 0; token < 4; ++token) {
      auto next = ids({100 + token});
      CHECK(at::equal(whole.forward(next, {{&cache, 1}}), whole.forward(next, {{&straight, 1}})));
    }
  }

  SUBCASE("rolled back into the prompt: the re-fed tail equals the prefill's rows (up to gemv vs GEMM order)") {
    // The prefill computes its 14 rows with libtorch's GEMM, the 5 re-fed
    // ones go through orrery's gemv: the same sums in another order.
    auto cache = whole.new_cache(64);
    auto full = whole.forward(ids(prompt), {{&cache, prompt_length}}, logits_rows::all);
    const int back_to = 9;
    cache.truncate(back_to);
    auto tail = std::vector<std::int64_t>(prompt.begin() + back_to, prompt.end());
    auto refed = whole.forward(ids(tail), {{&cache, prompt_length - back_to}}, logits_rows::all);
    CHECK(relative_error(refed, full.narrow(0, back_to, prompt_length - back_to)) <= 1e-5);
  }

  SUBCASE("a length outside [0, length()] is refused, naming both") {
    auto cache = whole.new_cache(64);
    whole.forward(ids(prompt), {{&cache, kept}});
    CHECK_THROWS_WITH_AS(cache.truncate(15), "cannot truncate a KV cache of 14 tokens to 15 (a length in [0, 14])",
                         model_error);
    CHECK_THROWS_WITH_AS(cache.truncate(-1), "cannot truncate a KV cache of 14 tokens to -1 (a length in [0, 14])",
                         model_error);
    CHECK(cache.length() == kept);
    cache.truncate(0);
    CHECK(cache.length() == 0);
  }
}

TEST_CASE("a copied prefix continues bitwise as a fresh run over the prefix and the new tokens") {
  temp_dir dir;
  model_dir model(tiny_model(dir, 10));
  shard whole(model, 0, tiny_layers, with_pool());
  const std::vector<std::int64_t> first_turn = {80, 81, 82, 83}, other_turn = {60, 61, 62, 63, 64},
                                  later = {70, 71, 72};
  auto run = [&](kv_cache& cache, const std::vector<std::int64_t>& tokens) {
    return whole.forward(ids(tokens), {{&cache, static_cast<int>(tokens.size())}}, logits_rows::all);
  };

  auto source = whole.new_cache(64);
  run(source, prompt);
  run(source, first_turn);
  auto copy = source.copy_prefix(prompt_length, 32);
  CHECK(copy.length() == prompt_length);
  CHECK(copy.capacity() == 32);
  auto continued = run(copy, other_turn);

  auto fresh = whole.new_cache(64);
  run(fresh, prompt);
  CHECK(at::equal(continued, run(fresh, other_turn)));

  // The source is untouched by what the copy went on with.
  auto unshared = whole.new_cache(64);
  run(unshared, prompt);
  run(unshared, first_turn);
  CHECK(at::equal(run(source, later), run(unshared, later)));

  SUBCASE("a prefix shorter than the pass that wrote it (up to gemv vs GEMM order)") {
    const int kept = 9;
    auto short_copy = source.copy_prefix(kept, 64);
    auto refed = std::vector<std::int64_t>(prompt.begin() + kept, prompt.end());
    auto got = run(short_copy, refed);
    auto reference = whole.new_cache(64);
    auto full = run(reference, prompt);
    CHECK(relative_error(got, full.narrow(0, kept, prompt_length - kept)) <= 1e-5);
  }

  SUBCASE("a prefix longer than the cache's tokens, negative, or past the new capacity is refused, naming the values") {
    const int length = source.length();
    REQUIRE(length == prompt_length + 4 + 3);
    CHECK_THROWS_WITH_AS(source.copy_prefix(length + 1, 64),
                         "cannot copy the first 22 tokens of a KV cache of 21 tokens into one of 64 positions",
                         model_error);
    CHECK_THROWS_WITH_AS(source.copy_prefix(-1, 64),
                         "cannot copy the first -1 tokens of a KV cache of 21 tokens into one of 64 positions",
                         model_error);
    CHECK_THROWS_WITH_AS(source.copy_prefix(prompt_length, 10),
                         "cannot copy the first 14 tokens of a KV cache of 21 tokens into one of 10 positions",
                         model_error);
  }
}

TEST_CASE("on CUDA a plain context's decode steps replay graphs and a hooked or grad context runs eagerly, alike") {
  if (!at::hasCUDA()) {
    MESSAGE("no CUDA in this build or machine: skipped");
    return;
  }
  temp_dir dir;
  model_dir model(tiny_model(dir, 11));
  shard whole(model, 0, tiny_layers, {at::Device("cuda:0"), at::kFloat, nullptr, true});
  int taps_called = 0;
  layer_context hooked;
  hooked.taps.push_back([&](int, layer_point, const at::Tensor&) { ++taps_called; });
  layer_context grad;
  grad.grad = true;
  auto replayed = whole.new_cache(64), eager = whole.new_cache(64), recorded = whole.new_cache(64);
  whole.forward(ids(prompt), {{&replayed, prompt_length}});
  whole.forward(ids(prompt), {{&eager, prompt_length}});
  whole.forward(ids(prompt), {{&recorded, prompt_length}});
  for (std::int64_t token : {33, 44, 55}) {
    CAPTURE(token);
    taps_called = 0;
    auto graph_step = whole.forward(ids({token}), {{&replayed, 1}}).cpu();
    auto hooked_step = whole.forward(ids({token}), {{&eager, 1}}, hooked).cpu();
    auto grad_step = whole.forward(ids({token}), {{&recorded, 1}}, grad).detach().cpu();
    CHECK(taps_called == 2 * tiny_layers);
    // A replay attends over a masked 64-row window, the eager step over the
    // exact context, and grad mode over keys gathered into a fresh tensor:
    // the same softmax up to the fused kernel's rounding.
    CHECK(relative_error(hooked_step, graph_step) <= 1e-5);
    CHECK(relative_error(grad_step, hooked_step) <= 1e-5);
  }
  CHECK(replayed.graphs() != nullptr);
  CHECK(eager.graphs() == nullptr);
  CHECK(recorded.graphs() == nullptr);
}
