#pragma once
// Writes an HF-layout model directory (config.json, safetensors weights,
// orrery's tokenizer) from tensors produced one at a time, so neither a
// random-initialised 7B model (`orrery model init`) nor a trained one
// (`orrery train`) has to sit in memory as one more copy.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compute/llama_config.hpp"
#include "compute/safetensors.hpp"

namespace orrery::compute {

struct model_write_options {
  /// Split the weights into `model-0000k-of-0000n.safetensors` files of at
  /// most this many bytes each (plus the index); 0 writes one file.
  std::uint64_t max_file_bytes = 0;
  /// Called after each tensor with (bytes written, total bytes).
  std::function<void(std::uint64_t, std::uint64_t)> progress;
  /// The model directory whose tokenizer files go beside the weights
  /// (copy_tokenizer); empty: the byte tokenizer.
  std::filesystem::path tokenizer_from{};
};

/// Creates `dir` (which must not hold a model already: config.json is
/// refused) and writes `tensors`, named as HF names them, then the tokenizer
/// and, last, config.json, whose presence marks a complete model. Throws
/// model_error naming the path when a file cannot be written.
void write_model_dir(const std::filesystem::path& dir, const llama_config& config, std::vector<tensor_source> tensors,
                     const model_write_options& options);

/// `model-0000k-of-0000n.safetensors`: part k (from 1) of n.
std::string model_part_name(std::size_t k, std::size_t n);

/// The last files of a model directory whose weights are written already (a
/// pipeline's stages write theirs): the index mapping each tensor to its file
/// (`total_bytes` of tensors in all), the tokenizer (`tokenizer_from`'s, or
/// the byte tokenizer when empty) and config.json.
void finish_model_dir(const std::filesystem::path& dir, const llama_config& config,
                      const std::map<std::string, std::string>& weight_map, std::uint64_t total_bytes,
                      const std::filesystem::path& tokenizer_from = {});

}  // namespace orrery::compute
