#pragma once
// A text corpus as the sequences a training step reads. The file is encoded
// once; its last part is held out for validation. Which windows a step reads
// depends only on (seed, step, sequence index), never on how the step's
// batch is cut into micro-batches or spread over devices, so a pipeline, a
// data-parallel group and a resumed run all train on exactly the sequences
// the single-device run does.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <vector>

#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

/// Sequences for next-token training, packed row-wise: each sequence is BOS
/// followed by `length - 1` tokens of text, and its targets are the
/// `length` tokens that follow BOS — so position 0 holds BOS as it does in
/// generation.
struct token_batch {
  at::Tensor inputs;   ///< int64 [sequences * length]
  at::Tensor targets;  ///< int64 [sequences * length]
  int sequences = 0;
  int length = 0;

  std::int64_t tokens() const { return static_cast<std::int64_t>(sequences) * length; }
};

class corpus {
 public:
  /// Reads and encodes `path`; the last `validation_fraction` of its tokens
  /// (in (0, 0.5]) are held out. Throws model_error naming the file when it
  /// is not a readable regular file, or when either part holds fewer than
  /// `length` tokens (one sequence).
  static corpus load(const std::filesystem::path& path, const tokenizer& tokens, double validation_fraction, int length);

  const std::filesystem::path& path() const { return path_; }
  /// The file's content hash: a resumed run must train on the same text.
  std::uint64_t fingerprint() const { return fingerprint_; }
  std::size_t training_tokens() const { return split_; }
  std::size_t validation_tokens() const { return ids_.size() - split_; }

  /// Sequences [first, first + count) of step `step`'s batch: windows of the
  /// training part at offsets drawn from (seed, step, index).
  token_batch training_batch(std::uint64_t seed, std::int64_t step, int first, int count, int length) const;

  /// How many disjoint windows of `length` tokens the validation part holds.
  int validation_sequences(int length) const;
  /// Validation windows [first, first + count), consecutive from its start.
  token_batch validation_batch(int first, int count, int length) const;

 private:
  token_batch windows(const std::vector<std::size_t>& starts, int length) const;

  std::filesystem::path path_;
  std::uint64_t fingerprint_ = 0;
  std::vector<token_id> ids_;
  std::size_t split_ = 0;  // ids_[split_, end) is held out
  token_id bos_ = 0;
};

}  // namespace orrery::compute
