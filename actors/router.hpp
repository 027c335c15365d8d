#pragma once
// The router: one per data plane (a node's, a driver's). Every frame the data
// plane delivers goes to the handler registered for its route:
//
//   forward, backward  -> the stage (session, stage)
//   collective         -> the device group (session, group)
//   to-session         -> the session's driver (session)
//   probe              -> the prober (session 0)
//   backup             -> the node's backup store (every session), or with
//                         restore set the stage (session, stage)
//
// A route of a kind this build does not know, or one whose handler is not
// registered (a stage that was dropped, a group never formed), is counted and
// rejected with a named reason, never a crash. Handlers are held by weak
// address: a finished actor is not kept alive by its route. A group's
// pieces go to a sink instead, a function called on the io thread: the
// group's members wait for them inside a forward pass, on the very thread
// whose mailbox an actor handler would queue them behind.
//
// Threads: dispatch runs on the data plane's io thread; registration on the
// owning actor's. Both are quick and lock one mutex.

#include <caf/actor_addr.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "messages/data_plane.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

struct tensor_frame;

class router {
 public:
  /// Who handles a route.
  enum class handler_kind : std::uint8_t { stage, group, session, prober, backup };

  /// `name` (the node's, or "driver") heads the lines rejections print.
  explicit router(std::string name);

  /// Routes of `kind` for (session, id) go to `handler` from now on. By
  /// address: handlers of several interfaces share the table, and a finished
  /// one is not kept alive by its route.
  void add(handler_kind kind, std::uint64_t session, std::uint32_t id, const caf::actor_addr& handler);
  void remove(handler_kind kind, std::uint64_t session, std::uint32_t id);

  /// Routes of `kind` for (session, id) are handed to `sink` on the io
  /// thread from now on (it must be quick); remove() ends that too.
  using frame_sink = std::function<void(tensor_frame)>;
  void add_sink(handler_kind kind, std::uint64_t session, std::uint32_t id, frame_sink sink);

  /// Hands `frame` to its handler: a probe_frame_atom message to the prober,
  /// a tensor_frame to any other.
  void dispatch(messages::received_frame frame);

  /// Frames delivered and rejected so far, and why the last was rejected.
  route_counts counts() const;

  /// The frame handler of a data plane, dispatching through `r`.
  static messages::frame_handler handler_of(std::shared_ptr<router> r);

 private:
  using key = std::tuple<handler_kind, std::uint64_t, std::uint32_t>;
  void reject(const std::string& reason, bool unknown_kind);

  std::string name_;
  mutable std::mutex mutex_;
  std::map<key, caf::actor_addr> handlers_;
  std::map<key, frame_sink> sinks_;
  route_counts counts_;
};

}  // namespace orrery::actors
