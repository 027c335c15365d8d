#pragma once
// Text <-> token ids. The interface is what generation needs; the byte-level
// tokenizer is the one orrery writes beside the models it creates (256 byte
// tokens, then BOS and EOS), so prompts and outputs are text without any
// vocabulary file. A SentencePiece or BPE tokenizer implements the same
// interface.

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

/// Loads the tokenizer described in `model_dir`; throws model_error naming
/// the file when it is missing or names an unknown kind.
std::unique_ptr<tokenizer> load_tokenizer(const std::filesystem::path& model_dir);

/// Text safe for a terminal: printable ASCII and valid UTF-8 as they are,
/// other bytes as \xHH (a random model emits arbitrary bytes).
std::string printable(std::string_view bytes);

}  // namespace orrery::compute
