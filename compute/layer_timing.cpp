#include "compute/layer_timing.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <thread>

#include "compute/cpu_threads.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "compute/training/optimizer.hpp"
#include "compute/training/pass.hpp"

namespace orrery::compute {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

// What the shard takes for `tokens` new tokens: ids where it holds the
// embedding, hidden states otherwise (their values do not change the time).
at::Tensor input_for(const shard& s, int tokens) {
  const auto& c = s.config();
  auto device = s.options().device;
  if (s.has_embedding()) return at::randint(c.vocab_size, {tokens}, at::TensorOptions(at::kLong).device(device));
  return at::randn({tokens, c.hidden_size}, at::TensorOptions(s.options().dtype).device(device)) * 0.1;
}

// Runs `repeat` until the repeats add up to `min_seconds` (at least twice,
// the first also warming caches) and returns the mean of the timed ones.
template <class Repeat>
double mean_seconds(double min_seconds, Repeat repeat) {
  repeat();
  double total = 0;
  int count = 0;
  while (count < 2 || total < min_seconds) {
    total += repeat();
    ++count;
  }
  return total / count;
}

double prefill_seconds_per_token(shard& s, int length, double min_seconds) {
  auto input = input_for(s, length);
  return mean_seconds(min_seconds, [&] {
           kv_cache cache = s.new_cache(length);
           auto start = clock_type::now();
           auto out = s.forward(input, {{&cache, length}});
           out.cpu();  // waits for the device
           return seconds_since(start);
         }) /
         length;
}

// Decode steps are timed from context `context` on; the point is reported at
// the middle of the steps taken.
constexpr int decode_steps = 8;

double decode_seconds_per_token(shard& s, int context, double min_seconds) {
  auto prompt = input_for(s, context);
  auto step = input_for(s, 1);
  return mean_seconds(min_seconds, [&] {
           kv_cache cache = s.new_cache(context + decode_steps);
           s.forward(prompt, {{&cache, context}});
           auto start = clock_type::now();
           for (int i = 0; i < decode_steps; ++i) s.forward(step, {{&cache, 1}}).cpu();
           return seconds_since(start);
         }) /
         decode_steps;
}

// A burst of 2 steps per layer of the model covers the longest stage burst
// (a whole model on one node) with room; bursts start after an idle longer
// than any CFS period the testbed sets (1 ms of quota in at most 10 ms at
// 0.1 core), so the quota is whole again, and the median of 5 is taken.
constexpr int burst_repeats = 5;
constexpr auto burst_idle = std::chrono::milliseconds(50);

decode_burst measure_decode_burst(shard& s, int context, int steps) {
  auto prompt = input_for(s, context);
  auto step = input_for(s, 1);
  std::vector<std::vector<double>> runs(static_cast<std::size_t>(steps));
  for (int r = 0; r < burst_repeats; ++r) {
    kv_cache cache = s.new_cache(context + steps);
    s.forward(prompt, {{&cache, context}}).cpu();
    std::this_thread::sleep_for(burst_idle);
    const auto start = clock_type::now();
    for (int i = 0; i < steps; ++i) {
      s.forward(step, {{&cache, 1}}).cpu();
      runs[static_cast<std::size_t>(i)].push_back(seconds_since(start));
    }
  }
  decode_burst burst{context, {}};
  double previous = 0;
  for (auto& after_step : runs) {
    std::sort(after_step.begin(), after_step.end());
    // Medians of each step's end need not rise; the wall time does.
    previous = std::max(previous, after_step[after_step.size() / 2]);
    burst.wall_seconds.push_back(previous);
  }
  return burst;
}

struct training_seconds {
  double forward = 0;
  double backward = 0;
  double update = 0;  // per step, not per sample
};

// A training micro-batch of `sequences` samples of `length` tokens through
// `s`: seconds per sample of its forward and of its backward (from the loss
// for the shard with the head, else from a gradient of its output), the
// means over repeats whose forwards and backwards add up to `min_seconds`;
// and seconds of the update that follows (the gradients' norm, as clipping
// asks of every stage, then AdamW), once per repeat.
training_seconds training_seconds_per_sample(shard& s, int sequences, int length, double min_seconds) {
  auto parameters = trainable_parameters(s);  // recording gradients, as a training stage's weights do
  adamw optimizer(parameters);
  const int tokens = sequences * length;
  auto input = input_for(s, tokens);
  auto targets = at::randint(s.config().vocab_size, {tokens}, at::TensorOptions(at::kLong).device(s.options().device));
  at::Tensor output_gradient;
  // Reading one value waits for the device (a no-op wait on a CPU).
  auto wait = [](const at::Tensor& t) { t.reshape(-1)[0].item<double>(); };
  auto once = [&] {
    auto start = clock_type::now();
    training_pass pass(s, input, sequences, length);
    wait(pass.output());
    const double forward = seconds_since(start);
    start = clock_type::now();
    if (s.has_head()) {
      pass.backward_from_loss(targets, 1.0);
    } else {
      if (!output_gradient.defined()) output_gradient = at::randn_like(pass.output()) * 0.01;
      pass.backward(output_gradient);
    }
    wait(parameters.back().tensor.grad());
    const double backward = seconds_since(start);
    start = clock_type::now();
    optimizer.step(1e-6, clipping_scale(std::sqrt(squared_gradient_norm(parameters)), 1.0));  // clears the gradients
    wait(parameters.back().tensor);
    return training_seconds{forward, backward, seconds_since(start)};
  };
  once();  // warms caches and the allocator
  training_seconds total;
  int count = 0;
  while (count < 2 || total.forward + total.backward < min_seconds) {
    auto t = once();
    total.forward += t.forward;
    total.backward += t.backward;
    total.update += t.update;
    ++count;
  }
  return {total.forward / count / sequences, total.backward / count / sequences, total.update / count};
}

}  // namespace

layer_timings measure_layer_times(const std::string& model_dir, const layer_timing_options& options,
                                                   const std::function<void(int, int)>& progress) {
  compute::model_dir model(model_dir);
  const int layers = model.config().num_layers;
  if (layers < 3)
    throw model_error(model_dir + ": the profiler measures a first, a middle and a last layer, so it needs at least 3 layers; the model has " +
                      std::to_string(layers));
  for (int context : options.decode_contexts)
    if (context < 1 || context + decode_steps > model.config().max_position_embeddings)
      throw model_error(model_dir + ": decode context " + std::to_string(context) + " is outside the model's context of " +
                        std::to_string(model.config().max_position_embeddings) + " tokens");
  shard_options shard_options{device_from_name(options.device), scalar_type_from_name(options.dtype),
                              configure_cpu_threads(options.threads)};
  struct kind {
    const char* name;
    int first;
  };
  const kind kinds[] = {{"first", 0}, {"middle", layers / 2}, {"last", layers - 1}};
  if (options.train_tokens > model.config().max_position_embeddings || options.train_sequences < 1)
    throw model_error(model_dir + ": training samples of " + std::to_string(options.train_tokens) +
                      " tokens do not fit the model's context of " +
                      std::to_string(model.config().max_position_embeddings) + " tokens");
  const bool burst = !options.decode_contexts.empty();
  const bool training = options.train_tokens > 0;
  const int total = 3 * static_cast<int>(options.prefill_lengths.size() + options.decode_contexts.size() + training) + burst;
  int done = 0;
  auto advance = [&] {
    if (progress) progress(++done, total);
  };
  layer_timings out;
  for (const kind& k : kinds) {
    shard s(model, k.first, k.first + 1, shard_options);
    layer_kind_timing timing{k.name, {}, {}};
    for (int length : options.prefill_lengths) {
      timing.prefill.push_back({length, prefill_seconds_per_token(s, length, options.min_seconds)});
      advance();
    }
    for (int context : options.decode_contexts) {
      timing.decode.push_back({context + decode_steps / 2, decode_seconds_per_token(s, context, options.min_seconds)});
      advance();
    }
    if (training) {
      // Training stages keep fp32 weights whatever the node serves in.
      auto fp32 = shard_options;
      fp32.dtype = at::kFloat;
      shard trained(model, k.first, k.first + 1, fp32);
      auto t = training_seconds_per_sample(trained, options.train_sequences, options.train_tokens, options.min_seconds);
      timing.train_forward = t.forward;
      timing.train_backward = t.backward;
      timing.train_update = t.update;
      advance();
    }
    out.kinds.push_back(std::move(timing));
  }
  if (burst) {
    shard middle(model, layers / 2, layers / 2 + 1, shard_options);
    out.burst = measure_decode_burst(middle, options.decode_contexts.front(), std::min(64, 2 * layers));
    advance();
  }
  return out;
}

}  // namespace orrery::compute
