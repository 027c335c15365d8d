#include "planning/simulator.hpp"

#include <algorithm>
#include <map>

#include <nlohmann/json.hpp>

namespace orrery::planning {

namespace {

// -- inference ----------------------------------------------------------------

class inference_graph {
 public:
  inference_graph(const cost_model& costs, const std::vector<stage>& stages,
                  const inference_options& options)
      : costs_(costs), p_(costs.source_profile()), stages_(stages), options_(options) {
    for (const auto& d : p_.devices)
      graph_.add_resource(d.name);
    if (options_.prefill_chunks.empty())
      options_.prefill_chunks = {p_.work.prompt_tokens};
    // One request through stages on distinct devices: each device idles
    // while the others work, so its decode step is a burst from idle
    // (device_profile::burst). With more requests, or a device holding two
    // stages, it works on without the idle that makes a burst.
    std::vector<std::size_t> devices;
    for (const auto& st : stages_) devices.push_back(st.device);
    std::sort(devices.begin(), devices.end());
    decode_bursts_ = options_.requests == 1 && std::adjacent_find(devices.begin(), devices.end()) == devices.end();
  }

  simulation run() {
    std::size_t requests = static_cast<std::size_t>(options_.requests);
    std::vector<std::vector<std::size_t>> release(requests);
    std::vector<std::size_t> last(requests);
    int steps = options_.prefill_only ? 1 : p_.work.output_tokens;
    for (int step = 0; step < steps; ++step) {
      for (std::size_t r = 0; r < requests; ++r)
        last[r] = step == 0 ? prefill(r, release[r]) : decode(r, step, release[r]);
      for (std::size_t r = 0; r < requests; ++r)
        release[r] = options_.no_bubble ? std::vector<std::size_t>{last[r]} : last;
    }
    return summarise(last);
  }

 private:
  std::size_t link(std::size_t a, std::size_t b) {
    auto [it, added] = links_.try_emplace({a, b}, 0);
    if (added)
      it->second = graph_.add_resource(p_.devices[a].name + " -> " + p_.devices[b].name);
    return it->second;
  }

  std::size_t send(std::size_t a, std::size_t b, double bytes, std::size_t after, int group) {
    if (a == b)
      return after;
    link_spec l = p_.links.between(a, b);
    arrival_delay_[graph_.task_count()] = l.latency;
    return graph_.add_task(link(a, b), bytes / l.bandwidth, {after}, l.latency, "send", group);
  }

  // One piece of work (a chunk or a token) through every stage, then the token home.
  template <class StageSeconds>
  std::size_t pass(std::size_t r, std::vector<std::size_t> after, double tokens,
                   const StageSeconds& seconds, const std::string& label, bool returns,
                   std::vector<std::size_t>* per_stage) {
    std::size_t previous = 0;
    int group = static_cast<int>(r);
    for (std::size_t s = 0; s < stages_.size(); ++s) {
      const stage& st = stages_[s];
      if (s > 0) {
        double bytes = tokens * p_.layers[stages_[s - 1].end - 1].activation_bytes_per_token;
        after = {send(stages_[s - 1].device, st.device, bytes, previous, group)};
      }
      if (per_stage && (*per_stage)[s] != none)
        after.push_back((*per_stage)[s]);
      previous = graph_.add_task(st.device, seconds(st), after, 0, label, group);
      if (per_stage)
        (*per_stage)[s] = previous;
    }
    return returns ? send(stages_.back().device, p_.source, p_.work.return_bytes, previous, group) : previous;
  }

  std::size_t prefill(std::size_t r, const std::vector<std::size_t>& after) {
    // Chunks run through each stage in order: chunk k+1 attends to chunk k's KV.
    std::vector<std::size_t> per_stage(stages_.size(), none);
    std::size_t last = 0;
    double position = 0;
    const auto& chunks = options_.prefill_chunks;
    for (std::size_t k = 0; k < chunks.size(); ++k) {
      double length = chunks[k];
      auto seconds = [&](const stage& st) {
        double total = 0;
        for (std::size_t l = st.begin; l < st.end; ++l)
          total += costs_.prefill_seconds(l, st.device, position, length);
        return total;
      };
      last = pass(r, after, length, seconds, "prefill", k + 1 == chunks.size(), &per_stage);
      position += length;
    }
    return last;
  }

  std::size_t decode(std::size_t r, int step, const std::vector<std::size_t>& after) {
    double context = p_.work.prompt_tokens + step - 1;
    auto seconds = [&](const stage& st) {
      double total = 0;
      for (std::size_t l = st.begin; l < st.end; ++l)
        total += costs_.decode_seconds(l, st.device, context);
      return decode_bursts_ ? p_.devices[st.device].burst.wall_seconds(total) : total;
    };
    return pass(r, after, 1, seconds, "decode", true, nullptr);
  }

  simulation summarise(const std::vector<std::size_t>& last) {
    simulation out;
    out.timeline = graph_.run();
    out.makespan = out.timeline.makespan;
    for (std::size_t t : last) {
      auto delay = arrival_delay_.find(t);
      out.mean_latency += out.timeline.spans[t].finish + (delay == arrival_delay_.end() ? 0 : delay->second);
    }
    out.mean_latency /= static_cast<double>(last.size());
    out.throughput = options_.requests * (options_.prefill_only ? 1 : p_.work.output_tokens) / out.makespan;
    std::vector<double> memory = memory_per_device(costs_, stages_, options_.requests);
    for (std::size_t d = 0; d < p_.devices.size(); ++d) {
      double busy = out.timeline.busy(d);
      out.devices.push_back({p_.devices[d].name, busy, busy / out.makespan, memory[d]});
    }
    return out;
  }

  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  const cost_model& costs_;
  const profile& p_;
  const std::vector<stage>& stages_;
  inference_options options_;
  bool decode_bursts_ = false;
  task_graph graph_;
  std::map<std::pair<std::size_t, std::size_t>, std::size_t> links_;
  std::map<std::size_t, double> arrival_delay_;
};

// -- training -----------------------------------------------------------------

// A stage's 1F1B order: (is_backward, micro-batch).
std::vector<std::pair<bool, int>> one_f_one_b(std::size_t s, std::size_t stages, int micro_batches) {
  int warmup = std::min(static_cast<int>(stages - s - 1), micro_batches);
  std::vector<std::pair<bool, int>> order;
  for (int m = 0; m < warmup; ++m)
    order.push_back({false, m});
  for (int m = 0; m < micro_batches - warmup; ++m) {
    order.push_back({false, warmup + m});
    order.push_back({true, m});
  }
  for (int m = micro_batches - warmup; m < micro_batches; ++m)
    order.push_back({true, m});
  return order;
}

class training_graph {
 public:
  training_graph(const profile& p, const hpp_plan& plan)
      : p_(p), plan_(plan), stages_(plan.stages.size()), m_(p.work.micro_batches) {
    for (std::size_t s = 0; s < stages_; ++s) {
      std::string name = "stage " + std::to_string(s) + ":";
      for (std::size_t d : plan.stages[s].layout.devices)
        name += " " + p.devices[d].name;
      graph_.add_resource(name);
    }
    for (std::size_t s = 0; s + 1 < stages_; ++s) {
      forward_link_.push_back(graph_.add_resource("activations " + std::to_string(s) + " -> " + std::to_string(s + 1)));
      backward_link_.push_back(graph_.add_resource("gradients " + std::to_string(s + 1) + " -> " + std::to_string(s)));
    }
  }

  simulation run() {
    std::vector<std::vector<std::pair<bool, int>>> orders;
    for (std::size_t s = 0; s < stages_; ++s)
      orders.push_back(one_f_one_b(s, stages_, m_));
    std::vector<std::size_t> next(stages_, 0), previous(stages_, none);
    arrived_forward_.assign(stages_, std::vector<std::size_t>(static_cast<std::size_t>(m_), none));
    arrived_backward_ = arrived_forward_;
    // Adds each stage's next op once what it waits for exists (1F1B never deadlocks).
    for (bool progress = true; progress;) {
      progress = false;
      for (std::size_t s = 0; s < stages_; ++s)
        while (next[s] < orders[s].size() && add_op(s, orders[s][next[s]], previous[s])) {
          ++next[s];
          progress = true;
        }
    }
    std::vector<std::size_t> reduced;
    for (std::size_t s = 0; s < stages_; ++s)
      reduced.push_back(graph_.add_task(s, plan_.stages[s].step.allreduce, {previous[s]}, 0, "all-reduce", -1));
    // Clipping needs the global gradient norm: every stage updates once every
    // stage has reduced its gradients.
    for (std::size_t s = 0; s < stages_; ++s)
      if (plan_.stages[s].step.update > 0) graph_.add_task(s, plan_.stages[s].step.update, reduced, 0, "update", -1);
    return summarise();
  }

 private:
  bool add_op(std::size_t s, std::pair<bool, int> op, std::size_t& previous) {
    auto [backward, m] = op;
    std::size_t mb = static_cast<std::size_t>(m);
    std::vector<std::size_t> after;
    if (previous != none)
      after.push_back(previous);
    std::size_t input = backward ? (s + 1 < stages_ ? arrived_backward_[s][mb] : none)
                                 : (s > 0 ? arrived_forward_[s][mb] : none);
    bool needs_input = backward ? s + 1 < stages_ : s > 0;
    if (needs_input && input == none)
      return false;
    if (needs_input)
      after.push_back(input);
    const hpp_step& step = plan_.stages[s].step;
    previous = graph_.add_task(s, backward ? step.backward : step.forward, after, 0,
                               (backward ? "B" : "F") + std::to_string(m), m);
    if (!backward && s + 1 < stages_)
      arrived_forward_[s + 1][mb] = graph_.add_task(forward_link_[s], plan_.transfers[s], {previous}, 0, "act", m);
    if (backward && s > 0)
      arrived_backward_[s - 1][mb] = graph_.add_task(backward_link_[s - 1], plan_.transfers[s - 1], {previous}, 0, "grad", m);
    return true;
  }

  simulation summarise() {
    simulation out;
    out.timeline = graph_.run();
    out.makespan = out.timeline.makespan;
    out.mean_latency = out.makespan;
    out.throughput = m_ * p_.work.micro_batch_size / out.makespan;
    for (const hpp_stage& st : plan_.stages)
      for (std::size_t i = 0; i < st.layout.devices.size(); ++i) {
        std::size_t d = st.layout.devices[i];
        double per_sample = 0;
        for (std::size_t l = st.layout.begin; l < st.layout.end; ++l)
          per_sample += p_.devices[d].layers[l].forward + p_.devices[d].layers[l].backward;
        double update = 0;
        for (std::size_t l = st.layout.begin; l < st.layout.end; ++l) update += p_.devices[d].layers[l].update;
        double busy = m_ * st.samples[i] * per_sample + st.step.allreduce + update;
        out.devices.push_back({p_.devices[d].name, busy, busy / out.makespan, st.memory[i]});
      }
    return out;
  }

  static constexpr std::size_t none = static_cast<std::size_t>(-1);

  const profile& p_;
  const hpp_plan& plan_;
  std::size_t stages_;
  int m_;
  task_graph graph_;
  std::vector<std::size_t> forward_link_, backward_link_;
  std::vector<std::vector<std::size_t>> arrived_forward_, arrived_backward_;
};

}  // namespace

simulation simulate_inference(const cost_model& costs, const std::vector<stage>& stages,
                              const inference_options& options) {
  return inference_graph(costs, stages, options).run();
}

simulation simulate_training(const profile& p, const hpp_plan& plan) {
  return training_graph(p, plan).run();
}

nlohmann::json to_json(const simulation& s) {
  nlohmann::json devices = nlohmann::json::array();
  for (const device_use& d : s.devices)
    devices.push_back({{"name", d.name}, {"busy_s", d.busy_seconds},
                       {"utilisation", d.utilisation}, {"peak_memory_bytes", d.peak_memory}});
  return {{"makespan_s", s.makespan}, {"mean_latency_s", s.mean_latency},
          {"throughput", s.throughput}, {"devices", devices}};
}

}  // namespace orrery::planning
