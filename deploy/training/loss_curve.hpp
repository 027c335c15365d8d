#pragma once
// The loss curve of a training run as an SVG: training loss per step, and
// validation loss where it was measured, over the steps.

#include <cstdint>
#include <string>
#include <vector>

namespace orrery::deploy {

struct loss_point {
  std::int64_t step = 0;
  double loss = 0;
};

/// An SVG chart of `training` (a line) and `validation` (dots on a line).
std::string loss_curve_svg(const std::vector<loss_point>& training, const std::vector<loss_point>& validation,
                           const std::string& title);

}  // namespace orrery::deploy
