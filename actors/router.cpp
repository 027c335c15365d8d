#include "actors/router.hpp"

#include <caf/all.hpp>

#include <type_traits>
#include <variant>

#include "actors/tensor_frame.hpp"
#include "messages/log.hpp"

namespace orrery::actors {

namespace {

const char* kind_name(router::handler_kind kind) {
  switch (kind) {
    case router::handler_kind::stage: return "stage";
    case router::handler_kind::group: return "group";
    case router::handler_kind::session: return "session";
    case router::handler_kind::prober: return "prober";
    case router::handler_kind::backup: return "backup store";
  }
  return "handler";
}

/// Who handles a route: kind and id, of the frame's session unless the
/// handler serves every session (a node's backup store).
struct route_target {
  router::handler_kind kind;
  std::uint32_t id;
  bool every_session = false;
};

route_target target_of(const messages::frame_route& route) {
  return std::visit(
      [](const auto& r) -> route_target {
        using route_type = std::decay_t<decltype(r)>;
        if constexpr (std::is_same_v<route_type, messages::forward_route> ||
                      std::is_same_v<route_type, messages::backward_route>)
          return {router::handler_kind::stage, r.stage};
        else if constexpr (std::is_same_v<route_type, messages::collective_route>)
          return {router::handler_kind::group, r.group};
        else if constexpr (std::is_same_v<route_type, messages::session_route>)
          return {router::handler_kind::session, 0};
        else if constexpr (std::is_same_v<route_type, messages::backup_route>)
          return r.restore ? route_target{router::handler_kind::stage, r.stage}
                           : route_target{router::handler_kind::backup, 0, true};
        else
          return {router::handler_kind::prober, 0};
      },
      route);
}

// The host part of host:port (IPv6 literals lose their brackets).
std::string host_of(const std::string& peer) {
  auto host = peer.substr(0, peer.rfind(':'));
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return host;
}

}  // namespace

router::router(std::string name) : name_(std::move(name)) {}

void router::add(handler_kind kind, std::uint64_t session, std::uint32_t id, const caf::actor_addr& handler) {
  std::lock_guard<std::mutex> lock(mutex_);
  handlers_[{kind, session, id}] = handler;
}

void router::add_sink(handler_kind kind, std::uint64_t session, std::uint32_t id, frame_sink sink) {
  std::lock_guard<std::mutex> lock(mutex_);
  sinks_[{kind, session, id}] = std::move(sink);
}

void router::remove(handler_kind kind, std::uint64_t session, std::uint32_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  handlers_.erase({kind, session, id});
  sinks_.erase({kind, session, id});
}

route_counts router::counts() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return counts_;
}

void router::reject(const std::string& reason, bool unknown_kind) {
  std::uint64_t rejected = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++(unknown_kind ? counts_.unknown_route : counts_.no_handler);
    counts_.last_rejection = reason;
    rejected = counts_.unknown_route + counts_.no_handler;
  }
  static const logger log("router");
  // A stream of strays (a dropped session's late frames) is one line, not thousands.
  if (rejected <= 3 || rejected % 1000 == 0)
    log.warn(name_ + ": rejected a frame (" + std::to_string(rejected) + " so far): " + reason);
}

void router::dispatch(messages::received_frame frame) {
  const auto& d = frame.descriptor;
  if (const auto* unknown = std::get_if<messages::unknown_route>(&d.route))
    return reject("a route of unknown kind " + std::to_string(unknown->which) + " from " + frame.peer, true);
  const auto target = target_of(d.route);
  caf::actor handler;
  frame_sink sink;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const key k{target.kind, target.every_session ? 0 : d.session, target.id};
    if (auto it = handlers_.find(k); it != handlers_.end()) handler = caf::actor_cast<caf::actor>(it->second);
    if (auto it = sinks_.find(k); !handler && it != sinks_.end()) sink = it->second;
    if (handler || sink) ++counts_.delivered;
  }
  if (sink) return sink(tensor_frame_of(frame));
  if (!handler) {
    const std::string frame_kind = std::string("a ") + messages::route_kind(d.route) + " frame";
    const std::string session = "session " + std::to_string(d.session);
    switch (target.kind) {
      case handler_kind::stage:
      case handler_kind::group:
        return reject(frame_kind + " for " + kind_name(target.kind) + " " + std::to_string(target.id) + " of " + session +
                          ", which is not here, from " + frame.peer,
                      false);
      case handler_kind::session:
        return reject(frame_kind + " for " + session + ", which is not here, from " + frame.peer, false);
      case handler_kind::prober:
        return reject(frame_kind + " from " + frame.peer + ", but nothing here measures links", false);
      case handler_kind::backup:
        return reject(frame_kind + " from " + frame.peer + ", but nothing here holds backups", false);
    }
  }
  if (const auto* probe = std::get_if<messages::probe_route>(&d.route))
    return caf::anon_send(handler, probe_frame_atom_v, probe->probe, probe->reply_port, host_of(frame.peer));
  caf::anon_send(handler, tensor_frame_of(frame));
}

messages::frame_handler router::handler_of(std::shared_ptr<router> r) {
  return [r = std::move(r)](messages::received_frame frame) { r->dispatch(std::move(frame)); };
}

}  // namespace orrery::actors
