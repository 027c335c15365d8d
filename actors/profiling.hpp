#pragma once
// The node's side of `orrery profile`: timing the model's layers on the
// node's device, measuring its data-plane links to other nodes, and counting
// the probe bytes other nodes send it. Timing and probing take seconds, so
// each runs in a detached worker actor the node delegates the request to: the
// node actor itself keeps answering and heartbeating meanwhile.
//
// A link is measured from the sending node: probe frames go over the data
// plane to the peer's probe sink (messages/types.hpp probe_stage), and the
// peer's node answers a `probe_expect` request once all of a probe's bytes
// have arrived. Latency is half the round trip of a 4-byte probe; bandwidth is
// the bytes of a bulk probe over its time less that one-way latency, with the
// probe grown until it lasts long enough to see the link's rate rather than
// its queue.

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/response_promise.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace orrery::messages {
class data_plane;
}

namespace orrery::actors {

/// Spawns a worker that answers one layer_timing_request with a
/// layer_timing_report (compute/layer_timing.hpp) and exits.
/// `memory_budget` 0 means none.
caf::actor spawn_layer_timer(caf::actor_system& system, std::string node, std::string device, int threads,
                             std::uint64_t memory_budget);

/// Spawns a worker that answers one link_probe with a link_measurement and exits.
caf::actor spawn_link_prober(caf::actor_system& system, std::shared_ptr<messages::data_plane> plane);

/// Bytes of a node's incoming probes, and the requests waiting for them.
class probe_sink {
 public:
  /// Records `bytes` of probe `id`; completes its request when all are in.
  void received(std::uint64_t id, std::uint64_t bytes);
  /// A request for probe `id` to complete once `bytes` have arrived.
  void expect(std::uint64_t id, std::uint64_t bytes, caf::response_promise promise);

 private:
  struct probe {
    std::uint64_t received = 0;
    std::uint64_t expected = 0;
    caf::response_promise promise;
    bool waiting = false;
  };
  void complete_if_done(std::uint64_t id);
  std::map<std::uint64_t, probe> probes_;
};

}  // namespace orrery::actors
