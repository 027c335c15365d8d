#include "planning/exhaustive.hpp"

#include <algorithm>
#include <functional>
#include <limits>

namespace orrery::planning {

namespace {

void keep_if_better(pipeline_plan& best, std::vector<stage> stages, double seconds) {
  if (seconds < best.seconds) {
    best.seconds = seconds;
    best.stages = std::move(stages);
  }
}

}  // namespace

pipeline_plan exhaustive_latency(const cost_model& costs) {
  pipeline_plan best;
  std::vector<std::size_t> device_of_layer(costs.layers(), costs.source_profile().source);
  std::function<void(std::size_t)> place = [&](std::size_t l) {
    if (l == costs.layers()) {
      std::vector<stage> stages = stages_from_assignment(device_of_layer);
      if (fits_memory(costs, stages, 1))
        keep_if_better(best, stages, request_latency(costs, stages));
      return;
    }
    for (std::size_t d = 0; d < costs.devices(); ++d) {
      device_of_layer[l] = d;
      place(l + 1);
    }
  };
  place(1);
  return best;
}

pipeline_plan exhaustive_throughput(const cost_model& costs) {
  pipeline_plan best;
  int batch = costs.source_profile().work.batch;
  std::vector<stage> stages;
  std::vector<bool> taken(costs.devices(), false);
  // Chooses the device of the stage starting at `begin`, then its end.
  std::function<void(std::size_t, std::size_t)> place = [&](std::size_t begin, std::size_t device) {
    taken[device] = true;
    for (std::size_t end = begin + 1; end <= costs.layers(); ++end) {
      stages.push_back({device, begin, end});
      if (end == costs.layers()) {
        if (fits_memory(costs, stages, batch))
          keep_if_better(best, stages, bottleneck_seconds(costs, stages));
      } else {
        for (std::size_t next = 0; next < costs.devices(); ++next)
          if (!taken[next])
            place(end, next);
      }
      stages.pop_back();
    }
    taken[device] = false;
  };
  place(0, costs.source_profile().source);
  return best;
}

namespace {

// All ways to give `total` samples to the devices within their caps.
void each_split(int total, const std::vector<int>& caps, std::vector<int>& shares, std::size_t i,
                const std::function<void()>& visit) {
  if (i + 1 == caps.size()) {
    if (total <= caps[i]) {
      shares[i] = total;
      visit();
    }
    return;
  }
  for (int x = 0; x <= std::min(total, caps[i]); ++x) {
    shares[i] = x;
    each_split(total - x, caps, shares, i + 1, visit);
  }
}

class hpp_enumeration {
 public:
  explicit hpp_enumeration(const profile& p) : p_(p) {}

  hpp_plan run() {
    std::size_t max_stages = std::min(p_.layers.size(), p_.devices.size());
    for (std::size_t count = 1; count <= max_stages; ++count) {
      layouts_.assign(count, {});
      cut(0, 0);
    }
    return best_;
  }

 private:
  // Chooses where stage s (starting at layer `begin`) ends.
  void cut(std::size_t s, std::size_t begin) {
    std::size_t count = layouts_.size();
    if (s == count) {
      assign(0);
      return;
    }
    std::size_t last_end = s + 1 == count ? p_.layers.size() : p_.layers.size() - (count - s - 1);
    for (std::size_t end = s + 1 == count ? last_end : begin + 1; end <= last_end; ++end) {
      layouts_[s].begin = begin;
      layouts_[s].end = end;
      cut(s + 1, end);
    }
  }

  // Puts device d into one of the stages.
  void assign(std::size_t d) {
    if (d == p_.devices.size()) {
      for (const auto& l : layouts_)
        if (l.devices.empty())
          return;
      stages_.clear();
      split(0);
      return;
    }
    for (auto& layout : layouts_) {
      layout.devices.push_back(d);
      assign(d + 1);
      layout.devices.pop_back();
    }
  }

  // Chooses the micro-batch split of stage s.
  void split(std::size_t s) {
    if (s == layouts_.size()) {
      keep();
      return;
    }
    auto caps = sample_caps(p_, layouts_[s], s, layouts_.size());
    if (!caps)
      return;
    std::vector<int> shares(caps->size());
    each_split(p_.work.micro_batch_size, *caps, shares, 0, [&] {
      auto stage = evaluate_stage(p_, layouts_[s], s, layouts_.size(), shares);
      if (!stage)
        return;
      stages_.push_back(std::move(*stage));
      split(s + 1);
      stages_.pop_back();
    });
  }

  void keep() {
    hpp_plan plan;
    plan.stages = stages_;
    for (std::size_t s = 1; s < layouts_.size(); ++s)
      plan.transfers.push_back(stage_transfer(p_, layouts_[s - 1], layouts_[s]));
    plan.round_seconds = round_latency(plan.steps(), p_.work.micro_batches);
    if (plan.round_seconds < best_.round_seconds)
      best_ = std::move(plan);
  }

  const profile& p_;
  std::vector<stage_layout> layouts_;
  std::vector<hpp_stage> stages_;
  hpp_plan best_;
};

}  // namespace

hpp_plan exhaustive_hpp(const profile& p) {
  return hpp_enumeration(p).run();
}

chunk_plan exhaustive_chunks(const cost_model& costs, const std::vector<stage>& stages) {
  int prompt = costs.source_profile().work.prompt_tokens;
  chunk_plan best;
  best.seconds = std::numeric_limits<double>::infinity();
  // Bit i of `cuts` set: a chunk ends after token i + 1.
  for (unsigned long cuts = 0; cuts < (1UL << (prompt - 1)); ++cuts) {
    std::vector<int> lengths{1};
    for (int i = 0; i + 1 < prompt; ++i) {
      if (cuts >> i & 1)
        lengths.push_back(0);
      ++lengths.back();
    }
    double seconds = chunked_prefill_seconds(costs, stages, lengths);
    if (seconds < best.seconds) {
      best.seconds = seconds;
      best.lengths = lengths;
    }
  }
  return best;
}

}  // namespace orrery::planning
