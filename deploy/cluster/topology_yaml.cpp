// The strict YAML reading every section of a topology file goes through.

#include "deploy/cluster/topology_yaml.hpp"

#include <algorithm>
#include <charconv>

#include "compute/message_text.hpp"

namespace orrery::deploy::detail {

namespace {

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

int line_of(const YAML::Mark& mark) { return mark.line >= 0 ? mark.line + 1 : 1; }
int line_of(const YAML::Node& node) { return line_of(node.Mark()); }

std::string kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "nothing";
  }
}

std::string count_of(std::size_t n, const std::string& noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

std::string range_text(int first, int last) {
  return "[" + std::to_string(first) + ", " + std::to_string(last) + ")";
}

std::string did_you_mean(const std::string& name, const std::vector<std::string>& known) {
  std::string best;
  std::size_t best_distance = 3;
  for (const auto& candidate : known) {
    auto distance = edit_distance(name, candidate);
    if (distance < best_distance && distance < candidate.size()) best = candidate, best_distance = distance;
  }
  return best.empty() ? "" : "did you mean '" + best + "'? ";
}

section::section(const source& src, const YAML::Node& map, std::string what, int line,
                 const std::vector<std::string>& known, const std::string& noun)
    : src_(src), what_(std::move(what)), line_(line) {
  if (!map.IsMap()) src.fail(line, what_ + " must be a map, got " + kind_of(map));
  for (const auto& pair : map) {
    int key_line = line_of(pair.first);
    if (!pair.first.IsScalar()) src.fail(key_line, "a key in " + what_ + " is " + kind_of(pair.first));
    std::string key = pair.first.Scalar();
    if (std::find(known.begin(), known.end(), key) == known.end())
      src.fail(key_line, "unknown " + noun + " '" + key + "' in " + what_ + " (" + did_you_mean(key, known) +
                             "known: " + compute::join(known) + ")");
    if (const entry* first = find(key))
      src.fail(key_line, "duplicate " + noun + " '" + key + "' in " + what_ + " (first on line " +
                             std::to_string(first->line) + ")");
    entries_.push_back({key, pair.second, key_line});
  }
}

const entry* section::find(const std::string& key) const {
  auto it = std::find_if(entries_.begin(), entries_.end(), [&](const entry& e) { return e.key == key; });
  return it == entries_.end() ? nullptr : &*it;
}

const entry& section::require(const std::string& key) const {
  if (const entry* e = find(key)) return *e;
  src_.fail(line_, "missing required key '" + key + "' in " + what_);
}

std::string text(const source& src, const entry& e) {
  if (!e.value.IsScalar() || e.value.Scalar().empty())
    src.fail(e.line, "'" + e.key + "' must be a non-empty string, got " + kind_of(e.value));
  return e.value.Scalar();
}

std::optional<std::int64_t> integer(const std::string& digits) {
  std::int64_t value = 0;
  auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size() || digits.empty()) return std::nullopt;
  return value;
}

std::int64_t integer_in(const source& src, const entry& e, std::int64_t low, std::int64_t high) {
  auto value = e.value.IsScalar() ? integer(e.value.Scalar()) : std::nullopt;
  if (!value || *value < low || *value > high)
    src.fail(e.line, "'" + e.key + "' must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
                         "], got " + kind_of(e.value));
  return *value;
}

std::optional<std::uint16_t> port_number(const std::string& digits) {
  auto value = integer(digits);
  if (!value || *value < 1 || *value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(*value);
}

std::optional<double> quantity(const std::string& spec, const std::map<std::string, double>& units) {
  auto number_end = std::min(spec.find_first_not_of("0123456789."), spec.size());
  auto unit_start = std::min(spec.find_first_not_of(' ', number_end), spec.size());
  auto unit = units.find(spec.substr(unit_start));
  double number = 0;
  auto [end, error] = std::from_chars(spec.data(), spec.data() + number_end, number, std::chars_format::fixed);
  if (unit == units.end() || error != std::errc() || end != spec.data() + number_end) return std::nullopt;
  return number * unit->second;
}

std::optional<std::uint64_t> byte_count(const std::string& spec) {
  static const std::map<std::string, double> units = {
      {"", 1},        {"B", 1},          {"KB", 1e3},       {"MB", 1e6},      {"GB", 1e9},
      {"TB", 1e12},   {"KiB", 0x1p10},   {"MiB", 0x1p20},   {"GiB", 0x1p30},  {"TiB", 0x1p40}};
  auto bytes = quantity(spec, units);
  if (!bytes || *bytes < 1 || *bytes >= 0x1p64) return std::nullopt;
  return static_cast<std::uint64_t>(*bytes);
}

}  // namespace orrery::deploy::detail
