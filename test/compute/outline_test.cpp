// The texts outline-based parallel decoding builds its sequences from.

#include <doctest/doctest.h>

#include "compute/outline.hpp"

using namespace orrery::compute;

TEST_CASE("an outline's points are its non-empty lines, numbering and spaces taken off, at most the maximum") {
  // The outline continues the prompt's "1.", so its first line has no number.
  const std::string outline = " the river rises\n2. the ferry stops\n\n  3) the village waits  \n4.\n5. and more";
  CHECK(outline_points(outline, 8) == std::vector<std::string>{"the river rises", "the ferry stops", "the village waits", "and more"});
  CHECK(outline_points(outline, 2) == std::vector<std::string>{"the river rises", "the ferry stops"});
  CHECK(outline_points("", 4).empty());
  CHECK(outline_points("\n\n \n", 4).empty());
  CHECK(outline_points("12 apples", 4) == std::vector<std::string>{"12 apples"});  // a number, not a numbering
  CHECK(outline_prompt("Why?") == "Why?\n\nOutline, one short point a line:\n1.");
  CHECK(point_header("the ferry stops", 1) == "\n\n2. the ferry stops\n");
}
