// `orrery train` as a user runs it: real processes, real files, a real
// corpus from a Debian package, and a run killed with SIGKILL and resumed.

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <signal.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "test/run_process.hpp"

using nlohmann::json;
using orrery::test::run_orrery;
using orrery::test::temp_dir;

namespace {

// English prose every Debian system has (base-files): 35 kB.
const std::string english = "/usr/share/common-licenses/GPL-3";

std::vector<json> log_of(const std::filesystem::path& out) {
  std::vector<json> entries;
  std::ifstream in(out / "train_log.jsonl");
  for (std::string line; std::getline(in, line);) entries.push_back(json::parse(line));
  return entries;
}

std::string tiny(const temp_dir& dir) {
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--seed", "3", "--out", "tiny"}, dir.path()).exit_code == 0);
  return (dir / "tiny").string();
}

std::vector<std::string> train_args(const std::string& model, const std::string& out, int steps) {
  return {"train", "--model", model, "--data", english, "--out", out, "--steps", std::to_string(steps), "--batch", "4",
          "--micro-batch", "2", "--length", "32", "--lr", "3e-3", "--threads", "1", "--eval-every", "10", "--quiet"};
}

}  // namespace

TEST_CASE("orrery train learns the text and writes a model that generate loads, its log and its loss curve") {
  temp_dir dir;
  const auto model = tiny(dir);
  auto args = train_args(model, "out", 40);
  args.pop_back();  // with the progress bar
  auto r = run_orrery(args, dir.path());
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("-- trained 40 steps (40 in this run)") != std::string::npos);
  CHECK(r.err.find("train [##############################] 40/40") != std::string::npos);
  CHECK(r.err.find("ETA") != std::string::npos);
  for (const char* file : {"config.json", "model.safetensors", "orrery_tokenizer.json", "optimizer.safetensors",
                           "training.json", "train_log.jsonl", "loss.svg"})
    CHECK(std::filesystem::exists(dir / "out" / file));
  const auto log = log_of(dir / "out");
  REQUIRE(log.size() == 40);
  int evaluations = 0;
  for (std::size_t i = 0; i < log.size(); ++i) {
    CHECK(log[i]["step"] == i);
    CHECK(log[i]["tokens"] == 128);
    CHECK(log[i]["gradient_norm"].get<double>() > 0);
    evaluations += log[i].contains("validation_loss");
  }
  CHECK(evaluations == 4);  // steps 9, 19, 29, 39
  // From uniform over 512 ids (ln 512 = 6.24 nats) to English letter statistics.
  CHECK(log.front()["loss"].get<double>() > 5.5);
  CHECK(log.back()["validation_loss"].get<double>() < 3.6);
  const auto svg = orrery::test::slurp(dir / "out" / "loss.svg");
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("<polyline") != std::string::npos);
  auto generated = run_orrery({"generate", "--model", "out", "--prompt", "the ", "--max-tokens", "8"}, dir.path());
  CHECK(generated.exit_code == 0);
  CHECK(generated.out.rfind("the ", 0) == 0);
}

TEST_CASE("a run killed by SIGKILL after a checkpoint and resumed ends bitwise where the run without the kill does") {
  temp_dir dir;
  const auto model = tiny(dir);
  constexpr int steps = 200;
  REQUIRE(run_orrery(train_args(model, "whole", steps), dir.path()).exit_code == 0);

  auto args = train_args(model, "killed", steps);
  args.push_back("--checkpoint-every");
  args.push_back("4");
  args.insert(args.begin(), orrery::test::orrery_binary());
  const pid_t pid = orrery::test::start_process(args, dir.path(), "/dev/null", "/dev/null");
  auto state_file = dir / "killed" / "training.json";
  auto next_step = [&] {
    auto text = orrery::test::slurp(state_file);
    auto state = json::parse(text, nullptr, false);
    return state.is_object() ? state.value("next_step", 0) : 0;
  };
  REQUIRE(orrery::test::eventually([&] { return next_step() >= 4; }, std::chrono::seconds(60)));
  ::kill(pid, SIGKILL);
  REQUIRE(orrery::test::wait_process(pid) == 128 + SIGKILL);
  const int stopped_at = next_step();
  INFO("killed after the checkpoint at step " << stopped_at);
  REQUIRE(stopped_at >= 4);
  REQUIRE(stopped_at < steps);  // the kill came mid-run

  auto resume = train_args(model, "killed", steps);
  resume.push_back("--resume");
  auto r = run_orrery(resume, dir.path());
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("resuming at step " + std::to_string(stopped_at)) != std::string::npos);
  CHECK(orrery::test::slurp(dir / "killed" / "model.safetensors") == orrery::test::slurp(dir / "whole" / "model.safetensors"));
  CHECK(orrery::test::slurp(dir / "killed" / "optimizer.safetensors") ==
        orrery::test::slurp(dir / "whole" / "optimizer.safetensors"));
  const auto killed = log_of(dir / "killed"), whole = log_of(dir / "whole");
  REQUIRE(killed.size() == whole.size());
  for (std::size_t i = 0; i < whole.size(); ++i) CHECK(killed[i]["loss"] == whole[i]["loss"]);
  CHECK_FALSE(std::filesystem::exists(dir / "killed.partial"));  // the interrupted checkpoint is gone
}

TEST_CASE("bad training input gets one clear error naming the flag or the file") {
  temp_dir dir;
  const auto model = tiny(dir);
  std::ofstream(dir / "short.txt") << "In the beginning";
  std::filesystem::create_directories(dir / "full");
  std::ofstream(dir / "full" / "notes.txt") << "mine";
  REQUIRE(run_orrery(train_args(model, "done", 2), dir.path()).exit_code == 0);
  // The arguments with each (flag, value) of `more` set: replaced where
  // present, appended otherwise; a value-less flag is appended.
  auto with = [&](std::vector<std::string> args, std::vector<std::string> more) {
    for (std::size_t i = 0; i < more.size(); ++i) {
      const bool valued = i + 1 < more.size() && more[i + 1].rfind("--", 0) != 0;
      auto at = std::find(args.begin(), args.end(), more[i]);
      if (valued && at != args.end()) {
        *(at + 1) = more[++i];
      } else {
        args.push_back(more[i]);
        if (valued) args.push_back(more[++i]);
      }
    }
    return args;
  };
  const std::vector<std::pair<std::vector<std::string>, std::string>> rows = {
      {with(train_args(model, "a", 2), {"--batch", "6", "--micro-batch", "4"}), "--micro-batch (4) must divide --batch (6)"},
      {with(train_args(model, "full", 2), {}), "is not empty: pass --resume"},
      {with(train_args(model, "done", 2), {"--resume", "--batch", "8"}), "--resume: --batch is 8 here, but the run in done used 4"},
      {with(train_args(model, "done", 2), {"--resume"}), "has done all its 2 steps"},
      {with(train_args(model, "full", 2), {"--resume"}), "holds no checkpoint"},
      {with(train_args(model, "b", 2), {"--length", "1000"}), "--length 1000 exceeds the model's context of 256 positions"},
      {{"train", "--data", english, "--out", "c", "--steps", "2"}, "--model is required"},
      {{"train", "--model", model, "--data", english, "--out", "c"}, "give --steps N or --epochs E"},
      {{"train", "--model", model, "--data", (dir / "short.txt").string(), "--out", "c", "--steps", "2"},
       "16 tokens are too few"},
  };
  for (const auto& [args, message] : rows) {
    CAPTURE(args);
    auto r = run_orrery(args, dir.path());
    CHECK(r.exit_code == 1);
    CHECK(r.err.rfind("orrery: error: ", 0) == 0);
    CHECK(r.err.find(message) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}

TEST_CASE("a model made for a SentencePiece tokenizer trained on the KJV speaks in words, and keeps its tokenizer") {
  temp_dir dir;
  const auto corpus = std::string(std::getenv("ORRERY_SOURCE_DIR")) + "/data/kjv.txt";
  auto tok = run_orrery({"tokenizer", "train", "--data", corpus, "--kind", "sentencepiece", "--vocab-size", "1024", "--out", "tok"},
                        dir.path());
  INFO(tok.err);
  REQUIRE(tok.exit_code == 0);
  CHECK(json::parse(tok.out)["vocab_size"] == 1024);
  REQUIRE(run_orrery({"model", "init", "--preset", "tiny", "--tokenizer", "tok", "--out", "m"}, dir.path()).exit_code == 0);
  const auto config = json::parse(std::ifstream(dir / "m" / "config.json"));
  CHECK(config["vocab_size"] == 1024);
  CHECK(config["bos_token_id"] == 1);
  CHECK(config["eos_token_id"] == 2);
  auto trained = run_orrery({"train", "--model", "m", "--data", corpus, "--steps", "60", "--out", "t", "--threads", "2"}, dir.path());
  INFO(trained.err);
  REQUIRE(trained.exit_code == 0);
  CHECK(std::filesystem::exists(dir / "t" / "tokenizer.model"));
  const auto losses = log_of(dir / "t");
  REQUIRE(losses.size() == 60);
  CHECK(losses.back()["loss"].get<double>() < 0.8 * losses.front()["loss"].get<double>());
  auto said = run_orrery({"generate", "--model", "t", "--prompt", "And God said", "--max-tokens", "24", "--ignore-eos"}, dir.path());
  REQUIRE(said.exit_code == 0);
  // 24 pieces of a 1024-piece vocabulary: words, not bytes or ids.
  const auto text = said.out.substr(std::string("And God said").size());
  CHECK(text.size() > 48);
  CHECK(text.find('<') == std::string::npos);
  CHECK(text.find(" the ") != std::string::npos);
}
