#include "compute/training/corpus.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <string>

#include "compute/bounded_file.hpp"
#include "compute/model_error.hpp"
#include "compute/model_fingerprint.hpp"
#include "compute/splitmix.hpp"

namespace orrery::compute {

corpus corpus::load(const std::filesystem::path& path, const tokenizer& tokens, double validation_fraction, int length) {
  if (!(validation_fraction > 0 && validation_fraction <= 0.5))
    throw model_error("the validation fraction must be in (0, 0.5], got " + std::to_string(validation_fraction));
  if (length < 2) throw model_error("a training sequence needs at least 2 tokens, got " + std::to_string(length));
  { regular_file check(path); }  // refuses FIFOs, directories, devices with a clear message
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) throw model_error(path.string() + ": cannot read the corpus");
  corpus c;
  c.path_ = path;
  c.fingerprint_ = content_hash(path);
  c.ids_ = tokens.encode(text);
  c.bos_ = tokens.bos();
  const auto held_out = static_cast<std::size_t>(std::ceil(static_cast<double>(c.ids_.size()) * validation_fraction));
  c.split_ = c.ids_.size() - held_out;
  const auto need = static_cast<std::size_t>(length);
  if (c.split_ < need || held_out < need)
    throw model_error(path.string() + ": " + std::to_string(c.ids_.size()) + " tokens are too few: training on " +
                      std::to_string(length) + "-token sequences with " + std::to_string(validation_fraction) +
                      " held out needs at least " +
                      std::to_string(static_cast<std::size_t>(std::ceil(static_cast<double>(need) / validation_fraction))) +
                      " tokens");
  return c;
}

token_batch corpus::windows(const std::vector<std::size_t>& starts, int length) const {
  // A sequence: BOS, then the window's first length - 1 tokens; its targets
  // are the window's length tokens.
  const auto n = static_cast<std::int64_t>(starts.size()), l = static_cast<std::int64_t>(length);
  auto inputs = at::empty({n * l}, at::kLong), targets = at::empty({n * l}, at::kLong);
  auto* in = inputs.data_ptr<std::int64_t>();
  auto* out = targets.data_ptr<std::int64_t>();
  for (std::int64_t s = 0; s < n; ++s) {
    const token_id* window = ids_.data() + starts[static_cast<std::size_t>(s)];
    in[s * l] = bos_;
    for (std::int64_t t = 0; t < l; ++t) {
      out[s * l + t] = window[t];
      if (t + 1 < l) in[s * l + t + 1] = window[t];
    }
  }
  return {inputs, targets, static_cast<int>(n), length};
}

token_batch corpus::training_batch(std::uint64_t seed, std::int64_t step, int first, int count, int length) const {
  const std::size_t offsets = split_ - static_cast<std::size_t>(length) + 1;
  std::vector<std::size_t> starts;
  for (int i = first; i < first + count; ++i) {
    std::uint64_t state = seed ^ (static_cast<std::uint64_t>(step) * 0x9e3779b97f4a7c15ull) ^
                          (static_cast<std::uint64_t>(i) * 0xc2b2ae3d27d4eb4full);
    starts.push_back(static_cast<std::size_t>(splitmix64(state) % offsets));
  }
  return windows(starts, length);
}

int corpus::validation_sequences(int length) const {
  return static_cast<int>(validation_tokens() / static_cast<std::size_t>(length));
}

token_batch corpus::validation_batch(int first, int count, int length) const {
  if (first < 0 || count < 0 || first + count > validation_sequences(length))
    throw model_error(path_.string() + ": validation sequences [" + std::to_string(first) + ", " +
                      std::to_string(first + count) + ") are not among the " +
                      std::to_string(validation_sequences(length)) + " held out");
  std::vector<std::size_t> starts;
  for (int i = first; i < first + count; ++i) starts.push_back(split_ + static_cast<std::size_t>(i) * length);
  return windows(starts, length);
}

}  // namespace orrery::compute
