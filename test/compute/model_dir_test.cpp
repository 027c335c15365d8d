#include "compute/model_dir.hpp"

#include <doctest/doctest.h>

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "compute/model_error.hpp"
#include "compute/model_init.hpp"
#include "compute/text/tokenizer.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const model_error& e) {
    return e.what();
  }
  return "";
}

// The error of `load`, run on a thread of its own so that a loader blocked
// on a FIFO fails the test rather than hanging the suite (the thread is then
// left behind, blocked in open()).
std::string error_within_10s(std::function<void()> load) {
  auto error = std::make_shared<std::promise<std::string>>();
  auto result = error->get_future();
  std::thread([load = std::move(load), error] { error->set_value(error_of(load)); }).detach();
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) return "still blocked after 10 s";
  return result.get();
}

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void write_json(const std::filesystem::path& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump();
}

}  // namespace

TEST_CASE("model init writes HF's layout: config keys, tensor names and shapes, tokenizer") {
  temp_dir dir;
  auto config = llama_config::preset("tiny");
  init_model(dir / "m", config, {});
  auto json = read_json(dir / "m" / "config.json");
  CHECK(json["architectures"][0] == "LlamaForCausalLM");
  CHECK(json["model_type"] == "llama");
  CHECK(json["num_hidden_layers"] == 4);
  CHECK(json["num_key_value_heads"] == 2);
  CHECK(json["torch_dtype"] == "float32");

  model_dir model(dir / "m");
  CHECK(model.config().hidden_size == 128);
  auto names = shard_tensor_names(config, 0, config.num_layers);
  CHECK(names.size() == 1 + 9 * 4 + 2);
  CHECK(names.front() == "model.embed_tokens.weight");
  CHECK(names.back() == "lm_head.weight");
  std::int64_t parameters = 0;
  for (const auto& name : names) parameters += model.tensor(name).numel();
  CHECK(parameters == config.parameter_count());
  CHECK(model.tensor("model.layers.1.self_attn.k_proj.weight").shape == std::vector<std::int64_t>{64, 128});
  CHECK(load_tokenizer(dir / "m")->eos() == config.eos_token_id);
}

TEST_CASE("the small preset is the ~125M-parameter shape the issue fixes") {
  auto c = llama_config::preset("small");
  CHECK(c.hidden_size == 768);
  CHECK(c.intermediate_size == 2048);
  CHECK(c.num_layers == 12);
  CHECK(c.num_heads == 12);
  CHECK(c.num_kv_heads == 4);
  CHECK(c.vocab_size == 32000);
  CHECK(c.max_position_embeddings == 1024);
  CHECK(c.parameter_count() > 120'000'000);
  CHECK(c.parameter_count() < 130'000'000);
  CHECK(llama_config::preset("llama2-7b").parameter_count() == 6'738'415'616);  // Llama-2-7b-hf's count
}

TEST_CASE("the same seed writes the same bytes; another seed does not") {
  temp_dir dir;
  auto config = llama_config::preset("tiny");
  init_model(dir / "a", config, {7, 0, {}});
  init_model(dir / "b", config, {7, 0, {}});
  init_model(dir / "c", config, {8, 0, {}});
  auto bytes = [&](const char* name) {
    std::ifstream in(dir / name / "model.safetensors", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  CHECK(bytes("a") == bytes("b"));
  CHECK(bytes("a") != bytes("c"));
}

TEST_CASE("a sharded checkpoint loads, and a shard opens only the files holding its tensors") {
  temp_dir dir;
  auto config = llama_config::preset("tiny");
  model_init_options options;
  options.max_file_bytes = 800'000;
  init_model(dir / "m", config, options);
  CHECK(std::filesystem::exists(dir / "m" / "model.safetensors.index.json"));
  CHECK_FALSE(std::filesystem::exists(dir / "m" / "model.safetensors"));

  model_dir model(dir / "m");
  for (const auto& name : shard_tensor_names(config, 2, 3)) model.tensor(name);
  auto opened = model.opened_files();
  CHECK(opened.size() >= 1);
  int files = 0;
  for (auto& entry : std::filesystem::directory_iterator(dir / "m"))
    files += entry.path().extension() == ".safetensors";
  CHECK(static_cast<int>(opened.size()) < files);
}

TEST_CASE("bad model directories get one clear error naming the file and the problem") {
  temp_dir dir;
  auto config = llama_config::preset("tiny");
  init_model(dir / "m", config, {});
  auto config_path = dir / "m" / "config.json";
  auto original = read_json(config_path);

  SUBCASE("not a directory") {
    CHECK(error_of([&] { model_dir(dir / "absent"); }).find("not a model directory") != std::string::npos);
  }
  SUBCASE("unknown model_type") {
    auto j = original;
    j["model_type"] = "gpt_neox";
    write_json(config_path, j);
    auto error = error_of([&] { model_dir m(dir / "m"); });
    CHECK(error.find("config.json") != std::string::npos);
    CHECK(error.find("unknown model_type 'gpt_neox'") != std::string::npos);
  }
  SUBCASE("missing key") {
    auto j = original;
    j.erase("hidden_size");
    write_json(config_path, j);
    CHECK(error_of([&] { model_dir m(dir / "m"); }).find("missing key 'hidden_size'") != std::string::npos);
  }
  SUBCASE("config.json is not JSON") {
    std::ofstream(config_path) << "{ nope";
    CHECK(error_of([&] { model_dir m(dir / "m"); }).find("not valid JSON") != std::string::npos);
  }
  SUBCASE("a tensor whose shape disagrees with the config") {
    auto j = original;
    j["intermediate_size"] = 353;
    write_json(config_path, j);
    model_dir m(dir / "m");
    auto error = error_of([&] { m.tensor("model.layers.0.mlp.up_proj.weight"); });
    CHECK(error.find("model.safetensors") != std::string::npos);
    CHECK(error.find("has shape [352, 128] but config.json implies [353, 128]") != std::string::npos);
  }
  SUBCASE("a missing tensor") {
    auto j = original;
    j["num_hidden_layers"] = 5;
    write_json(config_path, j);
    model_dir m(dir / "m");
    CHECK(error_of([&] { m.tensor("model.layers.4.mlp.up_proj.weight"); })
              .find("missing tensor 'model.layers.4.mlp.up_proj.weight'") != std::string::npos);
  }
  SUBCASE("no weights") {
    std::filesystem::remove(dir / "m" / "model.safetensors");
    CHECK(error_of([&] { model_dir m(dir / "m"); }).find("holds neither model.safetensors") != std::string::npos);
  }
  SUBCASE("init over an existing model") {
    CHECK(error_of([&] { init_model(dir / "m", config, {}); }).find("already holds a model") != std::string::npos);
  }
}

TEST_CASE("a FIFO in place of any model file is refused at once, never waited on") {
  temp_dir dir;
  model_init_options sharded;
  sharded.max_file_bytes = 800'000;
  init_model(dir / "m", llama_config::preset("tiny"), sharded);
  const auto m = dir / "m";
  auto replace_by_fifo = [&](const std::string& name) {
    std::filesystem::remove(m / name);
    REQUIRE(::mkfifo((m / name).c_str(), 0600) == 0);
    return (m / name).string() + ": is a FIFO, not a regular file";
  };
  SUBCASE("config.json") {
    auto expected = replace_by_fifo("config.json");
    CHECK(error_within_10s([m] { model_dir model(m); }) == expected);
  }
  SUBCASE("the weight index") {
    auto expected = replace_by_fifo("model.safetensors.index.json");
    CHECK(error_within_10s([m] { model_dir model(m); }) == expected);
  }
  SUBCASE("a weights file") {
    auto holder = read_json(m / "model.safetensors.index.json")["weight_map"]["model.embed_tokens.weight"];
    auto expected = replace_by_fifo(holder.get<std::string>());
    CHECK(error_within_10s([m] { model_dir(m).tensor("model.embed_tokens.weight"); }) == expected);
  }
  SUBCASE("the tokenizer") {
    auto expected = replace_by_fifo(tokenizer_file_name);
    CHECK(error_within_10s([m] { load_tokenizer(m); }) == expected);
  }
}

TEST_CASE("a weight index over 16 MiB is refused before it is read") {
  temp_dir dir;
  model_init_options sharded;
  sharded.max_file_bytes = 800'000;
  init_model(dir / "m", llama_config::preset("tiny"), sharded);
  auto index = dir / "m" / "model.safetensors.index.json";
  std::filesystem::resize_file(index, (std::uint64_t{16} << 20) + 1);
  CHECK(error_of([&] { model_dir m(dir / "m"); }) ==
        index.string() + ": 16777217 bytes, more than the 16777216-byte limit for this file");
}
