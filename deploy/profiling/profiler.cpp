#include "deploy/profiling/profiler.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <memory>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/element_type.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/console/progress.hpp"
#include "deploy/cluster/run_registry.hpp"
#include "messages/types.hpp"
#include "planning/galaxy.hpp"

namespace orrery::deploy {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// -- cache keys --------------------------------------------------------------

std::string fnv1a_hex(const std::string& text) {
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ull;
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(hash));
  return out;
}

// The model directory's name and a hash of its config and of every file's
// name, size and modification time: rewriting the weights changes the key.
std::string model_key(const fs::path& model) {
  std::ostringstream identity;
  std::ifstream config(model / "config.json");
  identity << config.rdbuf();
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(model))
    if (entry.is_regular_file()) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  for (const auto& file : files)
    identity << '\n' << file.filename().string() << ' ' << fs::file_size(file) << ' '
             << fs::last_write_time(file).time_since_epoch().count();
  return model.filename().string() + "-" + fnv1a_hex(identity.str());
}

std::string optional_text(const std::optional<std::uint64_t>& value) {
  return value ? std::to_string(*value) : "-";
}

// Everything a node's measurements depend on besides the model.
std::string node_key(const node_spec& n) {
  std::ostringstream identity;
  identity << n.address() << ' ' << n.data_port << ' ' << n.device << ' ' << dtype_name(n.dtype) << ' ' << n.threads << ' '
           << optional_text(n.memory_bytes);
  if (const auto& e = n.emulate)
    identity << " cpu " << (e->cpu_share ? std::to_string(*e->cpu_share) : "-") << " mem "
             << optional_text(e->memory_bytes) << " out " << optional_text(e->egress_bits_per_s) << " in "
             << optional_text(e->ingress_bits_per_s);
  return n.name + "-" + fnv1a_hex(identity.str());
}

// The file of the ring step floor of `t`'s nodes: a hash of what each
// computes on, in file order, leaving out what its links are.
fs::path ring_step_floor_file(const topology& t, const fs::path& cache) {
  std::ostringstream identity;
  for (const auto& n : t.nodes)
    identity << n.name << ' ' << n.address() << ' ' << n.device << ' ' << dtype_name(n.dtype) << ' ' << n.threads << ' '
             << (n.emulate && n.emulate->cpu_share ? std::to_string(*n.emulate->cpu_share) : "-") << '\n';
  return cache / model_key(t.model) / ("ring-step-floor-" + fnv1a_hex(identity.str()) + ".json");
}

std::optional<json> read_cache(const fs::path& file) {
  std::ifstream in(file);
  if (!in) return std::nullopt;
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return std::nullopt;  // a damaged entry is measured again
  }
}

void write_cache(const fs::path& file, const json& value) {
  fs::create_directories(file.parent_path());
  write_atomically(file, value.dump(2) + "\n");
}

// -- measuring ------------------------------------------------------------------

json curves_to_json(const layer_timing_report& report) {
  json curves = json::array();
  for (const auto& c : report.curves)
    curves.push_back({{"layer", c.layer}, {"phase", c.phase}, {"lengths", c.lengths}, {"seconds", c.seconds}});
  return {{"node", report.node},
          {"curves", curves},
          {"burst", {{"context", report.burst_context}, {"wall_seconds", report.burst_wall_seconds}}},
          {"usable_memory_bytes", report.usable_memory_bytes},
          {"memory_limited_by", report.memory_limited_by}};
}

// The answer to a request sent earlier; throws naming `what` on an error.
template <class Result, class Pending>
Result await(caf::scoped_actor& self, Pending& pending, std::chrono::seconds timeout, const std::string& what) {
  Result result;
  std::string failure;
  pending.receive([&](Result& r) { result = std::move(r); },
                  [&](caf::error& e) {
                    failure = e == caf::sec::request_timeout ? "no answer within " + std::to_string(timeout.count()) + " s"
                                                             : self->system().render(e);
                  });
  if (!failure.empty()) throw std::runtime_error(what + ": " + failure);
  return result;
}

// The lengths that fit the model's context; the limit itself when none does
// (a small test model), so every curve has a point.
std::vector<std::int32_t> fitting(const std::vector<int>& lengths, int limit) {
  std::vector<std::int32_t> out;
  for (int length : lengths)
    if (length <= limit) out.push_back(length);
  if (out.empty()) out.push_back(limit);
  return out;
}

// Timing a 0.2-core node's layers at long contexts takes a while.
constexpr std::chrono::seconds timing_timeout{900};
constexpr std::chrono::seconds probe_timeout{120};

// -- assembling -------------------------------------------------------------------

planning::time_curve curve_from(const json& node, const std::string& layer, const std::string& phase) {
  for (const auto& c : node.at("curves"))
    if (c.at("layer") == layer && c.at("phase") == phase) {
      std::vector<planning::time_curve::point> points;
      auto lengths = c.at("lengths").get<std::vector<int>>();
      auto seconds = c.at("seconds").get<std::vector<double>>();
      for (std::size_t i = 0; i < lengths.size() && i < seconds.size(); ++i) points.push_back({double(lengths[i]), seconds[i]});
      return planning::time_curve(points);
    }
  throw std::runtime_error("the measurement of node '" + node.at("node").get<std::string>() + "' has no " + layer +
                           " " + phase + " curve");
}

bool has_phase(const json& node, const std::string& phase) {
  for (const auto& c : node.at("curves"))
    if (c.at("phase") == phase) return true;
  return false;
}

// Seconds per sample of a training pass (per step of an update); 0 where
// training was not timed.
double training_seconds(const json& node, const std::string& layer, const std::string& phase) {
  for (const auto& c : node.at("curves"))
    if (c.at("layer") == layer && c.at("phase") == phase) return c.at("seconds").at(0).get<double>();
  return 0;
}

// A burst of middle-layer steps from idle, in the units burst_speed plans
// with: work counted in first steps (which ran at full speed), against the
// middle layer's sustained time at the burst's context. None in a cache
// written before bursts were measured.
planning::burst_speed burst_from(const json& node) {
  planning::burst_speed burst;
  if (!node.contains("burst")) return burst;
  const auto& b = node.at("burst");
  const auto walls = b.at("wall_seconds").get<std::vector<double>>();
  if (walls.empty() || walls.front() <= 0) return burst;
  const double first = walls.front();
  burst.sustained_over_first = curve_from(node, "middle", "decode").at(b.at("context").get<double>() + 1) / first;
  for (std::size_t i = 0; i < walls.size(); ++i) burst.points.emplace_back(static_cast<double>(i + 1) * first, walls[i]);
  return burst;
}

// The layer profiles count a value as the source node (the one holding the
// embedding) stores it: in a cluster of one dtype every node's state then
// counts at its own size, and a node of another dtype gets a state_scale.
double layer_value_bytes(const topology& t) {
  return static_cast<double>(element_size(t.nodes.front().dtype));
}

planning::device_profile device_from(const json& node, const topology& t, const node_spec& spec) {
  planning::device_profile d;
  d.name = node.at("node").get<std::string>();
  d.memory_bytes = node.at("usable_memory_bytes").get<double>();
  d.state_scale = static_cast<double>(element_size(spec.dtype)) / layer_value_bytes(t);
  const int layers = t.num_layers;
  for (int l = 0; l < layers; ++l) {
    std::string kind = l == 0 ? "first" : l == layers - 1 ? "last" : "middle";
    d.layers.push_back({curve_from(node, kind, "prefill"), curve_from(node, kind, "decode"),
                        training_seconds(node, kind, "train_forward"), training_seconds(node, kind, "train_backward"),
                        training_seconds(node, kind, "train_update")});
  }
  d.burst = burst_from(node);
  d.reduce_seconds_per_byte = training_seconds(node, "node", "train_reduce");
  return d;
}

// What autograd keeps of one layer for its backward, per token of a training
// sample, in fp32 as training stages compute: about ten hidden-sized values
// (norm inputs and outputs, q, the attention output and the residuals), four
// MLP-sized ones (gate, up, their activation and product) and one row of
// attention probabilities per head; the last layer adds its logits and their
// log-softmax. An estimate from the pass's structure, not a measurement.
double training_bytes_per_token(const compute::llama_config& c, int layer, int train_tokens) {
  double values = 10.0 * c.hidden_size + 4.0 * c.intermediate_size + double(c.num_heads) * train_tokens;
  if (layer == c.num_layers - 1) values += 2.0 * c.vocab_size;
  return 4 * values;
}

std::vector<planning::layer_profile> model_layers(const topology& t, int train_tokens) {
  const auto& c = t.model_config;
  const double value_bytes = layer_value_bytes(t);
  std::vector<planning::layer_profile> layers;
  for (int l = 0; l < c.num_layers; ++l) {
    std::string name = "layer " + std::to_string(l);
    if (l == 0) name += " + embedding";
    if (l == c.num_layers - 1) name += " + norm + head";
    layers.push_back({name, double(c.parameter_count(l, l + 1)) * value_bytes, c.hidden_size * value_bytes,
                      2.0 * c.num_kv_heads * c.head_dim * value_bytes, training_bytes_per_token(c, l, train_tokens)});
  }
  return layers;
}

// The tensor-parallel planner's view of the model (planning/galaxy.hpp).
planning::transformer_shape model_shape(const topology& t) {
  const auto& c = t.model_config;
  return {c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.vocab_size,
          c.max_position_embeddings, static_cast<int>(layer_value_bytes(t))};
}

// Nodes time whole layers, not a head's or a column's slice of one, so a
// device's tp costs are its middle block's prefill cost at the workload's
// prompt length shared out by the bytes each piece reads (what a
// memory-bound CPU block pays for). Timing slices on the nodes would see the
// fixed cost of each smaller matmul too, which this derivation does not.
planning::tp_costs derived_tp_costs(const planning::device_profile& d, const planning::transformer_shape& shape,
                                    int prompt_tokens) {
  const auto& block = d.layers.at(d.layers.size() > 2 ? 1 : 0);
  return planning::tp_costs_from_block(shape, block.prefill.at(prompt_tokens));
}

}  // namespace

fs::path default_profile_cache() {
  const char* xdg = std::getenv("XDG_CACHE_HOME");
  const char* home = std::getenv("HOME");
  fs::path base = xdg && *xdg ? fs::path(xdg) : fs::path(home && *home ? home : "/tmp") / ".cache";
  return base / "orrery" / "profiles";
}

planning::profile profile_cluster(const topology& t, const profiler_options& options, const profile_progress& progress) {
  const fs::path cache = options.cache_dir.empty() ? default_profile_cache() : options.cache_dir;
  const std::size_t count = t.nodes.size();
  const int total = static_cast<int>(count + count * (count - 1));
  int done = 0;
  auto step = [&](const std::string& what) {
    if (progress) progress(++done, total, what);
  };
  actor_config config(t.heartbeat_interval);
  caf::actor_system system(config);
  auto connections = connect_nodes(system, t);
  connections.require_all();
  auto& nodes = connections.stages;
  caf::scoped_actor self{system};

  const fs::path model_dir = cache / model_key(t.model);
  const int max_context = t.model_config.max_position_embeddings;
  // Every node not in the cache times its layers at once, as they will run:
  // nodes that share a machine (a testbed, a loopback cluster) then measure
  // what they get of it while the others compute too. Training times are
  // cached apart (they are asked for only by training placements), under the
  // sample shape they were timed at.
  const layer_timing_request inference{t.model.string(), fitting(options.prefill_lengths, max_context),
                                       fitting(options.decode_contexts, max_context / 2), options.min_seconds, 0, 1};
  const std::string training_file = "-train-" + std::to_string(options.work.train_tokens) + "x" +
                                    std::to_string(options.work.micro_batch_size) + ".json";
  using pending_timing = decltype(self->request(actors::node_actor{}, timing_timeout, inference));
  std::vector<std::optional<json>> measured(count), trained(count);
  std::vector<std::optional<pending_timing>> pending(count);
  std::string timing;
  for (std::size_t i = 0; i < count; ++i) {
    const fs::path file = model_dir / (node_key(t.nodes[i]) + ".json");
    if (!options.refresh) measured[i] = read_cache(file);
    if (options.training && !options.refresh) trained[i] = read_cache(model_dir / (node_key(t.nodes[i]) + training_file));
    // Cached before updates, or the all-reduce's own work, were timed.
    if (trained[i] && (!has_phase(*trained[i], "train_update") || !has_phase(*trained[i], "train_reduce")))
      trained[i].reset();
    if (measured[i] && (!options.training || trained[i])) continue;
    auto request = inference;
    if (measured[i]) request.prefill_lengths.clear(), request.decode_contexts.clear();
    if (options.training && !trained[i])
      request.train_tokens = options.work.train_tokens, request.train_sequences = options.work.micro_batch_size;
    pending[i] = self->request(nodes[i].node, timing_timeout, request);
    timing += (timing.empty() ? "'" : ", '") + t.nodes[i].name + "'";
  }
  if (progress && !timing.empty()) progress(done, total, "timing the layers on " + timing);
  for (std::size_t i = 0; i < count; ++i) {
    if (pending[i]) {
      auto report = curves_to_json(await<layer_timing_report>(self, *pending[i], timing_timeout, t.nodes[i].label()));
      json training_curves = json::array(), other_curves = json::array();
      for (auto& c : report.at("curves"))
        (c.at("phase").get<std::string>().rfind("train_", 0) == 0 ? training_curves : other_curves).push_back(c);
      if (!training_curves.empty()) {
        trained[i] = json{{"node", report.at("node")}, {"curves", training_curves}};
        write_cache(model_dir / (node_key(t.nodes[i]) + training_file), *trained[i]);
      }
      if (!measured[i]) {
        report["curves"] = other_curves;
        measured[i] = report;
        write_cache(model_dir / (node_key(t.nodes[i]) + ".json"), *measured[i]);
      }
    }
    if (trained[i])
      for (const auto& c : trained[i]->at("curves")) (*measured[i])["curves"].push_back(c);
    step("layers of node '" + t.nodes[i].name + "'");
  }

  planning::profile p;
  p.model = t.model.filename().string();
  p.layers = model_layers(t, options.work.train_tokens);
  p.shape = model_shape(t);
  p.source = 0;
  p.work = options.work;
  for (std::size_t i = 0; i < count; ++i) {
    p.devices.push_back(device_from(*measured[i], t, t.nodes[i]));
    p.devices.back().tp = derived_tp_costs(p.devices.back(), *p.shape, p.work.prompt_tokens);
  }
  p.work.return_bytes = 8;  // the last stage samples and returns one token id
  if (auto floor = read_cache(ring_step_floor_file(t, cache)); floor && floor->contains("seconds"))
    p.ring_step_floor = floor->at("seconds").get<double>();

  // Both directions of every pair; the planners' links are symmetric, so a
  // pair gets its slower direction (the one a pipeline may have to use).
  std::map<std::pair<std::size_t, std::size_t>, planning::link_spec> links;
  for (std::size_t a = 0; a < count; ++a)
    for (std::size_t b = 0; b < count; ++b) {
      if (a == b) continue;
      const auto& from = t.nodes[a];
      const auto& to = t.nodes[b];
      fs::path file = cache / "links" / (node_key(from) + "--" + node_key(to) + ".json");
      auto cached = options.refresh ? std::nullopt : read_cache(file);
      if (!cached) {
        if (progress) progress(done, total, "link " + from.name + " -> " + to.name);
        auto probe = self->request(nodes[a].node, probe_timeout, link_probe{to.host, to.data_port});
        auto m = await<link_measurement>(self, probe, probe_timeout, "the link from " + from.label() + " to " + to.label());
        cached = json{{"from", from.name}, {"to", to.name}, {"bandwidth_bytes_per_s", m.bandwidth_bytes_per_s},
                      {"latency_s", m.latency_s}, {"bytes_sent", m.bytes_sent}};
        write_cache(file, *cached);
      }
      planning::link_spec measured_link{cached->at("bandwidth_bytes_per_s").get<double>(),
                                        cached->at("latency_s").get<double>()};
      auto key = std::minmax(a, b);
      auto [it, fresh] = links.emplace(key, measured_link);
      if (!fresh && measured_link.bandwidth < it->second.bandwidth) it->second = measured_link;
      step("link " + from.name + " -> " + to.name);
    }
  planning::link_spec slowest{1e15, 0};
  for (const auto& [pair, spec] : links)
    if (spec.bandwidth < slowest.bandwidth) slowest = spec;
  p.links = planning::link_matrix(slowest);
  for (const auto& [pair, spec] : links) p.links.set(pair.first, pair.second, spec);
  p.validate();
  return p;
}

void save_ring_step_floor(const topology& t, double seconds, const fs::path& cache_dir) {
  const fs::path cache = cache_dir.empty() ? default_profile_cache() : cache_dir;
  write_cache(ring_step_floor_file(t, cache), {{"seconds", seconds}, {"cluster", t.cluster}});
}

profile_progress profile_bar(const std::string& title) {
  auto bar = std::make_shared<progress_bar>(title);
  return [bar](int done, int total, const std::string& what) { bar->show(done, total, what); };
}

}  // namespace orrery::deploy
