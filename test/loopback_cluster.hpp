#pragma once
// A tiny model and loopback topologies on free ports, for the suites that run
// real `orrery node` processes.

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "compute/model_init.hpp"
#include "test/temp_dir.hpp"

namespace orrery::test {

/// A port nothing listens on now and that this process has not handed out
/// before (the OS may offer a just-closed port twice).
inline std::uint16_t free_port() {
  static std::set<std::uint16_t> handed_out;
  for (;;) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    if (handed_out.insert(ntohs(address.sin_port)).second) return ntohs(address.sin_port);
  }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
inline bool accepts_connections(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  ::close(fd);
  return ok;
}

/// A topology of `ranges.size()` loopback nodes `n0`, `n1`, … on free ports,
/// in cluster `name`, serving the model `m` beside it.
/// `node_keys` (indented YAML lines, e.g. "    device: cuda:0\n") go into every node.
inline std::filesystem::path write_topology(const temp_dir& dir, const std::string& name,
                                            const std::vector<std::pair<int, int>>& ranges, int connect_ms = 3000,
                                            const std::string& node_keys = "") {
  auto path = dir / (name + ".yaml");
  std::ofstream out(path);
  out << "cluster: " << name << "\nmodel: m\nnodes:\n";
  for (std::size_t i = 0; i < ranges.size(); ++i)
    out << "  - name: n" << i << "\n    address: 127.0.0.1:" << free_port() << "\n    data_port: " << free_port()
        << "\n    threads: 1\n" << node_keys;
  out << "placement:\n";
  for (std::size_t i = 0; i < ranges.size(); ++i)
    out << "  n" << i << ": [" << ranges[i].first << ", " << ranges[i].second << "]\n";
  out << "timeouts:\n  connect_ms: " << connect_ms << "\n  request_ms: 20000\n  heartbeat_ms: 200\n";
  return path;
}

/// write_topology's `nodes` loopback nodes with `placement: auto` and
/// `objective`: the planner places the layers.
inline std::filesystem::path write_auto_topology(const temp_dir& dir, const std::string& name,
                                                 const std::string& objective, int nodes) {
  auto file = write_topology(dir, name, std::vector<std::pair<int, int>>(nodes, {0, 1}));
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  std::string yaml = text.str();
  auto placement = yaml.find("placement:");
  auto timeouts = yaml.find("timeouts:");
  yaml = yaml.substr(0, placement) + "placement: auto\nobjective: " + objective + "\n" + yaml.substr(timeouts);
  std::ofstream(file) << yaml;
  return file;
}

/// A topology of loopback nodes on free ports with `placement: even`: one
/// stage per entry of `stages`, a node `sK` for a speed list of one, else a
/// tensor-parallel group `gK` of nodes `gK-0`, `gK-1`, … at those speeds.
inline std::filesystem::path write_group_topology(const temp_dir& dir, const std::string& name,
                                                  const std::vector<std::vector<double>>& stages) {
  auto path = dir / (name + ".yaml");
  std::ofstream out(path);
  out << "cluster: " << name << "\nmodel: m\nnodes:\n";
  for (std::size_t k = 0; k < stages.size(); ++k)
    for (std::size_t m = 0; m < stages[k].size(); ++m) {
      const auto node = stages[k].size() == 1 ? "s" + std::to_string(k) : "g" + std::to_string(k) + "-" + std::to_string(m);
      out << "  - name: " << node << "\n    address: 127.0.0.1:" << free_port() << "\n    data_port: " << free_port()
          << "\n    threads: 1\n";
      if (stages[k].size() > 1) out << "    group: g" << k << "\n    speed: " << stages[k][m] << "\n";
    }
  out << "placement: even\ntimeouts:\n  connect_ms: 3000\n  request_ms: 20000\n  heartbeat_ms: 200\n";
  return path;
}

/// A temporary directory holding the `tiny` model as `m`.
struct model_fixture {
  temp_dir dir;
  model_fixture() { compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {13, 0, {}}); }
};

}  // namespace orrery::test
