#pragma once
// The node a process publishes, reached with a deadline. CAF's own
// middleman::remote_actor waits forever on a peer that accepts the TCP
// connection and never completes the handshake (a frozen node's kernel still
// accepts), so orrery asks the middleman actor itself, as remote_actor does,
// with a request timeout. Blocking callers (a client's caf::scoped_actor) get
// the answer before the call returns; event-based ones (the supervisor) as a
// response later.

#include <caf/actor_system.hpp>
#include <caf/atom.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/io/middleman.hpp>
#include <caf/mixin/requester.hpp>
#include <caf/node_id.hpp>

#include <chrono>
#include <cstdint>
#include <set>
#include <string>
#include <type_traits>
#include <utility>

#include "actors/interfaces.hpp"

namespace orrery::actors {

/// The middleman's answer to a connect request as remote_actor reads it: the
/// node published at the port, sec::no_actor_published_at_port, or
/// sec::unexpected_actor_messaging_interface when what is published there
/// answers other messages than node_actor (another program, another
/// version of orrery).
caf::expected<node_actor> published_node(caf::actor_system& system, const caf::strong_actor_ptr& published,
                                         const std::set<std::string>& interface);

/// Asks `self`'s middleman for the node published at `host:port` and calls
/// `done` with it, or with the error: sec::request_timeout after `timeout`,
/// sec::cannot_connect_to_node, sec::no_actor_published_at_port,
/// sec::unexpected_actor_messaging_interface, ….
/// `self` is a caf::scoped_actor (waits for the answer) or an event-based
/// actor's pointer (`done` runs when the answer arrives).
template <class Self, class Done>
void request_remote_node(Self& self, const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout,
                         Done done) {
  auto answer = self->request(self->system().middleman().actor_handle(), timeout, caf::connect_atom_v, host, port);
  auto on_actor = [done, &system = self->system()](const caf::node_id&, caf::strong_actor_ptr& published,
                                                   const std::set<std::string>& interface) mutable {
    done(published_node(system, published, interface));
  };
  auto on_error = [done](caf::error& e) mutable { done(caf::expected<node_actor>{std::move(e)}); };
  if constexpr (caf::mixin::is_blocking_requester<std::remove_reference_t<decltype(*self)>>::value)
    answer.receive(on_actor, on_error);
  else
    answer.then(on_actor, on_error);
}

}  // namespace orrery::actors
