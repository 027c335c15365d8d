#pragma once
// Reading a topology file's YAML strictly: every problem is one message,
// `FILE:LINE: problem`, that ends the parse; every key of a map is checked up
// front; integers, sizes and ports are read as exactly what they must be.
// Internal to deploy/cluster's topology_*.cpp.

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "deploy/cluster/topology.hpp"

namespace orrery::deploy::detail {

// The file every message names; one problem ends the parse.
struct source {
  std::string file;

  [[noreturn]] void fail(int line, const std::string& problem) const {
    throw topology_error(file + ":" + std::to_string(line) + ": " + problem);
  }
};

// yaml-cpp's marks are 0-based, and -1 where there is no text (an empty file).
int line_of(const YAML::Mark& mark);
int line_of(const YAML::Node& node);

/// `a map`, `a list`, `'SCALAR'` or `nothing`: what a value is, for messages.
std::string kind_of(const YAML::Node& node);

/// "1 layer", "3 layers".
std::string count_of(std::size_t n, const std::string& noun);

/// `[first, last)`.
std::string range_text(int first, int last);

/// "did you mean 'x'? " for a name within two edits of a known one (a typo or
/// a swapped pair of letters), but never for a name that shares almost nothing.
std::string did_you_mean(const std::string& name, const std::vector<std::string>& known);

// One `key: value` of a YAML map, with the key's line.
struct entry {
  std::string key;
  YAML::Node value;
  int line = 0;
};

// A YAML map whose keys are all checked up front — unknown and duplicate keys
// are errors — so a misspelt optional key never silently falls back to its
// default. `noun` is what its keys are ("key", or "node" in a placement).
class section {
 public:
  section(const source& src, const YAML::Node& map, std::string what, int line,
          const std::vector<std::string>& known, const std::string& noun = "key");

  const entry* find(const std::string& key) const;
  const entry& require(const std::string& key) const;
  int line() const { return line_; }

 private:
  const source& src_;
  std::string what_;
  int line_;
  std::vector<entry> entries_;
};

// -- scalar values -------------------------------------------------------------

/// A non-empty string.
std::string text(const source& src, const entry& e);

/// Strict decimal: YAML's untyped scalars would otherwise let "1.5" or "0x10"
/// through as whatever a lenient conversion makes of them.
std::optional<std::int64_t> integer(const std::string& digits);

std::int64_t integer_in(const source& src, const entry& e, std::int64_t low, std::int64_t high);

/// 1..65535.
std::optional<std::uint16_t> port_number(const std::string& digits);

/// A decimal number, an optional space and one of `units` (by which the
/// number is multiplied); nothing when the text is anything else.
std::optional<double> quantity(const std::string& spec, const std::map<std::string, double>& units);

/// `1073741824`, `2GiB`, `1.5 GB`: decimal (KB = 1000) and binary (KiB = 1024)
/// units both occur in device data sheets, so both are accepted.
std::optional<std::uint64_t> byte_count(const std::string& spec);

// -- the sections ----------------------------------------------------------------

// A node as read, with the lines later checks point at.
struct parsed_node {
  node_spec spec;
  int address_line = 0;
  int data_port_line = 0;
  int memory_line = 0;
  int range_line = 0;
  int group_line = 0;
};

/// `nodes:` (topology_nodes.cpp): every node, each name once.
std::vector<parsed_node> read_nodes(const source& src, const entry& e);

/// Two listeners on one host cannot share a port.
void check_ports(const source& src, const std::vector<parsed_node>& nodes);

/// A host that does not resolve is reported at its line, before any process starts.
void check_resolvable(const source& src, const parsed_node& node);

/// `testbed:` (topology_nodes.cpp), present or implied by a node's `emulate:`;
/// sets `t.testbed` and checks every node's host is an address of its subnet.
void read_testbed(const source& src, const entry* e, int nodes_line, const std::vector<parsed_node>& nodes, topology& t);

/// `model:` (topology_placement.cpp), resolved against the topology file's
/// directory; fails unless a model directory is there.
std::filesystem::path resolve_model(const source& src, const entry& e, const std::filesystem::path& file);

compute::llama_config read_model_config(const source& src, const entry& e, const std::filesystem::path& model);

/// `placement:` (`even`, or a map of node name to layer range; `e` null: even):
/// every layer on exactly one stage, a node of its own or a group whose
/// members share its layers; then each group's split of heads and columns.
void place(const source& src, const entry* e, int nodes_line, const compute::llama_config& config,
           std::vector<parsed_node>& nodes);

/// Each node's weight bytes, checked against its memory budget.
void check_memory(const source& src, const compute::llama_config& config, std::vector<parsed_node>& nodes);

}  // namespace orrery::deploy::detail
