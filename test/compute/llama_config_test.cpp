#include "compute/llama_config.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "compute/model_error.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

// A config.json holding the tiny preset with `key` set to `value`; load's
// error text, or "" when it loads.
std::string load_error_with(const temp_dir& dir, const std::string& key, const nlohmann::json& value) {
  auto path = dir / "config.json";
  llama_config::preset("tiny").save(path);
  nlohmann::json j;
  std::ifstream(path) >> j;
  j[key] = value;
  std::ofstream(path, std::ios::trunc) << j.dump();
  try {
    llama_config::load(path);
  } catch (const model_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("every preset saves and loads back unchanged") {
  temp_dir dir;
  for (const auto& name : llama_config::preset_names()) {
    CAPTURE(name);
    auto preset = llama_config::preset(name);
    preset.save(dir / "config.json");
    auto loaded = llama_config::load(dir / "config.json");
    CHECK(loaded.num_layers == preset.num_layers);
    CHECK(loaded.hidden_size == preset.hidden_size);
    CHECK(loaded.vocab_size == preset.vocab_size);
    CHECK(loaded.eos_token_id == preset.eos_token_id);
    CHECK(loaded.rms_norm_eps == preset.rms_norm_eps);
  }
}

TEST_CASE("integer keys are read as 64 bits: values past 32 bits are out of range, not cut") {
  temp_dir dir;
  // 2^32 + 4 used to load as 4 layers.
  auto error = load_error_with(dir, "num_hidden_layers", 4294967300LL);
  CHECK(error.rfind((dir / "config.json").string() + ": ", 0) == 0);
  CHECK(contains(error, "key 'num_hidden_layers' is 4294967300, outside the accepted 1 to 100000"));
  // 10^12 used to be reported as -727379968.
  CHECK(contains(load_error_with(dir, "hidden_size", 1000000000000LL),
                 "key 'hidden_size' is 1000000000000, outside the accepted 1 to 65536"));
  CHECK(contains(load_error_with(dir, "vocab_size", 2147483648LL),
                 "key 'vocab_size' is 2147483648, outside the accepted 1 to 2147483647"));
  CHECK(contains(load_error_with(dir, "intermediate_size", 18446744073709551615ULL),
                 "key 'intermediate_size' is 18446744073709551615, outside"));
  CHECK(contains(load_error_with(dir, "num_attention_heads", 0), "key 'num_attention_heads' is 0, outside"));
  CHECK(contains(load_error_with(dir, "max_position_embeddings", -1), "key 'max_position_embeddings' is -1"));
}

TEST_CASE("an integer key holding a float, a string or a boolean is refused by name") {
  temp_dir dir;
  CHECK(contains(load_error_with(dir, "num_hidden_layers", 4.5), "key 'num_hidden_layers' must be an integer, got 4.5"));
  CHECK(contains(load_error_with(dir, "head_dim", "32"), "key 'head_dim' must be an integer, got \"32\""));
  CHECK(contains(load_error_with(dir, "num_key_value_heads", true),
                 "key 'num_key_value_heads' must be an integer, got true"));
}

TEST_CASE("token ids lie inside the vocabulary") {
  temp_dir dir;  // the tiny preset's vocabulary holds 512 ids
  CHECK(contains(load_error_with(dir, "eos_token_id", 512), "key 'eos_token_id' is 512, outside the accepted 0 to 511"));
  CHECK(contains(load_error_with(dir, "bos_token_id", -1), "key 'bos_token_id' is -1, outside the accepted 0 to 511"));
  CHECK(contains(load_error_with(dir, "eos_token_id", nlohmann::json::array({600, 2})), "key 'eos_token_id' is 600"));
  CHECK(load_error_with(dir, "eos_token_id", nlohmann::json::array({257, 600})).empty());  // the first is used
}

TEST_CASE("rms_norm_eps and rope_theta must be finite and positive, or NaN logits follow") {
  temp_dir dir;
  CHECK(contains(load_error_with(dir, "rms_norm_eps", -1), "key 'rms_norm_eps' is -1, but it must be finite and in (0, 1)"));
  CHECK(contains(load_error_with(dir, "rms_norm_eps", 0), "key 'rms_norm_eps' is 0"));
  CHECK(contains(load_error_with(dir, "rms_norm_eps", 1.5), "key 'rms_norm_eps' is 1.5"));
  CHECK(contains(load_error_with(dir, "rms_norm_eps", "1e-5"), "key 'rms_norm_eps' must be a number, got \"1e-5\""));
  CHECK(contains(load_error_with(dir, "rope_theta", 0), "key 'rope_theta' is 0, but it must be finite and positive"));
  CHECK(contains(load_error_with(dir, "rope_theta", -10000.0), "key 'rope_theta' is -10000"));
  CHECK(contains(load_error_with(dir, "rope_theta", true), "key 'rope_theta' must be a number, got true"));
  CHECK(load_error_with(dir, "rope_theta", 500000).empty());  // Llama 3's, written as an integer
}

TEST_CASE("a config built in code is held to the same ranges") {
  auto c = llama_config::preset("tiny");
  c.rope_theta = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(c.validate("model preset"), doctest::Contains("model preset: key 'rope_theta' is inf"), model_error);
  c = llama_config::preset("tiny");
  c.num_layers = 100001;
  CHECK_THROWS_WITH_AS(c.validate("model preset"), doctest::Contains("key 'num_hidden_layers' is 100001"), model_error);
}

TEST_CASE("config.json is refused above 16 MiB before it is read, and when it is not a regular file") {
  temp_dir dir;
  auto path = dir / "config.json";
  llama_config::preset("tiny").save(path);
  std::filesystem::resize_file(path, (std::uint64_t{16} << 20) + 1);
  CHECK_THROWS_WITH_AS(llama_config::load(path),
                       doctest::Contains((path.string() + ": 16777217 bytes, more than the 16777216-byte limit").c_str()),
                       model_error);
  std::filesystem::remove(path);
  std::filesystem::create_directory(path);
  CHECK_THROWS_WITH_AS(llama_config::load(path),
                       doctest::Contains((path.string() + ": is a directory, not a regular file").c_str()), model_error);
}
