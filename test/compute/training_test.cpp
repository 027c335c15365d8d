// Training on one device and across a pipeline's shards: gradients, the
// optimizer, the sequences a step reads and checkpoints.

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "compute/training/checkpoint.hpp"
#include "compute/training/corpus.hpp"
#include "compute/training/optimizer.hpp"
#include "compute/training/pass.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

// English prose from a Debian package every system has (base-files).
const std::filesystem::path english = "/usr/share/common-licenses/GPL-3";

std::filesystem::path tiny_model(const temp_dir& dir, bool tied = false) {
  auto config = llama_config::preset("tiny");
  config.tie_word_embeddings = tied;
  init_model(dir / "m", config, {5, 0, {}});
  return dir / "m";
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

// Gradient of every parameter after backward, by name.
std::map<std::string, at::Tensor> gradients(const std::vector<named_parameter>& parameters) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : parameters) out[p.name] = p.tensor.grad().clone();
  return out;
}

// One whole-model step's gradients over `batch`, in micro-batches of `micro`.
std::map<std::string, at::Tensor> whole_model_gradients(const model_dir& model, const token_batch& batch, int micro) {
  shard whole(model, 0, model.config().num_layers);
  auto parameters = trainable_parameters(whole);
  const double scale = 1.0 / static_cast<double>(batch.tokens());
  for (int first = 0; first < batch.sequences; first += micro) {
    const auto rows = static_cast<std::int64_t>(first) * batch.length, count = static_cast<std::int64_t>(micro) * batch.length;
    training_pass pass(whole, batch.inputs.narrow(0, rows, count), micro, batch.length);
    pass.backward_from_loss(batch.targets.narrow(0, rows, count), scale);
  }
  return gradients(parameters);
}

}  // namespace

TEST_CASE("a step's sequences depend on (seed, step, index) alone, start with BOS and target the next tokens") {
  byte_tokenizer tok;
  auto data = corpus::load(english, tok, 0.1, 32);
  CHECK(data.training_tokens() + data.validation_tokens() == std::filesystem::file_size(english));
  auto whole = data.training_batch(7, 3, 0, 8, 32);
  auto halves = at::cat({data.training_batch(7, 3, 0, 4, 32).inputs, data.training_batch(7, 3, 4, 4, 32).inputs});
  CHECK(at::equal(whole.inputs, halves));
  CHECK_FALSE(at::equal(whole.inputs, data.training_batch(7, 4, 0, 8, 32).inputs));
  CHECK_FALSE(at::equal(whole.inputs, data.training_batch(8, 3, 0, 8, 32).inputs));
  auto in = whole.inputs.view({8, 32}), out = whole.targets.view({8, 32});
  CHECK(at::equal(in.select(1, 0), at::full({8}, tok.bos(), at::kLong)));
  CHECK(at::equal(in.narrow(1, 1, 31), out.narrow(1, 0, 31)));  // each target is the next input
  // The validation windows lie in the held-out end of the text.
  std::ifstream file(english);
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto v = data.validation_batch(0, 2, 32);
  std::string first_window;
  for (int t = 0; t < 32; ++t) first_window += static_cast<char>(v.targets[t].item<std::int64_t>());
  CHECK(text.substr(data.training_tokens(), 32) == first_window);
  CHECK_THROWS_WITH_AS(data.validation_batch(0, data.validation_sequences(32) + 1, 32),
                       doctest::Contains("are not among the"), model_error);
}

TEST_CASE("a corpus too small for one sequence, or not a file, is refused naming it") {
  temp_dir dir;
  byte_tokenizer tok;
  std::ofstream(dir / "short.txt") << "In the beginning";
  CHECK_THROWS_WITH_AS(corpus::load(dir / "short.txt", tok, 0.1, 32), doctest::Contains("short.txt: 16 tokens are too few"),
                       model_error);
  CHECK_THROWS_WITH_AS(corpus::load(dir.path(), tok, 0.1, 32), doctest::Contains("not a regular file"), model_error);
  CHECK_THROWS_WITH_AS(corpus::load(english, tok, 0.7, 32), doctest::Contains("validation fraction"), model_error);
}

TEST_CASE("a training pass (one batched attention for all its sequences) computes the logits inference does") {
  temp_dir dir;
  model_dir model(tiny_model(dir));
  byte_tokenizer tok;
  auto batch = corpus::load(english, tok, 0.1, 24).training_batch(4, 1, 0, 3, 24);
  shard whole(model, 0, model.config().num_layers);
  trainable_parameters(whole);
  training_pass pass(whole, batch.inputs, batch.sequences, batch.length);
  std::vector<kv_cache> caches;
  for (int i = 0; i < 3; ++i) caches.push_back(whole.new_cache(24));
  c10::InferenceMode inference;
  auto expected = whole.forward(batch.inputs, {{&caches[0], 24}, {&caches[1], 24}, {&caches[2], 24}}, logits_rows::all);
  CHECK(relative_error(pass.output(), expected) < 1e-6);
}

TEST_CASE("backward computes the loss's gradient: a directional derivative matches finite differences") {
  temp_dir dir;
  model_dir model(tiny_model(dir));
  byte_tokenizer tok;
  auto data = corpus::load(english, tok, 0.1, 24);
  auto batch = data.training_batch(1, 0, 0, 3, 24);
  shard whole(model, 0, model.config().num_layers);
  auto parameters = trainable_parameters(whole);
  training_pass pass(whole, batch.inputs, batch.sequences, batch.length);
  const double loss = pass.backward_from_loss(batch.targets, 1.0);
  CHECK(loss / static_cast<double>(batch.tokens()) == doctest::Approx(std::log(512.0)).epsilon(0.1));
  // Along a random direction in every parameter at once.
  at::manual_seed(0);
  std::vector<at::Tensor> direction;
  double predicted = 0;
  for (const auto& p : parameters) {
    direction.push_back(at::randn_like(p.tensor));
    predicted += (p.tensor.grad() * direction.back()).sum().item<double>();
  }
  auto loss_at = [&](double step) {
    c10::NoGradGuard no_grad;
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].tensor.add_(direction[i], step);
    double l = loss_sum(evaluation_pass(whole, batch.inputs, batch.sequences, batch.length), batch.targets);
    for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].tensor.sub_(direction[i], step);
    return l;
  };
  const double h = 1e-3;
  const double measured = (loss_at(h) - loss_at(-h)) / (2 * h);
  CHECK(measured == doctest::Approx(predicted).epsilon(1e-2));
}

TEST_CASE("a pipeline's gradients and micro-batch accumulation equal the whole model's step on the same batch") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    temp_dir dir;
    model_dir model(tiny_model(dir, tied));
    byte_tokenizer tok;
    auto data = corpus::load(english, tok, 0.1, 16);
    auto batch = data.training_batch(2, 5, 0, 4, 16);
    const auto reference = whole_model_gradients(model, batch, 4);

    // Micro-batches of 1 add up to the batch's gradient (summation order differs).
    for (const auto& [name, g] : whole_model_gradients(model, batch, 1)) {
      CAPTURE(name);
      CHECK(relative_error(g, reference.at(name)) < 1e-5);
    }

    // Three stages [0, 1) [1, 3) [3, 4): activations forward, gradients back.
    std::vector<shard> stages;
    for (auto [a, b] : {std::pair{0, 1}, {1, 3}, {3, 4}}) stages.emplace_back(model, a, b);
    std::map<std::string, at::Tensor> pipeline;
    std::vector<std::vector<named_parameter>> parameters;
    for (auto& s : stages) parameters.push_back(trainable_parameters(s));
    std::vector<training_pass> passes;
    at::Tensor x = batch.inputs;
    for (auto& s : stages) {
      passes.emplace_back(s, x, batch.sequences, batch.length);
      x = passes.back().output();
    }
    passes.back().backward_from_loss(batch.targets, 1.0 / static_cast<double>(batch.tokens()));
    for (int i = static_cast<int>(stages.size()) - 2; i >= 0; --i)
      passes[static_cast<std::size_t>(i)].backward(passes[static_cast<std::size_t>(i) + 1].input_gradient());
    CHECK_FALSE(passes.front().input_gradient().defined());  // token ids have no gradient
    for (const auto& stage : parameters)
      for (const auto& [name, g] : gradients(stage))  // a tied embedding's two parts add up
        pipeline[name] = pipeline.count(name) ? pipeline[name] + g : g;
    for (const auto& [name, g] : reference) {
      CAPTURE(name);
      REQUIRE(pipeline.count(name) == 1);
      CHECK(relative_error(pipeline.at(name), g) < 1e-5);
    }
  }
}

TEST_CASE("AdamW follows torch.optim.AdamW's update, skips decay on norms and restores its state") {
  auto w = at::tensor({1.0f, -2.0f, 0.5f}), gain = at::tensor({1.0f, 1.0f});
  std::vector<named_parameter> params{{"w", w, true}, {"gain", gain, false}};
  w.requires_grad_(true), gain.requires_grad_(true);
  adamw optimizer(params, {0.9, 0.95, 1e-8, 0.1});
  const std::vector<double> g{0.5, -1.0, 2.0};
  double m[3] = {0, 0, 0}, v[3] = {0, 0, 0}, p[3] = {1.0, -2.0, 0.5};
  for (int t = 1; t <= 3; ++t) {
    w.mutable_grad() = at::tensor({0.5f, -1.0f, 2.0f}) * 0.5f;  // scaled by gradient_scale 2 below
    gain.mutable_grad() = at::tensor({1.0f, -1.0f});
    optimizer.step(0.01, 2.0);
    for (int i = 0; i < 3; ++i) {  // torch.optim.AdamW, written out in double
      p[i] *= 1 - 0.01 * 0.1;
      m[i] = 0.9 * m[i] + 0.1 * g[static_cast<std::size_t>(i)];
      v[i] = 0.95 * v[i] + 0.05 * g[static_cast<std::size_t>(i)] * g[static_cast<std::size_t>(i)];
      p[i] -= 0.01 * (m[i] / (1 - std::pow(0.9, t))) / (std::sqrt(v[i] / (1 - std::pow(0.95, t))) + 1e-8);
    }
    CHECK_FALSE(w.grad().defined());  // cleared for the next step's accumulation
  }
  for (int i = 0; i < 3; ++i) CHECK(w[i].item<double>() == doctest::Approx(p[i]).epsilon(1e-6));
  // No decay: after 3 steps of unit gradients each gain moved by ~3 lr.
  CHECK(gain[0].item<double>() == doctest::Approx(1.0 - 0.03).epsilon(1e-4));

  temp_dir dir;
  save_optimizer(dir / "opt.safetensors", optimizer);
  auto w2 = at::zeros({3}), gain2 = at::zeros({2});
  adamw restored({{"w", w2, true}, {"gain", gain2, false}});
  load_optimizer({dir / "opt.safetensors"}, restored);
  CHECK(restored.steps() == 3);
  for (const auto& [name, moment] : optimizer.state()) CHECK(at::equal(restored.state().at(name), moment));
  adamw other({{"x", w2, true}});
  CHECK_THROWS_WITH_AS(load_optimizer({dir / "opt.safetensors"}, other), doctest::Contains("'exp_avg/x' is missing"),
                       model_error);
}

TEST_CASE("clipping scales the global norm down to the limit; the schedule warms up, then decays to its floor") {
  CHECK(clipping_scale(0.5, 1.0) == 1.0);
  CHECK(clipping_scale(4.0, 1.0) == doctest::Approx(0.25));
  CHECK(clipping_scale(4.0, 0.0) == 1.0);
  learning_rate_schedule s{1e-3, 1e-4, 10, 110};
  CHECK(s.at(0) == doctest::Approx(1e-4));
  CHECK(s.at(9) == doctest::Approx(1e-3));
  CHECK(s.at(10) == doctest::Approx(1e-3));
  CHECK(s.at(60) == doctest::Approx(5.5e-4));
  CHECK(s.at(109) == doctest::Approx(1e-4));
  for (std::int64_t t = 11; t < 110; ++t) CHECK(s.at(t) <= s.at(t - 1));
}

TEST_CASE("a trained model written as a checkpoint loads as an HF model directory with the same weights") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    temp_dir dir;
    model_dir model(tiny_model(dir, tied));
    shard a(model, 0, 2), b(model, 2, 4);
    {  // change the weights, as training does
      c10::NoGradGuard no_grad;
      for (auto* s : {&a, &b})
        for (auto& p : trainable_parameters(*s)) p.tensor.mul_(1.01);
    }
    write_trained_model(dir / "out", model.config(), {&a, &b}, model.path());
    model_dir written(dir / "out");
    shard whole(written, 0, 4);
    auto ids = at::arange(20, at::kLong);
    auto ca = a.new_cache(20), cb = b.new_cache(20), cw = whole.new_cache(20);
    c10::InferenceMode inference;
    auto expected = b.forward(a.forward(ids, {{&ca, 20}}), {{&cb, 20}}, logits_rows::all);
    CHECK(at::equal(whole.forward(ids, {{&cw, 20}}, logits_rows::all), expected));
    CHECK_THROWS_WITH_AS(write_trained_model(dir / "gap", model.config(), {&b}, model.path()),
                         doctest::Contains("layer 0 is followed by a shard starting at 2"), model_error);
  }
}

TEST_CASE("holds_parameter names exactly the trainable parameters of a shard of the layers it is asked about") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    temp_dir dir;
    model_dir model(tiny_model(dir, tied));
    const auto& config = model.config();
    REQUIRE(config.tie_word_embeddings == tied);
    const int layers = config.num_layers;
    REQUIRE(layers == 4);
    std::vector<std::string> all;
    {
      shard whole(model, 0, layers);
      for (const auto& p : trainable_parameters(whole)) all.push_back(p.name);
    }
    CHECK(std::count(all.begin(), all.end(), "lm_head.weight") == (tied ? 0 : 1));
    CHECK(std::count(all.begin(), all.end(), "model.embed_tokens.weight") == 1);
    for (auto [a, b] : {std::pair{0, layers}, {0, 1}, {1, 3}, {3, layers}, {0, 3}, {1, layers}, {2, 3}}) {
      CAPTURE(a);
      CAPTURE(b);
      shard s(model, a, b);
      std::vector<std::string> held;
      for (const auto& p : trainable_parameters(s)) held.push_back(p.name);
      std::vector<std::string> expected;
      for (const auto& name : all)
        if (holds_parameter(config, a, b, name)) expected.push_back(name);
      std::sort(held.begin(), held.end());
      std::sort(expected.begin(), expected.end());
      CHECK(held == expected);
      // A last stage of a tied model holds its own copy of the embedding.
      if (tied && b == layers) CHECK(holds_parameter(config, a, b, "model.embed_tokens.weight"));
      if (a > 0 && b < layers) CHECK_FALSE(holds_parameter(config, a, b, "model.embed_tokens.weight"));
    }
    // Names that are not a layer's of the range, or no parameter's at all.
    CHECK_FALSE(holds_parameter(config, 1, 3, "model.layers.3.mlp.gate_up"));
    CHECK_FALSE(holds_parameter(config, 1, 3, "model.layers.0.mlp.gate_up"));
    CHECK(holds_parameter(config, 1, 3, "model.layers.2.mlp.gate_up"));
    CHECK_FALSE(holds_parameter(config, 0, layers, "model.rotary_emb.inv_freq"));
  }
}
