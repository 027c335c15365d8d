#pragma once
// The topology file: one YAML file that names a cluster's nodes, the model they
// serve, how its layers are split over them, and the control-plane timeouts.
// Loading it validates everything that can be checked before any process
// starts — keys, addresses, ports, devices, layer ranges, memory budgets — so a
// mistake is reported once, as `FILE:LINE: problem`, instead of as a node that
// fails half-way through a deployment. deploy/topologies/README.md documents
// every key.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "base/element_type.hpp"
#include "base/tensor_slice.hpp"
#include "compute/llama_config.hpp"

namespace orrery::deploy {

/// A malformed or unusable topology file; the message is `FILE:LINE: problem`.
class topology_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// How `orrery testbed` makes one node behave like a weaker device on this
/// machine: its own network namespace with shaped links, a CPU quota and a
/// memory cap (deploy/testbed/testbed.hpp). Unset fields are not limited.
struct emulation {
  /// The catalog device (`rpi5`, `jetson-nano`, …) that filled in the
  /// fields not written out, or empty.
  std::string preset;
  /// Fractions of one core (cgroup v1 `cpu.cfs_quota_us`), > 0.
  std::optional<double> cpu_share;
  /// cgroup v1 `memory.limit_in_bytes`.
  std::optional<std::uint64_t> memory_bytes;
  /// Link rates in bits per second (`tc qdisc tbf`), out of and into the node.
  std::optional<std::uint64_t> egress_bits_per_s;
  std::optional<std::uint64_t> ingress_bits_per_s;
};

/// The private IPv4 subnet an emulated cluster lives in; its addresses exist
/// only inside the testbed's network namespaces.
struct testbed_spec {
  std::string subnet = "10.213.0.0/24";
  std::uint32_t network = 0;  ///< host byte order
  int prefix_length = 24;
  /// The client namespace's address (`orrery testbed exec`): the subnet's
  /// first host address unless set.
  std::string client;
  /// The line of the `testbed:` key (of `nodes:` when the section is implied).
  int line = 0;
};

/// One node (= one process, one device) of the cluster and the layers it holds.
struct node_spec {
  std::string name;
  std::string host;
  /// The CAF control port the node publishes itself on.
  std::uint16_t port = 0;
  /// The data plane's TCP port (default: `port + 100`).
  std::uint16_t data_port = 0;
  /// `cpu` or `cuda:N`.
  std::string device = "cpu";
  /// What the node holds and computes its weights in: `dtype:`, by default
  /// fp32 on a CPU and bf16 on a GPU.
  element_type dtype = element_type::f32;
  /// The memory budget; empty means unlimited.
  std::optional<std::uint64_t> memory_bytes;
  int threads = 1;
  /// Set when the node runs emulated in `orrery testbed`.
  std::optional<emulation> emulate;
  /// The layer range `[first_layer, last_layer)` this node holds; empty
  /// until `placement: auto` is resolved (deploy/profiling/auto_placement.hpp), and
  /// empty for a node the automatic plan leaves out.
  int first_layer = 0;
  int last_layer = 0;
  /// `group:` nodes of one group run one stage together (tensor
  /// parallelism, Galaxy): they share its layers, each holding `slice` of
  /// every layer's heads and MLP columns, split in proportion to `speed:`.
  /// Empty: a stage of its own.
  std::string group;
  double speed = 1.0;
  tensor_slice slice;
  /// Bytes of weights (in `dtype`) the node's layers take (what is checked
  /// against `memory_bytes`); a group member's, of its slice.
  std::uint64_t weight_bytes = 0;
  /// The line of the node's entry in the topology file, for later messages.
  int line = 0;

  /// The bytes of weights of layers [first, last) of `model` in `dtype` (of
  /// its slice of them, for a group member).
  std::uint64_t weight_bytes_of(const compute::llama_config& model, int first, int last) const;
  /// `host:port`, the control address.
  std::string address() const;
  /// `node 'NAME' (host:port)`, for messages.
  std::string label() const;
};

/// A validated topology with its placement resolved.
struct topology {
  std::filesystem::path file;
  std::string cluster;
  /// The model directory, resolved against the topology file's directory.
  std::filesystem::path model;
  /// The model's config.json, as read while validating.
  compute::llama_config model_config;
  /// In pipeline order (sorted by `first_layer`); in file order while the
  /// placement is `auto` and unresolved.
  std::vector<node_spec> nodes;
  /// `placement: auto`: the planner places the layers from a profile.
  bool auto_placement = false;
  /// `objective:` of an automatic placement: `latency` or `throughput` for
  /// inference; `training` (what `orrery train` plans for whatever it says).
  std::string objective = "latency";
  /// `profile:` an automatic placement plans from, resolved against the
  /// topology's directory; empty: the profiler's cache (or a fresh profile).
  std::filesystem::path profile;
  /// Present when the topology has a `testbed:` section or an emulated node.
  std::optional<testbed_spec> testbed;
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds request_timeout{30000};
  /// Node heartbeats: how often, and how much silence is a death verdict.
  std::chrono::milliseconds heartbeat_interval{250};
  std::chrono::milliseconds heartbeat_deadline{1000};
  /// `rebalance: on_join`: a node that returns after a failure gets layers back.
  bool rebalance_on_join = false;
  /// `collectives:` how tensor-parallel groups add up their partial sums.
  group_collectives collectives{};
  int num_layers = 0;

  /// The node named `name`; throws topology_error naming the known nodes.
  const node_spec& node(const std::string& name) const;
};

/// The largest topology file load_topology reads. A node takes about 100
/// bytes of YAML, so 1 MiB holds some 10000 nodes; yaml-cpp's tree takes
/// about 70 times the file's bytes (a 50 MB file took 3.5 GB and 30 s before
/// its first error was reported), so this bounds a load to ~70 MB.
inline constexpr std::uint64_t max_topology_file_bytes = std::uint64_t{1} << 20;

/// Reads, parses and validates `file` and resolves its placement; throws
/// topology_error (`FILE:LINE: problem`) on the first problem found, and
/// `FILE: problem` for a file that is missing, not a regular file (a FIFO is
/// refused, never opened) or larger than max_topology_file_bytes.
topology load_topology(const std::filesystem::path& file);

/// As load_topology, from text: `file_for_messages` prefixes messages and is
/// the base a relative `model:` path resolves against.
topology parse_topology(const std::string& yaml_text, const std::filesystem::path& file_for_messages);

/// As load_topology, with `model:` replaced by `model` unless it is empty (the
/// placement is resolved for that model, so a memory budget it does not fit
/// is still an error). For benchmarks that take --model.
topology load_topology_for_model(const std::filesystem::path& file, const std::string& model);

/// `placement: even` over `nodes` nodes: `[first, last)` per node, earlier
/// nodes taking the remainder (7 layers over 3 nodes: [0,3), [3,5), [5,7)).
/// Needs 1 <= nodes <= layers.
std::vector<std::pair<int, int>> even_ranges(int layers, int nodes);

/// A group's slices of every layer's heads and MLP columns for members of
/// relative `speeds` (in the topology's order), as `group:` splits them; a
/// query head stays with its KV head. Throws compute::model_error when a
/// member would get no head.
std::vector<tensor_slice> group_slices(const compute::llama_config& config, const std::vector<double>& speeds);

/// `512.0 MiB`, `3 B`: a byte count in powers of 1024, as describe_placement
/// writes memory budgets.
std::string human_bytes(std::uint64_t bytes);

/// A multi-line human summary: one line per node with its address, data
/// port, device, layer range, weight bytes and memory budget.
std::string describe_placement(const topology& t);

}  // namespace orrery::deploy
