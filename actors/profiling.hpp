#pragma once
// The node's side of `orrery profile`: timing the model's layers on the
// node's device, measuring its data-plane links to other nodes, and answering
// the link probes of other nodes. Timing and probing take seconds, so
// each runs in a detached worker actor the node delegates the request to: the
// node actor itself keeps answering and heartbeating meanwhile.
//
// A link is measured from the sending node, over the data plane alone: probe
// frames (a probe route, messages/frame.hpp) carry the sender's data port, the
// peer's node answers each with a 4-byte frame to it, and the sender's node
// counts the answers for the prober waiting on them (a `probe_expect` request
// inside its own process: no actor of another node is involved). Latency is
// half the round trip of a 4-byte probe; bandwidth is the bytes of a bulk
// probe over its time less that one-way latency, the probe grown until it
// lasts long enough to see the link's rate rather than its queue.

#include <caf/actor_system.hpp>
#include <caf/typed_response_promise.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "actors/interfaces.hpp"

namespace orrery::messages {
class data_plane;
class link;
}

namespace orrery::actors {

/// Answers a probe frame: a 4-byte frame back to where it came from. Links
/// are kept per address, since a probe's frames all come from one sender.
class probe_responder {
 public:
  explicit probe_responder(std::shared_ptr<messages::data_plane> plane) : plane_(std::move(plane)) {}
  /// Throws messages::data_plane_error when the sender cannot be reached.
  void answer(std::uint64_t id, const std::string& host, std::uint16_t port);

 private:
  std::shared_ptr<messages::data_plane> plane_;
  std::map<std::string, std::shared_ptr<messages::link>> links_;
};

/// Spawns a worker that answers one layer_timing_request with a
/// layer_timing_report (compute/layer_timing.hpp) and exits.
/// `memory_budget` 0 means none.
layer_timer_actor spawn_layer_timer(caf::actor_system& system, std::string node, std::string device, std::string dtype,
                                    int threads, std::uint64_t memory_budget);

/// Spawns a worker that answers one link_probe with a link_measurement and
/// exits; `node` is the node actor of `plane`, which counts the answers.
link_prober_actor spawn_link_prober(caf::actor_system& system, std::shared_ptr<messages::data_plane> plane,
                                    node_actor node);

/// The answers a node has received to its probes, and the probers waiting for them.
class probe_sink {
 public:
  /// Records one answer to probe `id`; completes its request when all are in.
  void received(std::uint64_t id);
  /// A request for probe `id` to complete once `answers` have arrived.
  void expect(std::uint64_t id, std::uint64_t answers, caf::typed_response_promise<std::uint64_t> promise);

 private:
  struct probe {
    std::uint64_t received = 0;
    std::uint64_t expected = 0;
    caf::typed_response_promise<std::uint64_t> promise;  ///< pending once a prober waits
  };
  void complete_if_done(std::uint64_t id);
  std::map<std::uint64_t, probe> probes_;
};

}  // namespace orrery::actors
