#include "planning/migration.hpp"

#include <numeric>

namespace orrery::planning {

namespace {

std::uint64_t bytes_of(const cluster_state& state, std::size_t begin, std::size_t end) {
  return std::accumulate(state.layer_bytes.begin() + static_cast<std::ptrdiff_t>(begin),
                         state.layer_bytes.begin() + static_cast<std::ptrdiff_t>(end), std::uint64_t{0});
}

bool fits(const cluster_state& state, const stage& s) {
  auto budget = state.memory_bytes.at(s.device);
  const double scale = state.state_scale.empty() ? 1.0 : state.state_scale.at(s.device);
  return budget == 0 || static_cast<double>(bytes_of(state, s.begin, s.end)) * scale <= static_cast<double>(budget);
}

bool all_fit(const cluster_state& state, const std::vector<stage>& stages) {
  for (const auto& s : stages)
    if (!fits(state, s)) return false;
  return true;
}

// Gives the lost stage at `lost` to the survivors beside it, trying half to
// each, then all to the one before, then all to the one after.
bool absorb(std::vector<stage>& stages, std::size_t lost, const cluster_state& state) {
  const auto dead = stages[lost];
  const bool before = lost > 0 && state.alive.at(stages[lost - 1].device);
  const bool after = lost + 1 < stages.size() && state.alive.at(stages[lost + 1].device);
  std::vector<std::size_t> cuts;
  if (before && after) cuts.push_back(dead.begin + (dead.end - dead.begin + 1) / 2);
  if (before) cuts.push_back(dead.end);
  if (after) cuts.push_back(dead.begin);
  for (auto cut : cuts) {
    auto trial = stages;
    if (before) trial[lost - 1].end = cut;
    if (after) trial[lost + 1].begin = cut;
    trial.erase(trial.begin() + static_cast<std::ptrdiff_t>(lost));
    if (all_fit(state, trial)) {
      stages = std::move(trial);
      return true;
    }
  }
  return false;
}

// Lays the layers out over `devices` in order, each taking at most its share
// (an even share of what is left, or everything it can hold when `fill`),
// less where its budget says so. Returns where the layers ran out.
std::size_t lay_out(const cluster_state& state, const std::vector<std::size_t>& devices, bool fill,
                    std::vector<stage>& stages) {
  const std::size_t layers = state.layer_bytes.size();
  std::size_t at = 0;
  stages.clear();
  for (std::size_t i = 0; i < devices.size() && at < layers; ++i) {
    std::size_t share = fill ? layers - at : (layers - at + (devices.size() - i) - 1) / (devices.size() - i);
    stage s{devices[i], at, at + share};
    while (s.end > s.begin && !fits(state, s)) --s.end;
    if (s.end == s.begin) continue;
    stages.push_back(s);
    at = s.end;
  }
  return at;
}

}  // namespace

std::vector<stage> even_layout(const cluster_state& state) {
  std::vector<std::size_t> devices;
  for (std::size_t d = 0; d < state.alive.size(); ++d)
    if (state.alive[d]) devices.push_back(d);
  const std::size_t layers = state.layer_bytes.size();
  std::vector<stage> stages;
  // Even shares first; when budgets make an early device stop short, filling
  // every device to its budget in order is the layout that fits if any does.
  if (lay_out(state, devices, false, stages) == layers) return stages;
  std::size_t at = lay_out(state, devices, true, stages);
  if (at < layers)
    throw infeasible_error("layers [" + std::to_string(at) + ", " + std::to_string(layers) + ") (" +
                           std::to_string(bytes_of(state, at, layers)) + " bytes) fit on no surviving node");
  return stages;
}

migration plan_after_loss(const std::vector<stage>& current, const cluster_state& state) {
  auto stages = current;
  bool neighbours = true;
  for (std::size_t i = 0; i < stages.size() && neighbours;) {
    if (state.alive.at(stages[i].device)) {
      ++i;
    } else if (!absorb(stages, i, state)) {
      neighbours = false;
    }
  }
  if (neighbours) return {stages, "neighbours"};
  return {even_layout(state), "fresh plan"};
}

}  // namespace orrery::planning
