#pragma once
// What a model directory holds, as content rather than as a path: the files
// that decide its weights (config.json, the weight index, every safetensors
// file) and a hash of each. Two copies of a model on two machines agree when
// their files hash alike; a truncated, corrupt or other-version copy is found
// before a single frame runs through it (the "wrong text, exit 0" that a
// stage holding another model's layers would give).

#include <cstdint>
#include <filesystem>
#include <vector>

namespace orrery::compute {

/// The files whose bytes decide a model's weights, sorted by name:
/// `config.json`, `model.safetensors.index.json` when present, and every
/// `*.safetensors` file. Throws model_error when `dir` is not a directory or
/// lacks config.json.
std::vector<std::filesystem::path> model_content_files(const std::filesystem::path& dir);

/// A 64-bit hash of the whole of `file` (xxHash64's lane scheme: four
/// independent multiply-rotate lanes, so it streams at memory speed rather
/// than at one multiply's latency per word). Memoised per process by path,
/// size, modification and status-change times and inode, so a node hashes its
/// copy once, not per assignment. Throws model_error naming the file when it is not a regular
/// file or cannot be read.
std::uint64_t content_hash(const std::filesystem::path& file);

}  // namespace orrery::compute
