#pragma once
// One generation request whose tokens a thread outside CAF reads as they come
// (an HTTP handler streaming them to its client): a small actor sends the
// request to the driver and queues every token event, then the summary or the
// error; the caller pops them with a deadline and may cancel the request at
// any time (its client went away), which the driver carries to every stage.

#include <caf/actor_system.hpp>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "actors/interfaces.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

/// What a token_stream yields, in order: tokens, then one summary or error.
struct stream_event {
  enum class kind { token, done, failed };
  kind what = kind::token;
  token_event token;           ///< kind::token
  generation_summary summary;  ///< kind::done
  /// kind::failed: the driver's error, and its orrery code where it has one
  /// (invalid_request for a request the driver refused, cancelled, ...).
  std::string error;
  std::optional<errc> code;
};

class token_stream {
 public:
  /// Sends `request` to `driver`. The stream's actor lives until the reply.
  static std::shared_ptr<token_stream> start(caf::actor_system& system, const driver_actor& driver,
                                             generate_request request);

  /// The next event, waiting up to `timeout`; none when nothing came.
  std::optional<stream_event> next(std::chrono::milliseconds timeout);

  /// Asks the driver to cancel the request (a `failed` event with code
  /// cancelled follows, unless the request ended first). Idempotent.
  void cancel();

  /// Called by the stream's actor.
  void push(stream_event event);

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<stream_event> events_;
  caf::actor listener_;
  bool cancelled_ = false;
};

}  // namespace orrery::actors
