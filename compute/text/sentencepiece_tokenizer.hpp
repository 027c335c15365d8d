#pragma once
// SentencePiece models (tokenizer.model, as Llama 2 and Mistral ship them),
// through Debian's libsentencepiece: its own normaliser and encoder, so ids
// are the library's (and HF's, which reads the same file). The library runs
// in a module loaded apart (text/sentencepiece_module.cpp says why).
// Decoding one id at a time for streaming, from a table made at load: U+2581
// is a space, byte-fallback pieces <0xNN> are their byte, control tokens
// are empty.

#include <filesystem>
#include <string>
#include <vector>

#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

class sentencepiece_tokenizer final : public tokenizer {
 public:
  /// Loads `model_file`; BOS and EOS are the model's (config.json). Throws
  /// model_error naming the file when the library cannot read it.
  sentencepiece_tokenizer(const std::filesystem::path& model_file, token_id bos, token_id eos);
  ~sentencepiece_tokenizer() override;

  std::vector<token_id> encode(std::string_view text) const override;
  std::string decode(token_id id) const override;
  token_id bos() const override { return bos_; }
  token_id eos() const override { return eos_; }
  int vocab_size() const override;
  /// The BOS and EOS ids the SentencePiece model itself declares.
  std::pair<token_id, token_id> special_ids() const;

 private:
  void* processor_ = nullptr;
  std::vector<std::string> text_;  ///< by id: what decode() gives
  token_id bos_, eos_;
  std::pair<token_id, token_id> declared_;
};

/// Trains a SentencePiece BPE model on `corpus` with Debian's spm_train
/// (byte fallback, identity normalisation, every character covered, unk 0,
/// BOS 1, EOS 2) of `vocab_size` pieces into `dir`/tokenizer.model and
/// tokenizer_config.json. Returns BOS and EOS; throws model_error with
/// spm_train's own words when it fails.
std::pair<token_id, token_id> train_sentencepiece(const std::filesystem::path& corpus, int vocab_size,
                                                  const std::filesystem::path& dir);

}  // namespace orrery::compute
