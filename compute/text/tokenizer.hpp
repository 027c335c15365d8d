#pragma once
// Text <-> token ids. The interface is what generation needs; the byte-level
// tokenizer is the one orrery writes beside the models it creates (256 byte
// tokens, then BOS and EOS), so prompts and outputs are text without any
// vocabulary file. HF's byte-level BPE tokenizer.json (text/bpe_tokenizer.hpp)
// and SentencePiece's tokenizer.model (text/sentencepiece_tokenizer.hpp)
// implement the same interface; a model directory's files say which.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace orrery::compute {

using token_id = std::int32_t;

class tokenizer {
 public:
  virtual ~tokenizer() = default;

  /// The ids of `text`, without BOS.
  virtual std::vector<token_id> encode(std::string_view text) const = 0;

  /// The bytes of one token (may be part of a UTF-8 character); empty for
  /// special tokens; `<id>` for an id the tokenizer has no text for (a
  /// model's vocabulary may be larger than its tokenizer's), so no sampled
  /// token is ever dropped from the text.
  virtual std::string decode(token_id id) const = 0;

  virtual token_id bos() const = 0;
  virtual token_id eos() const = 0;

  /// Ids in [0, vocab_size()) are the ones this tokenizer can produce; a
  /// model's embedding may be larger (padded vocabularies), and generation
  /// chooses among all of the model's ids.
  virtual int vocab_size() const = 0;
};

/// Bytes 0..255 are ids 0..255; BOS is 256, EOS 257.
class byte_tokenizer final : public tokenizer {
 public:
  std::vector<token_id> encode(std::string_view text) const override;
  std::string decode(token_id id) const override;
  token_id bos() const override { return 256; }
  token_id eos() const override { return 257; }
  int vocab_size() const override { return 258; }
};

/// The file name orrery's tokenizer description has inside a model directory.
inline constexpr const char* tokenizer_file_name = "orrery_tokenizer.json";

/// Writes the description of the byte tokenizer into `model_dir`.
void save_byte_tokenizer(const std::filesystem::path& model_dir);

/// The tokenizer of `model_dir`: its tokenizer.json (byte-level BPE), else
/// its tokenizer.model (SentencePiece), else orrery's byte tokenizer file;
/// BOS and EOS from its config.json. Throws model_error naming the file
/// that is missing, unreadable or asks for what orrery does not do.
std::unique_ptr<tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

/// The files a model directory's tokenizer may be made of.
inline constexpr const char* tokenizer_files[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                                  "special_tokens_map.json", tokenizer_file_name};

/// What a model built for a tokenizer directory's files must agree with.
struct tokenizer_shape {
  int vocab_size = 0;
  token_id bos = 0, eos = 0;
};

/// The shape of the tokenizer files in `dir` (tokenizer.json with its
/// tokenizer_config.json's bos_token and eos_token, or tokenizer.model);
/// throws model_error naming what is missing.
tokenizer_shape read_tokenizer_shape(const std::filesystem::path& dir);

/// Copies `from`'s tokenizer files into `to` (a model trained from it speaks
/// its tokens); a directory with none gets the byte tokenizer.
void copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to);

/// Text safe for a terminal: printable ASCII and valid UTF-8 as they are,
/// other bytes as \xHH (a random model emits arbitrary bytes).
std::string printable(std::string_view bytes);

}  // namespace orrery::compute
