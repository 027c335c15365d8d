#include "compute/outline.hpp"

#include <cctype>
#include <sstream>

namespace orrery::compute {

std::string outline_prompt(const std::string& question) { return question + "\n\nOutline, one short point a line:\n1."; }

std::vector<std::string> outline_points(const std::string& outline, int max_points) {
  std::vector<std::string> points;
  std::istringstream lines(outline);
  std::string line;
  auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (static_cast<int>(points.size()) < max_points && std::getline(lines, line)) {
    std::size_t begin = 0, end = line.size();
    while (begin < end && space(line[begin])) ++begin;
    while (end > begin && space(line[end - 1])) --end;
    std::size_t digits = begin;
    while (digits < end && std::isdigit(static_cast<unsigned char>(line[digits]))) ++digits;
    if (digits < end && (line[digits] == '.' || line[digits] == ')')) {
      begin = digits + 1;
      while (begin < end && space(line[begin])) ++begin;
    }
    if (begin < end) points.push_back(line.substr(begin, end - begin));
  }
  return points;
}

std::string point_header(const std::string& point, std::size_t index) {
  return "\n\n" + std::to_string(index + 1) + ". " + point + "\n";
}

}  // namespace orrery::compute
