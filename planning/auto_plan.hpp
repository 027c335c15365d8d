#pragma once
// `auto` mode: run every execution style that applies to the objective,
// predict each with the simulator (or Galaxy's block schedule), and rank them.
// The winner is the plan; the others are reported beside it as runner-ups.

#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "planning/profile.hpp"
#include "planning/simulator.hpp"

namespace orrery::planning {

/// What the cluster should be best at.
enum class objective { latency, throughput, training };

/// Parses "latency", "throughput" or "training"; throws profile_error otherwise.
objective parse_objective(const std::string& text);

/// The name of an objective.
std::string to_string(objective goal);

/// One execution style's plan and predictions.
struct style_result {
  std::string style;   ///< "edgeshard", "edgeshard+jupiter", "galaxy-tp", "solo", …
  bool feasible = false;
  std::string reason;  ///< why not, when infeasible
  double latency = std::numeric_limits<double>::infinity();  ///< s per request, or per training round
  double throughput = 0;  ///< generated tokens/s, or training samples/s
  std::vector<device_use> devices;
  nlohmann::json plan;    ///< the style's plan (stages, groups, splits, chunks)
  schedule timeline;      ///< simulated schedule (empty for closed-form styles)
};

/// Every style for the objective, best first (infeasible ones last).
struct ranked_plans {
  objective goal = objective::latency;
  std::vector<style_result> styles;
};

/// Plans the profile for `goal` in every applicable style.
/// Throws infeasible_error (with every style's reason) when none is feasible.
ranked_plans plan_auto(const profile& p, objective goal);

/// The ranking as JSON.
nlohmann::json to_json(const ranked_plans& ranked);

}  // namespace orrery::planning
