#pragma once
// What a training run leaves on disk. A checkpoint directory is an HF-layout
// model (config.json, model.safetensors, orrery's tokenizer) that `orrery
// generate` and HF transformers load as it is, plus the optimizer's moments
// (optimizer.safetensors) with which `orrery train --resume` continues.
// Weights are written in float32, the precision they trained in, so a
// resumed run continues from exactly the weights it stopped with.

#include <cstdint>
#include <filesystem>
#include <string>
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
/// HF model directory `dir`, which must not hold a model yet, with the
/// tokenizer of `tokenizer_from` (the model it was trained from).
void write_trained_model(const std::filesystem::path& dir, const llama_config& config,
                         const std::vector<const shard*>& shards, const std::filesystem::path& tokenizer_from);

inline constexpr const char* optimizer_file_name = "optimizer.safetensors";

/// Where a pipeline's stage k of n keeps its moments in a checkpoint.
std::string optimizer_part_name(std::size_t k, std::size_t n);

/// Writes the optimizer's moments and step count to `path`, except those of
/// the parameters named in `leave_out` (a tied head the first stage saves).
void save_optimizer(const std::filesystem::path& path, const adamw& optimizer,
                    const std::vector<std::string>& leave_out = {});

/// Restores moments and step count saved by save_optimizer: from one file,
/// or from the files of a pipeline's stages, each parameter's from whichever
/// holds it (so a run may resume on another layout). Throws model_error
/// naming the file when one is unreadable or disagrees on the step count,
/// or a parameter's moments are in none.
void load_optimizer(const std::vector<std::filesystem::path>& paths, adamw& optimizer);

/// The optimizer files of a checkpoint directory: optimizer.safetensors, or
/// every stage's part; throws model_error when there are none.
std::vector<std::filesystem::path> optimizer_files(const std::filesystem::path& dir);

}  // namespace orrery::compute
