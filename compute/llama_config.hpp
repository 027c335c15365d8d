#pragma once
// The hyper-parameters of a Llama-family model, read from and written to an
// HF `config.json` with the keys `LlamaConfig` uses, so a directory written by
// orrery loads unchanged in HF transformers and vice versa.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "base/element_type.hpp"

namespace orrery::compute {

struct llama_config {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int bos_token_id = 0;
  int eos_token_id = 0;
  /// The element type the weights are stored in (`torch_dtype`).
  element_type storage = element_type::f32;

  /// Reads `config.json` (refused above 16 MiB or when not a regular file);
  /// throws model_error naming the file and the missing key, the key of the
  /// wrong type or out of range (with its value and the accepted range), or
  /// an unknown `model_type`.
  static llama_config load(const std::filesystem::path& config_json);

  /// Writes `config.json` in HF's layout.
  void save(const std::filesystem::path& config_json) const;

  /// A named shape: `tiny`, `small`, `llama2-7b`; throws model_error naming
  /// the known presets otherwise.
  static llama_config preset(const std::string& name);
  static std::vector<std::string> preset_names();

  /// Parameters in the layers `[first, last)` (embedding counted with layer
  /// 0, norm and head with the last layer) — what a shard holds.
  std::int64_t parameter_count(int first, int last) const;
  std::int64_t parameter_count() const { return parameter_count(0, num_layers); }

  /// Throws model_error (prefixed by `where`) naming the key when a size or
  /// token id is out of range, eps or theta is not finite and positive, or
  /// the shape is inconsistent.
  void validate(const std::string& where) const;
};

}  // namespace orrery::compute
