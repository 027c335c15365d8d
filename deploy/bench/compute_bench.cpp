#include "deploy/bench/compute_bench.hpp"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>

#include "compute/cpu_threads.hpp"
#include "compute/decode_graph.hpp"
#include "compute/gemv.hpp"
#include "compute/message_text.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"

namespace orrery::compute {

namespace {

using clock_type = std::chrono::steady_clock;

// The reference loop: the shard's own weights and the same llama_ops, called
// directly for one sequence with plain preallocated cache tensors and argmax
// — no batch bookkeeping, no input checks, no sampler, no tokenizer.
double raw_decode_ms_per_token(const shard& s, int prompt_tokens, int steps, thread_pool* pool) {
  c10::InferenceMode guard;
  const auto& c = s.config();
  const int capacity = prompt_tokens + steps;
  auto options = s.embedding().options();
  std::vector<at::Tensor> keys, values;
  for (std::size_t l = 0; l < s.layers().size(); ++l) {
    keys.push_back(at::zeros({c.num_kv_heads, capacity, c.head_dim}, options));
    values.push_back(at::zeros({c.num_kv_heads, capacity, c.head_dim}, options));
  }
  auto step = [&](std::int64_t token, int pos) {
    at::Tensor x = s.embedding().narrow(0, token, 1);
    auto where = llama_ops::token_positions::consecutive(pos, 1, s.rotary());
    for (std::size_t l = 0; l < s.layers().size(); ++l) {
      const auto& w = s.layers()[l];
      auto h = llama_ops::rms_norm(x, w.input_norm, c.rms_norm_eps);
      const std::int64_t qk_width = (c.num_heads + c.num_kv_heads) * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
      auto qkv = llama_ops::linear(h, w.qkv, pool);
      auto qk = llama_ops::apply_rotary(qkv.narrow(1, 0, qk_width).view({1, c.num_heads + c.num_kv_heads, c.head_dim}),
                                        where);
      llama_ops::store_at_positions(keys[l], qk.narrow(1, c.num_heads, c.num_kv_heads), where.index);
      llama_ops::store_at_positions(values[l], qkv.narrow(1, qk_width, kv_width).view({1, c.num_kv_heads, c.head_dim}),
                                    where.index);
      x = x + llama_ops::linear(llama_ops::attention(qk.narrow(1, 0, c.num_heads), keys[l], values[l], where), w.o, pool);
      h = llama_ops::rms_norm(x, w.post_norm, c.rms_norm_eps);
      auto gate_up = llama_ops::linear(h, w.gate_up, pool);
      x = x + llama_ops::linear(at::silu(gate_up.narrow(1, 0, c.intermediate_size)) *
                                    gate_up.narrow(1, c.intermediate_size, c.intermediate_size),
                                w.down, pool);
    }
    return llama_ops::linear(llama_ops::rms_norm(x, s.final_norm(), c.rms_norm_eps), s.head(), pool);
  };
  at::Tensor logits;
  for (int pos = 0; pos < prompt_tokens; ++pos) logits = step(pos == 0 ? c.bos_token_id : 'a' + pos % 26, pos);
  auto start = clock_type::now();
  for (int i = 0; i < steps; ++i) logits = step(logits.argmax(-1).item<std::int64_t>(), prompt_tokens + i);
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count() / steps;
}

}  // namespace

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

std::string bench_prompt(int tokens) {
  std::string prompt;
  for (int i = 1; i < tokens; ++i) prompt += static_cast<char>('a' + i % 26);
  return prompt;
}

namespace {

// Copy bandwidth of the device's memory: bytes read plus bytes written per
// second by device-to-device copies of 512 MiB, the best of `repeats`.
double measure_device_copy_bandwidth(at::Device device, int repeats = 10) {
  const std::int64_t bytes = std::int64_t{512} << 20;
  auto from = at::ones({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  auto to = at::empty_like(from);
  auto wait = [&] { to[0].item<std::uint8_t>(); };  // a one-byte read-back waits for the stream
  to.copy_(from);
  wait();
  double best = 0;
  for (int i = 0; i < repeats; ++i) {
    auto start = clock_type::now();
    to.copy_(from);
    wait();
    double seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    best = std::max(best, 2.0 * static_cast<double>(bytes) / seconds);
  }
  return best;
}

// Runs the HF reference script and returns the JSON of its last line.
nlohmann::json run_hf_reference(const compute_bench_options& o, const std::string& dtype,
                                const std::vector<token_id>& prompt) {
  std::vector<std::string> ids;
  for (auto id : prompt) ids.push_back(std::to_string(id));
  std::string command = "python3 '" + o.hf_script + "' bench --model '" + o.model.string() + "' --device " + o.device +
                        " --dtype " + dtype + " --ids " + join(ids, ",") + " --new-tokens " + std::to_string(o.new_tokens) +
                        " --repeats " + std::to_string(o.repeats);
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(command.c_str(), "r"), ::pclose);
  if (!pipe) throw std::runtime_error("cannot run " + o.hf_script);
  std::string output, last_line;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe.get())) output += buffer;
  int status = ::pclose(pipe.release());
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);)
    if (!line.empty()) last_line = line;
  if (status != 0 || last_line.empty())
    throw std::runtime_error(o.hf_script + " failed (status " + std::to_string(status) + "): " + output);
  return nlohmann::json::parse(last_line);
}

}  // namespace

nlohmann::json run_compute_bench(const compute_bench_options& o, const std::function<void(const std::string&)>& progress) {
  auto pool = configure_cpu_threads(o.threads);
  const auto device = device_from_name(o.device);
  const std::string dtype = dtype_name_or_default(o.dtype, o.device);
  model_dir dir(o.model);
  auto tok = load_tokenizer(o.model);
  progress("loading " + o.model.string() + " onto " + o.device + " as " + dtype);
  std::optional<shard> whole;
  whole.emplace(dir, 0, dir.config().num_layers, shard_options{device, scalar_type_from_name(dtype), pool});

  generation_request request;
  request.prompt = bench_prompt(o.prompt_tokens);
  request.max_new_tokens = o.new_tokens + 1;  // the first token comes from the prefill
  request.stop_at_eos = false;

  std::vector<double> prefill, decode, raw;
  for (int r = 0; r < o.repeats; ++r) {
    const std::string run = "run " + std::to_string(r + 1) + "/" + std::to_string(o.repeats);
    progress(run + ": orrery generate");
    auto result = generate(*whole, *tok, request);
    prefill.push_back(result.prefill_ms);
    decode.push_back(result.decode_ms_per_token());
    progress(run + ": raw loop");
    raw.push_back(raw_decode_ms_per_token(*whole, o.prompt_tokens, o.new_tokens, pool.get()));
  }
  progress(device.is_cpu() ? "measuring memory read bandwidth" : "measuring device copy bandwidth");
  const double bandwidth = device.is_cpu() ? measure_read_bandwidth(*pool) : measure_device_copy_bandwidth(device);
  const double bytes_per_token = static_cast<double>(whole->weight_bytes_read_per_token());
  const double decode_ms = median(decode), raw_ms = median(raw);
  const double bound_ms = bytes_per_token / bandwidth * 1000.0;

  nlohmann::json out = {
      {"model", o.model.string()},
      {"device", o.device},
      {"dtype", dtype},
      {"threads", o.threads},
      {"prompt_tokens", o.prompt_tokens},
      {"new_tokens", o.new_tokens},
      {"repeats", o.repeats},
      {"prefill_ms", median(prefill)},
      {"prefill_tokens_per_s", o.prompt_tokens / median(prefill) * 1000.0},
      {"decode_ms_per_token", decode_ms},
      {"tokens_per_s", 1000.0 / decode_ms},
      {"raw_decode_ms_per_token", raw_ms},
      {"overhead_ratio", decode_ms / raw_ms},
      {"weight_bytes_per_token", bytes_per_token},
      {device.is_cpu() ? "read_bandwidth_gb_per_s" : "copy_bandwidth_gb_per_s", bandwidth / 1e9},
      {"bound_ms_per_token", bound_ms},
      {"fraction_of_bound", bound_ms / decode_ms},
      {"decode_runs_ms_per_token", decode},
      {"raw_runs_ms_per_token", raw},
  };
  if (o.include_stock && device.is_cpu()) {
    progress("stock path: every product through libtorch's GEMM");
    shard stock(dir, 0, dir.config().num_layers, {at::kCPU, at::kFloat, nullptr});
    double stock_ms = generate(stock, *tok, request).decode_ms_per_token();
    out["stock_libtorch_decode_ms_per_token"] = stock_ms;
    out["speedup_over_stock"] = stock_ms / decode_ms;
  }
  if (device.is_cuda()) {
    progress("the same decode without CUDA graphs");
    whole->use_cuda_graphs(false);
    std::vector<double> eager;
    for (int r = 0; r < o.repeats; ++r) eager.push_back(generate(*whole, *tok, request).decode_ms_per_token());
    out["cuda_graphs"] = cuda_graphs_built();
    out["eager_decode_ms_per_token"] = median(eager);
    out["speedup_from_cuda_graphs"] = median(eager) / decode_ms;
  }
  if (!o.hf_script.empty()) {
    whole.reset();  // the reference runs in another process on the same device
    progress("HF transformers generate on the same model (" + o.hf_script + ")");
    auto hf = run_hf_reference(o, dtype, prompt_tokens(*tok, request.prompt));
    out["hf"] = hf;
    out["hf_decode_ms_per_token"] = hf.at("decode_ms_per_token");
    out["speedup_over_hf"] = hf.at("decode_ms_per_token").get<double>() / decode_ms;
  }
  return out;
}

}  // namespace orrery::compute
