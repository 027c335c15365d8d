#pragma once
// What the profiler measures on a node's own device: seconds per token of a
// model's layers, for prefill at several prompt lengths and for decode at
// several context lengths (ARCHITECTURE.md, "Planning data model").
//
// Every decoder layer of a model has the same shape, so one middle layer
// stands for all of them; the first and the last layer are measured as the
// shards [0, 1) and [N-1, N) because orrery's runtime runs the embedding with
// layer 0 and the final norm and LM head with layer N-1. A time is the mean
// over repeats that together last at least `min_seconds` of wall time, so a
// node held to a fraction of a core by a CPU quota is measured at its
// throttled speed rather than during one lucky unthrottled burst.
//
// For training placements (Asteroid) the same three layers are also timed
// through a training pass (compute/training/pass.hpp): forward with autograd
// and backward, in fp32 as training stages compute, per sample of
// `train_tokens` tokens, over micro-batches of `train_sequences` samples.

#include <functional>
#include <string>
#include <vector>

namespace orrery::compute {

/// Seconds per token at a sequence length (prefill) or context length (decode).
struct timing_point {
  int length = 0;
  double seconds = 0;
};

/// One measured layer kind.
struct layer_kind_timing {
  std::string kind;  ///< "first", "middle" or "last"
  std::vector<timing_point> prefill;
  std::vector<timing_point> decode;
  /// Seconds per sample; 0 when training was not timed.
  double train_forward = 0;
  double train_backward = 0;
  /// Seconds of one optimizer update of the layer (its gradients' squared
  /// norm, then AdamW), whatever the batch; 0 when training was not timed.
  double train_update = 0;
};

struct layer_timing_options {
  std::vector<int> prefill_lengths = {8, 32, 128};
  std::vector<int> decode_contexts = {16, 128, 512};
  /// Wall time each point's repeats must add up to.
  double min_seconds = 0.3;
  int threads = 1;
  /// `cpu` (or `cuda:N` where libtorch has CUDA).
  std::string device = "cpu";
  /// `fp32`, `fp16` or `bf16`: what the node computes in.
  std::string dtype = "fp32";
  /// Tokens per training sample; 0: training is not timed.
  int train_tokens = 0;
  /// Samples per timed training micro-batch.
  int train_sequences = 1;
};

/// How fast the device runs a burst of decode steps after idling: the wall
/// seconds from the start to the end of each of a run of back-to-back middle
/// layer decode steps at context `context`, the median over a few bursts.
/// A pipeline stage serving one request runs such bursts; under a CPU quota
/// its first milliseconds run at the core's full speed and only the rest at
/// the quota's, so the sustained times above overstate it (planning/
/// profile.hpp's burst_speed turns this into a stage's time).
struct decode_burst {
  int context = 0;
  std::vector<double> wall_seconds;
};

struct layer_timings {
  std::vector<layer_kind_timing> kinds;
  decode_burst burst;
};

/// Measures the first, a middle and the last layer of the model in `model_dir`
/// (which needs at least 3 layers), then the middle layer's decode burst (when
/// any decode context is asked for) and training passes (when train_tokens > 0);
/// `progress(done, total)` after each point. Throws model_error naming the
/// model directory on a bad model.
layer_timings measure_layer_times(const std::string& model_dir, const layer_timing_options& options,
                                  const std::function<void(int done, int total)>& progress = {});

}  // namespace orrery::compute
