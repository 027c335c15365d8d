#include "compute/text/bpe_tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "compute/bounded_file.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

using json = nlohmann::json;

std::string utf8_of(std::uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
  return out;
}

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves,
// the others for 256 + n, so every byte is a visible character.
struct byte_characters {
  std::string of_byte[256];
  std::unordered_map<std::string, unsigned char> to_byte;
  byte_characters() {
    std::vector<int> kept;
    for (int b = '!'; b <= '~'; ++b) kept.push_back(b);
    for (int b = 0xA1; b <= 0xAC; ++b) kept.push_back(b);
    for (int b = 0xAE; b <= 0xFF; ++b) kept.push_back(b);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool self = std::find(kept.begin(), kept.end(), b) != kept.end();
      of_byte[b] = utf8_of(static_cast<std::uint32_t>(self ? b : 256 + extra++));
      to_byte[of_byte[b]] = static_cast<unsigned char>(b);
    }
  }
};

const byte_characters& characters() {
  static const byte_characters table;
  return table;
}

// The UTF-8 characters of `s` (valid UTF-8).
std::vector<std::string> utf8_characters(std::string_view s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const std::size_t n = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    out.emplace_back(s.substr(i, n));
    i += n;
  }
  return out;
}

// The length of the valid UTF-8 character at s[i], 0 if there is none.
std::size_t valid_character(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const auto lead = b(i);
  if (lead < 0x80) return 1;
  const std::size_t n = lead >= 0xC2 && lead <= 0xDF ? 2 : lead >= 0xE0 && lead <= 0xEF ? 3 : lead >= 0xF0 && lead <= 0xF4 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((b(i + k) & 0xC0) != 0x80) return 0;
  if (lead == 0xE0 && b(i + 1) < 0xA0) return 0;
  if (lead == 0xED && b(i + 1) > 0x9F) return 0;
  if (lead == 0xF0 && b(i + 1) < 0x90) return 0;
  if (lead == 0xF4 && b(i + 1) > 0x8F) return 0;
  return n;
}

}  // namespace

namespace {

// A compiled pre-tokenizer regex (shared read-only by every thread that
// encodes; each match has its own match data).
class split_regex {
 public:
  pcre2_code* code = nullptr;
  split_regex(const std::string& pattern, const std::string& where) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &error,
                         &offset, nullptr);
    if (!code) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof message);
      throw model_error(where + ": the pre-tokenizer's regex does not compile at offset " + std::to_string(offset) + ": " +
                        reinterpret_cast<const char*>(message));
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // where JIT is not available, matching is only slower
  }
  ~split_regex() { pcre2_code_free(code); }
  split_regex(const split_regex&) = delete;
  split_regex& operator=(const split_regex&) = delete;

  // Calls `piece` with every match of valid UTF-8 `text` and every gap
  // between matches, in order (HF's Split with behavior Isolated).
  template <class Piece>
  void split(std::string_view text, Piece piece) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(pcre2_match_data_create_from_pattern(code, nullptr),
                                                                              &pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    std::size_t at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(code, subject, text.size(), at, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
      if (rc < 0) break;
      const auto* ovector = pcre2_get_ovector_pointer(match.get());
      const std::size_t begin = ovector[0], end = ovector[1];
      if (begin > at) piece(text.substr(at, begin - at));
      if (end == begin) {  // an empty match: step over one character
        const std::size_t n = std::max<std::size_t>(1, valid_character(text, begin));
        piece(text.substr(begin, n));
        at = begin + n;
        continue;
      }
      piece(text.substr(begin, end - begin));
      at = end;
    }
    if (at < text.size()) piece(text.substr(at));
  }
};

}  // namespace

struct bpe_tokenizer::regex : split_regex {
  using split_regex::split_regex;
};

bpe_tokenizer::bpe_tokenizer(const std::filesystem::path& file, token_id bos, token_id eos) : bos_(bos), eos_(eos) {
  const auto where = file.string();
  const json j = read_json_object(file, max_tokenizer_json_bytes);
  auto refuse = [&](const std::string& field, const std::string& what) {
    return model_error(where + ": " + field + " " + what +
                       "; orrery reads byte-level BPE tokenizer.json files (GPT-2, Llama 3, Qwen2-style) and SentencePiece "
                       "tokenizer.model files");
  };
  const auto& model = j.value("model", json::object());
  if (model.value("type", "BPE") != "BPE") throw refuse("model.type", "is '" + model.value("type", "") + "'");
  if (model.value("byte_fallback", false)) throw refuse("model.byte_fallback", "is true (a SentencePiece-style BPE)");
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(field) && !model[field].is_null() && model[field] != "") throw refuse(std::string("model.") + field, "is set");
  if (j.contains("normalizer") && !j["normalizer"].is_null())
    throw refuse("normalizer", "is '" + j["normalizer"].value("type", "?") + "', which orrery does not apply");
  if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", "") != "ByteLevel")
    throw refuse("decoder", "is '" + j["decoder"].value("type", "?") + "', not ByteLevel");
  ignore_merges_ = model.value("ignore_merges", false);

  // The pre-tokenizer: ByteLevel with its own regex, or a Split by a regex
  // followed by ByteLevel without one.
  const auto pre = j.value("pre_tokenizer", json());
  std::string pattern;
  auto byte_level = [&](const json& p, bool alone) {
    add_prefix_space_ = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) {
      if (!alone) throw refuse("pre_tokenizer", "splits by a regex twice");
      pattern = gpt2_split_pattern;
    }
  };
  if (pre.is_object() && pre.value("type", "") == "ByteLevel") {
    byte_level(pre, true);
  } else if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.value("pretokenizers", json::array()).size() == 2) {
    const auto& split = pre["pretokenizers"][0];
    const auto& bytes = pre["pretokenizers"][1];
    if (split.value("type", "") != "Split" || !split.contains("pattern") || !split["pattern"].contains("Regex") ||
        split.value("behavior", "") != "Isolated" || split.value("invert", false) || bytes.value("type", "") != "ByteLevel")
      throw refuse("pre_tokenizer", "is a Sequence other than [Split(Regex, Isolated), ByteLevel]");
    pattern = split["pattern"]["Regex"].get<std::string>();
    byte_level(bytes, false);
  } else {
    throw refuse("pre_tokenizer", "is " + (pre.is_object() ? "'" + pre.value("type", "?") + "'" : pre.dump()));
  }
  if (!pattern.empty()) split_ = std::make_unique<regex>(pattern, where);

  if (!model.contains("vocab") || !model["vocab"].is_object()) throw refuse("model.vocab", "is missing");
  token_id top = -1;
  for (const auto& [piece, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<std::int64_t>() < 0 || id.get<std::int64_t>() > INT_MAX / 2)
      throw model_error(where + ": model.vocab['" + piece + "'] is not a token id");
    vocab_[piece] = id.get<token_id>();
    top = std::max(top, id.get<token_id>());
  }
  for (const auto& a : j.value("added_tokens", json::array())) {
    if (!a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") || !a["content"].is_string())
      throw model_error(where + ": an added_tokens entry lacks its id or content");
    added_.push_back({a["content"].get<std::string>(), a["id"].get<token_id>(), a.value("special", false)});
    top = std::max(top, added_.back().id);
  }
  pieces_.resize(static_cast<std::size_t>(top + 1));
  special_.assign(pieces_.size(), false);
  for (const auto& [piece, id] : vocab_) pieces_[static_cast<std::size_t>(id)] = piece;
  for (const auto& a : added_) {
    pieces_[static_cast<std::size_t>(a.id)] = a.content;
    special_[static_cast<std::size_t>(a.id)] = a.special;
  }
  // Longest first: where two added tokens start at one place, the longer wins.
  std::sort(added_.begin(), added_.end(), [](const added_token& a, const added_token& b) { return a.content.size() > b.content.size(); });
  int rank = 0;
  for (const auto& m : model.value("merges", json::array())) {
    std::string key;
    if (m.is_string())
      key = m.get<std::string>();
    else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
      key = m[0].get<std::string>() + " " + m[1].get<std::string>();
    else
      throw model_error(where + ": model.merges[" + std::to_string(rank) + "] is neither \"a b\" nor [\"a\", \"b\"]");
    ranks_.emplace(std::move(key), rank++);
  }
}

bpe_tokenizer::~bpe_tokenizer() = default;

void bpe_tokenizer::encode_word(std::string_view bytes, std::vector<token_id>& out) const {
  const auto& table = characters();
  std::vector<std::string> symbols;
  std::string whole;
  for (char c : bytes) {
    symbols.push_back(table.of_byte[static_cast<unsigned char>(c)]);
    whole += symbols.back();
  }
  if (ignore_merges_)
    if (const auto it = vocab_.find(whole); it != vocab_.end()) return out.push_back(it->second);
  while (symbols.size() > 1) {
    int best = INT_MAX;
    std::string left, right;
    for (std::size_t i = 0; i + 1 < symbols.size(); ++i)
      if (const auto it = ranks_.find(symbols[i] + " " + symbols[i + 1]); it != ranks_.end() && it->second < best) {
        best = it->second;
        left = symbols[i];
        right = symbols[i + 1];
      }
    if (best == INT_MAX) break;
    std::vector<std::string> merged;
    for (std::size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
        merged.push_back(left + right);
        ++i;
      } else {
        merged.push_back(std::move(symbols[i]));
      }
    }
    symbols = std::move(merged);
  }
  for (const auto& s : symbols) {
    const auto it = vocab_.find(s);
    if (it == vocab_.end()) throw model_error("byte-level BPE: the piece '" + s + "' is not in the vocabulary");
    out.push_back(it->second);
  }
}

void bpe_tokenizer::encode_plain(std::string_view text, std::vector<token_id>& out) const {
  std::string owned;
  if (add_prefix_space_ && !text.empty() && text.front() != ' ') {
    owned = " " + std::string(text);
    text = owned;
  }
  auto word = [&](std::string_view piece) { encode_word(piece, out); };
  if (!split_) return word(text);
  // The regex reads valid UTF-8: a byte that is not part of a character is
  // a pre-token of its own.
  for (std::size_t i = 0; i < text.size();) {
    std::size_t end = i;
    while (end < text.size()) {
      const auto n = valid_character(text, end);
      if (n == 0) break;
      end += n;
    }
    if (end > i) split_->split(text.substr(i, end - i), word);
    if (end < text.size()) word(text.substr(end, 1));
    i = end + 1;
  }
}

std::vector<token_id> bpe_tokenizer::encode(std::string_view text) const {
  std::vector<token_id> out;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t next = std::string_view::npos;
    const added_token* found = nullptr;
    for (const auto& a : added_)
      if (const auto p = text.find(a.content, at); p != std::string_view::npos && (p < next || (p == next && !found))) {
        next = p;
        found = &a;
      }
    encode_plain(text.substr(at, next == std::string_view::npos ? std::string_view::npos : next - at), out);
    if (!found) break;
    out.push_back(found->id);
    at = next + found->content.size();
  }
  return out;
}

std::string bpe_tokenizer::decode(token_id id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= pieces_.size() || pieces_[static_cast<std::size_t>(id)].empty())
    return "<" + std::to_string(id) + ">";
  const auto index = static_cast<std::size_t>(id);
  if (special_[index]) return {};
  const auto& piece = pieces_[index];
  if (vocab_.count(piece) == 0) return piece;  // an added token: its text as it is
  const auto& table = characters();
  std::string bytes;
  for (const auto& c : utf8_characters(piece)) {
    const auto it = table.to_byte.find(c);
    bytes += it == table.to_byte.end() ? c : std::string(1, static_cast<char>(it->second));
  }
  return bytes;
}

std::pair<token_id, token_id> train_byte_level_bpe(const std::string& text, int vocab_size, const std::filesystem::path& dir,
                                                   const std::function<void(int, int)>& progress) {
  const int merges_wanted = vocab_size - 256 - 2;
  if (merges_wanted < 0) throw std::invalid_argument("a byte-level BPE vocabulary needs at least 258 ids (256 bytes, BOS, EOS)");
  // Each distinct pre-token once, with its count, as symbol ids.
  std::map<std::string, std::int64_t> counts;
  {
    split_regex split(gpt2_split_pattern, "GPT-2's pattern");
    std::size_t i = 0;
    while (i < text.size()) {
      std::size_t end = i;
      while (end < text.size() && valid_character(text, end) > 0) end += valid_character(text, end);
      if (end > i) split.split(std::string_view(text).substr(i, end - i), [&](std::string_view w) { ++counts[std::string(w)]; });
      if (end < text.size()) ++counts[text.substr(end, 1)];
      i = end + 1;
    }
  }
  std::vector<std::vector<int>> words;
  std::vector<std::int64_t> weights;
  for (const auto& [w, n] : counts) {
    std::vector<int> symbols;
    for (char c : w) symbols.push_back(static_cast<unsigned char>(c));
    words.push_back(std::move(symbols));
    weights.push_back(n);
  }
  const auto& table = characters();
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.push_back(table.of_byte[b]);
  json merges = json::array();
  for (int m = 0; m < merges_wanted; ++m) {
    std::map<std::pair<int, int>, std::int64_t> pairs;
    for (std::size_t w = 0; w < words.size(); ++w)
      for (std::size_t i = 0; i + 1 < words[w].size(); ++i) pairs[{words[w][i], words[w][i + 1]}] += weights[w];
    if (pairs.empty()) break;  // every pre-token is one symbol: the vocabulary stops short
    auto best = pairs.begin();
    for (auto it = pairs.begin(); it != pairs.end(); ++it)
      if (it->second > best->second) best = it;  // ties: the smallest pair of ids, as std::map orders them
    const auto [left, right] = best->first;
    const int merged = static_cast<int>(pieces.size());
    pieces.push_back(pieces[static_cast<std::size_t>(left)] + pieces[static_cast<std::size_t>(right)]);
    merges.push_back(pieces[static_cast<std::size_t>(left)] + " " + pieces[static_cast<std::size_t>(right)]);
    for (auto& w : words) {
      std::vector<int> next;
      for (std::size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == left && w[i + 1] == right) {
          next.push_back(merged);
          ++i;
        } else {
          next.push_back(w[i]);
        }
      }
      w = std::move(next);
    }
    if (progress) progress(m + 1, merges_wanted);
  }
  json vocab = json::object();
  for (std::size_t id = 0; id < pieces.size(); ++id) vocab[pieces[id]] = id;
  const auto bos = static_cast<token_id>(pieces.size()), eos = bos + 1;
  auto special = [](token_id id, const char* content) {
    return json{{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
  };
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  const json tokenizer = {{"version", "1.0"},
                          {"truncation", nullptr},
                          {"padding", nullptr},
                          {"added_tokens", json::array({special(bos, "<s>"), special(eos, "</s>")})},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", byte_level},
                          {"post_processor", nullptr},
                          {"decoder", byte_level},
                          {"model",
                           {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                            {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                            {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& name, const json& j) {
    std::ofstream out(dir / name, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) throw model_error((dir / name).string() + ": write failed");
  };
  write("tokenizer.json", tokenizer);
  write("tokenizer_config.json", {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                                  {"add_bos_token", true}, {"clean_up_tokenization_spaces", false}});
  return {bos, eos};
}

}  // namespace orrery::compute
