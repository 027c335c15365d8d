// The topology file: every malformed case gets one `FILE:LINE: problem`
// error; valid files resolve their placement, defaults and model path.

#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>

#include "compute/model_init.hpp"
#include "deploy/cluster/topology.hpp"
#include "test/temp_dir.hpp"

using orrery::deploy::parse_topology;
using orrery::deploy::topology;
using orrery::deploy::topology_error;
using orrery::test::temp_dir;
namespace fs = std::filesystem;

namespace {

// Two nodes over a 4-layer model; each malformed case edits one line of it.
const std::string base_yaml = R"(cluster: demo
model: model
nodes:
  - name: a
    address: 127.0.0.1:7411
  - name: b
    address: 127.0.0.1:7412
placement: even
)";

std::string edit(const std::string& text, const std::string& from, const std::string& to) {
  auto at = text.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, "'" << from << "' is not in the test's YAML");
  return text.substr(0, at) + to + text.substr(at + from.size());
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// The `tiny` shape with `num_layers` layers; the topology reads only config.json.
void write_model_config(const fs::path& dir, int num_layers) {
  auto config = orrery::compute::llama_config::preset("tiny");
  config.num_layers = num_layers;
  fs::create_directories(dir);
  config.save(dir / "config.json");
}

// A preset's config.json alone, which is all a topology reads of its model.
void write_model_config_of(const fs::path& dir, const std::string& preset) {
  fs::create_directories(dir);
  orrery::compute::llama_config::preset(preset).save(dir / "config.json");
}

std::uint64_t weight_bytes(int num_layers, int first, int last) {
  auto config = orrery::compute::llama_config::preset("tiny");
  config.num_layers = num_layers;
  return static_cast<std::uint64_t>(config.parameter_count(first, last)) * 4;
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path) << text;
}

// A temp dir with a model at `model/` beside the topology file `cluster.yaml`.
struct cluster_dir {
  temp_dir dir;
  fs::path file = dir / "cluster.yaml";

  explicit cluster_dir(int num_layers = 4) { write_model_config(dir / "model", num_layers); }

  topology parse(const std::string& yaml) const { return parse_topology(yaml, file); }

  std::string error(const std::string& yaml) const {
    try {
      parse(yaml);
    } catch (const topology_error& e) {
      return e.what();
    }
    return "(no error)";
  }

  void check_error(const std::string& yaml, int line, const std::string& problem) const {
    std::string message = error(yaml);
    std::string prefix = file.string() + ":" + std::to_string(line) + ": ";
    CHECK(message.substr(0, prefix.size()) == prefix);
    CHECK_MESSAGE(contains(message, problem), message);
  }
};

std::vector<std::pair<int, int>> ranges(const topology& t) {
  std::vector<std::pair<int, int>> out;
  for (const auto& node : t.nodes) out.emplace_back(node.first_layer, node.last_layer);
  return out;
}

fs::path source_dir() {
  if (const char* dir = std::getenv("ORRERY_SOURCE_DIR")) return dir;
  return fs::path(__FILE__).parent_path().parent_path().parent_path();
}

}  // namespace

// -- malformed files -------------------------------------------------------------

TEST_CASE("an unknown key is named, with the closest known key, at every level") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "placement:", "placment:"), 8,
                "unknown key 'placment' in the topology (did you mean 'placement'? known: cluster, model, nodes, "
                "placement, objective, profile, timeouts, rebalance, testbed, collectives)");
  c.check_error(edit(base_yaml, "    address: 127.0.0.1:7412", "    address: 127.0.0.1:7412\n    thread: 2"), 8,
                "unknown key 'thread' in node 2 (did you mean 'threads'?");
  c.check_error(base_yaml + "timeouts:\n  connect_ms: 10\n  deadline_ms: 5\n", 11,
                "unknown key 'deadline_ms' in 'timeouts' (known: connect_ms, request_ms, heartbeat_ms, "
                "heartbeat_deadline_ms)");
}

TEST_CASE("a heartbeat deadline under two intervals and an unknown rebalance policy are named") {
  cluster_dir c;
  c.check_error(base_yaml + "timeouts:\n  heartbeat_ms: 400\n  heartbeat_deadline_ms: 500\n", 11,
                "heartbeat_deadline_ms (500) must be at least twice heartbeat_ms (400)");
  c.check_error(base_yaml + "timeouts:\n  heartbeat_ms: 600\n", 10,
                "heartbeat_deadline_ms (1000) must be at least twice heartbeat_ms (600)");
  c.check_error(base_yaml + "rebalance: sometimes\n", 9, "rebalance must be 'on_join' or 'never', got 'sometimes'");
}

TEST_CASE("collectives: sequence parallelism and tiles default to off and 1, are read, and bad values are named") {
  cluster_dir c;
  auto t = c.parse(base_yaml);
  CHECK_FALSE(t.collectives.sequence_parallel);
  CHECK(t.collectives.tiles == 1);
  auto given = c.parse(base_yaml + "collectives:\n  sequence_parallel: on\n  tiles: 4\n");
  CHECK(given.collectives.sequence_parallel);
  CHECK(given.collectives.tiles == 4);
  c.check_error(base_yaml + "collectives:\n  sequence_parallel: maybe\n", 10,
                "sequence_parallel must be 'on' or 'off', got 'maybe'");
  c.check_error(base_yaml + "collectives:\n  tiles: 0\n", 10, "tiles");
  c.check_error(base_yaml + "collectives:\n  tile: 2\n", 10, "unknown key 'tile' in 'collectives' (did you mean 'tiles'?");
}

TEST_CASE("a missing required key is named at the map that lacks it") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "cluster: demo\n", ""), 1, "missing required key 'cluster' in the topology");
  c.check_error(edit(base_yaml, "model: model\n", ""), 1, "missing required key 'model' in the topology");
  c.check_error("cluster: demo\nmodel: model\n", 1, "missing required key 'nodes' in the topology");
  c.check_error(edit(base_yaml, "    address: 127.0.0.1:7412\n", ""), 6, "missing required key 'address' in node 2");
  c.check_error(edit(base_yaml, "  - name: b\n    address", "  - address"), 6, "missing required key 'name' in node 2");
}

TEST_CASE("a value of the wrong type is named with what was found") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "cluster: demo", "cluster: [demo]"), 1,
                "'cluster' must be a non-empty string, got a list");
  c.check_error(edit(base_yaml, "cluster: demo", "cluster: \"\""), 1, "'cluster' must be a non-empty string, got ''");
  c.check_error("cluster: demo\nmodel: model\nnodes: 3\n", 3, "'nodes' must be a list of nodes, got '3'");
  c.check_error("cluster: demo\nmodel: model\nnodes: []\n", 3, "'nodes' is empty");
  c.check_error(edit(base_yaml, "  - name: b\n    address: 127.0.0.1:7412", "  - b"), 6, "node 2 must be a map, got 'b'");
  c.check_error(base_yaml + "timeouts: 5\n", 9, "'timeouts' must be a map, got '5'");
  c.check_error(base_yaml + "timeouts:\n  request_ms: soon\n", 10,
                "'request_ms' must be an integer in [1, 2147483647], got 'soon'");
  c.check_error(edit(base_yaml, "placement: even", "placement: [0, 4]"), 8,
                "placement must be 'even', 'auto' or a map of node name to layer range, got a list");
  c.check_error("- a\n- b\n", 1, "the topology must be a map, got a list");
  c.check_error("", 1, "the topology must be a map, got nothing");
}

TEST_CASE("duplicate node names and duplicate keys point at the second one") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "name: b", "name: a"), 6, "duplicate node name 'a' (first on line 4)");
  c.check_error(edit(base_yaml, "model: model", "model: model\ncluster: again"), 3,
                "duplicate key 'cluster' in the topology (first on line 1)");
  c.check_error(edit(base_yaml, "name: a", "name: a-1_x.y"), 4,
                "node name 'a-1_x.y' may only hold letters, digits, '_' and '-'");
}

TEST_CASE("a bad address names the address and what is wrong with it") {
  cluster_dir c;
  auto address = [&](const std::string& value) { return edit(base_yaml, "127.0.0.1:7412", value); };
  c.check_error(address("127.0.0.1"), 7, "address '127.0.0.1' has no port (expected host:port)");
  c.check_error(address(":7412"), 7, "address ':7412' has an empty host");
  c.check_error(address("host:0"), 7, "address 'host:0' has port '0', expected 1..65535");
  c.check_error(address("host:65536"), 7, "address 'host:65536' has port '65536', expected 1..65535");
  c.check_error(address("host:http"), 7, "address 'host:http' has port 'http', expected 1..65535");
  c.check_error(address("::1:7412"), 7, "write an IPv6 host in brackets, e.g. [::1]:7411");
  c.check_error(address("host:65500"), 7,
                "the default data port (control port + 100 = 65600) is out of range; set data_port");
}

TEST_CASE("ports that clash on one host are reported with both users") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "7412", "7411"), 7,
                "node 'b' control port 127.0.0.1:7411 clashes with node 'a' control port");
  c.check_error(edit(base_yaml, "7412", "7511"), 7,
                "node 'b' control port 127.0.0.1:7511 clashes with node 'a' data port");
  c.check_error(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    data_port: 7412"), 8,
                "node 'b' data port 127.0.0.1:7412 clashes with node 'b' control port");
  c.check_error(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    data_port: 0"), 8,
                "'data_port' must be an integer in [1, 65535], got '0'");
  // The same ports on different hosts do not clash.
  CHECK(c.parse(edit(base_yaml, "127.0.0.1:7412", "10.0.0.2:7411")).nodes.size() == 2);
}

TEST_CASE("a bad device, memory size or thread count is named") {
  cluster_dir c;
  auto node_b = [&](const std::string& line) { return edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    " + line); };
  for (auto device : {"gpu", "cuda", "cuda:x", "cuda:-1", "CPU"})
    c.check_error(node_b(std::string("device: ") + device), 8, "device '" + std::string(device) + "' is neither cpu nor cuda:N");
  for (auto memory : {"lots", "0", "2XB", "-1GiB", "1.2.3MB", "GiB"})
    c.check_error(node_b(std::string("memory: ") + memory), 8,
                  "memory '" + std::string(memory) + "' is not a size: write bytes (1073741824) or a number with B, KB");
  c.check_error(node_b("threads: 0"), 8, "'threads' must be an integer in [1, 2147483647], got '0'");
  c.check_error(node_b("threads: 1.5"), 8, "'threads' must be an integer in [1, 2147483647], got '1.5'");
}

TEST_CASE("an explicit placement must name known nodes and cover every layer once") {
  cluster_dir c;  // 4 layers
  auto placement = [](const std::string& map) { return edit(base_yaml, "placement: even", "placement:\n" + map); };
  c.check_error(placement("  a: [0, 2]\n  b: [2, 4]\n  x: [4, 5]\n"), 11,
                "unknown node 'x' in the placement (known: a, b)");
  c.check_error(placement("  a: [0, 2]\n  bb: [2, 4]\n"), 10, "unknown node 'bb' in the placement (known: a, b)");
  c.check_error(placement("  a: [0, 4]\n"), 8, "node 'b' has no layer range in the placement");
  c.check_error(placement("  a: [0, 3]\n  b: [2, 4]\n"), 10,
                "the layer range [2, 4) of node 'b' overlaps node 'a's [0, 3)");
  c.check_error(placement("  b: [2, 4]\n  a: [0, 1]\n"), 9, "layers [1, 2) are on no node");
  c.check_error(placement("  a: [1, 2]\n  b: [2, 4]\n"), 9, "layers [0, 1) are on no node");
  c.check_error(placement("  a: [0, 1]\n  b: [1, 3]\n"), 8, "layers [3, 4) are on no node");
  c.check_error(placement("  a: [0, 2]\n  b: [2, 5]\n"), 10,
                "the layer range [2, 5) of node 'b' is outside the model's layers [0, 4)");
  c.check_error(placement("  a: [-1, 2]\n  b: [2, 4]\n"), 9,
                "the layer range [-1, 2) of node 'a' is outside the model's layers [0, 4)");
  c.check_error(placement("  a: [2, 2]\n  b: [0, 4]\n"), 9, "the layer range [2, 2) of node 'a' is empty");
  c.check_error(placement("  a: [0, 2, 3]\n  b: [2, 4]\n"), 9,
                "the layers of node 'a' must be a range [first, last), e.g. [0, 4]");
  c.check_error(placement("  a: 2\n  b: [2, 4]\n"), 9, "the layers of node 'a' must be a range [first, last)");
  c.check_error(placement("  a: [0, 2]\n  a: [2, 4]\n"), 10, "duplicate node 'a' in the placement (first on line 9)");
}

TEST_CASE("even placement needs at least one layer per stage") {
  cluster_dir c(1);
  c.check_error(base_yaml, 8,
                "placement 'even' needs at least one layer per stage, but the model has 1 layer and the topology 2 stages");
  CHECK_FALSE(contains(c.error(base_yaml), "a group is one stage"));  // no group: nodes are the stages
  // Without a placement key the default (even) is reported at `nodes`.
  c.check_error(edit(base_yaml, "placement: even\n", ""), 3, "placement 'even' needs at least one layer per stage");
}

TEST_CASE("a YAML syntax error carries yaml-cpp's line") {
  cluster_dir c;
  c.check_error(edit(base_yaml, "127.0.0.1:7412", "[127.0.0.1:7412"), 8, "YAML syntax error: ");
  c.check_error(edit(base_yaml, "  - name: b", "  - name: b\n   oops: ["), 7, "YAML syntax error: ");
}

TEST_CASE("a missing model directory, a file, a directory without config.json or an unreadable config.json is named at `model`") {
  cluster_dir c;
  const auto nowhere = (c.dir / "nowhere").string();
  c.check_error(edit(base_yaml, "model: model", "model: nowhere"), 2,
                "model 'nowhere' (resolved to '" + nowhere + "') does not exist (`orrery model init --preset "
                "tiny|small|llama2-7b --out " + nowhere + "` creates one)");
  c.check_error(edit(base_yaml, "model: model", "model: /etc/passwd"), 2,
                "model '/etc/passwd' is a file, not a model directory (one holding config.json and the weights)");
  fs::create_directories(c.dir / "empty");
  c.check_error(edit(base_yaml, "model: model", "model: empty"), 2,
                "model 'empty' (resolved to '" + (c.dir / "empty").string() + "') has no config.json: it is not a model directory");
  write_file(c.dir / "broken" / "config.json", "{ not json");
  c.check_error(edit(base_yaml, "model: model", "model: broken"), 2, "config.json: not valid JSON");
}

TEST_CASE("a node whose layers do not fit its memory budget says how many bytes they need") {
  cluster_dir c;
  auto needed = weight_bytes(4, 2, 4);
  auto budget = std::to_string(needed - 1);
  c.check_error(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    memory: " + budget), 8,
                "node 'b' needs " + std::to_string(needed) + " bytes (");
  c.check_error(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    memory: 1KiB"), 8,
                "of fp32 weights for layers [2, 4) but its memory budget is 1024 bytes (1.0 KiB)");
  // Exactly enough fits.
  auto fits = c.parse(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    memory: " + std::to_string(needed)));
  CHECK(fits.node("b").weight_bytes == needed);
}

// -- valid files -----------------------------------------------------------------

TEST_CASE("even placement splits N layers over 1 to 4 nodes, earlier nodes taking the remainder") {
  cluster_dir c(7);
  using expected = std::vector<std::pair<int, int>>;
  const std::vector<expected> splits = {{{0, 7}},
                                        {{0, 4}, {4, 7}},
                                        {{0, 3}, {3, 5}, {5, 7}},
                                        {{0, 2}, {2, 4}, {4, 6}, {6, 7}}};
  std::string yaml = "cluster: demo\nmodel: model\nplacement: even\nnodes:\n";
  for (std::size_t n = 0; n < splits.size(); ++n) {
    yaml += "  - {name: n" + std::to_string(n) + ", address: 'localhost:" + std::to_string(7000 + n) + "'}\n";
    auto t = c.parse(yaml);
    CHECK(ranges(t) == splits[n]);
    CHECK(t.num_layers == 7);
    for (std::size_t i = 0; i < t.nodes.size(); ++i) {
      CHECK(t.nodes[i].name == "n" + std::to_string(i));
      CHECK(t.nodes[i].weight_bytes == weight_bytes(7, splits[n][i].first, splits[n][i].second));
    }
  }
  // As many nodes as layers: one each.
  cluster_dir two(2);
  CHECK(ranges(two.parse(base_yaml)) == expected{{0, 1}, {1, 2}});
}

TEST_CASE("an explicit placement is returned in pipeline order") {
  cluster_dir c(5);
  auto t = c.parse(edit(base_yaml, "placement: even", "placement: {b: [0, 1], a: [1, 5]}") +
                   "timeouts: {heartbeat_ms: 50}\n");
  REQUIRE(t.nodes.size() == 2);
  CHECK(t.nodes[0].name == "b");
  CHECK(t.nodes[1].name == "a");
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 1}, {1, 5}});
  CHECK(t.nodes[0].line == 6);
  CHECK(t.heartbeat_interval == std::chrono::milliseconds(50));
  CHECK(t.connect_timeout == std::chrono::milliseconds(3000));
}

TEST_CASE("defaults fill what a node and the timeouts leave out; given values are kept") {
  cluster_dir c;
  auto t = c.parse(edit(base_yaml, "placement: even\n", ""));
  const auto& a = t.node("a");
  CHECK(t.cluster == "demo");
  CHECK(a.host == "127.0.0.1");
  CHECK(a.port == 7411);
  CHECK(a.data_port == 7511);
  CHECK(a.device == "cpu");
  CHECK(!a.memory_bytes);
  CHECK(a.threads == 1);
  CHECK(a.address() == "127.0.0.1:7411");
  CHECK(t.connect_timeout == std::chrono::milliseconds(3000));
  CHECK(t.request_timeout == std::chrono::milliseconds(30000));
  CHECK(t.heartbeat_interval == std::chrono::milliseconds(250));
  CHECK(t.heartbeat_deadline == std::chrono::milliseconds(1000));
  CHECK(!t.rebalance_on_join);
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 2}, {2, 4}});

  auto given = c.parse(edit(base_yaml, "127.0.0.1:7412",
                            "'[::1]:7412'\n    data_port: 9000\n    device: cuda:1\n    memory: 1.5 GB\n    threads: 8") +
                       "timeouts:\n  connect_ms: 100\n  request_ms: 200\n  heartbeat_ms: 10\n  heartbeat_deadline_ms: 30\n"
                       "rebalance: on_join\n");
  const auto& b = given.node("b");
  CHECK(b.host == "::1");
  CHECK(b.address() == "[::1]:7412");
  CHECK(b.data_port == 9000);
  CHECK(b.device == "cuda:1");
  CHECK(b.memory_bytes == std::uint64_t{1500000000});
  CHECK(b.threads == 8);
  CHECK(given.connect_timeout == std::chrono::milliseconds(100));
  CHECK(given.request_timeout == std::chrono::milliseconds(200));
  CHECK(given.heartbeat_interval == std::chrono::milliseconds(10));
  CHECK(given.heartbeat_deadline == std::chrono::milliseconds(30));
  CHECK(given.rebalance_on_join);
}

TEST_CASE("memory sizes take bytes, decimal and binary units") {
  cluster_dir c;
  const std::vector<std::pair<std::string, std::uint64_t>> sizes = {
      {"123456789", 123456789}, {"2000000 B", 2000000},          {"2000KB", 2000000},      {"3 MB", 3000000},
      {"1GB", 1000000000},      {"1TB", 1000000000000}, {"2048KiB", 2ull << 20},     {"512MiB", 512ull << 20},
      {"2GiB", 2ull << 30},     {"1TiB", 1ull << 40},    {"0.5GiB", 1ull << 29}};
  for (const auto& [text, bytes] : sizes) {
    auto t = c.parse(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    memory: " + text));
    CHECK_MESSAGE(t.node("b").memory_bytes == bytes, text);
  }
}

TEST_CASE("a relative model path resolves against the topology file's directory") {
  cluster_dir c;
  write_file(c.dir / "topologies" / "mine.yaml", edit(base_yaml, "model: model", "model: ../model"));
  auto t = orrery::deploy::load_topology(c.dir / "topologies" / "mine.yaml");
  CHECK(t.model == c.dir / "model");
  CHECK(t.file == c.dir / "topologies" / "mine.yaml");

  auto absolute = c.parse(edit(base_yaml, "model: model", "model: " + (c.dir / "model").string()));
  CHECK(absolute.model == c.dir / "model");

  std::string missing = (c.dir / "none.yaml").string();
  std::string message = missing + ": cannot open the topology file: No such file or directory";
  CHECK_THROWS_WITH_AS(orrery::deploy::load_topology(missing), message.c_str(), topology_error);
}

TEST_CASE("a topology file that is not a regular file or is over 1 MiB is refused before it is read") {
  cluster_dir c;
  auto error_of = [](const fs::path& file) -> std::string {
    try {
      orrery::deploy::load_topology(file);
    } catch (const topology_error& e) {
      return e.what();
    }
    return "(no error)";
  };
  CHECK(error_of(c.dir.path()) == c.dir.path().string() + ": is a directory, not a regular file");
  // Exactly the limit is read (and parsed: a comment is no topology).
  write_file(c.dir / "limit.yaml", std::string(orrery::deploy::max_topology_file_bytes, '#'));
  CHECK(contains(error_of(c.dir / "limit.yaml"), "the topology must be a map"));
  write_file(c.dir / "big.yaml", std::string(orrery::deploy::max_topology_file_bytes + 1, '#'));
  CHECK(error_of(c.dir / "big.yaml") == (c.dir / "big.yaml").string() +
                                            ": the topology file has 1048577 bytes (1.0 MiB), more than the 1.0 MiB a "
                                            "topology file may have");
  // load_topology_for_model (the benchmarks' --model) reads through the same check.
  CHECK_THROWS_WITH_AS(orrery::deploy::load_topology_for_model(c.dir / "big.yaml", (c.dir / "model").string()),
                       error_of(c.dir / "big.yaml").c_str(), topology_error);
}

TEST_CASE("a host that does not resolve is named with its node and line") {
  cluster_dir c;
  auto message = c.error(edit(base_yaml, "127.0.0.1:7412", "foo.invalid:7412"));
  CHECK(message.rfind(c.file.string() + ":7: node 'b': cannot resolve host 'foo.invalid': ", 0) == 0);
  // Names and addresses that resolve are accepted.
  CHECK(c.parse(edit(base_yaml, "127.0.0.1:7412", "localhost:7412")).node("b").host == "localhost");
  CHECK(c.parse(edit(base_yaml, "127.0.0.1:7412", "'[::1]:7412'")).node("b").host == "::1");
}

TEST_CASE("node() finds a node by name or names the known ones") {
  cluster_dir c;
  auto t = c.parse(base_yaml);
  CHECK(t.node("b").port == 7412);
  std::string message = c.file.string() + ": no node named 'c' (nodes: a, b)";
  CHECK_THROWS_WITH_AS(t.node("c"), message.c_str(), topology_error);
}

TEST_CASE("describe_placement lists every node with its address, device, layers and bytes") {
  cluster_dir c;
  auto t = c.parse(edit(base_yaml, "127.0.0.1:7412", "127.0.0.1:7412\n    memory: 2GiB"));
  auto text = orrery::deploy::describe_placement(t);
  CHECK(contains(text, "cluster demo: " + (c.dir / "model").string() + ", 4 layers over 2 nodes\n"));
  CHECK(contains(text, "a     127.0.0.1:7411  7511   cpu     [0, 2)"));
  CHECK(contains(text, "b     127.0.0.1:7412  7512   cpu     [2, 4)"));
  CHECK(contains(text, "unlimited\n"));
  CHECK(contains(text, "2.0 GiB\n"));
}

TEST_CASE("the bundled demo4.yaml parses over a freshly initialised model") {
  // The repository's layout in a temp dir: the topology under
  // deploy/topologies/ names ../models/kjv-tiny (the shipped model, of the
  // tiny shape), whose 4 layers go one per node.
  temp_dir repo;
  orrery::compute::init_model(repo / "deploy" / "models" / "kjv-tiny", orrery::compute::llama_config::preset("tiny"),
                              {0, 0, {}});
  std::ifstream in(source_dir() / "deploy" / "topologies" / "demo4.yaml");
  REQUIRE(in);
  std::string yaml((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write_file(repo / "deploy" / "topologies" / "demo4.yaml", yaml);

  auto t = orrery::deploy::load_topology(repo / "deploy" / "topologies" / "demo4.yaml");
  CHECK(t.cluster == "demo4");
  CHECK(t.model == repo / "deploy" / "models" / "kjv-tiny");
  REQUIRE(t.nodes.size() == 4);
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 1}, {1, 2}, {2, 3}, {3, 4}});
  for (int i = 0; i < 4; ++i) {
    CHECK(t.nodes[i].host == "127.0.0.1");
    CHECK(t.nodes[i].port == 7411 + i);
    CHECK(t.nodes[i].threads == 1);
    CHECK(t.nodes[i].device == "cpu");
    CHECK(!t.nodes[i].memory_bytes);
  }
}

TEST_CASE("every bundled topology parses wherever the working directory is, its model beside the repository's") {
  temp_dir repo, elsewhere;
  for (const char* preset : {"tiny", "small"}) write_model_config_of(repo / "models" / preset, preset);
  write_model_config_of(repo / "deploy" / "models" / "kjv-tiny", "tiny");  // the shipped model demo4.yaml names
  fs::create_directories(repo / "deploy" / "topologies");
  {
    // Back where it was even when a load throws.
    struct working_directory {
      fs::path previous = fs::current_path();
      explicit working_directory(const fs::path& dir) { fs::current_path(dir); }
      ~working_directory() { fs::current_path(previous); }
    } in_elsewhere(elsewhere.path());
    for (const char* name : {"demo4.yaml", "testbed4.yaml", "testbed4-equal.yaml", "group2.yaml", "cluster.yaml"}) {
      CAPTURE(name);
      fs::copy_file(source_dir() / "deploy" / "topologies" / name, repo / "deploy" / "topologies" / name);
      auto t = orrery::deploy::load_topology(repo / "deploy" / "topologies" / name);
      CHECK(t.model.parent_path() == (std::string(name) == "demo4.yaml" ? repo / "deploy" / "models" : repo / "models"));
    }
  }
  auto cluster = orrery::deploy::load_topology(repo / "deploy" / "topologies" / "cluster.yaml");
  CHECK(cluster.node("gpu-box").device == "cuda:0");
}

// -- emulated nodes, the testbed subnet, automatic placement -----------------------

namespace {

// Two emulated nodes in the default testbed subnet.
const std::string testbed_yaml = R"(cluster: edge
model: model
nodes:
  - name: a
    address: 10.213.0.11:7411
    emulate: {device: rpi5, cpu: 0.3}
  - name: b
    address: 10.213.0.12:7411
    emulate: {cpu: 0.25, memory: 512MiB, egress: 100mbit, ingress: 1.5 Gbit/s}
)";

}  // namespace

TEST_CASE("emulate blocks: a preset fills in what explicit keys leave out") {
  cluster_dir c;
  auto t = c.parse(testbed_yaml);
  REQUIRE(t.testbed);
  CHECK(t.testbed->subnet == "10.213.0.0/24");
  CHECK(t.testbed->client == "10.213.0.1");
  const auto& a = *t.node("a").emulate;
  CHECK(a.preset == "rpi5");
  CHECK(*a.cpu_share == doctest::Approx(0.3));  // written out: the preset's share is overridden
  CHECK(*a.memory_bytes == 7'000'000'000ull);   // the catalog's usable memory of a Pi 5
  CHECK(*a.egress_bits_per_s == 1'000'000'000ull);
  const auto& b = *t.node("b").emulate;
  CHECK(b.preset.empty());
  CHECK(*b.cpu_share == doctest::Approx(0.25));
  CHECK(*b.memory_bytes == 512ull << 20);
  CHECK(*b.egress_bits_per_s == 100'000'000ull);
  CHECK(*b.ingress_bits_per_s == 1'500'000'000ull);
  // A Jetson by its full name; a Pi 5 streams weights at about half this machine's core.
  auto nano = c.parse(edit(testbed_yaml, "{device: rpi5, cpu: 0.3}", "{device: jetson-nano}"));
  CHECK(*nano.node("a").emulate->cpu_share == doctest::Approx(1.0));
  auto pi = c.parse(edit(testbed_yaml, "{device: rpi5, cpu: 0.3}", "{device: rpi5}"));
  CHECK(*pi.node("a").emulate->cpu_share == doctest::Approx(17.1e9 * 0.37 / 13e9));
}

TEST_CASE("bad emulate values and testbed addresses are named") {
  cluster_dir c;
  c.check_error(edit(testbed_yaml, "device: rpi5", "device: rpi9"), 6, "unknown device preset 'rpi9' (did you mean 'rpi5'?");
  c.check_error(edit(testbed_yaml, "cpu: 0.25", "cpu: fast"), 9, "'cpu' must be a fraction of one core");
  c.check_error(edit(testbed_yaml, "cpu: 0.25", "cpu: 0"), 9, "'cpu' must be a fraction of one core");
  c.check_error(edit(testbed_yaml, "egress: 100mbit", "egress: 100 furlongs"), 9,
                "'egress' '100 furlongs' is not a link rate");
  c.check_error(edit(testbed_yaml, "emulate: {cpu: 0.25", "emulate: {cores: 1, cpu: 0.25"), 9,
                "unknown key 'cores' in 'emulate'");
  c.check_error(edit(testbed_yaml, "10.213.0.12", "127.0.0.1"), 8,
                "node 'b' host 127.0.0.1 is not a host address of the testbed subnet 10.213.0.0/24");
  c.check_error(edit(testbed_yaml, "10.213.0.12:7411", "10.213.0.11:7412"), 8,
                "node 'b' host 10.213.0.11 is already node 'a''s");
  c.check_error(edit(testbed_yaml, "10.213.0.12", "10.213.0.1"), 8, "is already the testbed client's");
  c.check_error(edit(testbed_yaml, "10.213.0.12", "10.213.0.255"), 8, "is not a host address of the testbed subnet");
  c.check_error(testbed_yaml + "testbed: {subnet: 10.9.0.0/33}\n", 10, "subnet '10.9.0.0/33' must be an IPv4 network");
  c.check_error(testbed_yaml + "testbed: {subnet: 10.213.0.1/24}\n", 10, "has host bits set (the network is 10.213.0.0/24)");
  c.check_error(testbed_yaml + "testbed: {client: 10.99.0.1}\n", 10, "testbed client '10.99.0.1' is not a host address");
  auto custom = c.parse(testbed_yaml + "testbed: {subnet: 10.213.0.0/16, client: 10.213.9.9}\n");
  CHECK(custom.testbed->client == "10.213.9.9");
  CHECK(custom.testbed->prefix_length == 16);
  // Without emulate blocks and a testbed section there is no testbed.
  CHECK_FALSE(c.parse(base_yaml).testbed);
}

TEST_CASE("placement auto leaves the layers to the planner; objective and profile belong to it") {
  cluster_dir c;
  auto t = c.parse(edit(base_yaml, "placement: even", "placement: auto\nobjective: throughput\nprofile: p.json"));
  CHECK(t.auto_placement);
  CHECK(t.objective == "throughput");
  CHECK(t.profile == c.dir / "p.json");
  for (const auto& n : t.nodes) CHECK(n.first_layer == n.last_layer);
  CHECK(t.nodes.front().name == "a");  // file order: the first node is the source
  CHECK(c.parse(edit(base_yaml, "placement: even", "placement: auto")).objective == "latency");
  c.check_error(edit(base_yaml, "placement: even", "placement: auto\nobjective: speed"), 9,
                "objective must be 'latency', 'throughput' or 'training', got 'speed'");
  c.check_error(base_yaml + "objective: latency\n", 9, "'objective' only applies to 'placement: auto'");
  c.check_error(base_yaml + "profile: p.json\n", 9, "'profile' only applies to 'placement: auto'");
}

TEST_CASE("a node's dtype defaults to fp32 on a CPU and bf16 on a GPU, sets its weight bytes, and is checked") {
  cluster_dir c;
  auto gpu = edit(base_yaml, "    address: 127.0.0.1:7412\n", "    address: 127.0.0.1:7412\n    device: cuda:0\n");
  auto t = c.parse(gpu);
  CHECK(t.nodes[0].dtype == orrery::element_type::f32);
  CHECK(t.nodes[1].dtype == orrery::element_type::bf16);
  CHECK(t.nodes[0].weight_bytes == weight_bytes(4, 0, 2));
  CHECK(t.nodes[1].weight_bytes == weight_bytes(4, 2, 4) / 2);
  auto fp16 = edit(base_yaml, "    address: 127.0.0.1:7411\n", "    address: 127.0.0.1:7411\n    dtype: fp16\n");
  CHECK(c.parse(fp16).nodes[0].dtype == orrery::element_type::f16);
  c.check_error(edit(base_yaml, "    address: 127.0.0.1:7411\n", "    address: 127.0.0.1:7411\n    dtype: q4\n"), 6,
                "dtype 'q4' is not one of fp32, fp16, bf16");
}

// -- tensor-parallel groups: `group:` and `speed:` -------------------------------

namespace {

// A group of two (a, b) and a plain node c over the tiny model: 4 layers, 4
// attention heads reading 2 KV heads (2 query heads each), 352 MLP columns.
const std::string group_yaml = R"(cluster: tp
model: model
nodes:
  - name: a
    address: 127.0.0.1:7411
    group: g
  - name: b
    address: 127.0.0.1:7412
    group: g
  - name: c
    address: 127.0.0.1:7413
placement: even
)";

// `count` nodes n0, n1, ... all in group g.
std::string one_group_yaml(int count) {
  std::string yaml = "cluster: tp\nmodel: model\nnodes:\n";
  for (int i = 0; i < count; ++i)
    yaml += "  - {name: n" + std::to_string(i) + ", address: '127.0.0.1:" + std::to_string(7411 + i) + "', group: g}\n";
  return yaml;
}

// The members' slices must cut every layer into contiguous, non-empty pieces
// that cover each query head and each MLP column exactly once, each with the
// KV heads its query heads read (tiny: query head q reads KV head q / 2).
void check_partition(const topology& t, const std::vector<std::string>& members) {
  int head = 0, column = 0;
  for (const auto& name : members) {
    CAPTURE(name);
    const auto& s = t.node(name).slice;
    CHECK(s.head_begin == head);
    CHECK(s.heads() >= 1);
    CHECK(s.kv_head_begin == s.head_begin / 2);
    CHECK(s.kv_head_end == (s.head_end + 1) / 2);
    CHECK(s.column_begin == column);
    CHECK(s.columns() >= 1);
    head = s.head_end;
    column = s.column_end;
  }
  CHECK(head == 4);
  CHECK(column == 352);
}

}  // namespace

TEST_CASE("even placement counts a group as one stage; its members share the stage's layers") {
  cluster_dir c;
  auto t = c.parse(group_yaml);
  REQUIRE(t.nodes.size() == 3);
  CHECK(t.nodes[0].name == "a");
  CHECK(t.nodes[1].name == "b");
  CHECK(t.nodes[2].name == "c");
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 2}, {0, 2}, {2, 4}});
  CHECK(t.node("a").group == "g");
  CHECK(t.node("b").group == "g");
  CHECK(t.node("c").group.empty());
  CHECK(t.node("a").speed == 1.0);  // the default
  // Equal speeds: an even split, each member one KV head and its two query heads.
  CHECK(t.node("a").slice.describe() == "heads [0, 2) (kv [0, 1)), columns [0, 176), vocab [0, 256)");
  CHECK(t.node("b").slice.describe() == "heads [2, 4) (kv [1, 2)), columns [176, 352), vocab [256, 512)");
  check_partition(t, {"a", "b"});
  // A plain node's slice is left as it was (unused).
  CHECK(t.node("c").slice == orrery::tensor_slice{});

  // A group's members need not be next to each other in the file: the group
  // is a stage at its first member's place, and the members come out together.
  auto apart = c.parse(edit(edit(group_yaml, "    address: 127.0.0.1:7412\n    group: g\n", "    address: 127.0.0.1:7412\n"),
                            "    address: 127.0.0.1:7413\n", "    address: 127.0.0.1:7413\n    group: g\n"));
  REQUIRE(apart.nodes.size() == 3);
  CHECK(apart.nodes[0].name == "a");
  CHECK(apart.nodes[1].name == "c");
  CHECK(apart.nodes[2].name == "b");
  CHECK(ranges(apart) == std::vector<std::pair<int, int>>{{0, 2}, {0, 2}, {2, 4}});
  CHECK(apart.node("c").slice.describe() == "heads [2, 4) (kv [1, 2)), columns [176, 352), vocab [256, 512)");

  // A group of one is a stage of one holding the whole layer.
  auto alone = c.parse(one_group_yaml(1));
  CHECK(ranges(alone) == std::vector<std::pair<int, int>>{{0, 4}});
  CHECK(alone.node("n0").slice == orrery::tensor_slice{0, 4, 0, 2, 0, 352, 0, 512});
  CHECK(alone.node("n0").weight_bytes == weight_bytes(4, 0, 4));
}

TEST_CASE("even placement needs a layer per stage, a group counting once") {
  cluster_dir one(1);
  one.check_error(group_yaml, 12,
                  "placement 'even' needs at least one layer per stage, but the model has 1 layer and the topology 2 "
                  "stages (a group is one stage)");
  // The group and the plain node as one stage each: two layers are enough for three nodes.
  cluster_dir two(2);
  CHECK(ranges(two.parse(group_yaml)) == std::vector<std::pair<int, int>>{{0, 1}, {0, 1}, {1, 2}});
}

TEST_CASE("a group's heads and MLP columns are split by speed, every member getting at least one of each") {
  cluster_dir c;
  auto speeds = [&](const std::string& a, const std::string& b) {
    return c.parse(edit(edit(group_yaml, "    group: g\n  - name: b", "    group: g\n    speed: " + a + "\n  - name: b"),
                        "127.0.0.1:7412\n    group: g\n", "127.0.0.1:7412\n    group: g\n    speed: " + b + "\n"));
  };
  {
    // 1:2. Min-max counting every unit: the heads go 1:3 (b finishes its 3
    // at 1.5 of a's units, 2:2 would take 2), b from inside a's KV group;
    // the columns 117:235 (117.5 against 118 for 118:234).
    auto t = speeds("1", "2");
    CHECK(t.node("a").speed == 1.0);
    CHECK(t.node("b").speed == 2.0);
    CHECK(t.node("a").slice.describe() == "heads [0, 1) (kv [0, 1)), columns [0, 117), vocab [0, 170)");
    CHECK(t.node("b").slice.describe() == "heads [1, 4) (kv [0, 2)), columns [117, 352), vocab [170, 512)");
    CHECK(t.node("b").slice.columns() > t.node("a").slice.columns());
    check_partition(t, {"a", "b"});
  }
  {
    // 1:3: b takes 3 of the 4 heads, from inside a's KV group, so both
    // members hold KV head 0; the columns go exactly 88:264.
    auto t = speeds("1", "3");
    CHECK(t.node("a").slice.describe() == "heads [0, 1) (kv [0, 1)), columns [0, 88), vocab [0, 128)");
    CHECK(t.node("b").slice.describe() == "heads [1, 4) (kv [0, 2)), columns [88, 352), vocab [128, 512)");
    check_partition(t, {"a", "b"});
  }
  {
    // Only the ratio counts, and the faster may come first.
    auto t = speeds("6", "2");
    CHECK(t.node("a").slice.describe() == "heads [0, 3) (kv [0, 2)), columns [0, 264), vocab [0, 384)");
    CHECK(t.node("b").slice.describe() == "heads [3, 4) (kv [1, 2)), columns [264, 352), vocab [384, 512)");
    check_partition(t, {"a", "b"});
  }
  {
    // The extremes of the range: the slow member still gets one head and one column.
    auto t = speeds("0.01", "1e6");
    CHECK(t.node("a").speed == 0.01);
    CHECK(t.node("b").speed == 1e6);
    CHECK(t.node("a").slice.describe() == "heads [0, 1) (kv [0, 1)), columns [0, 1), vocab [0, 1)");
    CHECK(t.node("b").slice.describe() == "heads [1, 4) (kv [0, 2)), columns [1, 352), vocab [1, 512)");
    check_partition(t, {"a", "b"});
  }
}

TEST_CASE("a group of three: the first member takes the head and the column left over") {
  cluster_dir c;
  auto t = c.parse(one_group_yaml(3));
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 4}, {0, 4}, {0, 4}});
  CHECK(t.node("n0").slice.describe() == "heads [0, 2) (kv [0, 1)), columns [0, 118), vocab [0, 172)");
  CHECK(t.node("n1").slice.describe() == "heads [2, 3) (kv [1, 2)), columns [118, 235), vocab [172, 342)");
  CHECK(t.node("n2").slice.describe() == "heads [3, 4) (kv [1, 2)), columns [235, 352), vocab [342, 512)");
  check_partition(t, {"n0", "n1", "n2"});
  // 1:2:1: the middle member takes the extra head and twice the columns.
  auto middle = c.parse(edit(one_group_yaml(3), "7412', group: g}", "7412', group: g, speed: 2}"));
  CHECK(middle.node("n0").slice.describe() == "heads [0, 1) (kv [0, 1)), columns [0, 88), vocab [0, 128)");
  CHECK(middle.node("n1").slice.describe() == "heads [1, 3) (kv [0, 2)), columns [88, 264), vocab [128, 384)");
  CHECK(middle.node("n2").slice.describe() == "heads [3, 4) (kv [1, 2)), columns [264, 352), vocab [384, 512)");
  check_partition(middle, {"n0", "n1", "n2"});
  // As many members as heads: one head each.
  auto four = c.parse(one_group_yaml(4));
  for (int i = 0; i < 4; ++i) {
    CAPTURE(i);
    const auto& s = four.node("n" + std::to_string(i)).slice;
    CHECK(s.head_begin == i);
    CHECK(s.head_end == i + 1);
    CHECK(s.columns() == 88);
  }
  check_partition(four, {"n0", "n1", "n2", "n3"});
}

TEST_CASE("an explicit placement gives a group's members the same layers") {
  cluster_dir c;
  auto placement = [](const std::string& map) { return edit(group_yaml, "placement: even", "placement:\n" + map); };
  auto t = c.parse(placement("  c: [0, 1]\n  b: [1, 4]\n  a: [1, 4]\n"));
  REQUIRE(t.nodes.size() == 3);
  CHECK(t.nodes[0].name == "c");
  CHECK(t.nodes[1].name == "a");  // the group's members stay in file order: a leads
  CHECK(t.nodes[2].name == "b");
  CHECK(ranges(t) == std::vector<std::pair<int, int>>{{0, 1}, {1, 4}, {1, 4}});
  CHECK(t.node("a").slice.describe() == "heads [0, 2) (kv [0, 1)), columns [0, 176), vocab [0, 256)");

  c.check_error(placement("  a: [0, 2]\n  b: [0, 3]\n  c: [2, 4]\n"), 14,
                "node 'b' of group 'g' holds layers [0, 3) but node 'a' of the same group holds [0, 2): a group's members "
                "share its layers");
  // Named at the member that differs from the group's first, wherever the map lists it.
  c.check_error(placement("  b: [2, 4]\n  c: [0, 2]\n  a: [0, 2]\n"), 13,
                "node 'b' of group 'g' holds layers [2, 4) but node 'a' of the same group holds [0, 2)");
  // The group covers its layers once, however many members share them.
  c.check_error(placement("  a: [0, 2]\n  b: [0, 2]\n  c: [1, 4]\n"), 15,
                "the layer range [1, 4) of node 'c' overlaps node 'a's [0, 2)");
  c.check_error(placement("  a: [0, 2]\n  b: [0, 2]\n  c: [3, 4]\n"), 15, "layers [2, 3) are on no node");
}

TEST_CASE("speed needs a group and a number in [0.01, 1e6]") {
  cluster_dir c;
  c.check_error(edit(group_yaml, "127.0.0.1:7413\n", "127.0.0.1:7413\n    speed: 2\n"), 12,
                "'speed' splits a group's work, but node 'c' has no 'group'");
  auto speed_of_a = [&](const std::string& value) {
    return edit(group_yaml, "    group: g\n  - name: b", "    group: g\n    speed: " + value + "\n  - name: b");
  };
  for (auto bad : {"0", "-1", "fast", "0.009", "1000001", "2x", "nan", "inf"}) {
    CAPTURE(bad);
    c.check_error(speed_of_a(bad), 7,
                  "'speed' must be a node's compute speed relative to its group, in [0.01, 1e6] (2 is twice as fast), "
                  "got '" + std::string(bad) + "'");
  }
  c.check_error(speed_of_a("[1, 2]"), 7, "'speed' must be a node's compute speed relative to its group, in [0.01, 1e6] "
                                         "(2 is twice as fast), got a list");
  c.check_error(edit(group_yaml, "    group: g\n  - name: b", "    group: \"\"\n  - name: b"), 6,
                "'group' must be a non-empty string, got ''");
  c.check_error(edit(group_yaml, "    group: g\n  - name: b", "    group: g\n    sped: 2\n  - name: b"), 7,
                "unknown key 'sped' in node 1 (did you mean 'speed'? known: name, address, data_port, device, dtype, "
                "memory, threads, emulate, group, speed)");
}

TEST_CASE("a group with more members than the model has attention heads is refused") {
  cluster_dir c;  // tiny: 4 heads
  c.check_error(one_group_yaml(5), 4, "group 'g' has 5 nodes but the model only 4 attention heads: every member needs one");
  CHECK(c.parse(one_group_yaml(4)).nodes.size() == 4);
}

TEST_CASE("placement auto with a group is refused, naming the group") {
  cluster_dir c;
  // c (no group) comes first: the error points at the first member's `group:`.
  auto yaml = edit(edit(group_yaml, "placement: even", "placement: auto"), "  - name: a", "  - name: c0\n    address: 127.0.0.1:7414\n  - name: a");
  c.check_error(yaml, 8,
                "placement 'auto' forms its own groups from the nodes: give group 'g' its layers with placement "
                "'even' or a map of layer ranges");
  // Without a group auto is accepted as before.
  CHECK(c.parse(edit(base_yaml, "placement: even", "placement: auto")).auto_placement);
}

TEST_CASE("a group member's memory budget is checked against its slice, its rows of the LM head included") {
  cluster_dir c;
  // a's slice of layers [0, 2): 2 × (2·128·2·32 q,o + 2·128·1·32 k,v + 3·128·176 MLP + 2·128 norms)
  // + 512·128 embedding = 250368 parameters, 1001472 bytes in fp32. Layers [0, 2) whole: 1738752 bytes.
  const std::uint64_t slice = 1001472;
  REQUIRE(weight_bytes(4, 0, 2) == 1738752);
  auto budget = [&](std::uint64_t bytes) {
    return edit(group_yaml, "127.0.0.1:7411\n", "127.0.0.1:7411\n    memory: " + std::to_string(bytes) + "\n");
  };
  auto t = c.parse(budget(slice));
  CHECK(t.node("a").weight_bytes == slice);
  CHECK(t.node("b").weight_bytes == slice);  // every member of the first stage holds the embedding
  CHECK(t.node("c").weight_bytes == weight_bytes(4, 2, 4));
  c.check_error(budget(slice - 1), 6,
                "node 'a' needs 1001472 bytes (978.0 KiB) of fp32 weights for layers [0, 2) but its memory budget is "
                "1001471 bytes");

  // The group last: each member holds the final norm and its half of the
  // LM head's 512 rows (128 + 256·128 parameters).
  auto last = c.parse(edit(edit(group_yaml, "placement: even", "placement: {c: [0, 2], a: [2, 4], b: [2, 4]}"),
                           "127.0.0.1:7412\n", "127.0.0.1:7412\n    device: cuda:0\n"));
  CHECK(last.node("a").weight_bytes == (184832 + 32896) * 4);
  CHECK(last.node("b").weight_bytes == (184832 + 32896) * 2);  // bf16 on a GPU
}

TEST_CASE("describe_placement names each member's group and slice") {
  cluster_dir c;
  auto text = orrery::deploy::describe_placement(c.parse(group_yaml));
  CHECK(contains(text, "4 layers over 3 nodes\n"));
  CHECK(contains(text, "a     127.0.0.1:7411  7511   cpu     [0, 2)"));
  CHECK(contains(text, "unlimited  group g: heads [0, 2) (kv [0, 1)), columns [0, 176), vocab [0, 256)\n"));
  CHECK(contains(text, "unlimited  group g: heads [2, 4) (kv [1, 2)), columns [176, 352), vocab [256, 512)\n"));
  // A plain node's line ends at its budget.
  CHECK(contains(text, "c     127.0.0.1:7413  7513   cpu     [2, 4)"));
  auto c_line = text.substr(text.find("c     127.0.0.1:7413"));
  CHECK(c_line.substr(0, c_line.find('\n')).find("group") == std::string::npos);
}
