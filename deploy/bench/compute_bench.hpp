#pragma once
// `orrery bench compute`: decode speed of one device against references
// measured in the same run — a plain loop over the same modules and weights
// without orrery's generation machinery (the overhead it adds), the
// memory-bandwidth bound (weight bytes per token / measured read bandwidth on
// a CPU, copy bandwidth on a GPU), on a GPU the same decode without CUDA
// graphs, and optionally HF transformers' generate on the same model.

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace orrery::compute {

struct compute_bench_options {
  std::filesystem::path model;
  int threads = 1;
  int prompt_tokens = 32;  ///< with BOS; EdgeShard's setting (PAPERS.md)
  int new_tokens = 128;
  int repeats = 3;         ///< runs per side, interleaved; the median is reported
  /// Also time the stock path (every product through libtorch's GEMM; CPU).
  bool include_stock = true;
  /// `cpu` or `cuda:N`.
  std::string device = "cpu";
  /// fp32, fp16, bf16; empty: fp32 on a CPU, bf16 on a GPU.
  std::string dtype;
  /// A script that times HF transformers' generate on the same model,
  /// device and prompt (deploy/gpu/hf_reference.py); empty: not compared.
  std::string hf_script;
};

/// A prompt of `tokens` tokens with BOS (letters, so any tokenizer maps it).
std::string bench_prompt(int tokens);

/// The median of repeated measurements (the upper one of an even count).
double median(std::vector<double> values);

/// Runs the benchmark; `progress` receives one line per phase.
nlohmann::json run_compute_bench(const compute_bench_options& options,
                                 const std::function<void(const std::string&)>& progress);

}  // namespace orrery::compute
