#include "planning/galaxy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "base/tensor_slice.hpp"
#include "planning/pipeline.hpp"
#include "planning/split.hpp"

namespace orrery::planning {

namespace {

// Sizes of one head's and one MLP column's share of a block (Llama layout:
// Q and O slices h x hd, K and V slices scaled by kv_heads / heads).
struct piece_bytes {
  double head_weights;
  double head_kv_per_token;
  double column_weights;
};

piece_bytes pieces(const transformer_shape& s) {
  double h = s.hidden, hd = h / s.heads, kv = static_cast<double>(s.kv_heads) / s.heads;
  return {(2 * h * hd + 2 * h * hd * kv) * s.dtype_bytes, 2 * hd * kv * s.dtype_bytes,
          3 * h * s.dtype_bytes};
}

const transformer_shape& require_shape(const profile& p) {
  if (!p.shape)
    throw profile_error("profile.model.shape: missing, the tensor-parallel split needs heads, "
                        "hidden and intermediate sizes");
  return *p.shape;
}

// With a shape, layers are embedding, blocks, head.
double blocks(const profile& p) {
  return static_cast<double>(p.layers.size()) - 2;
}

double edge_bytes(const profile& p) {
  return p.layers.front().weight_bytes + p.layers.back().weight_bytes;
}

std::vector<double> unit_costs(const profile& p, const std::vector<std::size_t>& group,
                               double tp_costs::*piece) {
  std::vector<double> out;
  for (std::size_t d : group) {
    if (!p.devices[d].tp)
      throw profile_error("profile.devices[" + std::to_string(d) +
                          "].tp: missing, the tensor-parallel split needs per-head, "
                          "per-column and per-token costs");
    out.push_back((*p.devices[d].tp).*piece);
  }
  return out;
}

std::vector<int> split_or_throw(int total, const std::vector<double>& cost,
                                const std::vector<int>& caps, rounding rule, const char* what,
                                double missing_bytes) {
  auto shares = rule == rounding::exact ? min_max_split(total, cost, caps)
                                        : proportional_split(total, cost, caps);
  if (!shares)
    throw infeasible_error(std::string("the group cannot hold all ") + what + ": " +
                           format_bytes(missing_bytes) + " of block memory missing");
  return *shares;
}

// Sequence slices set both the connective blocks' compute and the ring's
// chunk sizes: a split by compute speed alone (the paper) can lengthen every
// ring step. The exact rule keeps whichever of {by speed, min-max, equal}
// gives the shortest serial block, so it is never worse than the paper's.
std::vector<int> token_split(const profile& p, tp_split split, int tokens, rounding rule) {
  std::vector<double> cost = unit_costs(p, split.devices, &tp_costs::per_token);
  std::vector<int> no_caps(split.devices.size(), tokens);
  std::vector<int> by_speed = *proportional_split(tokens, cost, no_caps);
  if (rule == rounding::proportional)
    return by_speed;
  std::vector<int> equal = *min_max_split(tokens, std::vector<double>(cost.size(), 1.0), no_caps);
  std::vector<int> best = by_speed;
  double best_time = std::numeric_limits<double>::infinity();
  for (const auto& candidate : {by_speed, *min_max_split(tokens, cost, no_caps), equal}) {
    split.tokens = candidate;
    double time = tp_block_serial_closed_form(p, split, tokens);
    if (time < best_time) {
      best_time = time;
      best = candidate;
    }
  }
  return best;
}

}  // namespace

tp_split galaxy_split(const profile& p, const std::vector<std::size_t>& group, int tokens,
                      rounding rule, int requests, double model_share) {
  const transformer_shape& s = require_shape(p);
  piece_bytes b = pieces(s);
  double context = static_cast<double>(p.work.prompt_tokens + p.work.output_tokens) * requests;
  double block_bytes = model_share * blocks(p) * (s.heads * (b.head_weights + b.head_kv_per_token * context) +
                                    s.intermediate * b.column_weights);
  // Each device holds the same fraction of heads and of columns as of the
  // block memory it can offer; the first device also keeps embedding and head.
  std::vector<int> head_caps, column_caps;
  double offered = 0;
  for (std::size_t i = 0; i < group.size(); ++i) {
    double room = state_budget(p.devices[group[i]]) - (i == 0 ? edge_bytes(p) : 0.0);
    double share = std::max(0.0, room) / std::max(block_bytes, 1.0);
    offered += std::max(0.0, room);
    head_caps.push_back(static_cast<int>(std::floor(share * s.heads)));
    column_caps.push_back(static_cast<int>(std::floor(share * s.intermediate)));
  }
  double missing = std::max(0.0, block_bytes - offered);
  tp_split out;
  out.devices = group;
  out.heads = split_or_throw(s.heads, unit_costs(p, group, &tp_costs::per_head), head_caps, rule,
                             "attention heads", missing);
  out.columns = split_or_throw(s.intermediate, unit_costs(p, group, &tp_costs::per_column),
                               column_caps, rule, "MLP columns", missing);
  out.tokens = token_split(p, out, tokens, rule);
  return out;
}

tp_costs tp_costs_from_block(const transformer_shape& s, double seconds_per_token) {
  piece_bytes b = pieces(s);
  double connective = 4.0 * s.hidden * s.dtype_bytes;
  double block = s.heads * b.head_weights + s.intermediate * b.column_weights + 2 * connective;
  double per_byte = seconds_per_token / block;
  return {b.head_weights * per_byte, b.column_weights * per_byte, connective * per_byte};
}

profile rescale_tp_costs(const profile& p, const std::vector<double>& factor) {
  profile out = p;
  for (std::size_t d = 0; d < out.devices.size(); ++d)
    if (auto& tp = out.devices[d].tp)
      *tp = {tp->per_head * factor[d], tp->per_column * factor[d], tp->per_token * factor[d]};
  return out;
}

// -- the block's task graph ---------------------------------------------------

namespace {

class block_graph {
 public:
  block_graph(const profile& p, const tp_split& split, int tokens, bool overlap)
      : p_(p), split_(split), n_(split.devices.size()), tokens_(tokens), overlap_(overlap),
        frontier_(n_) {
    for (std::size_t d : split.devices) {
      compute_.push_back(graph_.add_resource(p.devices[d].name));
      link_.push_back(graph_.add_resource(p.devices[d].name + " -> ring"));
    }
  }

  schedule run() {
    std::vector<double> attention = work(&tp_costs::per_head, split_.heads, tokens_);
    std::vector<double> mlp = work(&tp_costs::per_column, split_.columns, tokens_);
    std::vector<double> connective = work(&tp_costs::per_token, split_.tokens, 1);
    all_gather_then(halve(attention), "attn qkv");
    compute_then_reduce_scatter(halve(attention), "attn out");
    local(connective, "connective");
    all_gather_then(halve(mlp), "mlp up");
    compute_then_reduce_scatter(halve(mlp), "mlp down");
    local(connective, "connective");
    return graph_.run();
  }

  // Orrery's runtime without sequence parallelism (actors/group_ring.hpp):
  // every member runs its heads and columns over all the pass's rows, the
  // two partial sums of a layer are all-reduced, and every member runs the
  // connective blocks on all rows.
  schedule run_all_reduced() {
    all_reduced(work(&tp_costs::per_head, split_.heads, tokens_), "attention");
    local(connective_of_all_rows(), "connective");
    all_reduced(work(&tp_costs::per_column, split_.columns, tokens_), "mlp");
    local(connective_of_all_rows(), "connective");
    return graph_.run();
  }

 private:
  std::vector<double> work(double tp_costs::*piece, const std::vector<int>& shares, int per) const {
    std::vector<double> out;
    for (std::size_t i = 0; i < n_; ++i)
      out.push_back(shares[i] * (*p_.devices[split_.devices[i]].tp).*piece * per);
    return out;
  }

  static std::vector<double> halve(std::vector<double> v) {
    for (double& x : v)
      x /= 2;
    return v;
  }

  std::size_t prev(std::size_t i) const { return (i + n_ - 1) % n_; }
  std::size_t chunk(std::size_t i, std::size_t back) const { return (i + n_ * n_ - back) % n_; }

  double share(std::size_t c) const {
    return static_cast<double>(split_.tokens[c]) / std::max(tokens_, 1);
  }

  // Ring step: device i sends sequence chunk c to the next device.
  std::size_t send(std::size_t i, std::size_t c, std::vector<std::size_t> after) {
    double bytes = split_.tokens[c] * row_bytes();
    return send_bytes(i, bytes, std::move(after), "chunk " + std::to_string(c), static_cast<int>(c));
  }

  std::size_t send_bytes(std::size_t i, double bytes, std::vector<std::size_t> after, const std::string& label,
                         int group) {
    link_spec l = p_.links.between(split_.devices[i], split_.devices[(i + 1) % n_]);
    // A step takes at least the calibrated floor: the part of it beyond the
    // wire's time arrives late, as latency does.
    const double wire = bytes / l.bandwidth;
    return graph_.add_task(link_[i], wire, std::move(after), std::max(l.latency, p_.ring_step_floor - wire), label, group);
  }

  double row_bytes() const { return static_cast<double>(p_.shape->hidden) * p_.shape->dtype_bytes; }

  std::vector<double> connective_of_all_rows() const {
    std::vector<double> out;
    for (std::size_t i = 0; i < n_; ++i) out.push_back((*p_.devices[split_.devices[i]].tp).per_token * tokens_);
    return out;
  }

  // The partials of `seconds` of compute summed as group_ring::all_reduce
  // does (base's all_reduce_schedule_of: a swap, whole partials round the
  // ring, or the ring's steps of an n-th each).
  void all_reduced(const std::vector<double>& seconds, const std::string& label) {
    std::vector<std::size_t> done(n_);
    for (std::size_t i = 0; i < n_; ++i) done[i] = compute(i, seconds[i], frontier_[i], label, -1);
    if (n_ == 1) {
      frontier_[0] = {done[0]};
      return;
    }
    const auto schedule = all_reduce_schedule_of(static_cast<int>(n_), std::int64_t{tokens_} * p_.shape->hidden * 4);
    const double bytes = tokens_ * row_bytes() / schedule.pieces;
    std::vector<std::size_t> previous = done;
    for (int k = 0; k < schedule.steps; ++k) {
      std::vector<std::size_t> current(n_);
      for (std::size_t i = 0; i < n_; ++i)
        current[i] = send_bytes(i, bytes, k == 0 ? std::vector<std::size_t>{done[i]}
                                                 : std::vector<std::size_t>{previous[prev(i)], previous[i]},
                                label + " all-reduce", -1);
      previous = current;
    }
    for (std::size_t i = 0; i < n_; ++i) frontier_[i] = {previous[prev(i)], previous[i]};
  }

  std::size_t compute(std::size_t i, double seconds, std::vector<std::size_t> after,
                      const std::string& label, int group) {
    return graph_.add_task(compute_[i], seconds, std::move(after), 0, label, group);
  }

  // AllGather, then a matmul over the gathered sequence; with overlap the
  // matmul runs on each chunk as it arrives while the ring forwards it.
  void all_gather_then(const std::vector<double>& seconds, const std::string& label) {
    std::vector<std::vector<std::size_t>> sends(n_ - 1, std::vector<std::size_t>(n_));
    for (std::size_t k = 0; k + 1 < n_; ++k)
      for (std::size_t i = 0; i < n_; ++i)
        sends[k][i] = send(i, chunk(i, k), k == 0 ? frontier_[i] : std::vector<std::size_t>{sends[k - 1][prev(i)]});
    for (std::size_t i = 0; i < n_; ++i) {
      if (!overlap_) {
        std::vector<std::size_t> after = frontier_[i];
        if (n_ > 1)
          after.push_back(sends[n_ - 2][prev(i)]);
        frontier_[i] = {compute(i, seconds[i], after, label, -1)};
        continue;
      }
      std::size_t tile = compute(i, seconds[i] * share(i), frontier_[i], label, static_cast<int>(i));
      for (std::size_t k = 0; k + 1 < n_; ++k) {
        std::size_t c = chunk(prev(i), k);
        tile = compute(i, seconds[i] * share(c), {tile, sends[k][prev(i)]}, label, static_cast<int>(c));
      }
      frontier_[i] = {tile};
    }
  }

  // A matmul producing partial sums, then ReduceScatter; with overlap the
  // partial tile that leaves first is computed first and sent while the next
  // is computed, the device's own chunk last.
  void compute_then_reduce_scatter(const std::vector<double>& seconds, const std::string& label) {
    std::vector<std::vector<std::size_t>> tiles(n_);
    for (std::size_t i = 0; i < n_; ++i) {
      if (!overlap_) {
        tiles[i].assign(n_, compute(i, seconds[i], frontier_[i], label, -1));
        continue;
      }
      std::vector<std::size_t> after = frontier_[i];
      for (std::size_t k = 0; k < n_; ++k) {
        std::size_t c = chunk(i, k + 1);  // k = n-1 gives the own chunk
        tiles[i].push_back(compute(i, seconds[i] * share(c), after, label, static_cast<int>(c)));
        after = {tiles[i].back()};
      }
    }
    std::vector<std::size_t> last_receive(n_);
    std::vector<std::size_t> previous(n_);
    for (std::size_t k = 0; k + 1 < n_; ++k) {
      std::vector<std::size_t> current(n_);
      for (std::size_t i = 0; i < n_; ++i) {
        std::vector<std::size_t> after = {tiles[i][k]};
        if (k > 0)
          after.push_back(previous[prev(i)]);
        current[i] = send(i, chunk(i, k + 1), after);
      }
      previous = current;
    }
    for (std::size_t i = 0; i < n_; ++i) {
      frontier_[i] = {tiles[i].back()};
      if (n_ > 1)
        frontier_[i].push_back(previous[prev(i)]);
    }
  }

  void local(const std::vector<double>& seconds, const std::string& label) {
    for (std::size_t i = 0; i < n_; ++i)
      frontier_[i] = {compute(i, seconds[i], frontier_[i], label, -1)};
  }

  const profile& p_;
  const tp_split& split_;
  std::size_t n_;
  int tokens_;
  bool overlap_;
  task_graph graph_;
  std::vector<std::size_t> compute_, link_;
  std::vector<std::vector<std::size_t>> frontier_;
};

}  // namespace

schedule simulate_tp_block(const profile& p, const tp_split& split, int tokens, bool overlap) {
  require_shape(p);
  return block_graph(p, split, tokens, overlap).run();
}

schedule simulate_all_reduced_block(const profile& p, const tp_split& split, int tokens) {
  require_shape(p);
  return block_graph(p, split, tokens, false).run_all_reduced();
}

tp_layer_time tp_block_time(const profile& p, const tp_split& split, int tokens) {
  return {simulate_tp_block(p, split, tokens, false).makespan,
          simulate_tp_block(p, split, tokens, true).makespan};
}

double tp_block_serial_closed_form(const profile& p, const tp_split& split, int tokens) {
  const transformer_shape& s = require_shape(p);
  std::size_t n = split.devices.size();
  double attention = 0, mlp = 0, connective = 0, ring = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const tp_costs& c = *p.devices[split.devices[i]].tp;
    attention = std::max(attention, split.heads[i] * c.per_head * tokens);
    mlp = std::max(mlp, split.columns[i] * c.per_column * tokens);
    connective = std::max(connective, split.tokens[i] * c.per_token);
  }
  // A ring step waits for the largest chunk over the slowest link.
  for (std::size_t k = 0; k + 1 < n && n > 1; ++k) {
    double step = 0;
    for (std::size_t i = 0; i < n; ++i) {
      link_spec l = p.links.between(split.devices[i], split.devices[(i + 1) % n]);
      step = std::max(step, l.latency + split.tokens[(i + n * n - k) % n] *
                                            static_cast<double>(s.hidden) * s.dtype_bytes / l.bandwidth);
    }
    ring += step;
  }
  return attention + mlp + 2 * connective + 4 * ring;
}

std::vector<double> tp_memory(const profile& p, const tp_split& split, int requests) {
  piece_bytes b = pieces(require_shape(p));
  double context = static_cast<double>(p.work.prompt_tokens + p.work.output_tokens) * requests;
  std::vector<double> out;
  for (std::size_t i = 0; i < split.devices.size(); ++i)
    out.push_back((i == 0 ? edge_bytes(p) : 0.0) +
                  blocks(p) * (split.heads[i] * (b.head_weights + b.head_kv_per_token * context) +
                               split.columns[i] * b.column_weights));
  return out;
}

nlohmann::json to_json(const tp_split& split, const profile& p) {
  nlohmann::json members = nlohmann::json::array();
  for (std::size_t i = 0; i < split.devices.size(); ++i)
    members.push_back({{"device", split.devices[i]},
                       {"device_name", p.devices[split.devices[i]].name},
                       {"heads", split.heads[i]},
                       {"columns", split.columns[i]},
                       {"tokens", split.tokens[i]}});
  return {{"group", members}};
}

}  // namespace orrery::planning
