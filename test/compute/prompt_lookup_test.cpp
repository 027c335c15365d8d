// Prompt lookup's guesses and how a request's window of guesses adapts.

#include <doctest/doctest.h>

#include "compute/prompt_lookup.hpp"

using namespace orrery::compute;

TEST_CASE("prompt lookup continues the latest earlier occurrence of the longest suffix that occurred") {
  // ... 1 2 3 7 ... 1 2 3 9 ... 2 3 : the suffix "2 3" last occurred before 9.
  const std::vector<token_id> seq = {1, 2, 3, 7, 8, 1, 2, 3, 9, 4, 2, 3};
  CHECK(prompt_lookup(seq, 3) == std::vector<token_id>{9, 4, 2});
  CHECK(prompt_lookup(seq, 1) == std::vector<token_id>{9});
  // With 1-grams only: the latest earlier "3" is followed by 9 too.
  CHECK(prompt_lookup(seq, 2, 1) == std::vector<token_id>{9, 4});
  // A longer n-gram wins over a later shorter match: "5 6" occurred before
  // 1, while "6" alone last occurred before 2.
  const std::vector<token_id> two = {5, 6, 1, 0, 6, 2, 5, 6};
  CHECK(prompt_lookup(two, 1) == std::vector<token_id>{1});
  CHECK(prompt_lookup(two, 1, 1) == std::vector<token_id>{2});
  // Past the end the period repeats: "3 1 2" is "1 2 3" shifted.
  CHECK(prompt_lookup({4, 4}, 3) == std::vector<token_id>{4, 4, 4});
  CHECK(prompt_lookup({1, 2, 3, 1, 2}, 5) == std::vector<token_id>{3, 1, 2, 3, 1});
  CHECK(prompt_lookup({1, 2, 3}, 4).empty());  // nothing repeats
  CHECK(prompt_lookup({1}, 4).empty());
  CHECK(prompt_lookup(seq, 0).empty());
}

TEST_CASE("a window doubles while its guesses are kept, shrinks to what was kept, and pauses after failing three times in a row") {
  const std::vector<token_id> loop = {1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2};
  draft_window w(4);
  CHECK(w.propose(loop, 10).size() == 4);
  CHECK(w.propose(loop, 2).size() == 2);  // no more guesses than tokens remain
  w.record(4, 0);
  CHECK(w.window() == 1);
  w.record(1, 1);
  CHECK(w.window() == 2);  // doubles while every guess is kept
  w.record(2, 2);
  CHECK(w.window() == 4);
  w.record(4, 4);
  CHECK(w.window() == 4);  // capped
  w.record(4, 2);
  CHECK(w.window() == 3);  // as far as it was right, and one more
  for (int miss = 0; miss < 3; ++miss) w.record(1, 0);
  // 8 trips without guesses, then guesses again.
  for (int trip = 0; trip < 8; ++trip) CHECK(w.propose(loop, 10).empty());
  CHECK(w.propose(loop, 10).size() == 1);
  // Failing again pauses twice as long; a kept guess resets the pause.
  for (int miss = 0; miss < 3; ++miss) w.record(1, 0);
  int paused = 0;
  while (w.propose(loop, 10).empty()) ++paused;
  CHECK(paused == 16);
  w.record(1, 1);
  for (int miss = 0; miss < 3; ++miss) w.record(1, 0);
  paused = 0;
  while (w.propose(loop, 10).empty()) ++paused;
  CHECK(paused == 8);
  CHECK(draft_window(0).propose(loop, 10).empty());
}
