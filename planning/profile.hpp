#pragma once
// The planning data model (ARCHITECTURE.md, "Planning data model"): what every
// planner and the simulator read. A profile comes from the profiler (measured on
// the real cluster), from the device catalog, or from a JSON / YAML file.

#include <cstddef>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace orrery::planning {

/// A bad profile: the message names the field (as a JSON path) and what was wrong.
class profile_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Seconds per token as a function of a length (prompt length for prefill,
/// context length for decode), measured at a few lengths and interpolated
/// linearly between them, flat below the first; beyond the last a rising cost
/// is extrapolated linearly and a falling one held at the last point.
class time_curve {
 public:
  /// One measurement: at `length` tokens a token costs `seconds`.
  struct point {
    double length = 0;
    double seconds = 0;
  };

  time_curve() = default;

  /// @param points at least one point; sorted by length here.
  explicit time_curve(std::vector<point> points);

  /// A curve that does not depend on the length.
  static time_curve constant(double seconds);

  /// Seconds per token at `length`; never negative.
  double at(double length) const;

  /// The measured points, sorted by length.
  const std::vector<point>& points() const { return points_; }

 private:
  std::vector<point> points_;
};

/// One device's measured times for one model layer.
struct layer_timing {
  time_curve prefill;   ///< seconds per token, prefilling a sequence of the given length
  time_curve decode;    ///< seconds per token, decoding at the given context length
  double forward = 0;   ///< training forward, seconds per sample
  double backward = 0;  ///< training backward, seconds per sample
  double update = 0;    ///< training: one optimizer step of the layer (gradient norm + AdamW), seconds
};

/// Per-piece costs of one transformer block for tensor / sequence parallelism
/// (Galaxy): what one attention head, one MLP column or one token of the
/// connective block (residual + norm) costs per token on this device.
struct tp_costs {
  double per_head = 0;    ///< seconds per token per attention head
  double per_column = 0;  ///< seconds per token per MLP intermediate column
  double per_token = 0;   ///< seconds per token of one connective block
};

/// How a device runs a burst of work after idling, measured (compute/
/// layer_timing.hpp's decode_burst). Under a CPU quota (a container's limit,
/// the testbed's emulated small devices) the first milliseconds of a burst
/// run at the core's full speed and the rest at the quota's: a pipeline stage
/// serving one request, idle while the other stages work, runs its layers
/// faster than the profile's sustained times say.
struct burst_speed {
  /// (work, wall) after each measured step: work in seconds at the speed the
  /// first step ran, wall seconds since the burst began; rising.
  std::vector<std::pair<double, double>> points;
  /// The sustained time of the measured step over the first step's: what a
  /// second of full-speed work takes once the burst is spent.
  double sustained_over_first = 1;

  /// The wall time of a burst from idle whose sustained profile time is
  /// `sustained_seconds`: interpolated on the points, past them at the
  /// sustained pace, and never more than the sustained time itself.
  /// Without points, `sustained_seconds`.
  double wall_seconds(double sustained_seconds) const;
};

/// A device taking part in the cluster.
struct device_profile {
  std::string name;
  double memory_bytes = 0;            ///< budget for model state (weights, KV, activations)
  std::vector<layer_timing> layers;   ///< one entry per model layer
  std::optional<tp_costs> tp;         ///< present when TP/SP costs were profiled
  burst_speed burst{};                ///< empty when not measured: bursts at the sustained times
  /// Bytes a layer's state (weights, KV cache) takes on this device per byte
  /// the layer profiles count: 0.5 for a bf16 device in a cluster whose
  /// layers are counted in fp32. Planners compare the layers' bytes with
  /// state_budget(), which divides the memory by it.
  double state_scale = 1;
  /// Training: seconds of this device's own work per byte it sends and
  /// receives in a gradient all-reduce (the copies, checksums and sums on
  /// either side of the wire, at its CPU share), measured; 0: not measured.
  /// A node at a fifth of a core spends longer on them than a 1 Gbit/s link
  /// on the bytes.
  double reduce_seconds_per_byte = 0;
};

/// What `d` can hold, in the bytes the layer profiles count.
double state_budget(const device_profile& d);

/// A network path between two devices.
struct link_spec {
  double bandwidth = 0;  ///< bytes per second, > 0
  double latency = 0;    ///< seconds per message, >= 0
};

/// Bandwidth and latency between every pair of devices: a default plus
/// symmetric overrides. A device talks to itself for free.
class link_matrix {
 public:
  link_matrix() = default;

  /// @param fallback the link used between any pair without an override.
  explicit link_matrix(link_spec fallback) : fallback_(fallback) {}

  /// Sets the link between `a` and `b` (both directions).
  void set(std::size_t a, std::size_t b, link_spec spec);

  /// The link between `a` and `b`; `a != b`.
  link_spec between(std::size_t a, std::size_t b) const;

  /// Seconds to send one message of `bytes` from `a` to `b`; 0 when `a == b`.
  double transfer_seconds(std::size_t a, std::size_t b, double bytes) const;

  /// The default link.
  const link_spec& fallback() const { return fallback_; }

  /// The overrides, keyed by (smaller index, larger index).
  const std::map<std::pair<std::size_t, std::size_t>, link_spec>& overrides() const {
    return overrides_;
  }

 private:
  link_spec fallback_;
  std::map<std::pair<std::size_t, std::size_t>, link_spec> overrides_;
};

/// One model layer (the embedding and the head are layers too).
struct layer_profile {
  std::string name;
  double weight_bytes = 0;                  ///< parameters of the layer
  double activation_bytes_per_token = 0;    ///< bytes per token leaving the layer
  double kv_bytes_per_token = 0;            ///< KV cache bytes per token of context
  double training_bytes_per_token = 0;      ///< activations kept for backward, per token
};

/// The transformer's shape, needed by the tensor-parallel split (Galaxy).
struct transformer_shape {
  int hidden = 0;
  int intermediate = 0;
  int heads = 0;
  int kv_heads = 0;
  int vocab = 0;
  int max_context = 0;
  int dtype_bytes = 2;
};

/// What the cluster is asked to run; the planners' objectives are defined over it.
struct workload {
  int prompt_tokens = 32;      ///< EdgeShard's evaluation setting (PAPERS.md)
  int output_tokens = 96;      ///< EdgeShard's evaluation setting (PAPERS.md)
  int batch = 4;               ///< requests decoded concurrently (throughput objective)
  int micro_batches = 4;       ///< M, micro-batches per training round (Asteroid)
  int micro_batch_size = 4;    ///< B, samples per micro-batch (Asteroid)
  int train_tokens = 128;      ///< tokens per training sample
  int optimizer_states = 2;    ///< Adam keeps two moments per weight
  /// Bytes per generated token that return from the last stage to the
  /// source: a token id (4) when the last stage samples, as in EdgeShard; the
  /// logits row (vocab x 4) when the source samples, as orrery's driver does.
  double return_bytes = 4;
};

/// Everything the planners know about a cluster and a model.
struct profile {
  std::string model;
  std::vector<layer_profile> layers;
  std::optional<transformer_shape> shape;
  std::vector<device_profile> devices;
  link_matrix links;
  std::size_t source = 0;  ///< the device holding the user's data: layer 0 runs there
  workload work;
  /// The least seconds one step of a group's ring takes, whatever its link's
  /// latency and bytes: a loaded member's wake-up, hand-off and CPU-quota
  /// stalls, which an idle link's probe does not see. Calibrated from a
  /// group's run (`orrery bench placement` measures its ring waits); 0 until then.
  double ring_step_floor = 0;

  /// Throws profile_error naming the first inconsistency found.
  void validate() const;
};

/// Reads a profile from JSON; throws profile_error with the offending path.
profile profile_from_json(const nlohmann::json& j);

/// Writes a profile as JSON that profile_from_json reads back unchanged.
nlohmann::json to_json(const profile& p);

/// Loads a `.json`, `.yaml` or `.yml` file; throws profile_error.
profile load_profile(const std::string& path);

/// Saves as JSON, or YAML when `path` ends in `.yaml` / `.yml`.
void save_profile(const profile& p, const std::string& path);

}  // namespace orrery::planning
