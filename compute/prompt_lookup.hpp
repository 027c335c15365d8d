#pragma once
// Guesses for speculative decoding without a second model (prompt lookup):
// the sequence's last n tokens (n from max_ngram down to 1) are looked up
// earlier in the sequence, and the tokens that followed their latest earlier
// occurrence are the guesses. Text that repeats its input (a summary, an
// edit, code) continues what it has seen, so the guesses are often right;
// free text rarely repeats, so the window backs off when guesses keep
// failing and a trip then costs what a plain decode step costs.

#include <cstdint>
#include <vector>

#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

/// `count` tokens that followed the latest earlier occurrence of
/// `sequence`'s last n tokens, for the largest n in [1, max_ngram] that
/// occurs earlier; where they run past the end, the same period again.
/// Empty when no suffix occurs earlier.
std::vector<token_id> prompt_lookup(const std::vector<token_id>& sequence, int count, int max_ngram = 3);

/// One request's guesses and how its window adapts to how many are kept.
class draft_window {
 public:
  /// `max_drafts` guesses at most per trip (0: none, ever).
  explicit draft_window(int max_drafts, int max_ngram = 3);

  /// Guesses to send after `sequence`, at most `limit` (the tokens still to
  /// generate after the next one). Empty while backing off.
  std::vector<token_id> propose(const std::vector<token_id>& sequence, int limit);
  /// What became of a trip's `drafted` guesses: `accepted` were kept.
  void record(int drafted, int accepted);

  int window() const { return window_; }

 private:
  int max_drafts_, max_ngram_, window_;
  int misses_ = 0;  ///< trips in a row whose guesses were all rejected
  int pause_ = 0;   ///< trips still to go without guesses
  int next_pause_ = 8;
};

}  // namespace orrery::compute
