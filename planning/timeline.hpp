#pragma once
// Gantt charts of simulated schedules (`orrery plan … --timeline out.svg`).

#include <string>

#include "planning/task_graph.hpp"

namespace orrery::planning {

/// An SVG with one row per resource and one bar per task, coloured by group
/// (request, micro-batch or chunk) and labelled with the task's label.
std::string timeline_svg(const schedule& s, const std::string& title);

}  // namespace orrery::planning
