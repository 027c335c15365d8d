#include "actors/token_stream.hpp"

#include <caf/all.hpp>

namespace orrery::actors {

namespace {

// Holds the queue, not the other way round: the actor ends with the reply,
// and a stream whose reader left keeps nothing alive.
caf::behavior listener(caf::event_based_actor* self, std::weak_ptr<token_stream> weak, driver_actor driver,
                       generate_request request) {
  const auto tag = request.tag;
  auto push = [weak](stream_event e) {
    if (auto stream = weak.lock()) stream->push(std::move(e));
  };
  self->request(driver, caf::infinite, std::move(request))
      .then(
          [self, push](generation_summary& summary) {
            stream_event e;
            e.what = stream_event::kind::done;
            e.summary = std::move(summary);
            push(std::move(e));
            self->quit();
          },
          [self, push](caf::error& error) {
            stream_event e;
            e.what = stream_event::kind::failed;
            e.error = error_text_of(error);
            if (e.error.empty()) e.error = caf::to_string(error);
            if (error.category() == caf::atom("orrery")) e.code = static_cast<errc>(error.code());
            push(std::move(e));
            self->quit();
          });
  return {
      [push](token_event& token) {
        stream_event e;
        e.token = std::move(token);
        push(std::move(e));
      },
      [self, driver, tag](cancel_atom) { self->send(driver, cancel_atom_v, tag); },
  };
}

}  // namespace

std::shared_ptr<token_stream> token_stream::start(caf::actor_system& system, const driver_actor& driver,
                                                  generate_request request) {
  auto stream = std::make_shared<token_stream>();
  stream->listener_ = system.spawn(listener, std::weak_ptr<token_stream>(stream), driver, std::move(request));
  return stream;
}

std::optional<stream_event> token_stream::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!ready_.wait_for(lock, timeout, [this] { return !events_.empty(); })) return std::nullopt;
  auto e = std::move(events_.front());
  events_.pop_front();
  return e;
}

void token_stream::cancel() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (std::exchange(cancelled_, true)) return;
  caf::anon_send(listener_, cancel_atom_v);
}

void token_stream::push(stream_event event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
  }
  ready_.notify_one();
}

}  // namespace orrery::actors
