#include "planning/asteroid.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <nlohmann/json.hpp>

#include "planning/pipeline.hpp"
#include "planning/split.hpp"

namespace orrery::planning {

double round_latency(const std::vector<hpp_step>& steps, int micro_batches) {
  auto both = [&](std::size_t i) { return steps[i].forward + steps[i].backward; };
  std::size_t dm = 0;
  for (std::size_t i = 0; i < steps.size(); ++i)
    if (both(i) > both(dm))
      dm = i;
  // The dominant step finishes after the first micro-batch's forward reaches
  // it, its M forward/backward pairs, and the first micro-batch's trip through
  // the steps after it and back.
  double dominant_end = micro_batches * both(dm);
  for (std::size_t i = 0; i < steps.size(); ++i)
    dominant_end += i < dm ? steps[i].forward : i > dm ? both(i) : 0.0;
  // Earlier steps finish when the last backward wave reaches them; later ones
  // finished before it reached the dominant step.
  double worst = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    double end = dominant_end;
    for (std::size_t i = std::min(s, dm); i < std::max(s, dm); ++i)
      end += s < dm ? steps[i].backward : -steps[i].backward;
    worst = std::max(worst, end + steps[s].allreduce);
  }
  double update = 0;
  for (const auto& s : steps) update = std::max(update, s.update);
  return worst + update;
}

std::vector<hpp_step> hpp_plan::steps() const {
  std::vector<hpp_step> out;
  for (std::size_t s = 0; s < stages.size(); ++s) {
    out.push_back(stages[s].step);
    if (s < transfers.size())
      out.push_back({transfers[s], transfers[s], 0, 0});
  }
  return out;
}

// -- stages -------------------------------------------------------------------

namespace {

// Per-sample seconds of the layers [begin, end) on device d.
double layer_sum(const profile& p, std::size_t d, const stage_layout& s, double layer_timing::*what) {
  double total = 0;
  for (std::size_t l = s.begin; l < s.end; ++l)
    total += p.devices[d].layers[l].*what;
  return total;
}

struct stage_bytes {
  double weights;
  double fixed;       // weights + gradients + optimizer state
  double per_sample;  // activations kept for backward
};

stage_bytes bytes_of(const profile& p, const stage_layout& s) {
  stage_bytes b{0, 0, 0};
  for (std::size_t l = s.begin; l < s.end; ++l) {
    b.weights += p.layers[l].weight_bytes;
    b.per_sample += p.layers[l].training_bytes_per_token * p.work.train_tokens;
  }
  b.fixed = b.weights * (2 + p.work.optimizer_states);
  return b;
}

// Micro-batches whose activations a stage holds at once under 1F1B.
int in_flight(const profile& p, std::size_t position, std::size_t stage_count) {
  return std::min(static_cast<int>(stage_count - position), p.work.micro_batches);
}

// The slowest ring neighbour link of a group.
link_spec ring_link(const profile& p, const std::vector<std::size_t>& group) {
  link_spec worst{std::numeric_limits<double>::infinity(), 0};
  for (std::size_t i = 0; i < group.size(); ++i) {
    link_spec l = p.links.between(group[i], group[(i + 1) % group.size()]);
    worst.bandwidth = std::min(worst.bandwidth, l.bandwidth);
    worst.latency = std::max(worst.latency, l.latency);
  }
  return worst;
}

// Ring all-reduce of the stage's gradients: 2(n-1)/n of the bytes over the
// slowest link, 2(n-1) messages (PAPERS.md, T_a); or, where it takes longer,
// the slowest member's own work on the bytes it sends and receives (the io
// thread streams while the stage adds, so the two overlap).
double allreduce_seconds(const profile& p, const stage_layout& s, double weights) {
  std::size_t n = s.devices.size();
  if (n < 2)
    return 0;
  link_spec l = ring_link(p, s.devices);
  const double moved = 2.0 * (n - 1) * weights / n;
  double work = 0;
  for (std::size_t d : s.devices)
    work = std::max(work, moved * p.devices[d].reduce_seconds_per_byte);
  return std::max(moved / l.bandwidth + 2.0 * (n - 1) * l.latency, work);
}

std::vector<double> unit_seconds(const profile& p, const stage_layout& s) {
  std::vector<double> out;
  for (std::size_t d : s.devices)
    out.push_back(layer_sum(p, d, s, &layer_timing::forward) + layer_sum(p, d, s, &layer_timing::backward));
  return out;
}

std::optional<std::vector<int>> split_samples(const profile& p, const stage_layout& s,
                                              std::size_t position, std::size_t count,
                                              rounding rule) {
  auto caps = sample_caps(p, s, position, count);
  if (!caps)
    return std::nullopt;
  std::vector<double> cost = unit_seconds(p, s);
  int batch = p.work.micro_batch_size;
  if (rule == rounding::exact)
    return min_max_split(batch, cost, *caps);
  auto shares = proportional_split(batch, cost, *caps);
  if (shares)
    offload_stragglers(*shares, cost, *caps);
  return shares;
}

}  // namespace

std::optional<std::vector<int>> sample_caps(const profile& p, const stage_layout& layout,
                                            std::size_t position, std::size_t stage_count) {
  stage_bytes b = bytes_of(p, layout);
  int k = in_flight(p, position, stage_count);
  std::vector<int> caps;
  for (std::size_t d : layout.devices) {
    double room = state_budget(p.devices[d]) - b.fixed;
    if (room < 0)
      return std::nullopt;
    double fit = b.per_sample > 0 ? std::floor(room / (k * b.per_sample)) : p.work.micro_batch_size;
    caps.push_back(static_cast<int>(std::min<double>(fit, p.work.micro_batch_size)));
  }
  return caps;
}

std::optional<hpp_stage> evaluate_stage(const profile& p, const stage_layout& layout,
                                        std::size_t position, std::size_t stage_count,
                                        const std::vector<int>& samples) {
  stage_bytes b = bytes_of(p, layout);
  int k = in_flight(p, position, stage_count);
  // A member given no samples is left out of the placed group (deploy/
  // profiling/training_placement.cpp): it holds, reduces and updates nothing.
  stage_layout active = layout;
  active.devices.clear();
  for (std::size_t i = 0; i < layout.devices.size(); ++i)
    if (samples[i] > 0)
      active.devices.push_back(layout.devices[i]);
  hpp_stage out{layout, samples, {}, {0, 0, allreduce_seconds(p, active, b.weights), 0}};
  for (std::size_t i = 0; i < layout.devices.size(); ++i) {
    std::size_t d = layout.devices[i];
    if (samples[i] == 0) {
      out.memory.push_back(0);
      continue;
    }
    double memory = b.fixed + k * samples[i] * b.per_sample;
    if (memory > state_budget(p.devices[d]))
      return std::nullopt;
    out.memory.push_back(memory);
    out.step.forward = std::max(out.step.forward, samples[i] * layer_sum(p, d, layout, &layer_timing::forward));
    out.step.backward = std::max(out.step.backward, samples[i] * layer_sum(p, d, layout, &layer_timing::backward));
    // Every member updates the stage's weights (replicas, in a group).
    out.step.update = std::max(out.step.update, layer_sum(p, d, layout, &layer_timing::update));
  }
  return out;
}

double stage_transfer(const profile& p, const stage_layout& from, const stage_layout& to) {
  double bytes = p.work.micro_batch_size * p.work.train_tokens *
                 p.layers[from.end - 1].activation_bytes_per_token;
  double worst = 0;
  for (std::size_t a : from.devices)
    for (std::size_t b : to.devices)
      worst = std::max(worst, p.links.transfer_seconds(a, b, bytes));
  return worst;
}

std::optional<hpp_plan> evaluate_hpp(const profile& p, const std::vector<stage_layout>& layouts,
                                     rounding rule) {
  hpp_plan plan;
  for (std::size_t s = 0; s < layouts.size(); ++s) {
    auto samples = split_samples(p, layouts[s], s, layouts.size(), rule);
    if (!samples)
      return std::nullopt;
    auto stage = evaluate_stage(p, layouts[s], s, layouts.size(), *samples);
    if (!stage)
      return std::nullopt;
    plan.stages.push_back(std::move(*stage));
    if (s > 0)
      plan.transfers.push_back(stage_transfer(p, layouts[s - 1], layouts[s]));
  }
  plan.round_seconds = round_latency(plan.steps(), p.work.micro_batches);
  return plan;
}

// -- the planner --------------------------------------------------------------

namespace {

class asteroid_search {
 public:
  asteroid_search(const profile& p, rounding rule, std::vector<std::size_t> order)
      : p_(p), rule_(rule), layers_(p.layers.size()), devices_(p.devices.size()),
        order_(std::move(order)) {
    best_.assign(layers_ + 1, std::vector<std::vector<std::optional<hpp_plan>>>(
                                  devices_ + 1, std::vector<std::optional<hpp_plan>>(devices_ + 1)));
  }

  hpp_plan run() {
    for (std::size_t l = 1; l <= layers_; ++l)
      for (std::size_t n = 1; n <= devices_; ++n)
        for (std::size_t stages = 1; stages <= std::min(l, n); ++stages)
          solve(l, n, stages);
    hpp_plan plan;
    for (std::size_t stages = 1; stages <= std::min(layers_, devices_); ++stages)
      if (best_[layers_][devices_][stages] &&
          best_[layers_][devices_][stages]->round_seconds < plan.round_seconds)
        plan = *best_[layers_][devices_][stages];
    return plan;
  }

 private:
  // The last l layers on the last n devices in `stages` stages.
  void solve(std::size_t l, std::size_t n, std::size_t stages) {
    std::optional<hpp_plan>& slot = best_[l][n][stages];
    for (std::size_t l1 = 1; l1 + (stages - 1) <= l; ++l1)
      for (std::size_t n1 = 1; n1 + (stages - 1) <= n; ++n1) {
        if (stages == 1 && (l1 != l || n1 != n))
          continue;
        stage_layout first{layers_ - l, layers_ - l + l1,
                           {order_.end() - n, order_.end() - n + n1}};
        auto samples = split_samples(p_, first, 0, stages, rule_);
        if (!samples)
          continue;
        auto stage = evaluate_stage(p_, first, 0, stages, *samples);
        if (!stage)
          continue;
        consider(slot, std::move(*stage), stages == 1 ? nullptr : &best_[l - l1][n - n1][stages - 1]);
      }
  }

  void consider(std::optional<hpp_plan>& slot, hpp_stage first, const std::optional<hpp_plan>* rest) {
    if (rest && !*rest)
      return;
    std::vector<hpp_step> steps{first.step};
    double transfer = 0;
    if (rest) {
      transfer = stage_transfer(p_, first.layout, (*rest)->stages.front().layout);
      steps.push_back({transfer, transfer, 0, 0});
      std::vector<hpp_step> tail = (*rest)->steps();
      steps.insert(steps.end(), tail.begin(), tail.end());
    }
    double seconds = round_latency(steps, p_.work.micro_batches);
    if (slot && slot->round_seconds <= seconds)
      return;
    hpp_plan plan;
    plan.stages.push_back(std::move(first));
    if (rest) {
      plan.transfers.push_back(transfer);
      plan.stages.insert(plan.stages.end(), (*rest)->stages.begin(), (*rest)->stages.end());
      plan.transfers.insert(plan.transfers.end(), (*rest)->transfers.begin(), (*rest)->transfers.end());
    }
    plan.round_seconds = seconds;
    slot = std::move(plan);
  }

  const profile& p_;
  rounding rule_;
  std::size_t layers_, devices_;
  std::vector<std::size_t> order_;
  std::vector<std::vector<std::vector<std::optional<hpp_plan>>>> best_;
};

// Device orders the DP's contiguous groups are cut from. Asteroid sorts by
// memory, largest first; orrery also tries the other orders below and keeps
// the best plan, so it is never worse than the paper's order alone.
std::vector<std::vector<std::size_t>> device_orders(const profile& p) {
  std::vector<std::size_t> base(p.devices.size());
  std::iota(base.begin(), base.end(), 0);
  auto sorted = [&](auto key) {
    std::vector<std::size_t> order = base;
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return key(a) > key(b); });
    return order;
  };
  auto memory = [&](std::size_t d) { return state_budget(p.devices[d]); };
  auto speed = [&](std::size_t d) {
    double seconds = 0;
    for (const auto& l : p.devices[d].layers)
      seconds += l.forward + l.backward;
    return -seconds;
  };
  std::vector<std::size_t> by_memory = sorted(memory), by_speed = sorted(speed);
  std::vector<std::vector<std::size_t>> orders{by_memory, by_speed};
  orders.emplace_back(by_memory.rbegin(), by_memory.rend());
  orders.emplace_back(by_speed.rbegin(), by_speed.rend());
  return orders;
}

// Neighbouring layouts of a plan: two devices of different stages swapped, a
// device moved to another stage, a stage boundary shifted by one layer.
std::vector<std::vector<stage_layout>> neighbours(const std::vector<stage_layout>& layouts) {
  std::vector<std::vector<stage_layout>> out;
  for (std::size_t a = 0; a < layouts.size(); ++a)
    for (std::size_t b = 0; b < layouts.size(); ++b) {
      if (a == b)
        continue;
      for (std::size_t i = 0; i < layouts[a].devices.size(); ++i) {
        if (a < b)
          for (std::size_t j = 0; j < layouts[b].devices.size(); ++j) {
            out.push_back(layouts);
            std::swap(out.back()[a].devices[i], out.back()[b].devices[j]);
          }
        if (layouts[a].devices.size() > 1) {
          out.push_back(layouts);
          out.back()[b].devices.push_back(layouts[a].devices[i]);
          out.back()[a].devices.erase(out.back()[a].devices.begin() + static_cast<std::ptrdiff_t>(i));
        }
      }
    }
  for (std::size_t s = 0; s + 1 < layouts.size(); ++s) {
    if (layouts[s].end - layouts[s].begin > 1) {
      out.push_back(layouts);
      --out.back()[s].end;
      --out.back()[s + 1].begin;
    }
    if (layouts[s + 1].end - layouts[s + 1].begin > 1) {
      out.push_back(layouts);
      ++out.back()[s].end;
      ++out.back()[s + 1].begin;
    }
  }
  return out;
}

// Local search from the DP's plan: take the best neighbour while it improves
// the round (the DP's contiguous device groups miss mixed groups).
hpp_plan improve(const profile& p, hpp_plan plan, rounding rule) {
  for (bool improved = true; improved;) {
    improved = false;
    std::vector<stage_layout> layouts;
    for (const hpp_stage& s : plan.stages)
      layouts.push_back(s.layout);
    for (const auto& candidate : neighbours(layouts)) {
      auto next = evaluate_hpp(p, candidate, rule);
      if (next && next->round_seconds < plan.round_seconds * (1 - 1e-12)) {
        plan = std::move(*next);
        improved = true;
      }
    }
  }
  return plan;
}

}  // namespace

hpp_plan asteroid_plan(const profile& p, rounding rule) {
  hpp_plan plan;
  for (const auto& order : device_orders(p)) {
    hpp_plan candidate = asteroid_search(p, rule, order).run();
    if (candidate.round_seconds < plan.round_seconds)
      plan = std::move(candidate);
  }
  if (!plan.stages.empty())
    plan = improve(p, std::move(plan), rule);
  if (plan.stages.empty()) {
    double needed = 0, available = 0;
    for (const auto& l : p.layers)
      needed += l.weight_bytes * (2 + p.work.optimizer_states) +
                l.training_bytes_per_token * p.work.train_tokens * p.work.micro_batch_size;
    for (const auto& d : p.devices)
      available += state_budget(d);
    throw infeasible_error(
        "no HPP plan fits: training " + p.model + " needs at least " + format_bytes(needed) +
        " (weights, gradients, optimizer state, one micro-batch of activations), the cluster has " +
        format_bytes(available) +
        (needed > available ? ": " + format_bytes(needed - available) + " missing"
                            : " but not in pieces its devices can hold"));
  }
  return plan;
}

nlohmann::json to_json(const hpp_plan& plan, const profile& p) {
  nlohmann::json stages = nlohmann::json::array();
  for (const hpp_stage& s : plan.stages) {
    nlohmann::json members = nlohmann::json::array();
    for (std::size_t i = 0; i < s.layout.devices.size(); ++i)
      members.push_back({{"device", s.layout.devices[i]},
                         {"device_name", p.devices[s.layout.devices[i]].name},
                         {"samples", s.samples[i]},
                         {"memory_bytes", s.memory[i]}});
    stages.push_back({{"layers", {s.layout.begin, s.layout.end}},
                      {"group", members},
                      {"forward_s", s.step.forward},
                      {"backward_s", s.step.backward},
                      {"allreduce_s", s.step.allreduce},
                      {"update_s", s.step.update}});
  }
  return {{"stages", stages}, {"transfers_s", plan.transfers}, {"round_s", plan.round_seconds}};
}

}  // namespace orrery::planning
