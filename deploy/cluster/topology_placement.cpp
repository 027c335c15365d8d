// The model and its layers in a topology file: `model:` (a model directory
// and its config.json), `placement:` (even, or a layer range per node, every
// layer on exactly one stage: a node, or a group of nodes sharing its
// layers), each group's split of heads and MLP columns, and each node's
// weights against its memory budget.

#include <algorithm>
#include <system_error>
#include <tuple>

#include "compute/model_error.hpp"
#include "compute/tensor_slice.hpp"
#include "deploy/cluster/topology_yaml.hpp"

namespace orrery::deploy {

namespace detail {

namespace {

namespace fs = std::filesystem;

// What is at `model` when it is not a model directory, or nothing.
std::optional<std::string> not_a_model(const fs::path& model) {
  std::error_code error;
  const auto status = fs::status(model, error);
  if (!fs::exists(status))
    return "does not exist (`orrery model init --preset tiny|small|llama2-7b --out " + model.string() +
           "` creates one)";
  if (!fs::is_directory(status)) return "is a file, not a model directory (one holding config.json and the weights)";
  if (!fs::exists(model / "config.json", error)) return "has no config.json: it is not a model directory";
  return std::nullopt;
}

// The pipeline's stages in file order: a node of its own, or every member
// of a group (at the place of its first member).
std::vector<std::vector<parsed_node*>> stages_of(std::vector<parsed_node>& nodes) {
  std::vector<std::vector<parsed_node*>> stages;
  for (auto& node : nodes) {
    auto group = std::find_if(stages.begin(), stages.end(), [&](const auto& members) {
      return !node.spec.group.empty() && members.front()->spec.group == node.spec.group;
    });
    if (group == stages.end())
      stages.push_back({&node});
    else
      group->push_back(&node);
  }
  return stages;
}

// Earlier stages take the remainder, so layer counts differ by at most one.
void place_even(const source& src, int line, int num_layers, std::vector<parsed_node>& nodes) {
  auto stages = stages_of(nodes);
  int count = static_cast<int>(stages.size());
  if (count > num_layers)
    src.fail(line, "placement 'even' needs at least one layer per stage, but the model has " +
                       count_of(num_layers, "layer") + " and the topology " + count_of(count, "stage") +
                       (count == static_cast<int>(nodes.size()) ? "" : " (a group is one stage)"));
  auto ranges = even_ranges(num_layers, count);
  for (int i = 0; i < count; ++i)
    for (auto* node : stages[i]) {
      std::tie(node->spec.first_layer, node->spec.last_layer) = ranges[i];
      node->range_line = line;
    }
}

// `[first, last]` in the file: a list of two integers.
std::optional<std::pair<std::int64_t, std::int64_t>> layer_range(const YAML::Node& value) {
  if (!value.IsSequence() || value.size() != 2 || !value[0].IsScalar() || !value[1].IsScalar()) return std::nullopt;
  auto first = integer(value[0].Scalar());
  auto last = integer(value[1].Scalar());
  if (!first || !last) return std::nullopt;
  return std::pair{*first, *last};
}

void read_range(const source& src, const entry& e, int num_layers, parsed_node& node) {
  auto range = layer_range(e.value);
  if (!range) src.fail(e.line, "the layers of node '" + e.key + "' must be a range [first, last), e.g. [0, 4]");
  auto [first, last] = *range;
  std::string written = "[" + std::to_string(first) + ", " + std::to_string(last) + ")";
  if (first >= last) src.fail(e.line, "the layer range " + written + " of node '" + e.key + "' is empty");
  if (first < 0 || last > num_layers)
    src.fail(e.line, "the layer range " + written + " of node '" + e.key + "' is outside the model's layers " +
                         range_text(0, num_layers));
  node.spec.first_layer = static_cast<int>(first);
  node.spec.last_layer = static_cast<int>(last);
  node.range_line = e.line;
}

// Every layer on exactly one node: walking the ranges in order, each must
// start where the previous one ended.
void check_coverage(const source& src, int placement_line, int num_layers, std::vector<parsed_node*> order) {
  std::sort(order.begin(), order.end(),
            [](const parsed_node* a, const parsed_node* b) { return a->spec.first_layer < b->spec.first_layer; });
  int covered = 0;
  const parsed_node* previous = nullptr;
  for (const parsed_node* node : order) {
    const auto& spec = node->spec;
    if (spec.first_layer < covered)
      src.fail(node->range_line, "the layer range " + range_text(spec.first_layer, spec.last_layer) + " of node '" +
                                     spec.name + "' overlaps node '" + previous->spec.name + "'s " +
                                     range_text(previous->spec.first_layer, previous->spec.last_layer));
    if (spec.first_layer > covered)
      src.fail(node->range_line, "layers " + range_text(covered, spec.first_layer) + " are on no node");
    covered = spec.last_layer;
    previous = node;
  }
  if (covered < num_layers) src.fail(placement_line, "layers " + range_text(covered, num_layers) + " are on no node");
}

void place_explicit(const source& src, const entry& e, int num_layers, std::vector<parsed_node>& nodes) {
  std::vector<std::string> names;
  for (const auto& node : nodes) names.push_back(node.spec.name);
  section ranges(src, e.value, "the placement", e.line, names, "node");
  for (auto& node : nodes) {
    const entry* range = ranges.find(node.spec.name);
    if (!range) src.fail(e.line, "node '" + node.spec.name + "' has no layer range in the placement");
    read_range(src, *range, num_layers, node);
  }
  // A group is one stage: its members hold the same layers.
  std::vector<parsed_node*> order;
  for (const auto& members : stages_of(nodes)) {
    const auto& first = members.front()->spec;
    for (const auto* member : members)
      if (member->spec.first_layer != first.first_layer || member->spec.last_layer != first.last_layer)
        src.fail(member->range_line, "node '" + member->spec.name + "' of group '" + first.group + "' holds layers " +
                                         range_text(member->spec.first_layer, member->spec.last_layer) + " but node '" +
                                         first.name + "' of the same group holds " +
                                         range_text(first.first_layer, first.last_layer) +
                                         ": a group's members share its layers");
    order.push_back(members.front());
  }
  check_coverage(src, e.line, num_layers, std::move(order));
}

// Shares of `total` over members of relative `speeds`, each at least one,
// so that the last to finish finishes earliest (min-max): one each, then
// each further unit to the member that would finish it first.
std::vector<int> shares_by_speed(int total, const std::vector<double>& speeds) {
  std::vector<int> shares(speeds.size(), 1);
  for (auto unit = static_cast<int>(speeds.size()); unit < total; ++unit) {
    std::size_t best = 0;
    for (std::size_t m = 1; m < speeds.size(); ++m)
      if ((shares[m] + 1) / speeds[m] < (shares[best] + 1) / speeds[best]) best = m;
    ++shares[best];
  }
  return shares;
}

// Each group's heads and MLP columns, split over its members by speed; a
// query head is never separated from its KV head (compute/tensor_slice.hpp).
void split_groups(const source& src, const compute::llama_config& config, std::vector<parsed_node>& nodes) {
  for (const auto& members : stages_of(nodes)) {
    const auto& first = members.front()->spec;
    if (first.group.empty()) continue;
    const int n = static_cast<int>(members.size());
    if (n > config.num_heads)
      src.fail(members.front()->group_line, "group '" + first.group + "' has " + count_of(members.size(), "node") +
                                                " but the model only " + count_of(config.num_heads, "attention head") +
                                                ": every member needs one");
    std::vector<double> speeds;
    for (const auto* member : members) speeds.push_back(member->spec.speed);
    const auto slices = group_slices(config, speeds);
    for (int m = 0; m < n; ++m) members[m]->spec.slice = slices[m];
  }
}

}  // namespace

fs::path resolve_model(const source& src, const entry& e, const fs::path& file) {
  fs::path written = text(src, e);
  // Absolute: nodes resolve the path the client sends them in their own working directories.
  fs::path model = fs::absolute(written.is_relative() ? file.parent_path() / written : written).lexically_normal();
  if (auto problem = not_a_model(model))
    src.fail(e.line, "model '" + written.string() + "'" +
                         (model == written ? "" : " (resolved to '" + model.string() + "')") + " " + *problem);
  return model;
}

compute::llama_config read_model_config(const source& src, const entry& e, const fs::path& model) {
  try {
    return compute::llama_config::load(model / "config.json");
  } catch (const compute::model_error& error) {
    src.fail(e.line, std::string("cannot read the model's config.json: ") + error.what());
  }
}

void place(const source& src, const entry* e, int nodes_line, const compute::llama_config& config,
           std::vector<parsed_node>& nodes) {
  if (!e || (e->value.IsScalar() && e->value.Scalar() == "even")) {
    place_even(src, e ? e->line : nodes_line, config.num_layers, nodes);
  } else {
    if (!e->value.IsMap())
      src.fail(e->line, "placement must be 'even', 'auto' or a map of node name to layer range, got " + kind_of(e->value));
    place_explicit(src, *e, config.num_layers, nodes);
  }
  split_groups(src, config, nodes);
}

void check_memory(const source& src, const compute::llama_config& config, std::vector<parsed_node>& nodes) {
  for (auto& node : nodes) {
    auto& spec = node.spec;
    // Activations and KV caches come on top and are not counted.
    spec.weight_bytes = spec.weight_bytes_of(config, spec.first_layer, spec.last_layer);
    if (spec.memory_bytes && spec.weight_bytes > *spec.memory_bytes)
      src.fail(node.memory_line, "node '" + spec.name + "' needs " + std::to_string(spec.weight_bytes) + " bytes (" +
                                     human_bytes(spec.weight_bytes) + ") of " + std::string(dtype_name(spec.dtype)) + " weights for layers " +
                                     range_text(spec.first_layer, spec.last_layer) + " but its memory budget is " +
                                     std::to_string(*spec.memory_bytes) + " bytes (" +
                                     human_bytes(*spec.memory_bytes) + ")");
  }
}

}  // namespace detail

std::vector<tensor_slice> group_slices(const compute::llama_config& config, const std::vector<double>& speeds) {
  return compute::tensor_slices(config, detail::shares_by_speed(config.num_heads, speeds),
                                detail::shares_by_speed(config.intermediate_size, speeds));
}

std::vector<std::pair<int, int>> even_ranges(int layers, int nodes) {
  std::vector<std::pair<int, int>> ranges;
  int first = 0;
  for (int i = 0; i < nodes; ++i) {
    int last = first + layers / nodes + (i < layers % nodes ? 1 : 0);
    ranges.emplace_back(first, last);
    first = last;
  }
  return ranges;
}

}  // namespace orrery::deploy
