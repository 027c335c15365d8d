#pragma once
// Discrete-event simulation of plans on the task-graph core: what a plan
// would do on the cluster, step by step, with device and link contention.
// Predicts latency, throughput, utilisation and peak memory; the schedule can
// be drawn as a Gantt chart (timeline.hpp).

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "planning/asteroid.hpp"
#include "planning/cost.hpp"
#include "planning/pipeline.hpp"
#include "planning/task_graph.hpp"

namespace orrery::planning {

/// How requests flow through an inference pipeline.
struct inference_options {
  int requests = 1;
  /// EdgeShard's ordering: a request starts its next token as soon as its
  /// previous one is back at the source. Off: a round of tokens (one per
  /// request) must finish before the next round starts.
  bool no_bubble = true;
  /// Prompt chunk lengths for intra-sequence pipelined prefill (Jupiter);
  /// empty: the whole prompt at once.
  std::vector<int> prefill_chunks;
  /// Stop after the prefill (the first token back at the source).
  bool prefill_only = false;
};

/// One device's predicted use.
struct device_use {
  std::string name;
  double busy_seconds = 0;
  double utilisation = 0;   ///< busy / makespan
  double peak_memory = 0;   ///< bytes
};

/// What a simulation predicts.
struct simulation {
  double makespan = 0;        ///< seconds until the last result arrives
  double mean_latency = 0;    ///< per request (inference) or the round (training)
  double throughput = 0;      ///< generated tokens/s (inference) or samples/s (training)
  std::vector<device_use> devices;
  schedule timeline;
};

/// Simulates the workload's requests through a pipeline. Peak memory counts
/// the weights plus the KV of all requests at full context (they overlap in time).
simulation simulate_inference(const cost_model& costs, const std::vector<stage>& stages,
                              const inference_options& options);

/// Simulates one HPP training round: each stage group runs its micro-batches
/// in 1F1B order (warm-up forwards, then one forward / one backward, then the
/// remaining backwards), transfers between groups, then the group's all-reduce.
simulation simulate_training(const profile& p, const hpp_plan& plan);

/// Summary figures as JSON (without the timeline).
nlohmann::json to_json(const simulation& s);

}  // namespace orrery::planning
