#pragma once
// An HF-layout model directory: `config.json`, the weights as one
// `model.safetensors` or as `model-0000k-of-0000n.safetensors` files listed in
// `model.safetensors.index.json`, and orrery's tokenizer file. A file is
// mapped only when a tensor in it is asked for, so a shard of a sharded
// checkpoint opens only the files that hold its own layers.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "compute/llama_config.hpp"
#include "compute/safetensors.hpp"

namespace orrery::compute {

/// The HF tensor names of the layers `[first, last)`: the embedding with
/// layer 0, the final norm and (untied) head with the last layer.
std::vector<std::string> shard_tensor_names(const llama_config& config, int first, int last);

/// The expected shape of a named tensor of `config`.
std::vector<std::int64_t> tensor_shape(const llama_config& config, const std::string& name);

class model_dir {
 public:
  /// Reads config.json and the weight index; throws model_error naming the
  /// file and the problem.
  explicit model_dir(std::filesystem::path dir);

  const std::filesystem::path& path() const { return dir_; }
  const llama_config& config() const { return config_; }

  /// The tensor `name`, checked against the shape the config expects; throws
  /// model_error naming the file when it is missing or misshapen.
  tensor_view tensor(const std::string& name) const;

  /// The files opened so far (for tests of "reads only its own tensors").
  std::vector<std::filesystem::path> opened_files() const;

 private:
  std::shared_ptr<const safetensors_file> file_for(const std::string& name) const;

  std::filesystem::path dir_;
  llama_config config_;
  std::map<std::string, std::string> weight_map_;  // empty: single model.safetensors
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::shared_ptr<const safetensors_file>> files_;
};

}  // namespace orrery::compute
