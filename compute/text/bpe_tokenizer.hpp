#pragma once
// Byte-level BPE as GPT-2, Llama 3 and Qwen2 ship it in HF's tokenizer.json:
// added tokens are split off first; the rest is cut into pre-tokens by the
// file's regex (PCRE2, Unicode classes), each pre-token's bytes are written
// as GPT-2's byte characters, and merges are applied by rank. Decoding maps
// the characters back to bytes. What a file asks for and this does not do
// (a normalizer, another model type) is refused by name, never ignored.

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

class bpe_tokenizer final : public tokenizer {
 public:
  /// Reads `tokenizer_json`; BOS and EOS are the model's (config.json).
  /// Throws model_error naming the file and the field it cannot honour.
  bpe_tokenizer(const std::filesystem::path& tokenizer_json, token_id bos, token_id eos);
  ~bpe_tokenizer() override;

  std::vector<token_id> encode(std::string_view text) const override;
  std::string decode(token_id id) const override;
  token_id bos() const override { return bos_; }
  token_id eos() const override { return eos_; }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }

 private:
  struct added_token {
    std::string content;
    token_id id;
    bool special;
  };
  struct regex;
  /// Appends the ids of text that holds no added token.
  void encode_plain(std::string_view text, std::vector<token_id>& out) const;
  /// Appends the ids of one pre-token.
  void encode_word(std::string_view bytes, std::vector<token_id>& out) const;

  std::unique_ptr<regex> split_;
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  std::unordered_map<std::string, token_id> vocab_;
  std::vector<std::string> pieces_;  ///< by id, in byte characters
  std::unordered_map<std::string, int> ranks_;  ///< "left right" -> merge rank
  std::vector<added_token> added_;
  std::vector<bool> special_;  ///< by id
  token_id bos_, eos_;
};

/// GPT-2's regex for pre-tokens (ByteLevel's `use_regex`).
inline constexpr const char* gpt2_split_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// Trains byte-level BPE on `text` (GPT-2's pre-tokens, the most frequent
/// pair merged first, ties to the pair seen first) up to `vocab_size` ids:
/// the 256 bytes, the merges, then `<s>` and `</s>` as special tokens (the
/// last two ids). Writes `dir`/tokenizer.json and tokenizer_config.json;
/// `progress` gets (merges done, merges wanted). Returns the BOS and EOS ids.
std::pair<token_id, token_id> train_byte_level_bpe(const std::string& text, int vocab_size, const std::filesystem::path& dir,
                                                   const std::function<void(int, int)>& progress = {});

}  // namespace orrery::compute
