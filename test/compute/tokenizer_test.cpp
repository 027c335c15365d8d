#include "compute/text/tokenizer.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <iterator>
#include <nlohmann/json.hpp>

#include "compute/model_error.hpp"
#include "compute/text/bpe_tokenizer.hpp"
#include "compute/text/sentencepiece_tokenizer.hpp"
#include "test/temp_dir.hpp"

using namespace orrery::compute;

TEST_CASE("the byte tokenizer round-trips any bytes, UTF-8 included") {
  byte_tokenizer tok;
  std::string text = "orrery \xc3\xa9t\xc3\xa9 \xf0\x9f\x8c\x8d\x01";
  auto ids = tok.encode(text);
  CHECK(ids.size() == text.size());
  std::string back;
  for (auto id : ids) back += tok.decode(id);
  CHECK(back == text);
  CHECK(tok.decode(tok.bos()).empty());
  CHECK(tok.decode(tok.eos()).empty());
  CHECK(tok.decode(4000) == "<4000>");  // beyond the tokenizer: shown, never dropped
  CHECK(tok.decode(-3) == "<-3>");
}

TEST_CASE("printable keeps text and UTF-8, escapes control and stray bytes") {
  CHECK(printable("ab\nc") == "ab\nc");
  CHECK(printable("\xc3\xa9") == "\xc3\xa9");
  CHECK(printable("\x1b[2J") == "\\x1b[2J");
  CHECK(printable("\xc3") == "\\xc3");
  CHECK(printable("\xff\xfe") == "\\xff\\xfe");
}

TEST_CASE("the tokenizer file is saved beside the model and checked on load") {
  orrery::test::temp_dir dir;
  save_byte_tokenizer(dir.path());
  CHECK(load_tokenizer(dir.path())->vocab_size() == 258);
  std::ofstream(dir / tokenizer_file_name) << R"({"kind": "sentencepiece"})";
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains("unknown tokenizer kind 'sentencepiece'"), model_error);
  std::filesystem::remove(dir / tokenizer_file_name);
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains("orrery_tokenizer.json"), model_error);
}

TEST_CASE("the tokenizer file is refused above 64 MiB before it is read, and must be a JSON object") {
  orrery::test::temp_dir dir;
  save_byte_tokenizer(dir.path());
  const auto path = dir / tokenizer_file_name;
  std::filesystem::resize_file(path, (std::uint64_t{64} << 20) + 1);
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()),
                       doctest::Contains((path.string() + ": 67108865 bytes, more than the 67108864-byte limit").c_str()),
                       model_error);
  std::ofstream(path, std::ios::trunc) << R"(["byte_level"])";
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains((path.string() + ": not a JSON object").c_str()),
                       model_error);
  std::ofstream(path, std::ios::trunc) << R"({"kind": 7})";
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains("unknown tokenizer kind 7"), model_error);
}

namespace {

std::filesystem::path source_dir() {
  const char* source = std::getenv("ORRERY_SOURCE_DIR");
  REQUIRE(source != nullptr);
  return source;
}

// The setup's corpus (deploy/setup.sh writes it).
std::string kjv() {
  std::ifstream in(source_dir() / "data" / "kjv.txt", std::ios::binary);
  REQUIRE(in);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

nlohmann::json reference() {
  std::ifstream in(source_dir() / "test" / "compute" / "tokenizer_reference.json");
  return nlohmann::json::parse(in);
}

std::string decoded(const tokenizer& tok, const std::vector<token_id>& ids) {
  std::string out;
  for (auto id : ids) out += tok.decode(id);
  return out;
}

}  // namespace

TEST_CASE("byte-level BPE trained on the KJV gives HF tokenizers' ids for mixed text and decodes back to it") {
  orrery::test::temp_dir dir;
  const auto [bos, eos] = train_byte_level_bpe(kjv(), 1024, dir.path());
  CHECK(bos == 1022);
  CHECK(eos == 1023);
  const auto tok = load_tokenizer(dir.path());
  CHECK(tok->vocab_size() == 1024);
  const auto ref = reference();
  for (std::size_t i = 0; i < ref["texts"].size(); ++i) {
    const auto text = ref["texts"][i].get<std::string>();
    INFO(text);
    const auto ids = tok->encode(text);
    CHECK(ids == ref["bpe"][i].get<std::vector<token_id>>());
    // Special tokens in the text are theirs (and decode to nothing).
    if (text.find("<s>") != std::string::npos) {
      CHECK(std::count(ids.begin(), ids.end(), bos) == 1);
      CHECK(std::count(ids.begin(), ids.end(), eos) == 1);
    } else {
      CHECK(decoded(*tok, ids) == text);
    }
  }
  // Bytes that are no UTF-8 are tokens too, and come back as they were.
  const std::string stray = "a\xff\xfe b\xc3";
  CHECK(decoded(*tok, tok->encode(stray)) == stray);
}

TEST_CASE("a SentencePiece model from Debian's spm_train gives the sentencepiece library's ids through orrery's module") {
  orrery::test::temp_dir dir;
  const auto corpus = source_dir() / "data" / "kjv.txt";
  CHECK(train_sentencepiece(corpus, 1024, dir.path()) == std::make_pair(1, 2));
  CHECK(std::filesystem::exists(dir / "tokenizer.model"));
  const auto shape = read_tokenizer_shape(dir.path());
  CHECK(shape.vocab_size == 1024);
  CHECK(shape.bos == 1);
  CHECK(shape.eos == 2);
  const auto tok = load_tokenizer(dir.path());
  const auto ref = reference();
  for (std::size_t i = 0; i < ref["texts"].size(); ++i) {
    const auto text = ref["texts"][i].get<std::string>();
    INFO(text);
    const auto ids = tok->encode(text);
    CHECK(ids == ref["sentencepiece"][i].get<std::vector<token_id>>());
    // SentencePiece writes a space before the text (its dummy prefix).
    CHECK(decoded(*tok, ids) == " " + text);
  }
  CHECK(tok->decode(1).empty());
  CHECK(tok->decode(5000) == "<5000>");
  std::ofstream(dir / "tokenizer.model", std::ios::trunc) << "not a model";
  CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains("not a SentencePiece model"), model_error);
}

TEST_CASE("a tokenizer.json asking for what orrery does not do is refused, naming the field") {
  orrery::test::temp_dir dir;
  train_byte_level_bpe("a small corpus, a small corpus", 270, dir.path());
  const auto file = dir / "tokenizer.json";
  const auto original = nlohmann::json::parse(std::ifstream(file));
  auto refused = [&](const std::function<void(nlohmann::json&)>& change, const std::string& says) {
    auto j = original;
    change(j);
    std::ofstream(file, std::ios::trunc) << j.dump();
    CHECK_THROWS_WITH_AS(load_tokenizer(dir.path()), doctest::Contains(says.c_str()), model_error);
  };
  refused([](auto& j) { j["normalizer"] = {{"type", "NFC"}}; }, "normalizer is 'NFC'");
  refused([](auto& j) { j["model"]["type"] = "WordPiece"; }, "model.type is 'WordPiece'");
  refused([](auto& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; }, "pre_tokenizer is 'Whitespace'");
  refused([](auto& j) { j["model"]["byte_fallback"] = true; }, "model.byte_fallback is true");
  refused([](auto& j) { j["decoder"] = {{"type", "Metaspace"}}; }, "decoder is 'Metaspace'");
  refused([](auto& j) { j["model"]["merges"][0] = 7; }, "model.merges[0] is neither");
}
