#include "planning/profile.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

namespace orrery::planning {

using nlohmann::json;

// -- time_curve -------------------------------------------------------------

time_curve::time_curve(std::vector<point> points) : points_(std::move(points)) {
  if (points_.empty())
    throw profile_error("time curve: needs at least one point");
  std::sort(points_.begin(), points_.end(),
            [](const point& a, const point& b) { return a.length < b.length; });
}

time_curve time_curve::constant(double seconds) {
  return time_curve({{1, seconds}});
}

double time_curve::at(double length) const {
  // Flat below the first point: extrapolating a falling per-token cost
  // (weights amortised over more tokens) downwards would make short
  // sequences look cheap.
  if (points_.size() == 1 || length <= points_.front().length)
    return points_.front().seconds;
  // The segment containing `length`, or the first / last one to extrapolate.
  auto upper = std::upper_bound(points_.begin() + 1, points_.end() - 1, length,
                                [](double x, const point& p) { return x < p.length; });
  const point& b = *upper;
  const point& a = *(upper - 1);
  double slope = b.length > a.length ? (b.seconds - a.seconds) / (b.length - a.length) : 0.0;
  // Past the last point only a rising cost is carried on. Two noisy
  // measurements that happen to fall (a throttled device timed at a lucky
  // moment) would otherwise reach zero a few points further, and a planner
  // would see a slow device as free: it put a 0.1-core node in a pipeline.
  if (length > b.length && slope < 0) return b.seconds;
  return std::max(0.0, a.seconds + slope * (length - a.length));
}

double burst_speed::wall_seconds(double sustained_seconds) const {
  if (points.empty() || sustained_over_first <= 0) return sustained_seconds;
  const double work = sustained_seconds / sustained_over_first;
  double wall = 0;
  if (work <= points.front().first) {
    wall = work * points.front().second / points.front().first;
  } else if (work >= points.back().first) {
    wall = points.back().second + (work - points.back().first) * sustained_over_first;
  } else {
    auto upper = std::upper_bound(points.begin(), points.end(), work,
                                  [](double x, const std::pair<double, double>& p) { return x < p.first; });
    const auto& [w1, t1] = *upper;
    const auto& [w0, t0] = *(upper - 1);
    wall = t0 + (t1 - t0) * (work - w0) / (w1 - w0);
  }
  return std::min(wall, sustained_seconds);
}

double state_budget(const device_profile& d) {
  return d.memory_bytes / d.state_scale;
}

// -- link_matrix ------------------------------------------------------------

void link_matrix::set(std::size_t a, std::size_t b, link_spec spec) {
  overrides_[{std::min(a, b), std::max(a, b)}] = spec;
}

link_spec link_matrix::between(std::size_t a, std::size_t b) const {
  auto it = overrides_.find({std::min(a, b), std::max(a, b)});
  return it == overrides_.end() ? fallback_ : it->second;
}

double link_matrix::transfer_seconds(std::size_t a, std::size_t b, double bytes) const {
  if (a == b)
    return 0.0;
  link_spec l = between(a, b);
  return l.latency + bytes / l.bandwidth;
}

// -- validation -------------------------------------------------------------

namespace {

std::string at_index(const std::string& path, std::size_t i) {
  return path + "[" + std::to_string(i) + "]";
}

void require(bool ok, const std::string& path, const std::string& what) {
  if (!ok)
    throw profile_error(path + ": " + what);
}

void require_non_negative(double v, const std::string& path) {
  require(std::isfinite(v) && v >= 0, path, "must be >= 0, got " + std::to_string(v));
}

void require_positive(double v, const std::string& path) {
  require(std::isfinite(v) && v > 0, path, "must be > 0, got " + std::to_string(v));
}

void validate_link(const link_spec& l, const std::string& path) {
  require_positive(l.bandwidth, path + ".bandwidth");
  require_non_negative(l.latency, path + ".latency");
}

void validate_curve(const time_curve& c, const std::string& path) {
  require(!c.points().empty(), path, "needs at least one point");
  for (std::size_t i = 0; i < c.points().size(); ++i) {
    require_positive(c.points()[i].length, at_index(path, i) + ".length");
    require_non_negative(c.points()[i].seconds, at_index(path, i) + ".seconds");
  }
}

void validate_device(const device_profile& d, std::size_t layers, const std::string& path) {
  require(!d.name.empty(), path + ".name", "must not be empty");
  require_positive(d.memory_bytes, path + ".memory_bytes");
  require_positive(d.state_scale, path + ".state_scale");
  require(d.layers.size() == layers, path + ".layers",
          "has " + std::to_string(d.layers.size()) + " entries, the model has " +
              std::to_string(layers) + " layers");
  for (std::size_t l = 0; l < layers; ++l) {
    std::string lp = at_index(path + ".layers", l);
    validate_curve(d.layers[l].prefill, lp + ".prefill");
    validate_curve(d.layers[l].decode, lp + ".decode");
    require_non_negative(d.layers[l].forward, lp + ".forward");
    require_non_negative(d.layers[l].backward, lp + ".backward");
  }
}

}  // namespace

void profile::validate() const {
  require(!layers.empty(), "profile.model.layers", "must not be empty");
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::string lp = at_index("profile.model.layers", l);
    require_non_negative(layers[l].weight_bytes, lp + ".weight_bytes");
    require_non_negative(layers[l].activation_bytes_per_token, lp + ".activation_bytes_per_token");
    require_non_negative(layers[l].kv_bytes_per_token, lp + ".kv_bytes_per_token");
    require_non_negative(layers[l].training_bytes_per_token, lp + ".training_bytes_per_token");
  }
  require(!devices.empty(), "profile.devices", "must not be empty");
  for (std::size_t d = 0; d < devices.size(); ++d)
    validate_device(devices[d], layers.size(), at_index("profile.devices", d));
  require(source < devices.size(), "profile.source",
          "device index " + std::to_string(source) + " out of range (" +
              std::to_string(devices.size()) + " devices)");
  validate_link(links.fallback(), "profile.links.default");
  for (const auto& [pair, spec] : links.overrides()) {
    std::string lp = "profile.links.pairs[" + std::to_string(pair.first) + "," +
                     std::to_string(pair.second) + "]";
    require(pair.second < devices.size(), lp, "device index out of range");
    validate_link(spec, lp);
  }
  require(work.prompt_tokens >= 1, "profile.workload.prompt_tokens", "must be >= 1");
  require(work.output_tokens >= 1, "profile.workload.output_tokens", "must be >= 1");
  require(work.batch >= 1, "profile.workload.batch", "must be >= 1");
  require(work.micro_batches >= 1, "profile.workload.micro_batches", "must be >= 1");
  require(work.micro_batch_size >= 1, "profile.workload.micro_batch_size", "must be >= 1");
  require(work.train_tokens >= 1, "profile.workload.train_tokens", "must be >= 1");
  require(work.optimizer_states >= 0, "profile.workload.optimizer_states", "must be >= 0");
  require(work.return_bytes >= 0, "profile.workload.return_bytes", "must be >= 0");
}

// -- JSON -------------------------------------------------------------------

namespace {

// Reads fields with their JSON path so that errors say where they are.
const json& field(const json& j, const std::string& path, const char* key) {
  require(j.is_object(), path, "must be an object");
  auto it = j.find(key);
  require(it != j.end(), path + "." + key, "missing field");
  return *it;
}

double number(const json& j, const std::string& path, const char* key) {
  const json& v = field(j, path, key);
  require(v.is_number(), path + "." + key, "must be a number, got " + v.dump());
  return v.get<double>();
}

double number_or(const json& j, const std::string& path, const char* key, double fallback) {
  return j.contains(key) ? number(j, path, key) : fallback;
}

int integer_or(const json& j, const std::string& path, const char* key, int fallback) {
  if (!j.contains(key))
    return fallback;
  const json& v = j.at(key);
  require(v.is_number_integer(), path + "." + key, "must be an integer, got " + v.dump());
  return v.get<int>();
}

std::string text(const json& j, const std::string& path, const char* key) {
  const json& v = field(j, path, key);
  require(v.is_string(), path + "." + key, "must be a string");
  return v.get<std::string>();
}

const json& array(const json& j, const std::string& path, const char* key) {
  const json& v = field(j, path, key);
  require(v.is_array(), path + "." + key, "must be an array");
  return v;
}

time_curve curve_from_json(const json& j, const std::string& path) {
  if (j.is_number())
    return time_curve::constant(j.get<double>());
  require(j.is_array() && !j.empty(), path, "must be a number or a non-empty array of [length, seconds]");
  std::vector<time_curve::point> points;
  for (std::size_t i = 0; i < j.size(); ++i) {
    const json& p = j[i];
    require(p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number(),
            at_index(path, i), "must be [length, seconds]");
    points.push_back({p[0].get<double>(), p[1].get<double>()});
  }
  return time_curve(std::move(points));
}

json curve_to_json(const time_curve& c) {
  json out = json::array();
  for (const auto& p : c.points())
    out.push_back({p.length, p.seconds});
  return out;
}

layer_timing timing_from_json(const json& j, const std::string& path) {
  layer_timing t;
  t.prefill = curve_from_json(field(j, path, "prefill"), path + ".prefill");
  t.decode = curve_from_json(field(j, path, "decode"), path + ".decode");
  t.forward = number_or(j, path, "forward", 0);
  t.backward = number_or(j, path, "backward", 0);
  t.update = number_or(j, path, "update", 0);
  return t;
}

// `layers` is an array (one timing per layer) or one object used for every layer.
std::vector<layer_timing> timings_from_json(const json& j, std::size_t layers,
                                            const std::string& path) {
  if (j.is_object())
    return std::vector<layer_timing>(layers, timing_from_json(j, path));
  require(j.is_array(), path, "must be an array of layer timings or one timing object");
  std::vector<layer_timing> out;
  for (std::size_t i = 0; i < j.size(); ++i)
    out.push_back(timing_from_json(j[i], at_index(path, i)));
  return out;
}

device_profile device_from_json(const json& j, std::size_t layers, const std::string& path) {
  device_profile d;
  d.name = text(j, path, "name");
  d.memory_bytes = number(j, path, "memory_bytes");
  d.state_scale = number_or(j, path, "state_scale", 1);
  d.reduce_seconds_per_byte = number_or(j, path, "reduce_seconds_per_byte", 0);
  require_non_negative(d.reduce_seconds_per_byte, path + ".reduce_seconds_per_byte");
  d.layers = timings_from_json(field(j, path, "layers"), layers, path + ".layers");
  if (j.contains("tp")) {
    const json& tp = j.at("tp");
    std::string tpp = path + ".tp";
    d.tp = tp_costs{number(tp, tpp, "per_head"), number(tp, tpp, "per_column"),
                    number(tp, tpp, "per_token")};
  }
  if (j.contains("burst")) {
    const json& b = j.at("burst");
    const std::string bp = path + ".burst";
    d.burst.sustained_over_first = number(b, bp, "sustained_over_first");
    require(d.burst.sustained_over_first > 0, bp + ".sustained_over_first", "must be > 0");
    const json& points = field(b, bp, "points");
    require(points.is_array(), bp + ".points", "must be an array of [work, wall] seconds");
    for (std::size_t i = 0; i < points.size(); ++i) {
      const json& p = points[i];
      require(p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number(), at_index(bp + ".points", i),
              "must be [work, wall] seconds");
      const double work = p[0].get<double>(), wall = p[1].get<double>();
      require(work > 0 && wall > 0 && (d.burst.points.empty() || (work > d.burst.points.back().first &&
                                                                   wall >= d.burst.points.back().second)),
              at_index(bp + ".points", i), "must be positive and rise from the point before");
      d.burst.points.emplace_back(work, wall);
    }
  }
  return d;
}

link_spec link_from_json(const json& j, const std::string& path) {
  return {number(j, path, "bandwidth"), number_or(j, path, "latency", 0)};
}

link_matrix links_from_json(const json& j, const std::string& path) {
  link_matrix links(link_from_json(field(j, path, "default"), path + ".default"));
  if (!j.contains("pairs"))
    return links;
  const json& pairs = array(j, path, "pairs");
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    std::string pp = at_index(path + ".pairs", i);
    auto a = number(pairs[i], pp, "a");
    auto b = number(pairs[i], pp, "b");
    require(a >= 0 && b >= 0 && a != b, pp, "needs two different device indices a and b");
    links.set(static_cast<std::size_t>(a), static_cast<std::size_t>(b), link_from_json(pairs[i], pp));
  }
  return links;
}

layer_profile layer_from_json(const json& j, const std::string& path) {
  layer_profile l;
  l.name = j.contains("name") ? text(j, path, "name") : std::string();
  l.weight_bytes = number(j, path, "weight_bytes");
  l.activation_bytes_per_token = number(j, path, "activation_bytes_per_token");
  l.kv_bytes_per_token = number_or(j, path, "kv_bytes_per_token", 0);
  l.training_bytes_per_token = number_or(j, path, "training_bytes_per_token", 0);
  return l;
}

transformer_shape shape_from_json(const json& j, const std::string& path) {
  transformer_shape s;
  s.hidden = integer_or(j, path, "hidden", 0);
  s.intermediate = integer_or(j, path, "intermediate", 0);
  s.heads = integer_or(j, path, "heads", 0);
  s.kv_heads = integer_or(j, path, "kv_heads", s.heads);
  s.vocab = integer_or(j, path, "vocab", 0);
  s.max_context = integer_or(j, path, "max_context", 0);
  s.dtype_bytes = integer_or(j, path, "dtype_bytes", 2);
  require(s.hidden > 0 && s.intermediate > 0 && s.heads > 0, path,
          "needs positive hidden, intermediate and heads");
  return s;
}

workload workload_from_json(const json& j, const std::string& path) {
  workload w;
  w.prompt_tokens = integer_or(j, path, "prompt_tokens", w.prompt_tokens);
  w.output_tokens = integer_or(j, path, "output_tokens", w.output_tokens);
  w.batch = integer_or(j, path, "batch", w.batch);
  w.micro_batches = integer_or(j, path, "micro_batches", w.micro_batches);
  w.micro_batch_size = integer_or(j, path, "micro_batch_size", w.micro_batch_size);
  w.train_tokens = integer_or(j, path, "train_tokens", w.train_tokens);
  w.optimizer_states = integer_or(j, path, "optimizer_states", w.optimizer_states);
  w.return_bytes = number_or(j, path, "return_bytes", w.return_bytes);
  return w;
}

}  // namespace

profile profile_from_json(const json& j) {
  profile p;
  const json& model = field(j, "profile", "model");
  p.model = text(model, "profile.model", "name");
  const json& layers = array(model, "profile.model", "layers");
  for (std::size_t i = 0; i < layers.size(); ++i)
    p.layers.push_back(layer_from_json(layers[i], at_index("profile.model.layers", i)));
  if (model.contains("shape"))
    p.shape = shape_from_json(model.at("shape"), "profile.model.shape");
  const json& devices = array(j, "profile", "devices");
  for (std::size_t i = 0; i < devices.size(); ++i)
    p.devices.push_back(device_from_json(devices[i], p.layers.size(), at_index("profile.devices", i)));
  p.links = links_from_json(field(j, "profile", "links"), "profile.links");
  double source = number_or(j, "profile", "source", 0);
  require(source >= 0 && source == std::floor(source), "profile.source", "must be a device index");
  p.source = static_cast<std::size_t>(source);
  if (j.contains("workload"))
    p.work = workload_from_json(j.at("workload"), "profile.workload");
  p.ring_step_floor = number_or(j, "profile", "ring_step_floor", 0);
  require_non_negative(p.ring_step_floor, "profile.ring_step_floor");
  p.validate();
  return p;
}

namespace {

json timing_to_json(const layer_timing& t) {
  return {{"prefill", curve_to_json(t.prefill)},
          {"decode", curve_to_json(t.decode)},
          {"forward", t.forward},
          {"backward", t.backward},
          {"update", t.update}};
}

json device_to_json(const device_profile& d) {
  json layers = json::array();
  for (const auto& t : d.layers)
    layers.push_back(timing_to_json(t));
  json out = {{"name", d.name}, {"memory_bytes", d.memory_bytes}, {"layers", layers}};
  if (d.state_scale != 1)
    out["state_scale"] = d.state_scale;
  if (d.reduce_seconds_per_byte > 0)
    out["reduce_seconds_per_byte"] = d.reduce_seconds_per_byte;
  if (d.tp)
    out["tp"] = {{"per_head", d.tp->per_head},
                 {"per_column", d.tp->per_column},
                 {"per_token", d.tp->per_token}};
  if (!d.burst.points.empty())
    out["burst"] = {{"sustained_over_first", d.burst.sustained_over_first}, {"points", d.burst.points}};
  return out;
}

json links_to_json(const link_matrix& links) {
  json pairs = json::array();
  for (const auto& [pair, spec] : links.overrides())
    pairs.push_back({{"a", pair.first}, {"b", pair.second},
                     {"bandwidth", spec.bandwidth}, {"latency", spec.latency}});
  return {{"default", {{"bandwidth", links.fallback().bandwidth},
                       {"latency", links.fallback().latency}}},
          {"pairs", pairs}};
}

json model_to_json(const profile& p) {
  json layers = json::array();
  for (const auto& l : p.layers)
    layers.push_back({{"name", l.name},
                      {"weight_bytes", l.weight_bytes},
                      {"activation_bytes_per_token", l.activation_bytes_per_token},
                      {"kv_bytes_per_token", l.kv_bytes_per_token},
                      {"training_bytes_per_token", l.training_bytes_per_token}});
  json out = {{"name", p.model}, {"layers", layers}};
  if (p.shape)
    out["shape"] = {{"hidden", p.shape->hidden}, {"intermediate", p.shape->intermediate},
                    {"heads", p.shape->heads}, {"kv_heads", p.shape->kv_heads},
                    {"vocab", p.shape->vocab}, {"max_context", p.shape->max_context},
                    {"dtype_bytes", p.shape->dtype_bytes}};
  return out;
}

}  // namespace

json to_json(const profile& p) {
  json devices = json::array();
  for (const auto& d : p.devices)
    devices.push_back(device_to_json(d));
  const workload& w = p.work;
  json out = {{"model", model_to_json(p)},
          {"devices", devices},
          {"links", links_to_json(p.links)},
          {"source", p.source},
          {"workload", {{"prompt_tokens", w.prompt_tokens}, {"output_tokens", w.output_tokens},
                        {"batch", w.batch}, {"micro_batches", w.micro_batches},
                        {"micro_batch_size", w.micro_batch_size},
                        {"train_tokens", w.train_tokens},
                        {"optimizer_states", w.optimizer_states},
                        {"return_bytes", w.return_bytes}}}};
  if (p.ring_step_floor > 0)
    out["ring_step_floor"] = p.ring_step_floor;
  return out;
}

// -- files ------------------------------------------------------------------

namespace {

bool is_yaml(const std::string& path) {
  auto ends_with = [&](const std::string& s) {
    return path.size() >= s.size() && path.compare(path.size() - s.size(), s.size(), s) == 0;
  };
  return ends_with(".yaml") || ends_with(".yml");
}

// YAML scalars carry no type: numbers and booleans are recognised by their text.
json scalar_from_yaml(const YAML::Node& n) {
  const std::string& s = n.Scalar();
  if (s == "true" || s == "false")
    return s == "true";
  char* end = nullptr;
  long long i = std::strtoll(s.c_str(), &end, 10);
  if (!s.empty() && *end == '\0')
    return i;
  double d = std::strtod(s.c_str(), &end);
  if (!s.empty() && *end == '\0')
    return d;
  return s;
}

json json_from_yaml(const YAML::Node& n) {
  if (n.IsMap()) {
    json out = json::object();
    for (const auto& kv : n)
      out[kv.first.as<std::string>()] = json_from_yaml(kv.second);
    return out;
  }
  if (n.IsSequence()) {
    json out = json::array();
    for (const auto& e : n)
      out.push_back(json_from_yaml(e));
    return out;
  }
  return n.IsScalar() ? scalar_from_yaml(n) : json();
}

void emit_yaml(YAML::Emitter& out, const json& j) {
  if (j.is_object()) {
    out << YAML::BeginMap;
    for (const auto& [k, v] : j.items()) {
      out << YAML::Key << k << YAML::Value;
      emit_yaml(out, v);
    }
    out << YAML::EndMap;
  } else if (j.is_array()) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& v : j)
      emit_yaml(out, v);
    out << YAML::EndSeq;
  } else if (j.is_string()) {
    out << j.get<std::string>();
  } else {
    out << j.dump();
  }
}

}  // namespace

profile load_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    throw profile_error(path + ": cannot open profile");
  json j;
  try {
    if (is_yaml(path)) {
      j = json_from_yaml(YAML::Load(in));
    } else {
      j = json::parse(in);
    }
  } catch (const std::exception& e) {
    throw profile_error(path + ": not valid " + (is_yaml(path) ? "YAML" : "JSON") + ": " + e.what());
  }
  try {
    return profile_from_json(j);
  } catch (const profile_error& e) {
    throw profile_error(path + ": " + e.what());
  }
}

void save_profile(const profile& p, const std::string& path) {
  std::ofstream out(path);
  if (!out)
    throw profile_error(path + ": cannot write profile");
  if (is_yaml(path)) {
    YAML::Emitter emitter;
    emit_yaml(emitter, to_json(p));
    out << emitter.c_str() << "\n";
  } else {
    out << to_json(p).dump(1) << "\n";
  }
}

}  // namespace orrery::planning
