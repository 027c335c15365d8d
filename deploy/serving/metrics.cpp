#include "deploy/serving/metrics.hpp"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <sstream>

namespace orrery::deploy {

namespace {

template <class Builder>
auto& family(Builder builder, prometheus::Registry& registry, const char* name, const char* help) {
  return builder.Name(name).Help(help).Register(registry);
}

}  // namespace

serving_metrics::serving_metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  using namespace prometheus;
  requests_ = &family(BuildCounter(), r, "orrery_http_requests_total", "HTTP requests answered, by route and status");
  prompt_tokens_ = &family(BuildCounter(), r, "orrery_prompt_tokens_total", "Prompt tokens of generations (BOS included)").Add({});
  completion_tokens_ = &family(BuildCounter(), r, "orrery_completion_tokens_total", "Tokens generated").Add({});
  cancelled_ = &family(BuildCounter(), r, "orrery_requests_cancelled_total",
                       "Generations cancelled because their client went away or a stop string ended them")
                    .Add({});
  drafted_ = &family(BuildCounter(), r, "orrery_speculative_drafted_total", "Guessed tokens verified by the pipeline").Add({});
  accepted_ = &family(BuildCounter(), r, "orrery_speculative_accepted_total", "Guessed tokens the model kept").Add({});
  in_flight_ = &family(BuildGauge(), r, "orrery_requests_in_flight", "Generations running now").Add({});
  ttft_ = &family(BuildHistogram(), r, "orrery_time_to_first_token_seconds", "From a request's arrival to its first token")
               .Add({}, Histogram::BucketBoundaries{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30});
  itl_ = &family(BuildHistogram(), r, "orrery_inter_token_latency_seconds", "Between two tokens of one stream")
              .Add({}, Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5});
  duration_ = &family(BuildHistogram(), r, "orrery_generation_seconds", "From a request's arrival to its last token")
                   .Add({}, Histogram::BucketBoundaries{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300});
  stage_compute_ = &family(BuildGauge(), r, "orrery_stage_compute_seconds", "A pipeline stage's time in forward passes so far");
  stage_transfer_ = &family(BuildGauge(), r, "orrery_stage_transfer_seconds", "A pipeline stage's time sending its results so far");
  stage_frames_ = &family(BuildGauge(), r, "orrery_stage_frames", "Frames a pipeline stage has run");
  stage_held_ = &family(BuildGauge(), r, "orrery_stage_requests_held", "Requests whose KV caches a stage holds now");
  stage_batched_ = &family(BuildGauge(), r, "orrery_stage_batched_frames",
                           "Decode steps a stage ran batched with other requests' (continuous batching)");
  stage_batches_ = &family(BuildGauge(), r, "orrery_stage_batches", "Batched passes a stage ran");
  recoveries_ = &family(BuildGauge(), r, "orrery_recoveries", "Recoveries of the pipeline (a node lost or returned)").Add({});
  replayed_ = &family(BuildGauge(), r, "orrery_requests_replayed", "Requests in flight that recoveries replayed (none lost)").Add({});
}

serving_metrics::~serving_metrics() = default;

void serving_metrics::answered(const std::string& route, int status) {
  requests_->Add({{"route", route}, {"status", std::to_string(status)}}).Increment();
}

void serving_metrics::generated(std::size_t prompt_tokens, std::size_t completion_tokens, double seconds, std::int32_t drafted,
                                std::int32_t accepted) {
  prompt_tokens_->Increment(static_cast<double>(prompt_tokens));
  completion_tokens_->Increment(static_cast<double>(completion_tokens));
  duration_->Observe(seconds);
  drafted_->Increment(drafted);
  accepted_->Increment(accepted);
}

void serving_metrics::first_token(double seconds) { ttft_->Observe(seconds); }
void serving_metrics::inter_token(double seconds) { itl_->Observe(seconds); }
void serving_metrics::cancelled() { cancelled_->Increment(); }
void serving_metrics::started() { in_flight_->Increment(); }
void serving_metrics::finished() { in_flight_->Decrement(); }

std::string serving_metrics::render(const std::vector<stage_stats>& stages, const std::vector<recovery_event>& recoveries) {
  for (const auto& s : stages) {
    const std::map<std::string, std::string> labels{{"stage", std::to_string(s.stage)},
                                                    {"node", s.node},
                                                    {"layers", std::to_string(s.first_layer) + "-" + std::to_string(s.last_layer)}};
    stage_compute_->Add(labels).Set(s.compute_ms / 1000.0);
    stage_transfer_->Add(labels).Set(s.transfer_ms / 1000.0);
    stage_frames_->Add(labels).Set(static_cast<double>(s.frames));
    stage_held_->Add(labels).Set(static_cast<double>(s.requests_held));
    stage_batched_->Add(labels).Set(static_cast<double>(s.batched_frames));
    stage_batches_->Add(labels).Set(static_cast<double>(s.batches));
  }
  recoveries_->Set(static_cast<double>(recoveries.size()));
  double replayed = 0;
  for (const auto& e : recoveries) replayed += e.requests_replayed;
  replayed_->Set(replayed);
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace orrery::deploy
