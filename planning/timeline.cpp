#include "planning/timeline.hpp"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace orrery::planning {

namespace {

constexpr double label_width = 260;
constexpr double chart_width = 1000;
constexpr double row_height = 22;
constexpr double top = 40;

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string colour(int group) {
  if (group < 0)
    return "#9e9e9e";
  char text[32];
  std::snprintf(text, sizeof text, "hsl(%d,65%%,55%%)", (group * 47) % 360);
  return text;
}

std::string number(double x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", x);
  return text;
}

}  // namespace

std::string timeline_svg(const schedule& s, const std::string& title) {
  double scale = chart_width / std::max(s.makespan, 1e-12);
  double height = top + row_height * static_cast<double>(s.resources.size()) + 30;
  std::ostringstream out;
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << number(label_width + chart_width + 20)
      << "\" height=\"" << number(height) << "\" font-family=\"sans-serif\" font-size=\"11\">\n"
      << "<text x=\"10\" y=\"20\" font-size=\"14\">" << escape(title) << " (makespan "
      << number(s.makespan * 1e3) << " ms)</text>\n";
  for (std::size_t r = 0; r < s.resources.size(); ++r)
    out << "<text x=\"10\" y=\"" << number(top + row_height * (r + 0.7)) << "\">"
        << escape(s.resources[r]) << "</text>\n";
  for (const span& sp : s.spans) {
    if (sp.finish <= sp.start)
      continue;
    out << "<rect x=\"" << number(label_width + sp.start * scale) << "\" y=\""
        << number(top + row_height * sp.resource + 2) << "\" width=\""
        << number(std::max((sp.finish - sp.start) * scale, 0.5)) << "\" height=\""
        << number(row_height - 4) << "\" fill=\"" << colour(sp.group) << "\"><title>"
        << escape(sp.label) << " " << number(sp.start * 1e3) << "-" << number(sp.finish * 1e3)
        << " ms</title></rect>\n";
  }
  out << "<text x=\"" << number(label_width) << "\" y=\"" << number(height - 8) << "\">0 ms</text>\n"
      << "<text x=\"" << number(label_width + chart_width - 60) << "\" y=\"" << number(height - 8)
      << "\">" << number(s.makespan * 1e3) << " ms</text>\n</svg>\n";
  return out.str();
}

}  // namespace orrery::planning
