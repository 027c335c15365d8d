// The gatherer: one request to each of several actors at once, from blocking
// code — answers in order, and a member that goes down without answering (a
// node killed while it held the request) ends the wait at once, named.

#include <caf/all.hpp>
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <vector>

#include "actors/gather.hpp"
#include "test/registered_config.hpp"

using namespace orrery;
using namespace std::chrono_literals;

namespace {

// Answers x with 10 * x + its own index.
caf::behavior answering(caf::event_based_actor*, int index) {
  return {[=](int x) { return 10 * x + index; }};
}

// Takes the request and quits without ever answering, as a process killed
// mid-request does: its promise is kept elsewhere, so no error answers it.
caf::behavior vanishing(caf::event_based_actor* self, std::shared_ptr<std::vector<caf::response_promise>> kept) {
  return {[=](int) {
    kept->push_back(self->make_response_promise());
    self->quit(caf::exit_reason::kill);
    return kept->back();
  }};
}

caf::behavior refusing(caf::event_based_actor*) {
  return {[](int) -> caf::result<int> { return caf::make_error(caf::sec::unexpected_message); }};
}

// An actor system and a gatherer asking from its scoped actor.
struct asking {
  test::registered_config config;
  caf::actor_system system{config};
  caf::scoped_actor self{system};
  actors::gatherer asker{system};
};

std::vector<caf::message> ints(std::vector<int> xs) {
  std::vector<caf::message> out;
  for (int x : xs) out.push_back(caf::make_message(x));
  return out;
}

}  // namespace

TEST_CASE_FIXTURE(asking, "a gatherer asks every actor at once and returns the answers in the actors' order") {
  std::vector<caf::actor> to;
  for (int i = 0; i < 3; ++i) to.push_back(system.spawn(answering, i));
  const auto got = asker.ask<int>(self, to, ints({7, 8, 9}), 10s);
  CHECK_FALSE(got.failed);
  CHECK_FALSE(got.error);
  CHECK(got.answers == std::vector<int>{70, 81, 92});
  CHECK(asker.ask<int>(self, {}, {}, 10s).answers.empty());
}

TEST_CASE_FIXTURE(asking, "a member that goes down while it holds the request ends the wait at once, named, long before the timeout") {
  auto kept = std::make_shared<std::vector<caf::response_promise>>();
  const std::vector<caf::actor> to = {system.spawn(answering, 0), system.spawn(vanishing, kept), system.spawn(answering, 2)};
  const auto started = std::chrono::steady_clock::now();
  const auto got = asker.ask<int>(self, to, ints({1, 2, 3}), 120s);
  const auto waited = std::chrono::steady_clock::now() - started;
  REQUIRE(got.failed);
  CHECK(*got.failed == 1);
  CHECK(got.error == caf::sec::request_receiver_down);
  CHECK(waited < 10s);
  CHECK(kept->size() == 1);  // it did take the request: no bounce answered it
}

TEST_CASE_FIXTURE(asking, "a member's error answer fails the gathering with that error; one that quits after answering does not") {
  {
    const auto got = asker.ask<int>(self, {system.spawn(answering, 0), system.spawn(refusing)}, ints({1, 2}), 10s);
    REQUIRE(got.failed);
    CHECK(*got.failed == 1);
    CHECK(got.error == caf::sec::unexpected_message);
  }
  {
    auto once = system.spawn([](caf::event_based_actor* s) -> caf::behavior {
      return {[=](int x) {
        s->quit();
        return x;
      }};
    });
    const auto got = asker.ask<int>(self, {once, system.spawn(answering, 1)}, ints({5, 6}), 10s);
    CHECK_FALSE(got.failed);
    CHECK(got.answers == std::vector<int>{5, 61});
  }
}

TEST_CASE_FIXTURE(asking, "ask<void> waits for requests answered with nothing") {
  auto quiet = [](caf::event_based_actor*) -> caf::behavior { return {[](int) {}}; };
  const auto got = asker.ask<void>(self, {system.spawn(quiet), system.spawn(quiet)}, ints({1, 2}), 10s);
  CHECK_FALSE(got.failed);
  CHECK(got.answers.size() == 2);
}

TEST_CASE_FIXTURE(asking, "one gatherer asks again and again, and a member lost in one ask does not fail the next") {
  auto kept = std::make_shared<std::vector<caf::response_promise>>();
  auto a = system.spawn(answering, 1);
  CHECK(asker.ask<int>(self, {a, system.spawn(vanishing, kept)}, ints({1, 1}), 60s).failed == std::optional<std::size_t>{1});
  for (int round = 0; round < 3; ++round) {
    const auto got = asker.ask<int>(self, {a, system.spawn(answering, 2)}, ints({round, round}), 60s);
    CHECK_FALSE(got.failed);
    CHECK(got.answers == std::vector<int>{10 * round + 1, 10 * round + 2});
  }
}
