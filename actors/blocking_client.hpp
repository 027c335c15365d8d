#pragma once
// The blocking side of a driver, for command-line tools and tests: each call
// waits for the driver's answer (a caf::scoped_actor) and turns its error into
// an exception with the driver's explanation.

#include <caf/actor_system.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <vector>

#include "actors/interfaces.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

/// Deploys the driver's placement; throws std::runtime_error with the
/// driver's explanation (which node, what went wrong).
void deploy_blocking(caf::actor_system& system, const driver_actor& driver, std::chrono::milliseconds timeout);

/// Sends every request at once (so they share the pipeline), calls
/// `on_token(index, event)` for each streamed token, and returns the
/// summaries in request order. Throws std::runtime_error when any request
/// fails or nothing arrives for `timeout`.
std::vector<generation_summary> generate_blocking(
    caf::actor_system& system, const driver_actor& driver, const std::vector<generate_request>& requests,
    std::chrono::milliseconds timeout, const std::function<void(std::size_t, const token_event&)>& on_token = {});

/// Every stage's counters, in pipeline order.
std::vector<stage_stats> stats_blocking(caf::actor_system& system, const driver_actor& driver,
                                        std::chrono::milliseconds timeout);

/// Every recovery so far, oldest first.
std::vector<recovery_event> recoveries_blocking(caf::actor_system& system, const driver_actor& driver,
                                                std::chrono::milliseconds timeout);

}  // namespace orrery::actors
