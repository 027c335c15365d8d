#include "compute/llama_config.hpp"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "compute/bounded_file.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw model_error(where + ": " + problem);
}

// What orrery accepts for an integer key: wide enough for every published
// Llama-family checkpoint (Llama-3.1-405B: hidden 16384, 126 layers, 128
// heads), narrow enough that every value fits an `int`, token ids fit int32,
// and parameter_count's sums of products stay below 2^61.
struct integer_range {
  const char* key;
  std::int64_t min;
  std::int64_t max;
};

constexpr integer_range hidden_size_range{"hidden_size", 1, 65536};
constexpr integer_range intermediate_size_range{"intermediate_size", 1, 1 << 20};
constexpr integer_range num_layers_range{"num_hidden_layers", 1, 100000};
constexpr integer_range num_heads_range{"num_attention_heads", 1, 4096};
constexpr integer_range num_kv_heads_range{"num_key_value_heads", 1, 4096};
constexpr integer_range head_dim_range{"head_dim", 1, 4096};
constexpr integer_range vocab_size_range{"vocab_size", 1, INT32_MAX};
// Llama 4 Scout's 10M-token context is the longest published.
constexpr integer_range max_position_range{"max_position_embeddings", 1, 1 << 24};

[[noreturn]] void out_of_range(const std::string& where, const integer_range& range, const std::string& value) {
  fail(where, std::string("key '") + range.key + "' is " + value + ", outside the accepted " +
                  std::to_string(range.min) + " to " + std::to_string(range.max));
}

void check_range(const std::string& where, const integer_range& range, std::int64_t value) {
  if (value < range.min || value > range.max) out_of_range(where, range, std::to_string(value));
}

std::string number_text(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

// The value of `key`; nullptr when it is absent or null (HF writes null for
// "not set").
const json* lookup(const json& config, const char* key) {
  auto it = config.find(key);
  return it == config.end() || it->is_null() ? nullptr : &*it;
}

const json& required(const json& config, const char* key, const std::string& where) {
  const json* value = lookup(config, key);
  if (value == nullptr) fail(where, std::string("missing key '") + key + "'");
  return *value;
}

// Checked as a 64-bit integer before it narrows, so 2^32 + 4 layers is an
// error rather than 4. nlohmann converts floats and booleans to integers
// silently, hence the explicit type test.
std::int64_t integer(const json& value, const integer_range& range, const std::string& where) {
  if (!value.is_number_integer())
    fail(where, std::string("key '") + range.key + "' must be an integer, got " + value.dump());
  if (value.is_number_unsigned() && value.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
    out_of_range(where, range, value.dump());
  auto n = value.get<std::int64_t>();
  check_range(where, range, n);
  return n;
}

int required_integer(const json& config, const integer_range& range, const std::string& where) {
  return static_cast<int>(integer(required(config, range.key, where), range, where));
}

int optional_integer(const json& config, const integer_range& range, int fallback, const std::string& where) {
  const json* value = lookup(config, range.key);
  return value == nullptr ? fallback : static_cast<int>(integer(*value, range, where));
}

// Strings and booleans: nlohmann's conversions to these are already strict.
template <class T>
T optional(const json& config, const char* key, T fallback, const std::string& where) {
  const json* value = lookup(config, key);
  if (value == nullptr) return fallback;
  try {
    return value->get<T>();
  } catch (const json::exception&) {
    fail(where, std::string("key '") + key + "' has the wrong type: " + value->dump());
  }
}

double optional_real(const json& config, const char* key, double fallback, const std::string& where) {
  const json* value = lookup(config, key);
  if (value == nullptr) return fallback;
  if (!value->is_number()) fail(where, std::string("key '") + key + "' must be a number, got " + value->dump());
  return value->get<double>();
}

// A token id field may be a list in HF configs (several EOS ids); orrery's
// loop stops on the first.
int token_id(const json& config, const char* key, int fallback, int vocab_size, const std::string& where) {
  const json* value = lookup(config, key);
  if (value == nullptr) return fallback;
  const json& first = value->is_array() && !value->empty() ? value->front() : *value;
  return static_cast<int>(integer(first, {key, 0, vocab_size - 1}, where));
}

}  // namespace

llama_config llama_config::load(const std::filesystem::path& config_json) {
  const std::string where = config_json.string();
  const json config = read_json_object(config_json, max_model_json_bytes);
  auto model_type = optional<std::string>(config, "model_type", "", where);
  if (model_type != "llama")
    fail(where, "unknown model_type '" + model_type + "' (orrery runs 'llama')");
  llama_config c;
  c.hidden_size = required_integer(config, hidden_size_range, where);
  c.intermediate_size = required_integer(config, intermediate_size_range, where);
  c.num_layers = required_integer(config, num_layers_range, where);
  c.num_heads = required_integer(config, num_heads_range, where);
  c.num_kv_heads = optional_integer(config, num_kv_heads_range, c.num_heads, where);
  c.head_dim = optional_integer(config, head_dim_range, c.hidden_size / c.num_heads, where);
  c.vocab_size = required_integer(config, vocab_size_range, where);
  c.max_position_embeddings = required_integer(config, max_position_range, where);
  c.rms_norm_eps = optional_real(config, "rms_norm_eps", 1e-6, where);
  c.rope_theta = optional_real(config, "rope_theta", 10000.0, where);
  c.tie_word_embeddings = optional<bool>(config, "tie_word_embeddings", false, where);
  c.bos_token_id = token_id(config, "bos_token_id", 1, c.vocab_size, where);
  c.eos_token_id = token_id(config, "eos_token_id", 2, c.vocab_size, where);
  auto act = optional<std::string>(config, "hidden_act", "silu", where);
  if (act != "silu") fail(where, "hidden_act '" + act + "' is not supported (orrery runs 'silu')");
  if (lookup(config, "rope_scaling") != nullptr) fail(where, "rope_scaling is not supported yet");
  if (optional<bool>(config, "attention_bias", false, where) || optional<bool>(config, "mlp_bias", false, where))
    fail(where, "attention_bias / mlp_bias are not supported");
  auto stored = optional<std::string>(config, "torch_dtype", "float32", where);
  auto type = element_type_from_name(stored);
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
  // Byte-level tokenizer ids (compute/text/tokenizer.hpp): 256 bytes, then BOS, EOS.
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
  const std::pair<integer_range, int> sizes[] = {
      {hidden_size_range, hidden_size},   {intermediate_size_range, intermediate_size},
      {num_layers_range, num_layers},     {num_heads_range, num_heads},
      {num_kv_heads_range, num_kv_heads}, {head_dim_range, head_dim},
      {vocab_size_range, vocab_size},     {max_position_range, max_position_embeddings}};
  for (const auto& [range, value] : sizes) check_range(where, range, value);
  check_range(where, {"bos_token_id", 0, vocab_size - 1}, bos_token_id);
  check_range(where, {"eos_token_id", 0, vocab_size - 1}, eos_token_id);
  if (num_heads % num_kv_heads != 0)
    fail(where, "num_attention_heads (" + std::to_string(num_heads) +
                    ") is not a multiple of num_key_value_heads (" + std::to_string(num_kv_heads) + ")");
  if (head_dim % 2 != 0) fail(where, "head_dim must be even for rotary embeddings");
  // A negative eps or theta gives NaN logits (sqrt of a negative variance,
  // 0^-x frequencies); HF configs use eps of 1e-5 or 1e-6, and an eps near 1
  // would swamp the variance of unit-scale activations.
  if (!(std::isfinite(rms_norm_eps) && rms_norm_eps > 0 && rms_norm_eps < 1))
    fail(where, "key 'rms_norm_eps' is " + number_text(rms_norm_eps) + ", but it must be finite and in (0, 1)");
  if (!(std::isfinite(rope_theta) && rope_theta > 0))
    fail(where, "key 'rope_theta' is " + number_text(rope_theta) + ", but it must be finite and positive");
}

}  // namespace orrery::compute
