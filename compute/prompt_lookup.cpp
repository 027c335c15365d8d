#include "compute/prompt_lookup.hpp"

#include <algorithm>

namespace orrery::compute {

std::vector<token_id> prompt_lookup(const std::vector<token_id>& sequence, int count, int max_ngram) {
  const auto size = static_cast<std::ptrdiff_t>(sequence.size());
  if (count < 1) return {};
  for (std::ptrdiff_t n = std::min<std::ptrdiff_t>(max_ngram, size - 1); n >= 1; --n) {
    const auto suffix = sequence.end() - n;
    // The latest earlier occurrence: it starts before the suffix does.
    for (std::ptrdiff_t start = size - n - 1; start >= 0; --start) {
      if (!std::equal(suffix, sequence.end(), sequence.begin() + start)) continue;
      // What followed it, and past the sequence's end the same period
      // again: the suffix repeats what came `period` tokens earlier.
      const auto period = size - n - start;
      std::vector<token_id> guesses;
      for (std::ptrdiff_t i = 0; i < count; ++i) {
        const auto at = size - period + i;
        guesses.push_back(at < size ? sequence[static_cast<std::size_t>(at)] : guesses[static_cast<std::size_t>(at - size)]);
      }
      return guesses;
    }
  }
  return {};
}

draft_window::draft_window(int max_drafts, int max_ngram)
    : max_drafts_(std::max(0, max_drafts)), max_ngram_(max_ngram), window_(max_drafts_) {}

std::vector<token_id> draft_window::propose(const std::vector<token_id>& sequence, int limit) {
  if (max_drafts_ == 0 || limit < 1) return {};
  if (pause_ > 0) {
    --pause_;
    return {};
  }
  return prompt_lookup(sequence, std::min(window_, limit), max_ngram_);
}

void draft_window::record(int drafted, int accepted) {
  if (drafted < 1) return;
  if (accepted == drafted) {
    // A trip's extra rows cost little beside the trip itself: widen fast.
    window_ = std::min(max_drafts_, 2 * window_);
  } else {
    // The next trip guesses as far as this one was right, and one more.
    window_ = std::max(1, accepted + 1);
  }
  if (accepted > 0) {
    misses_ = 0;
    next_pause_ = 8;
    return;
  }
  // Guesses that keep failing cost a wider pass each trip for nothing: stop
  // guessing for a while, twice as long each time it happens again.
  if (++misses_ >= 3) {
    misses_ = 0;
    pause_ = next_pause_;
    next_pause_ = std::min(64, next_pause_ * 2);
  }
}

}  // namespace orrery::compute
