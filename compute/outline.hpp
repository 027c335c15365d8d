#pragma once
// Outline-based parallel decoding (Jupiter's third trick, after
// Skeleton-of-Thought): the model first writes a short outline of its
// answer; then each point of the outline is written as a sequence of its
// own that continues the question and the outline, so the points decode
// side by side; the answer is the points in order. The texts the sequences
// are built from live here, so local and distributed runs agree on them.

#include <string>
#include <vector>

namespace orrery::compute {

/// The prompt the outline is written from: the question, then a numbered
/// list begun: "{question}\n\nOutline, one short point a line:\n1."
std::string outline_prompt(const std::string& question);

/// The outline's points: its lines, trimmed, with a leading "N." or "N)"
/// taken off and empty lines skipped; at most `max_points`.
std::vector<std::string> outline_points(const std::string& outline, int max_points);

/// What point `index` (from 0) of `points` continues the question and the
/// outline with: "\n\n{index + 1}. {point}\n", of which a sequence takes at
/// most the first max_point_header_tokens tokens (a long point line must not
/// take the context its text needs).
std::string point_header(const std::string& point, std::size_t index);
constexpr int max_point_header_tokens = 64;

}  // namespace orrery::compute
