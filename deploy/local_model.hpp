#pragma once
// A model on this machine alone, shared by `orrery model init`, `orrery
// generate --model` and `orrery demo`: create one with progress shown, load
// it whole as one shard, stream generated tokens, print the timings.

#include <filesystem>
#include <iosfwd>

#include "compute/generation.hpp"
#include "compute/llama_config.hpp"

namespace orrery::deploy {

/// Streams the generated text to `out` and finishes with one line of
/// figures: prefill ms, decode ms/token, tokens/s, KV cache bytes.
compute::generation_result generate_locally(const std::filesystem::path& model, const compute::generation_request& request,
                                            int threads, std::ostream& out);

/// Writes a random-initialised model into `dir`, showing progress on stderr.
void create_model(const std::filesystem::path& dir, const compute::llama_config& config, std::uint64_t seed,
                  std::uint64_t max_file_bytes);

/// Creates the model `preset` in `dir` unless a model is there already.
void ensure_model(const std::filesystem::path& dir, const std::string& preset, std::uint64_t seed);

}  // namespace orrery::deploy
