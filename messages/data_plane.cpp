#include "messages/data_plane.hpp"

#include <algorithm>
#include <future>
#include <thread>

#include "messages/data_plane_connection.hpp"

namespace asio = boost::asio;
using boost::system::error_code;

namespace orrery::messages {

const logger& data_plane_log() {
  static const logger log("data-plane");
  return log;
}

namespace detail {
namespace {

/// One data_plane::connect in progress: the transport's connect, then the
/// peer's credit grant. Lives on the io thread; the caller waits on `result`.
struct connect_attempt : std::enable_shared_from_this<connect_attempt> {
  explicit connect_attempt(std::shared_ptr<plane_core> c) : core(std::move(c)) {}

  void start(const std::string& host, std::uint16_t port) {
    // Weak: the transport holds `done` as long as `pending` lives, and this holds `pending`.
    pending = core->options.transport->connect(
        core->io, host, port,
        [weak = weak_from_this()](std::unique_ptr<byte_stream> stream, const std::string& problem) {
          auto self = weak.lock();
          if (!self || self->settled) return;
          if (!stream) return self->settle(problem);
          self->established = std::make_shared<connection>(self->core, std::move(stream));
          self->established->start([self](const std::string& refused) {
            self->settle(refused.empty() ? "" : "no credit grant from the peer: " + refused);
          });
        });
  }

  void settle(const std::string& problem) {
    if (std::exchange(settled, true)) return;
    result.set_value(problem);
  }

  // The caller gave up waiting; whatever got established is closed.
  void abandon() {
    settle("timed out");
    if (pending) pending->cancel();
    if (established) established->close("connect timed out", false);
  }

  std::shared_ptr<plane_core> core;
  std::shared_ptr<pending_connect> pending;
  std::shared_ptr<connection> established;
  std::promise<std::string> result;
  bool settled = false;
};

// Weak: the core owns the listener, which holds this handler.
void accept(const std::shared_ptr<plane_core>& core) {
  core->listener->start(
      [weak = std::weak_ptr<plane_core>(core)](std::unique_ptr<byte_stream> stream, const std::string& problem) {
        auto core = weak.lock();
        if (!core) return;
        if (!stream) {
          data_plane_log().warn(problem);
          return;
        }
        std::make_shared<connection>(core, std::move(stream))->start();
      });
}

}  // namespace
}  // namespace detail

// -- link ---------------------------------------------------------------------

link::link(std::shared_ptr<detail::connection> connection) : connection_(std::move(connection)) {}

namespace {

std::uint32_t checksum_as_it_arrives(const std::byte* data, std::size_t length, const link::arriving_payload& arriving) {
  frame_checksum sum;
  const std::size_t piece = std::max<std::size_t>(arriving.piece_bytes, 1);
  for (std::size_t at = 0; at < length;) {
    const std::size_t end = std::min(length, at + piece);
    arriving.wait(end);
    sum.update(data + at, end - at);
    at = end;
  }
  return sum.value();
}

}  // namespace

void link::send(frame_descriptor d, const std::byte* data, std::shared_ptr<void> keepalive, completion done) {
  send(std::move(d), data, std::move(keepalive), std::move(done), arriving_payload{});
}

void link::send(frame_descriptor d, const std::byte* data, std::shared_ptr<void> keepalive, completion done,
                const arriving_payload& arriving) {
  auto& core = connection_->core();
  detail::outgoing_frame frame;
  frame.keepalive = std::move(keepalive);
  frame.done = std::move(done);
  auto problem = payload_length(d.tensors, core.options.max_frame_bytes, d.byte_length);
  if (problem.empty()) {
    d.checksum = arriving.wait ? checksum_as_it_arrives(data, d.byte_length, arriving) : checksum_of(data, d.byte_length);
    frame.descriptor = encode_descriptor(d);
    frame.header = encode_header({frame_kind::tensor, std::uint32_t(frame.descriptor.size()), d.byte_length});
    frame.data = data;
    frame.length = d.byte_length;
  } else {
    problem = "cannot send to " + peer() + ": " + problem;
  }
  if (problem.empty() && connection_->send_now(frame)) return;
  {
    std::lock_guard<std::mutex> guard(core.mutex);
    if (!core.stopping) {
      asio::post(core.io, [connection = connection_, problem, frame = std::move(frame)]() mutable {
        if (!problem.empty()) return frame.complete(problem);  // never counted as posted
        connection->enqueue(std::move(frame));
      });
      return;
    }
  }
  frame.complete("link to " + peer() + " closed: data plane stopped");
}

const std::string& link::peer() const { return connection_->peer(); }

bool link::is_open() const { return connection_->is_open(); }

void link::close() {
  connection_->core().post([connection = connection_] { connection->close("closed locally", false); });
}

std::uint64_t link::bytes_in_flight() const { return connection_->bytes_in_flight(); }

// -- data_plane ---------------------------------------------------------------

data_plane::data_plane(data_plane_options options, frame_allocator allocate, frame_handler deliver,
                       link_error_handler report)
    : core_(std::make_shared<detail::plane_core>(std::move(options), std::move(allocate), std::move(deliver),
                                                 std::move(report))) {
  const auto& o = core_->options;
  if (!o.transport) throw data_plane_error("data plane options name no transport");
  try {
    core_->listener = o.transport->listen(core_->io, o.bind_address, o.port);
  } catch (const std::exception& e) {
    throw data_plane_error("data plane cannot listen on " + o.bind_address + ":" + std::to_string(o.port) + ": " +
                           e.what());
  }
  detail::accept(core_);
  core_->io_thread = std::thread([core = core_.get()] {
    // A callback that throws must not take the whole process down with it.
    for (;;) {
      try {
        core->io.run();
        return;
      } catch (const std::exception& e) {
        data_plane_log().error(std::string("callback failed on the io thread: ") + e.what());
      }
    }
  });
}

data_plane::~data_plane() {
  {
    std::lock_guard<std::mutex> guard(core_->mutex);
    core_->stopping = true;
  }
  asio::post(core_->io, [core = core_] {
    core->listener->close();
    auto connections = core->connections;
    for (const auto& c : connections) c->close("data plane stopped", false);
  });
  core_->work.reset();
  core_->io_thread.join();
}

std::uint16_t data_plane::port() const { return core_->listener->port(); }

std::shared_ptr<link> data_plane::connect(const std::string& host, std::uint16_t port,
                                          std::chrono::milliseconds timeout) {
  auto name = host + ":" + std::to_string(port);
  auto attempt = std::make_shared<detail::connect_attempt>(core_);
  auto result = attempt->result.get_future();
  if (!core_->post([attempt, host, port] { attempt->start(host, port); }))
    throw data_plane_error("connect to " + name + " failed: data plane is stopping");
  if (result.wait_for(timeout) != std::future_status::ready) {
    core_->post([attempt] { attempt->abandon(); });
    throw data_plane_error("connect to " + name + " timed out after " + std::to_string(timeout.count()) + " ms");
  }
  if (auto problem = result.get(); !problem.empty())
    throw data_plane_error("connect to " + name + " failed: " + problem);
  return std::shared_ptr<link>(new link(attempt->established));
}

}  // namespace orrery::messages
