#include "compute/tokenizer.hpp"

#include <doctest/doctest.h>

#include <fstream>

#include "compute/model_error.hpp"
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
