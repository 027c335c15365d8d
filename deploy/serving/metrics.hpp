#pragma once
// What `orrery serve` exposes at /metrics, in Prometheus' text format
// (prometheus-cpp's registry and serializer): requests by endpoint and
// status, tokens in and out, time to first token, inter-token latency, the
// pipeline's per-stage compute and transfer time, recoveries, and the
// speculative decoder's guesses. Thread-safe: every HTTP worker records here.

#include <memory>
#include <string>
#include <vector>

#include "messages/types.hpp"

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace orrery::deploy {

class serving_metrics {
 public:
  serving_metrics();
  ~serving_metrics();

  /// An HTTP request answered: its route ("/v1/completions", ...) and status.
  void answered(const std::string& route, int status);
  /// A generation that ended (done, stopped or cancelled): its counts and
  /// the speculative decoder's guesses (from its summary; zero without one).
  void generated(std::size_t prompt_tokens, std::size_t completion_tokens, double seconds, std::int32_t drafted,
                 std::int32_t accepted);
  void first_token(double seconds);
  void inter_token(double seconds);
  void cancelled();
  /// Requests generating now.
  void started();
  void finished();

  /// The text of every metric, with the pipeline's stages and recoveries as
  /// they stand (asked of the driver by the caller).
  std::string render(const std::vector<stage_stats>& stages, const std::vector<recovery_event>& recoveries);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Counter *prompt_tokens_, *completion_tokens_, *cancelled_, *drafted_, *accepted_;
  prometheus::Gauge* in_flight_;
  prometheus::Histogram *ttft_, *itl_, *duration_;
  prometheus::Family<prometheus::Gauge>*stage_compute_, *stage_transfer_, *stage_frames_, *stage_held_, *stage_batched_, *stage_batches_;
  prometheus::Gauge *recoveries_, *replayed_;
};

}  // namespace orrery::deploy
