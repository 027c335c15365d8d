#include "deploy/local_model.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "compute/cpu_threads.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"

namespace orrery::deploy {

compute::generation_result generate_locally(const std::filesystem::path& model, const compute::generation_request& request,
                                            int threads, std::ostream& out) {
  request.sampling.validate();
  compute::model_dir dir(model);
  auto tok = compute::load_tokenizer(model);
  auto start = std::chrono::steady_clock::now();
  compute::shard whole(dir, 0, dir.config().num_layers, {at::kCPU, at::kFloat, compute::configure_cpu_threads(threads)});
  double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  char loaded[512];
  std::snprintf(loaded, sizeof loaded, "loaded %s (%d layers, %.1f MB fp32) in %.0f ms on %d thread(s)\n",
                model.c_str(), dir.config().num_layers, whole.weight_bytes() / 1e6, load_ms, threads);
  std::cerr << loaded;
  out << request.prompt << std::flush;
  auto result = compute::generate(whole, *tok, request, [&](compute::token_id, const std::string& piece) {
    out << compute::printable(piece) << std::flush;
  });
  char figures[256];
  std::snprintf(figures, sizeof figures,
                "\n-- %zu tokens | prefill %.1f ms (%zu prompt tokens) | decode %.2f ms/token | %.1f tokens/s | "
                "KV cache %.1f KiB%s\n",
                result.tokens.size(), result.prefill_ms, result.prompt_tokens.size(), result.decode_ms_per_token(),
                result.tokens_per_s(), result.kv_cache_bytes / 1024.0, result.stopped_at_eos ? " | stopped at EOS" : "");
  out << figures;
  return result;
}

void create_model(const std::filesystem::path& dir, const compute::llama_config& config, std::uint64_t seed,
                  std::uint64_t max_file_bytes) {
  compute::model_init_options options;
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

void ensure_model(const std::filesystem::path& dir, const std::string& preset, std::uint64_t seed) {
  if (std::filesystem::exists(dir / "config.json")) return;
  std::cerr << "creating the '" << preset << "' model in " << dir.string() << " (seed " << seed << ")\n";
  create_model(dir, compute::llama_config::preset(preset), seed, 0);
}

}  // namespace orrery::deploy
