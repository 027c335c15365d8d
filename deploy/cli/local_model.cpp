#include "deploy/cli/local_model.hpp"

#include <unistd.h>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "base/element_type.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_init.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "deploy/cli/flag_checks.hpp"

namespace orrery::deploy {

std::string local_device::resolved_dtype() const {
  return dtype_name_or_default(dtype, device);
}

void add_device_flags(CLI::App& command, local_device& where) {
  command.add_option("--device", where.device, "cpu or cuda:N")->capture_default_str();
  command.add_option("--dtype", where.dtype, "Weights and compute: fp32, fp16, bf16 (default: fp32 on cpu, bf16 on cuda)");
  command.add_option("--threads", where.threads, "CPU threads")->capture_default_str()->check(at_least(1));
}

void check_runs_here(const local_device& where) {
  compute::device_from_name(where.device);
  const auto dtype = where.resolved_dtype();
  if (!element_type_from_name(dtype)) throw bad_flag("--dtype", dtype, "is not one of fp32, fp16, bf16");
  if (where.device != "cpu") return;
  // Debian's libtorch 1.13 has no fp16 matrix multiply on the CPU, and a
  // model loaded in fp16 there failed at its first step with libtorch's stack
  // trace. libtorch itself is asked, since later versions may have one.
  try {
    auto one = at::ones({1, 1}, at::TensorOptions().dtype(compute::scalar_type_from_name(dtype)));
    at::linear(one, one);
  } catch (const c10::Error& e) {
    throw bad_flag("--dtype", dtype,
                   "is not supported on cpu by this libtorch (" + std::string(e.what_without_backtrace()) +
                       "); use fp32 or bf16");
  }
}

namespace {

compute::shard load_whole(const compute::model_dir& dir, const local_device& where) {
  auto start = std::chrono::steady_clock::now();
  compute::shard whole(dir, 0, dir.config().num_layers,
                       {compute::device_from_name(where.device), compute::scalar_type_from_name(where.resolved_dtype()),
                        compute::configure_cpu_threads(where.threads)});
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  char loaded[512];
  std::snprintf(loaded, sizeof loaded, "loaded %s (%d layers, %.1f MB %s) in %.0f ms on %s, %d thread(s)\n",
                dir.path().c_str(), dir.config().num_layers, whole.weight_bytes() / 1e6,
                where.resolved_dtype().c_str(), load_ms, where.device.c_str(), where.threads);
  std::cerr << loaded;
  return whole;
}

}  // namespace

compute::generation_result generate_locally(const std::filesystem::path& model, const compute::generation_request& request,
                                            const local_device& where, std::ostream& text, std::ostream& figures) {
  check_runs_here(where);
  compute::model_dir dir(model);
  auto tok = compute::load_tokenizer(model);
  // Refused before the prompt is echoed, so an error is all a user sees.
  compute::check_request(request, static_cast<std::int64_t>(compute::prompt_tokens(*tok, request.prompt).size()),
                         dir.config().max_position_embeddings);
  auto whole = load_whole(dir, where);
  text << request.prompt << std::flush;
  auto result = compute::generate(whole, *tok, request, [&](compute::token_id, const std::string& piece) {
    text << compute::printable(piece) << std::flush;
  });
  text << std::endl;
  char line[256];
  std::snprintf(line, sizeof line,
                "-- %zu tokens | prefill %.1f ms (%zu prompt tokens) | decode %.2f ms/token | %.1f tokens/s | "
                "KV cache %.1f KiB%s\n",
                result.tokens.size(), result.prefill_ms, result.prompt_tokens.size(), result.decode_ms_per_token(),
                result.tokens_per_s(), result.kv_cache_bytes / 1024.0, result.stopped_at_eos ? " | stopped at EOS" : "");
  figures << line;
  return result;
}

nlohmann::json score_locally(const std::filesystem::path& model, const local_device& where,
                             const std::vector<std::int64_t>& ids, int greedy_steps,
                             const std::filesystem::path& logits_file) {
  check_runs_here(where);
  compute::model_dir dir(model);
  const auto& config = dir.config();
  if (ids.empty()) throw std::invalid_argument("--ids is empty: give at least one token id");
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= config.vocab_size)
      throw bad_flag("--ids", std::to_string(ids[i]),
                     "at index " + std::to_string(i) + " is outside the vocabulary [0, " +
                         std::to_string(config.vocab_size) + ")");
  if (greedy_steps < 0) throw std::invalid_argument("--greedy must be >= 0");
  const int length = static_cast<int>(ids.size());
  compute::check_fits_context(length, std::max(greedy_steps, 1), config.max_position_embeddings);
  auto whole = load_whole(dir, where);
  c10::InferenceMode guard;
  auto cache = whole.new_cache(length + std::max(greedy_steps - 1, 0));
  auto logits = whole.forward(at::tensor(ids, at::TensorOptions().dtype(at::kLong)), {{&cache, length}},
                              compute::logits_rows::all)
                    .to(at::kCPU)
                    .contiguous();
  if (!logits_file.empty()) {
    std::ofstream out(logits_file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(logits.data_ptr<float>()), static_cast<std::streamsize>(logits.nbytes()));
    if (!out) throw std::runtime_error(logits_file.string() + ": cannot write the logits");
  }
  std::vector<std::int64_t> greedy;
  auto last = logits.narrow(0, length - 1, 1);
  for (int step = 0; step < greedy_steps; ++step) {
    greedy.push_back(last.argmax(-1).item<std::int64_t>());
    if (step + 1 < greedy_steps)
      last = whole.forward(at::tensor({greedy.back()}, at::TensorOptions().dtype(at::kLong)), {{&cache, 1}});
  }
  return {{"model", model.string()},      {"device", where.device}, {"dtype", where.resolved_dtype()},
          {"ids", ids},                   {"rows", length},         {"vocab", config.vocab_size},
          {"logits_file", logits_file.string()}, {"greedy", greedy}};
}

void create_model(const std::filesystem::path& dir, const compute::llama_config& config, std::uint64_t seed,
                  std::uint64_t max_file_bytes, const std::filesystem::path& tokenizer_from) {
  compute::model_init_options options;
  options.tokenizer_from = tokenizer_from;
  options.seed = seed;
  options.max_file_bytes = max_file_bytes;
  // A terminal gets one line rewritten in place; a log gets a line per 10%.
  const bool terminal = ::isatty(STDERR_FILENO) != 0;
  const int step = terminal ? 1 : 10;
  int shown = -1;
  options.progress = [&](std::uint64_t done, std::uint64_t total) {
    int percent = static_cast<int>(100 * done / std::max<std::uint64_t>(total, 1));
    if (percent / step == shown / step && done != total) return;
    shown = percent;
    std::fprintf(stderr, "%s  writing weights: %3d%% (%.0f / %.0f MB)%s", terminal ? "\r" : "", percent, done / 1e6,
                 total / 1e6, terminal && done != total ? "" : "\n");
  };
  compute::init_model(dir, config, options);
}

}  // namespace orrery::deploy
