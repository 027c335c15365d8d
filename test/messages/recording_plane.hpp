#pragma once
// What the data-plane suites share: a data plane that records everything it
// allocated, received and reported (endpoint, with its inbox), and frames of
// deterministic bytes sent from it (pattern, send_pattern). Frames use a
// forward route; the pattern is seeded by its request.

#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "messages/data_plane.hpp"

namespace orrery::test {

using namespace std::chrono_literals;
using messages::data_plane;
using messages::data_plane_options;
using messages::frame_allocator;
using messages::frame_descriptor;
using messages::frame_handler;
using messages::link_error_handler;
using messages::received_frame;

using bytes = std::vector<std::byte>;

/// Deterministic payload bytes: a cheap generator so 64 MiB fills in a blink.
inline bytes pattern(std::size_t size, std::uint64_t seed) {
  bytes out(size);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < size; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    out[i] = std::byte(x & 0xFF);
  }
  return out;
}

/// One data plane's view of the world: what it allocated, received and reported.
struct inbox {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<received_frame> frames;
  std::vector<std::uint64_t> allocations;
  std::vector<std::pair<std::string, std::string>> failures;
  /// Completions of frames this side sent ("" for success).
  std::vector<std::string> completions;
  /// Runs on the io thread before a frame is recorded.
  std::function<void(const received_frame&)> on_frame;

  frame_allocator allocator() {
    return [this](const frame_descriptor& d) {
      note([&] { allocations.push_back(d.byte_length); });
      std::shared_ptr<std::byte[]> buffer(new std::byte[d.byte_length]);
      return std::pair<std::shared_ptr<void>, std::byte*>(buffer, buffer.get());
    };
  }
  frame_handler handler() {
    return [this](received_frame f) {
      if (on_frame) on_frame(f);
      note([&] { frames.push_back(std::move(f)); });
    };
  }
  link_error_handler reporter() {
    return [this](const std::string& peer, const std::string& problem) {
      note([&] { failures.emplace_back(peer, problem); });
    };
  }
  template <typename Change>
  void note(Change change) {
    std::lock_guard<std::mutex> guard(mutex);
    change();
    changed.notify_all();
  }
  template <typename Predicate>
  bool wait(Predicate done, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock<std::mutex> lock(mutex);
    return changed.wait_for(lock, timeout, done);
  }
  std::size_t frame_count() {
    std::lock_guard<std::mutex> guard(mutex);
    return frames.size();
  }
};

/// A data plane with its inbox.
struct endpoint {
  explicit endpoint(data_plane_options options = {})
      : plane(std::move(options), box.allocator(), box.handler(), box.reporter()) {}
  std::shared_ptr<messages::link> connect_to(const endpoint& other) {
    return plane.connect("127.0.0.1", other.plane.port(), 5s);
  }
  inbox box;
  data_plane plane;
};

/// The request a frame's forward route carries.
inline std::uint64_t request_of(const frame_descriptor& d) { return std::get<messages::forward_route>(d.route).request; }

/// The payload length of `d`'s tensors.
inline std::uint64_t byte_length_of(const frame_descriptor& d) {
  std::uint64_t n = 0;
  auto tensors = d.tensors;
  REQUIRE(messages::payload_length(tensors, 1ull << 31, n).empty());
  return n;
}

/// Sends `d` with pattern bytes seeded by its request id; the completion lands
/// in `box.completions`.
inline void send_pattern(messages::link& l, frame_descriptor d, inbox& box) {
  auto payload = std::make_shared<bytes>(pattern(byte_length_of(d), request_of(d)));
  l.send(std::move(d), payload->data(), payload,
         [&box](const std::string& error) { box.note([&] { box.completions.push_back(error); }); });
}

}  // namespace orrery::test
