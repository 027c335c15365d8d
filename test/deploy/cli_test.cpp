// The `orrery` command line as a user runs it: real processes, real files.

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "test/run_process.hpp"

using orrery::test::run_orrery;
using orrery::test::temp_dir;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("model init writes a model that generate streams text from, with its figures") {
  temp_dir dir;
  auto init = run_orrery({"model", "init", "--arch", "llama", "--preset", "tiny", "--seed", "3", "--out", "m"}, dir.path());
  REQUIRE(init.exit_code == 0);
  CHECK(contains(init.err, "writing weights: 100%"));

  auto info = run_orrery({"model", "info", "m"}, dir.path());
  CHECK(info.exit_code == 0);
  CHECK(contains(info.out, "4 layers, hidden 128"));

  auto gen = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "8", "--threads", "1"}, dir.path());
  REQUIRE(gen.exit_code == 0);
  CHECK(gen.out.rfind("Hi", 0) == 0);  // the prompt first, then the stream
  CHECK(contains(gen.out, "-- 8 tokens | prefill"));
  CHECK(contains(gen.out, "ms/token"));
  CHECK(contains(gen.out, "tokens/s"));

  auto again = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "8", "--threads", "2"}, dir.path());
  auto text = [](const std::string& out) { return out.substr(0, out.find("\n-- ")); };
  CHECK(text(again.out) == text(gen.out));  // greedy output does not depend on the thread count
}

TEST_CASE("a sharded fp16 and a bf16 checkpoint generate") {
  temp_dir dir;
  for (const char* type : {"fp16", "bf16"}) {
    CAPTURE(type);
    auto init = run_orrery({"model", "init", "--preset", "tiny", "--dtype", type, "--max-file-mb", "1", "--out", type},
                           dir.path());
    REQUIRE(init.exit_code == 0);
    CHECK(std::filesystem::exists(dir / type / "model.safetensors.index.json"));
    auto gen = run_orrery({"generate", "--model", type, "--prompt", "x", "--max-tokens", "4"}, dir.path());
    CHECK(gen.exit_code == 0);
    CHECK(contains(gen.out, "-- 4 tokens"));
  }
}

TEST_CASE("bad input gets one clear error and exit code 1, never a crash") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);

  SUBCASE("unknown preset") {
    auto r = run_orrery({"model", "init", "--preset", "huge", "--out", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "orrery: error: unknown model preset 'huge' (known: tiny, small, llama2-7b)"));
  }
  SUBCASE("missing model directory") {
    auto r = run_orrery({"generate", "--model", "nowhere", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "nowhere: not a model directory"));
  }
  SUBCASE("truncated weights") {
    std::filesystem::resize_file(dir / "m" / "model.safetensors", 1000);
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "model.safetensors"));
    CHECK(contains(r.err, "runs beyond the file"));
  }
  SUBCASE("prompt longer than the context") {
    auto r = run_orrery({"generate", "--model", "m", "--prompt", std::string(400, 'a')}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "exceeds the model's context of 256 positions"));
  }
  SUBCASE("out-of-range flag") {
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x", "--top-p", "1.5"}, dir.path());
    CHECK(r.exit_code != 0);
    CHECK(contains(r.err, "--top-p"));
  }
  SUBCASE("unknown model_type") {
    std::ofstream(dir / "m" / "config.json") << R"({"model_type": "bert"})";
    auto r = run_orrery({"generate", "--model", "m", "--prompt", "x"}, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(contains(r.err, "unknown model_type 'bert'"));
  }
}

TEST_CASE("model score writes every position's logits and a greedy continuation that generate agrees with") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  // BOS then the bytes of "Hi": what generate feeds for the prompt "Hi".
  auto r = run_orrery({"model", "score", "m", "--ids", "256,72,105", "--greedy", "6", "--logits", "l.f32"}, dir.path());
  REQUIRE(r.exit_code == 0);
  auto result = nlohmann::json::parse(r.out);
  CHECK(result.at("rows") == 3);
  CHECK(result.at("vocab") == 512);
  CHECK(std::filesystem::file_size(dir / "l.f32") == 3u * 512u * 4u);
  auto greedy = result.at("greedy").get<std::vector<int>>();
  REQUIRE(greedy.size() == 6);
  // generate --temperature 0 picks the same tokens among the tokenizer's ids;
  // compare where they are printable ASCII, which generate prints unescaped.
  auto text = run_orrery({"generate", "--model", "m", "--prompt", "Hi", "--max-tokens", "6", "--ignore-eos", "--temperature", "0"},
                         dir.path());
  REQUIRE(text.exit_code == 0);
  bool all_bytes = true;
  std::string expected = "Hi";
  for (int id : greedy) {
    all_bytes = all_bytes && id >= 32 && id < 127;  // printed as themselves
    expected += static_cast<char>(id);
  }
  if (all_bytes) CHECK(text.out.substr(0, expected.size()) == expected);
  auto bad = run_orrery({"model", "score", "m", "--ids", "256,9999"}, dir.path());
  CHECK(bad.exit_code == 1);
  CHECK(contains(bad.err, "id 9999 at index 1 is outside the vocabulary [0, 512)"));
}

TEST_CASE("--device names what is wrong with it") {
  temp_dir dir;
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--out", "m"}, dir.path()).exit_code == 0);
  auto r = run_orrery({"generate", "--model", "m", "--prompt", "x", "--device", "tpu"}, dir.path());
  CHECK(r.exit_code == 1);
  CHECK(contains(r.err, "device 'tpu' is neither cpu nor cuda:N"));
  auto t = run_orrery({"generate", "--model", "m", "--prompt", "x", "--dtype", "int3"}, dir.path());
  CHECK(t.exit_code == 1);
  CHECK(contains(t.err, "dtype 'int3' is not one of fp32, fp16, bf16"));
}

TEST_CASE("--help answers for every command") {
  temp_dir dir;
  for (auto args : std::vector<std::vector<std::string>>{
           {"--help"}, {"model", "init", "--help"}, {"generate", "--help"}, {"bench", "compute", "--help"}, {"demo", "--help"}}) {
    auto r = run_orrery(args, dir.path());
    CHECK(r.exit_code == 0);
    CHECK(contains(r.out, "Usage"));
  }
}

TEST_CASE("demo runs the bundled 4-node topology and shuts it down") {
  temp_dir dir;
  auto r = run_orrery({"demo", "--max-tokens", "6"}, dir.path());
  REQUIRE(r.exit_code == 0);
  CHECK(contains(r.out, "4 node processes"));
  CHECK(contains(r.out, "-- 6 tokens"));
  CHECK(contains(r.out, "stage 3 on d"));
  CHECK(contains(r.out, "stopped all 4 nodes"));
}

TEST_CASE("plan works from catalog presets alone and names bad input") {
  temp_dir dir;
  auto r = run_orrery({"plan", "--cluster", "nano,nano,nx,tx2", "--link", "100mbit", "--model", "llama2-7b"}, dir.path());
  REQUIRE(r.exit_code == 0);
  CHECK(contains(r.out, "chosen:"));
  CHECK(contains(r.out, "layers [0, "));
  CHECK(contains(r.out, "runner-ups:"));
  auto svg = run_orrery({"plan", "--cluster", "nx,nx", "--link", "1gbit", "--model", "small", "--objective", "throughput",
                         "--timeline", "t.svg"},
                        dir.path());
  CHECK(svg.exit_code == 0);
  CHECK(std::filesystem::file_size(dir / "t.svg") > 0);
  auto bad = run_orrery({"plan", "--cluster", "nano,foo", "--link", "100mbit", "--model", "llama2-7b"}, dir.path());
  CHECK(bad.exit_code == 1);
  CHECK(contains(bad.err, "unknown device 'foo'"));
}
