#pragma once
// `orrery model init`: a deterministic random-initialised Llama model written
// as an HF model directory (config.json, safetensors, tokenizer) that HF
// transformers loads unchanged. The values depend only on (seed, tensor name),
// never on libtorch, so the CPU CI and the GPU machine build the same model.

#include <cstdint>
#include <filesystem>
#include <functional>

#include "compute/llama_config.hpp"

namespace orrery::compute {

struct model_init_options {
  std::uint64_t seed = 0;
  /// Split the weights into `model-0000k-of-0000n.safetensors` files of at
  /// most this many bytes each (plus the index); 0 writes one file.
  std::uint64_t max_file_bytes = 0;
  /// Called after each tensor with (bytes written, total bytes).
  std::function<void(std::uint64_t, std::uint64_t)> progress;
  /// A directory whose tokenizer files the model gets (config's vocab_size,
  /// bos and eos ids must match them); empty: the byte tokenizer.
  std::filesystem::path tokenizer_from{};
};

/// Creates `dir` (which must not hold a model already) and writes the model.
/// The storage element type is `config.storage`.
void init_model(const std::filesystem::path& dir, const llama_config& config,
                const model_init_options& options);

}  // namespace orrery::compute
