#pragma once
// What a training run leaves on disk. A checkpoint directory is an HF-layout
// model (config.json, model.safetensors, orrery's tokenizer) that `orrery
// generate` and HF transformers load as it is, plus the optimizer's moments
// (optimizer.safetensors) with which `orrery train --resume` continues.
// Weights are written in float32, the precision they trained in, so a
// resumed run continues from exactly the weights it stopped with.

#include <cstdint>
#include <filesystem>
#include <vector>

#include "compute/llama_config.hpp"
#include "compute/safetensors.hpp"

namespace orrery::compute {

class adamw;
class shard;

/// The weights of `shards` under HF's names (q|k|v and gate|up unstacked) as
/// float32 tensors to write; the shards must hold whole layers.
std::vector<tensor_source> hf_tensors(const std::vector<const shard*>& shards);

/// Writes `shards` (in layer order, together every layer of `config`) as an
/// HF model directory `dir`, which must not hold a model yet.
void write_trained_model(const std::filesystem::path& dir, const llama_config& config,
                         const std::vector<const shard*>& shards);

inline constexpr const char* optimizer_file_name = "optimizer.safetensors";

/// Writes the optimizer's moments and step count to `path`.
void save_optimizer(const std::filesystem::path& path, const adamw& optimizer);

/// Restores moments and step count saved by save_optimizer; throws
/// model_error naming the file when it is unreadable or does not match the
/// optimizer's parameters.
void load_optimizer(const std::filesystem::path& path, adamw& optimizer);

}  // namespace orrery::compute
