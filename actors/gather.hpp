#pragma once
// One request to each of several actors at once, from blocking code (a
// client's scoped actor), answered when all have answered — or as soon as one
// fails or goes down.
//
// A blocking response handle does not see down messages: had the client asked
// each member itself, a member whose node died after the request reached it
// would leave the client waiting out the whole timeout (minutes) instead of
// recovering at once. A gatherer asks through an event-based actor that
// monitors every member while its request is open.

#include <caf/all.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <type_traits>
#include <vector>

namespace orrery::actors {

template <class Answer>
struct gathered {
  /// What an answer is kept as (a request answered with nothing: unit).
  using value = std::conditional_t<std::is_void_v<Answer>, caf::unit_t, Answer>;
  /// One per actor, in their order; complete unless `failed`.
  std::vector<value> answers;
  /// The first actor whose request failed or that went down before answering.
  std::optional<std::size_t> failed;
  /// Why: the request's error, or request_receiver_down.
  caf::error error;
};

/// An actor that asks on a blocking client's behalf, for as long as the
/// client needs it. It stays the sender of every request it makes, so a node
/// that ties a session to the actor that loaded its stage (actors/node.cpp)
/// keeps the session while the gatherer lives, and ends it when it goes.
class gatherer {
 public:
  explicit gatherer(caf::actor_system& system)
      : job_(std::make_shared<job>()), actor_(system.spawn([job = job_](caf::event_based_actor* g) -> caf::behavior {
          return {[=](caf::ok_atom) {
            auto promise = std::make_shared<caf::response_promise>(g->make_response_promise());
            (*job)(g, promise);
            return *promise;
          }};
        })) {}
  gatherer(const gatherer&) = delete;
  gatherer& operator=(const gatherer&) = delete;
  ~gatherer() { caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown); }

  /// Sends `requests[i]` to `to[i]` for every i at once (each with
  /// `timeout`), and waits (one ask at a time). A member that goes down after
  /// it answered does not fail the ask: its down message still reaches
  /// whoever else monitors it.
  template <class Answer>
  gathered<Answer> ask(caf::scoped_actor& self, const std::vector<caf::actor>& to,
                       const std::vector<caf::message>& requests, std::chrono::milliseconds timeout) {
    auto out = std::make_shared<gathered<Answer>>();
    out->answers.resize(to.size());
    if (to.empty()) return std::move(*out);
    // Written here, read by the gatherer once the ask below reaches it; `out`
    // is read back here only after the gatherer answered.
    *job_ = [=](caf::event_based_actor* g, std::shared_ptr<caf::response_promise> pending) {
      auto open = std::make_shared<std::vector<bool>>(to.size(), true);
      auto left = std::make_shared<std::size_t>(to.size());
      auto finish = [=](std::optional<std::size_t> failed, caf::error e) {
        if (!pending->pending()) return;
        for (const auto& a : to) g->demonitor(a);
        out->failed = failed;
        out->error = std::move(e);
        pending->deliver(caf::ok_atom_v);
      };
      auto answered = [=](std::size_t i) {
        (*open)[i] = false;
        if (--*left == 0) finish(std::nullopt, caf::error{});
      };
      g->set_down_handler([=](caf::down_msg& m) {
        for (std::size_t i = 0; i < to.size(); ++i)
          if ((*open)[i] && to[i].address() == m.source) return finish(i, caf::make_error(caf::sec::request_receiver_down));
      });
      for (std::size_t i = 0; i < to.size(); ++i) {
        g->monitor(to[i]);
        auto failed = [=](caf::error& e) { finish(i, std::move(e)); };
        if constexpr (std::is_void_v<Answer>)
          g->request(to[i], timeout, requests[i]).then([=] { answered(i); }, failed);
        else
          g->request(to[i], timeout, requests[i]).then([=](Answer& a) {
            if (!pending->pending()) return;  // the ask ended: `out` is the client's again
            out->answers[i] = std::move(a);
            answered(i);
          }, failed);
      }
    };
    self->request(actor_, caf::infinite, caf::ok_atom_v)
        .receive([](caf::ok_atom) {},
                 [&](caf::error& e) {  // the gatherer itself went: not one member's fault
                   if (!out->failed) out->error = std::move(e);
                 });
    return std::move(*out);
  }

 private:
  using job = std::function<void(caf::event_based_actor*, std::shared_ptr<caf::response_promise>)>;
  std::shared_ptr<job> job_;
  caf::actor actor_;
};

}  // namespace orrery::actors
