#include "deploy/training/loss_curve.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace orrery::deploy {

namespace {

std::string number(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f", v);
  return text;
}

std::string escaped(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

}  // namespace

std::string loss_curve_svg(const std::vector<loss_point>& training, const std::vector<loss_point>& validation,
                           const std::string& title) {
  constexpr double width = 720, height = 400, left = 60, right = 20, top = 40, bottom = 50;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  std::int64_t last_step = 1;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto* series : {&training, &validation})
    for (const auto& p : *series) {
      if (!std::isfinite(p.loss)) continue;
      last_step = std::max(last_step, p.step);
      lo = std::min(lo, p.loss), hi = std::max(hi, p.loss);
    }
  if (!(lo <= hi)) lo = 0, hi = 1;
  if (hi - lo < 1e-9) hi = lo + 1;
  lo = std::max(0.0, lo - 0.05 * (hi - lo));
  auto x = [&](std::int64_t step) { return left + plot_w * static_cast<double>(step) / static_cast<double>(last_step); };
  auto y = [&](double loss) { return top + plot_h * (1 - (loss - lo) / (hi - lo)); };
  auto polyline = [&](const std::vector<loss_point>& series) {
    std::string points;
    for (const auto& p : series)
      if (std::isfinite(p.loss)) points += number(x(p.step)) + "," + number(y(p.loss)) + " ";
    return points;
  };

  std::ostringstream out;
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << left << "\" y=\"22\" font-size=\"15\">" << escaped(title) << "</text>\n";
  // Axes with five ticks each.
  out << "<g stroke=\"#999\">\n<line x1=\"" << left << "\" y1=\"" << top + plot_h << "\" x2=\"" << left + plot_w
      << "\" y2=\"" << top + plot_h << "\"/>\n<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left
      << "\" y2=\"" << top + plot_h << "\"/>\n</g>\n";
  for (int i = 0; i <= 4; ++i) {
    const double loss = lo + (hi - lo) * i / 4;
    const auto step = static_cast<std::int64_t>(std::llround(static_cast<double>(last_step) * i / 4));
    out << "<text x=\"" << left - 6 << "\" y=\"" << number(y(loss) + 4) << "\" text-anchor=\"end\">"
        << number(loss).substr(0, 5) << "</text>\n"
        << "<line x1=\"" << left << "\" y1=\"" << number(y(loss)) << "\" x2=\"" << left + plot_w << "\" y2=\""
        << number(y(loss)) << "\" stroke=\"#eee\"/>\n"
        << "<text x=\"" << number(x(step)) << "\" y=\"" << top + plot_h + 18 << "\" text-anchor=\"middle\">" << step
        << "</text>\n";
  }
  out << "<text x=\"" << left + plot_w / 2 << "\" y=\"" << height - 10 << "\" text-anchor=\"middle\">step</text>\n"
      << "<text x=\"16\" y=\"" << top + plot_h / 2 << "\" transform=\"rotate(-90 16 " << top + plot_h / 2
      << ")\" text-anchor=\"middle\">loss (nats/token)</text>\n";
  out << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"" << polyline(training) << "\"/>\n";
  if (!validation.empty()) {
    out << "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"" << polyline(validation)
        << "\"/>\n";
    for (const auto& p : validation)
      if (std::isfinite(p.loss))
        out << "<circle cx=\"" << number(x(p.step)) << "\" cy=\"" << number(y(p.loss)) << "\" r=\"3\" fill=\"#d62728\"/>\n";
  }
  // Legend.
  out << "<g transform=\"translate(" << left + plot_w - 150 << "," << top + 10 << ")\">\n"
      << "<line x1=\"0\" y1=\"0\" x2=\"20\" y2=\"0\" stroke=\"#1f77b4\" stroke-width=\"2\"/>"
      << "<text x=\"26\" y=\"4\">training</text>\n"
      << "<line x1=\"0\" y1=\"18\" x2=\"20\" y2=\"18\" stroke=\"#d62728\" stroke-width=\"2\"/>"
      << "<text x=\"26\" y=\"22\">validation</text>\n</g>\n</svg>\n";
  return out.str();
}

}  // namespace orrery::deploy
