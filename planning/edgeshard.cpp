#include "planning/edgeshard.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace orrery::planning {

namespace {

constexpr double infinity = std::numeric_limits<double>::infinity();

// Relative slack for comparing sums of the same terms added in different orders.
bool worse_than(double value, double bound) {
  return value > bound + 1e-12 * std::max(1.0, bound);
}

double budget(const cost_model& costs, std::size_t d) {
  return state_budget(costs.source_profile().devices[d]);
}

// -- latency ------------------------------------------------------------------

// A partial path through layers 0..l: its latency so far, the device running
// layer l, the bytes it placed on every device and where it came from. `key`
// is `used` up to interchangeable devices (see latency_search::key_of).
struct label {
  double seconds;
  std::size_t device;
  std::size_t parent;
  std::vector<double> used;
  std::vector<double> key;
};

// Labels of one (layer, device) bucket: a dominates b when it is no slower
// and, matching interchangeable devices suitably, uses no more memory anywhere
// (every completion of b then maps to one of a at the same cost).
bool dominates(const label& a, const label& b) {
  if (a.seconds > b.seconds)
    return false;
  for (std::size_t i = 0; i < a.key.size(); ++i)
    if (a.key[i] > b.key[i])
      return false;
  return true;
}

class latency_search {
 public:
  /// @param labels_per_state labels kept per (layer, device); beyond it the
  ///        slowest is dropped and the plan is reported as not proven optimal.
  latency_search(const cost_model& costs, std::size_t labels_per_state)
      : costs_(costs), cap_(labels_per_state) {
    group_interchangeable_devices();
  }

  pipeline_plan run(double upper_bound) {
    compute_lower_bounds();
    compute_smallest_layers();
    bound_ = upper_bound;
    std::size_t src = costs_.source_profile().source;
    std::vector<double> used(costs_.devices(), 0.0);
    used[src] = costs_.memory_bytes(0, 1);
    layers_.assign(1, {});
    if (used[src] <= budget(costs_, src)) {
      mark_full(used, 0);
      layers_[0].push_back({costs_.request_seconds(0, src), src, 0, used, key_of(used, src)});
    }
    for (std::size_t l = 1; l < costs_.layers(); ++l)
      layers_.push_back(extend(l));
    return best_plan();
  }

 private:
  // lower_[l][d]: least time after layer l finished on d when each stage
  // need only fit its device on its own (the memory of other stages on the
  // same device is ignored): a lower bound on every real completion.
  void compute_lower_bounds() {
    std::size_t n = costs_.layers(), m = costs_.devices();
    // fresh[i][k]: layers i.. with a new stage starting on k at layer i.
    std::vector<std::vector<double>> fresh(n + 1, std::vector<double>(m, infinity));
    // after[e][k]: the best continuation once a stage on k ended before layer e.
    std::vector<std::vector<double>> after(n + 1, std::vector<double>(m, infinity));
    for (std::size_t k = 0; k < m; ++k)
      after[n][k] = costs_.request_return(k);
    for (std::size_t i = n; i-- > 0;) {
      for (std::size_t k = 0; k < m; ++k) {
        double compute = 0, memory = 0;
        for (std::size_t e = i + 1; e <= n; ++e) {
          compute += costs_.request_seconds(e - 1, k);
          memory += costs_.memory_bytes(e - 1, 1);
          if (memory > budget(costs_, k))
            break;
          fresh[i][k] = std::min(fresh[i][k], compute + after[e][k]);
        }
      }
      if (i == 0)
        break;
      for (std::size_t k = 0; k < m; ++k)
        for (std::size_t next = 0; next < m; ++next)
          if (next != k)
            after[i][k] = std::min(after[i][k], costs_.request_transfer(i - 1, k, next) + fresh[i][next]);
    }
    lower_.assign(n, std::vector<double>(m, infinity));
    for (std::size_t l = 0; l < n; ++l)
      for (std::size_t d = 0; d < m; ++d)
        lower_[l][d] = l + 1 == n ? costs_.request_return(d) : std::min(fresh[l + 1][d], after[l + 1][d]);
  }

  // smallest_[l], remaining_[l]: the least memory of any layer from l on, and
  // the memory of all of them.
  void compute_smallest_layers() {
    smallest_.assign(costs_.layers() + 1, infinity);
    remaining_.assign(costs_.layers() + 1, 0.0);
    for (std::size_t l = costs_.layers(); l-- > 0;) {
      smallest_[l] = std::min(smallest_[l + 1], costs_.memory_bytes(l, 1));
      remaining_[l] = remaining_[l + 1] + costs_.memory_bytes(l, 1);
    }
  }

  // After layer l: can the free memory (full devices count as none) still hold the rest?
  bool room_for_rest(const std::vector<double>& used, std::size_t l) const {
    double free = 0;
    for (std::size_t d = 0; d < used.size(); ++d)
      free += budget(costs_, d) - used[d];
    return free >= remaining_[l + 1] * (1 - 1e-12);
  }

  // Devices with the same memory, layer times and links are interchangeable:
  // clusters of presets have many, and without this the search would keep
  // every permutation of them.
  bool interchangeable(std::size_t a, std::size_t b) const {
    if (budget(costs_, a) != budget(costs_, b))
      return false;
    for (std::size_t l = 0; l < costs_.layers(); ++l)
      if (costs_.request_seconds(l, a) != costs_.request_seconds(l, b))
        return false;
    const link_matrix& links = costs_.source_profile().links;
    for (std::size_t x = 0; x < costs_.devices(); ++x) {
      if (x == a || x == b)
        continue;
      link_spec la = links.between(a, x), lb = links.between(b, x);
      if (la.bandwidth != lb.bandwidth || la.latency != lb.latency)
        return false;
    }
    std::size_t src = costs_.source_profile().source;
    return a != src && b != src;
  }

  void group_interchangeable_devices() {
    classes_.clear();
    for (std::size_t d = 0; d < costs_.devices(); ++d) {
      auto it = std::find_if(classes_.begin(), classes_.end(), [&](const std::vector<std::size_t>& c) {
        return interchangeable(c.front(), d);
      });
      if (it == classes_.end())
        classes_.push_back({d});
      else
        it->push_back(d);
    }
  }

  // The current device's usage, then each class's usage sorted (the current
  // device left out).
  std::vector<double> key_of(const std::vector<double>& used, std::size_t device) const {
    std::vector<double> key{used[device]};
    for (const auto& members : classes_) {
      std::size_t from = key.size();
      for (std::size_t d : members)
        if (d != device)
          key.push_back(used[d]);
      std::sort(key.begin() + static_cast<std::ptrdiff_t>(from), key.end());
    }
    return key;
  }

  // A device that cannot take any later layer is full: how full no longer
  // matters, and writing it as full lets more labels dominate each other.
  void mark_full(std::vector<double>& used, std::size_t l) const {
    for (std::size_t d = 0; d < used.size(); ++d)
      if (budget(costs_, d) - used[d] < smallest_[l + 1])
        used[d] = budget(costs_, d);
  }

  std::vector<label> extend(std::size_t l) {
    std::vector<std::vector<label>> per_device(costs_.devices());
    const std::vector<label>& previous = layers_.back();
    double layer_bytes = costs_.memory_bytes(l, 1);
    for (std::size_t i = 0; i < previous.size(); ++i) {
      const label& from = previous[i];
      for (std::size_t k = 0; k < costs_.devices(); ++k) {
        if (from.used[k] + layer_bytes > budget(costs_, k))
          continue;
        double seconds = from.seconds + costs_.request_transfer(l - 1, from.device, k) +
                         costs_.request_seconds(l, k);
        if (worse_than(seconds + lower_[l][k], bound_))
          continue;
        label next{seconds, k, i, from.used, {}};
        next.used[k] += layer_bytes;
        mark_full(next.used, l);
        if (!room_for_rest(next.used, l))
          continue;
        next.key = key_of(next.used, k);
        insert(per_device[k], std::move(next));
      }
    }
    std::vector<label> out;
    for (auto& bucket : per_device)
      std::move(bucket.begin(), bucket.end(), std::back_inserter(out));
    return out;
  }

  void insert(std::vector<label>& bucket, label next) {
    for (const label& kept : bucket)
      if (dominates(kept, next))
        return;
    bucket.erase(std::remove_if(bucket.begin(), bucket.end(),
                                [&](const label& kept) { return dominates(next, kept); }),
                 bucket.end());
    bucket.push_back(std::move(next));
    if (bucket.size() > cap_) {
      auto slowest = std::max_element(bucket.begin(), bucket.end(), [](const label& a, const label& b) {
        return a.seconds < b.seconds;
      });
      bucket.erase(slowest);
      exact_ = false;
    }
  }

  pipeline_plan best_plan() const {
    pipeline_plan plan;
    plan.exact = exact_;
    const std::vector<label>& last = layers_.back();
    std::size_t best = last.size();
    for (std::size_t i = 0; i < last.size(); ++i) {
      double total = last[i].seconds + costs_.request_return(last[i].device);
      if (total < plan.seconds) {
        plan.seconds = total;
        best = i;
      }
    }
    if (best == last.size())
      return plan;
    std::vector<std::size_t> device_of_layer(costs_.layers());
    for (std::size_t l = costs_.layers(); l-- > 0;) {
      device_of_layer[l] = layers_[l][best].device;
      best = layers_[l][best].parent;
    }
    plan.stages = stages_from_assignment(device_of_layer);
    return plan;
  }

  const cost_model& costs_;
  std::size_t cap_;
  std::vector<std::vector<double>> lower_;
  std::vector<double> smallest_, remaining_;
  std::vector<std::vector<std::size_t>> classes_;
  std::vector<std::vector<label>> layers_;
  double bound_ = infinity;
  bool exact_ = true;
};

}  // namespace

pipeline_plan edgeshard_latency_heuristic(const cost_model& costs) {
  std::size_t n = costs.layers(), m = costs.devices();
  std::size_t src = costs.source_profile().source;
  // D(i,j) with the memory each state's best path placed on every device.
  std::vector<std::vector<label>> table(n, std::vector<label>(m, label{infinity, 0, 0, {}, {}}));
  std::vector<double> used(m, 0.0);
  used[src] = costs.memory_bytes(0, 1);
  if (used[src] <= budget(costs, src))
    table[0][src] = {costs.request_seconds(0, src), src, src, used, {}};
  for (std::size_t l = 1; l < n; ++l) {
    for (std::size_t j = 0; j < m; ++j) {
      label& best = table[l][j];
      for (std::size_t k = 0; k < m; ++k) {
        const label& from = table[l - 1][k];
        if (from.seconds == infinity || from.used[j] + costs.memory_bytes(l, 1) > budget(costs, j))
          continue;
        double seconds = from.seconds + costs.request_transfer(l - 1, k, j) + costs.request_seconds(l, j);
        if (seconds < best.seconds)
          best = {seconds, j, k, from.used, {}};
      }
      if (best.seconds < infinity)
        best.used[j] += costs.memory_bytes(l, 1);
    }
  }
  pipeline_plan plan;
  std::size_t end = m;
  for (std::size_t j = 0; j < m; ++j) {
    double total = table[n - 1][j].seconds + costs.request_return(j);
    if (total < plan.seconds) {
      plan.seconds = total;
      end = j;
    }
  }
  if (end == m)
    return plan;
  std::vector<std::size_t> device_of_layer(n);
  for (std::size_t l = n; l-- > 0;) {
    device_of_layer[l] = end;
    end = table[l][end].parent;
  }
  plan.stages = stages_from_assignment(device_of_layer);
  return plan;
}

pipeline_plan edgeshard_latency(const cost_model& costs) {
  require_total_memory(costs, 1);
  // The paper's DP, then a narrow beam of the label search, give the bound
  // that lets the exact search prune.
  pipeline_plan incumbent = edgeshard_latency_heuristic(costs);
  pipeline_plan beam = latency_search(costs, 4).run(incumbent.seconds);
  if (!beam.stages.empty() && beam.seconds < incumbent.seconds)
    incumbent = beam;
  pipeline_plan exact = latency_search(costs, 64).run(incumbent.seconds);
  if (exact.stages.empty() && incumbent.stages.empty())
    throw infeasible_error("no memory-feasible placement of " + costs.source_profile().model +
                           " at layer granularity with layer 0 on the source device");
  return exact.stages.empty() ? incumbent : exact;
}

// -- one stage per device: throughput, and latency without reuse ------------

namespace {

// The DP over (layers done, devices used, last device) for pipelines that use
// each device at most once. The throughput objective combines a stage's step
// with what came before by max (the bottleneck); the latency objective by
// sum (a request's time end to end). Both only grow along a path, so the same
// pruning against the best complete plan holds for both.
class distinct_stage_search {
 public:
  distinct_stage_search(const cost_model& costs, bool latency)
      : costs_(costs), latency_(latency), n_(costs.layers()), m_(costs.devices()), subsets_(std::size_t{1} << m_) {
    int requests = latency ? 1 : costs.source_profile().work.batch;
    step_prefix_.assign(m_, std::vector<double>(n_ + 1, 0.0));
    memory_prefix_.assign(n_ + 1, 0.0);
    for (std::size_t l = 0; l < n_; ++l) {
      memory_prefix_[l + 1] = memory_prefix_[l] + costs.memory_bytes(l, requests);
      for (std::size_t d = 0; d < m_; ++d)
        step_prefix_[d][l + 1] = step_prefix_[d][l] + (latency ? costs.request_seconds(l, d) : costs.step_seconds(l, d));
    }
    set_memory_.assign(subsets_, 0.0);
    for (std::size_t s = 1; s < subsets_; ++s) {
      std::size_t low = static_cast<std::size_t>(__builtin_ctzll(s));
      set_memory_[s] = set_memory_[s & (s - 1)] + budget(costs, low);
    }
    g_.assign((n_ + 1) * subsets_ * m_, infinity);
    parent_.assign(g_.size(), 0);
  }

  pipeline_plan run() {
    std::size_t src = costs_.source_profile().source;
    relax(0, 0, src, src, 0.0);
    for (std::size_t done = 1; done < n_; ++done)
      for (std::size_t set = 1; set < subsets_; ++set)
        if (set_memory_[set_complement(set)] + 1e-9 >= memory_prefix_[n_] - memory_prefix_[done])
          for (std::size_t k = 0; k < m_; ++k)
            if (set >> k & 1)
              extend(done, set, k);
    return best_plan();
  }

 private:
  std::size_t set_complement(std::size_t set) const { return (subsets_ - 1) & ~set; }
  double combine(double before, double stage) const { return latency_ ? before + stage : std::max(before, stage); }
  double transfer(std::size_t layer, std::size_t a, std::size_t b) const {
    return latency_ ? costs_.request_transfer(layer, a, b) : costs_.step_transfer(layer, a, b);
  }
  double return_seconds(std::size_t d) const { return latency_ ? costs_.request_return(d) : costs_.step_return(d); }
  std::size_t index(std::size_t done, std::size_t set, std::size_t k) const {
    return (done * subsets_ + set) * m_ + k;
  }

  void extend(std::size_t done, std::size_t set, std::size_t k) {
    double g = g_[index(done, set, k)];
    if (!worse_than(best_, g) )
      return;
    for (std::size_t j = 0; j < m_; ++j)
      if (!(set >> j & 1))
        relax(done, set, k, j, combine(g, transfer(done - 1, k, j)));
  }

  // Places a stage on device j starting at layer `done`, for every end that fits.
  void relax(std::size_t done, std::size_t set, std::size_t k, std::size_t j, double before) {
    if (!worse_than(best_, before))
      return;
    std::size_t next_set = set | std::size_t{1} << j;
    std::uint32_t from = static_cast<std::uint32_t>(done * m_ + k);
    for (std::size_t end = done + 1; end <= n_; ++end) {
      if (memory_prefix_[end] - memory_prefix_[done] > budget(costs_, j))
        break;
      double value = combine(before, step_prefix_[j][end] - step_prefix_[j][done]);
      if (!worse_than(best_, value))
        break;
      double& slot = g_[index(end, next_set, j)];
      if (value < slot) {
        slot = value;
        parent_[index(end, next_set, j)] = from;
      }
      if (end == n_)
        best_ = std::min(best_, combine(value, return_seconds(j)));
    }
  }

  pipeline_plan best_plan() const {
    pipeline_plan plan;
    std::size_t best_set = 0, best_k = 0;
    for (std::size_t set = 1; set < subsets_; ++set)
      for (std::size_t k = 0; k < m_; ++k) {
        double value = combine(g_[index(n_, set, k)], return_seconds(k));
        if (value < plan.seconds) {
          plan.seconds = value;
          best_set = set;
          best_k = k;
        }
      }
    if (plan.seconds == infinity)
      return plan;
    std::size_t end = n_, set = best_set, k = best_k;
    while (end > 0) {
      std::uint32_t from = parent_[index(end, set, k)];
      std::size_t begin = from / m_;
      plan.stages.push_back({k, begin, end});
      set &= ~(std::size_t{1} << k);
      k = from % m_;
      end = begin;
    }
    std::reverse(plan.stages.begin(), plan.stages.end());
    return plan;
  }

  const cost_model& costs_;
  bool latency_;
  std::size_t n_, m_, subsets_;
  std::vector<std::vector<double>> step_prefix_;
  std::vector<double> memory_prefix_;
  std::vector<double> set_memory_;
  std::vector<double> g_;
  std::vector<std::uint32_t> parent_;
  double best_ = infinity;
};

}  // namespace

namespace {

void require_distinct_dp_size(const cost_model& costs) {
  if (costs.devices() > throughput_max_devices)
    throw infeasible_error("the one-stage-per-device DP takes at most " + std::to_string(throughput_max_devices) +
                           " devices, the profile has " + std::to_string(costs.devices()));
}

}  // namespace

pipeline_plan edgeshard_latency_one_stage_per_device(const cost_model& costs) {
  require_distinct_dp_size(costs);
  require_total_memory(costs, 1);
  pipeline_plan plan = distinct_stage_search(costs, /*latency=*/true).run();
  if (plan.stages.empty())
    throw infeasible_error("no pipeline of " + costs.source_profile().model +
                           " fits with each device holding at most one layer range and layer 0 on the source device");
  return plan;
}

pipeline_plan edgeshard_throughput(const cost_model& costs) {
  require_distinct_dp_size(costs);
  int batch = costs.source_profile().work.batch;
  require_total_memory(costs, batch);
  pipeline_plan plan = distinct_stage_search(costs, /*latency=*/false).run();
  if (plan.stages.empty())
    throw infeasible_error("no pipeline of " + costs.source_profile().model +
                           " fits with each device holding one stage (weights + KV for a batch of " +
                           std::to_string(batch) + ") and layer 0 on the source device");
  return plan;
}

}  // namespace orrery::planning
