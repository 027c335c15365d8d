#include "compute/llama_config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw model_error(where + ": " + problem);
}

template <class T>
T required(const json& config, const char* key, const std::string& where) {
  if (!config.contains(key)) fail(where, std::string("missing key '") + key + "'");
  try {
    return config.at(key).get<T>();
  } catch (const json::exception&) {
    fail(where, std::string("key '") + key + "' has the wrong type: " + config.at(key).dump());
  }
}

template <class T>
T optional(const json& config, const char* key, T fallback, const std::string& where) {
  if (!config.contains(key) || config.at(key).is_null()) return fallback;
  return required<T>(config, key, where);
}

// A token id field may be a list in HF configs (several EOS ids); orrery's
// loop stops on the first.
int token_id(const json& config, const char* key, int fallback, const std::string& where) {
  if (!config.contains(key) || config.at(key).is_null()) return fallback;
  const auto& value = config.at(key);
  if (value.is_array() && !value.empty() && value[0].is_number_integer()) return value[0].get<int>();
  return required<int>(config, key, where);
}

}  // namespace

llama_config llama_config::load(const std::filesystem::path& config_json) {
  const std::string where = config_json.string();
  std::ifstream in(config_json);
  if (!in) fail(where, "cannot open (is this an HF model directory?)");
  json config;
  try {
    config = json::parse(in);
  } catch (const json::parse_error& e) {
    fail(where, std::string("not valid JSON: ") + e.what());
  }
  if (!config.is_object()) fail(where, "not a JSON object");
  auto model_type = optional<std::string>(config, "model_type", "", where);
  if (model_type != "llama")
    fail(where, "unknown model_type '" + model_type + "' (orrery runs 'llama')");
  llama_config c;
  c.hidden_size = required<int>(config, "hidden_size", where);
  c.intermediate_size = required<int>(config, "intermediate_size", where);
  c.num_layers = required<int>(config, "num_hidden_layers", where);
  c.num_heads = required<int>(config, "num_attention_heads", where);
  c.num_kv_heads = optional<int>(config, "num_key_value_heads", c.num_heads, where);
  c.head_dim = optional<int>(config, "head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0, where);
  c.vocab_size = required<int>(config, "vocab_size", where);
  c.max_position_embeddings = required<int>(config, "max_position_embeddings", where);
  c.rms_norm_eps = optional<double>(config, "rms_norm_eps", 1e-6, where);
  c.rope_theta = optional<double>(config, "rope_theta", 10000.0, where);
  c.tie_word_embeddings = optional<bool>(config, "tie_word_embeddings", false, where);
  c.bos_token_id = token_id(config, "bos_token_id", 1, where);
  c.eos_token_id = token_id(config, "eos_token_id", 2, where);
  auto act = optional<std::string>(config, "hidden_act", "silu", where);
  if (act != "silu") fail(where, "hidden_act '" + act + "' is not supported (orrery runs 'silu')");
  if (config.contains("rope_scaling") && !config.at("rope_scaling").is_null())
    fail(where, "rope_scaling is not supported yet");
  if (optional<bool>(config, "attention_bias", false, where) || optional<bool>(config, "mlp_bias", false, where))
    fail(where, "attention_bias / mlp_bias are not supported");
  auto stored = optional<std::string>(config, "torch_dtype", "float32", where);
  auto type = dtype_from_name(stored);
  if (!type) fail(where, "torch_dtype '" + stored + "' is not one of float32, float16, bfloat16");
  c.storage = *type;
  c.validate(where);
  return c;
}

void llama_config::save(const std::filesystem::path& config_json) const {
  json config = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_layers},
      {"num_attention_heads", num_heads},
      {"num_key_value_heads", num_kv_heads},
      {"head_dim", head_dim},
      {"vocab_size", vocab_size},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling", nullptr},
      {"tie_word_embeddings", tie_word_embeddings},
      {"bos_token_id", bos_token_id},
      {"eos_token_id", eos_token_id},
      {"hidden_act", "silu"},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mlp_bias", false},
      {"initializer_range", 0.02},
      {"pretraining_tp", 1},
      {"use_cache", true},
      {"torch_dtype", std::string(torch_dtype_name(storage))},
  };
  std::ofstream out(config_json, std::ios::trunc);
  if (!out) fail(config_json.string(), "cannot create file");
  out << config.dump(2) << "\n";
  if (!out) fail(config_json.string(), "write failed");
}

llama_config llama_config::preset(const std::string& name) {
  llama_config c;
  // Byte-level tokenizer ids (compute/tokenizer.hpp): 256 bytes, then BOS, EOS.
  c.bos_token_id = 256;
  c.eos_token_id = 257;
  if (name == "tiny") {  // ~1M parameters, 4 MB in fp32: for tests and the 4-node demo (one layer a node)
    c.hidden_size = 128, c.intermediate_size = 352, c.num_layers = 4, c.num_heads = 4;
    c.num_kv_heads = 2, c.vocab_size = 512, c.max_position_embeddings = 256;
  } else if (name == "small") {  // ~125M parameters (issue 2 fixes this shape exactly)
    c.hidden_size = 768, c.intermediate_size = 2048, c.num_layers = 12, c.num_heads = 12;
    c.num_kv_heads = 4, c.vocab_size = 32000, c.max_position_embeddings = 1024;
  } else if (name == "llama2-7b") {  // meta-llama/Llama-2-7b-hf's config.json
    c.hidden_size = 4096, c.intermediate_size = 11008, c.num_layers = 32, c.num_heads = 32;
    c.num_kv_heads = 32, c.vocab_size = 32000, c.max_position_embeddings = 4096;
  } else {
    std::string known;
    for (const auto& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw model_error("unknown model preset '" + name + "' (known: " + known + ")");
  }
  c.head_dim = c.hidden_size / c.num_heads;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  return c;
}

std::vector<std::string> llama_config::preset_names() {
  return {"tiny", "small", "llama2-7b"};
}

std::int64_t llama_config::parameter_count(int first, int last) const {
  std::int64_t h = hidden_size, q = static_cast<std::int64_t>(num_heads) * head_dim,
               kv = static_cast<std::int64_t>(num_kv_heads) * head_dim;
  std::int64_t per_layer = h * q * 2 + h * kv * 2 + 3 * h * intermediate_size + 2 * h;
  std::int64_t total = per_layer * (last - first);
  if (first == 0) total += static_cast<std::int64_t>(vocab_size) * h;
  if (last == num_layers) total += h + (tie_word_embeddings ? 0 : static_cast<std::int64_t>(vocab_size) * h);
  return total;
}

void llama_config::validate(const std::string& where) const {
  auto positive = [&](int value, const char* key) {
    if (value <= 0) fail(where, std::string(key) + " must be positive, got " + std::to_string(value));
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab_size, "vocab_size");
  positive(max_position_embeddings, "max_position_embeddings");
  if (num_heads % num_kv_heads != 0)
    fail(where, "num_attention_heads (" + std::to_string(num_heads) +
                    ") is not a multiple of num_key_value_heads (" + std::to_string(num_kv_heads) + ")");
  if (head_dim % 2 != 0) fail(where, "head_dim must be even for rotary embeddings");
}

}  // namespace orrery::compute
