#include "planning/group_pipeline.hpp"

#include <algorithm>

#include "planning/cost.hpp"
#include "planning/pipeline.hpp"

namespace orrery::planning {

namespace {

// The block the tp costs describe: a middle one, free of the embedding and
// the head where the model has one.
std::size_t reference_block(const profile& p) {
  return p.layers.size() > 2 ? 1 : 0;
}

// A group's members and what it costs, seen from one pass length.
class group_costs {
 public:
  group_costs(const profile& p, const cost_model& costs, std::vector<std::size_t> members)
      : p_(p), costs_(costs), members_(std::move(members)), share_(model_share()) {}

  // The split and the serial block time of a pass of `tokens` tokens whose
  // per-token cost on device d is `per_token(d)` seconds.
  template <class PerToken>
  std::pair<tp_split, double> block(int tokens, PerToken per_token) const {
    std::size_t ref = reference_block(p_);
    double prompt = p_.work.prompt_tokens;
    std::vector<double> factor(p_.devices.size(), 1.0);
    for (std::size_t d : members_) {
      double per_prompt_token = costs_.prefill_seconds(ref, d, 0, prompt) / prompt;
      factor[d] = per_prompt_token > 0 ? per_token(d) / per_prompt_token : 1.0;
    }
    profile scaled = rescale_tp_costs(p_, factor);
    tp_split split = galaxy_split(scaled, members_, tokens, rounding::exact, p_.work.batch, share_);
    return {split, simulate_all_reduced_block(scaled, split, tokens).makespan};
  }

  // Decode: one token at `context`.
  std::pair<tp_split, double> decode(double context) const {
    std::size_t ref = reference_block(p_);
    return block(1, [&](std::size_t d) { return costs_.decode_seconds(ref, d, context); });
  }

  // Prefill of `length` tokens, per token.
  double prefill_per_token(double length) const {
    std::size_t ref = reference_block(p_);
    auto tokens = static_cast<int>(std::max(1.0, length));
    return block(tokens, [&](std::size_t d) { return costs_.prefill_seconds(ref, d, 0, tokens) / tokens; }).second /
           tokens;
  }

  double memory() const {
    double total = 0;
    for (std::size_t d : members_)
      total += state_budget(p_.devices[d]);
    return total;
  }

 private:
  // The memory caps assume the group holds the largest share of the model
  // it could: the pipeline planner gives it no more than fits its budgets.
  double model_share() const {
    const cost_model& c = costs_;
    double model = 0;
    for (std::size_t l = 0; l < c.layers(); ++l)
      model += c.memory_bytes(l, p_.work.batch);
    return model > 0 ? std::min(1.0, memory() / model) : 1.0;
  }

  const profile& p_;
  const cost_model& costs_;
  std::vector<std::size_t> members_;
  double share_;
};

std::string group_name(const profile& p, const std::vector<std::size_t>& members) {
  std::string name;
  for (std::size_t d : members)
    name += (name.empty() ? "" : "+") + p.devices[d].name;
  return name;
}

// One device standing for the group: every layer costs the group's block,
// and the leader's extra for what the layer holds beyond a block: the
// embedding's on every member, the head's split with its vocabulary rows,
// which go in proportion to the members' MLP columns (compute/tensor_slice.hpp).
device_profile group_device(const profile& p, const cost_model& costs, const std::vector<std::size_t>& members) {
  group_costs group(p, costs, members);
  std::size_t leader = members.front(), ref = reference_block(p);
  const device_profile& lead = p.devices[leader];
  device_profile out;
  out.name = group_name(p, members);
  out.memory_bytes = group.memory();
  std::vector<time_curve::point> decode_block, prefill_block;
  for (const auto& point : lead.layers[ref].decode.points())
    decode_block.push_back({point.length, group.decode(point.length).second});
  for (const auto& point : lead.layers[ref].prefill.points())
    prefill_block.push_back({point.length, group.prefill_per_token(point.length)});
  const auto columns = group.decode(p.work.prompt_tokens).first.columns;
  double all_columns = 0;
  for (int c : columns) all_columns += c;
  const double head_share = all_columns > 0 ? columns.front() / all_columns : 1.0;
  for (std::size_t l = 0; l < p.layers.size(); ++l) {
    const double share = l + 1 == p.layers.size() ? head_share : 1.0;
    auto with_extra = [&](std::vector<time_curve::point> block, time_curve layer_timing::*curve) {
      for (auto& point : block)
        point.seconds += share * std::max(0.0, (lead.layers[l].*curve).at(point.length) -
                                                   (lead.layers[ref].*curve).at(point.length));
      return time_curve(std::move(block));
    };
    out.layers.push_back(
        {with_extra(prefill_block, &layer_timing::prefill), with_extra(decode_block, &layer_timing::decode), 0, 0});
  }
  return out;
}

// The worst link between any member of `a` and any member of `b`: a frame
// goes from a stage's leader to every member of the next, and a token back
// from the last leader to the source.
link_spec worst_link(const profile& p, const std::vector<std::size_t>& a, const std::vector<std::size_t>& b) {
  link_spec worst{0, 0};
  for (std::size_t x : a)
    for (std::size_t y : b) {
      link_spec l = p.links.between(x, y);
      worst.bandwidth = worst.bandwidth == 0 ? l.bandwidth : std::min(worst.bandwidth, l.bandwidth);
      worst.latency = std::max(worst.latency, l.latency);
    }
  return worst;
}

}  // namespace

bool has_tp_costs(const profile& p) {
  return p.shape && std::all_of(p.devices.begin(), p.devices.end(), [](const device_profile& d) { return d.tp; });
}

group_pipeline plan_group_pipeline(const profile& p, const std::vector<std::vector<std::size_t>>& groups) {
  cost_model costs(p);
  group_pipeline out;
  out.stages = p;
  out.stages.devices.clear();
  out.stages.links = link_matrix(p.links.fallback());
  const double mid_context = p.work.prompt_tokens + 0.5 * (p.work.output_tokens - 1);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& members = groups[g];
    if (members.empty())
      throw profile_error("group " + std::to_string(g) + " of a group pipeline has no devices");
    auto source = std::find(members.begin(), members.end(), p.source);
    if (source != members.end() && source != members.begin())
      throw profile_error("the source device " + p.devices[p.source].name + " must lead its group " +
                          group_name(p, members) + ": it holds the embedding and receives the prompt");
    if (source != members.end())
      out.stages.source = g;
    if (members.size() == 1) {
      out.stages.devices.push_back(p.devices[members.front()]);
      out.splits.push_back({members, {}, {}, {}});
      continue;
    }
    if (!has_tp_costs(p))
      throw profile_error("group " + group_name(p, members) +
                          ": the profile needs model.shape and every device's tp costs to plan a group");
    out.stages.devices.push_back(group_device(p, costs, members));
    out.splits.push_back(group_costs(p, costs, members).decode(mid_context).first);
  }
  for (std::size_t a = 0; a < groups.size(); ++a)
    for (std::size_t b = a + 1; b < groups.size(); ++b)
      out.stages.links.set(a, b, worst_link(p, groups[a], groups[b]));
  out.stages.validate();
  return out;
}

}  // namespace orrery::planning
