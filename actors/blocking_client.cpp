#include "actors/blocking_client.hpp"

#include <caf/all.hpp>

#include <stdexcept>

#include "actors/error_text.hpp"

namespace orrery::actors {

void deploy_blocking(caf::actor_system& system, const driver_actor& driver, std::chrono::milliseconds timeout) {
  caf::scoped_actor self{system};
  std::string failure;
  self->request(driver, timeout, deploy_atom_v).receive([] {}, [&](caf::error& e) { failure = error_text(e); });
  if (!failure.empty()) throw std::runtime_error("deploy failed: " + failure);
}

std::vector<generation_summary> generate_blocking(caf::actor_system& system, const driver_actor& driver,
                                                  const std::vector<generate_request>& requests,
                                                  std::chrono::milliseconds timeout,
                                                  const std::function<void(std::size_t, const token_event&)>& on_token) {
  caf::scoped_actor self{system};
  for (std::size_t i = 0; i < requests.size(); ++i) {
    auto tagged = requests[i];
    tagged.tag = i;
    self->send(driver, tagged);
  }
  std::vector<generation_summary> done(requests.size());
  std::size_t finished = 0;
  std::string failure;
  while (finished < requests.size()) {
    self->receive(
        [&](token_event& e) {
          if (on_token) on_token(e.tag, e);
        },
        [&](generation_summary& s) {
          auto index = s.tag;
          done.at(index) = std::move(s);
          ++finished;
        },
        [&](caf::error& e) { failure = error_text(e); },
        caf::after(timeout) >> [&] {
          failure = "no answer from the driver within " + std::to_string(timeout.count()) + " ms";
        });
    // Thrown here, outside CAF's receive loop.
    if (!failure.empty()) throw std::runtime_error(failure);
  }
  return done;
}

namespace {

// Asks the driver one question (`Atom`) and waits for the answer; throws
// std::runtime_error naming `what` when it fails or does not come in time.
template <class Answer, class Atom>
Answer ask_blocking(caf::actor_system& system, const driver_actor& driver, std::chrono::milliseconds timeout, Atom atom,
                    const char* what) {
  caf::scoped_actor self{system};
  Answer answer;
  std::string failure;
  self->request(driver, timeout, atom)
      .receive([&](Answer& a) { answer = std::move(a); }, [&](caf::error& e) { failure = error_text(e); });
  if (!failure.empty()) throw std::runtime_error(std::string(what) + " failed: " + failure);
  return answer;
}

}  // namespace

std::vector<recovery_event> recoveries_blocking(caf::actor_system& system, const driver_actor& driver,
                                                std::chrono::milliseconds timeout) {
  return ask_blocking<std::vector<recovery_event>>(system, driver, timeout, recoveries_atom_v, "recoveries");
}

std::vector<stage_stats> stats_blocking(caf::actor_system& system, const driver_actor& driver,
                                        std::chrono::milliseconds timeout) {
  return ask_blocking<std::vector<stage_stats>>(system, driver, timeout, stats_atom_v, "stats");
}

}  // namespace orrery::actors
