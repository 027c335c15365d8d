#include "messages/data_plane.hpp"

#include <boost/asio.hpp>

#include <atomic>
#include <deque>
#include <future>
#include <iostream>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "messages/checksum.hpp"

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace orrery::messages {
namespace detail {
namespace {

// Payload bytes read per system call at most: a chunk is checksummed right
// after it lands, so it should still sit in L2 (2 MiB per core here).
constexpr std::size_t payload_chunk = 1 << 20;

std::string endpoint_name(const tcp::endpoint& endpoint) {
  auto address = endpoint.address();
  auto host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

}  // namespace

/// One frame waiting to be written; owns everything its buffers point into
/// except the payload, which `keepalive` keeps alive.
struct outgoing_frame {
  header_bytes header{};
  std::vector<std::byte> descriptor;
  const std::byte* data = nullptr;
  std::uint64_t length = 0;
  std::shared_ptr<void> keepalive;
  link::completion done;

  std::uint64_t cost() const { return wire_size(descriptor.size(), length); }
  void complete(const std::string& error) {
    keepalive.reset();
    if (done) std::exchange(done, {})(error);
  }
};

/// State shared by a data_plane and its connections. Connections (and the
/// links users hold) keep it alive, so a link outliving its data_plane finds a
/// stopped core instead of a dangling one.
struct plane_core {
  plane_core(data_plane_options o, frame_allocator a, frame_handler d, link_error_handler r)
      : options(std::move(o)), allocate(std::move(a)), deliver(std::move(d)), report(std::move(r)) {}

  /// Runs `task` on the io thread unless the data plane is stopping.
  template <typename Task>
  bool post(Task&& task) {
    std::lock_guard<std::mutex> guard(mutex);
    if (stopping) return false;
    asio::post(io, std::forward<Task>(task));
    return true;
  }

  const data_plane_options options;
  const frame_allocator allocate;
  const frame_handler deliver;
  const link_error_handler report;
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  tcp::acceptor acceptor{io};
  std::uint16_t port = 0;  // set before the io thread starts
  std::thread io_thread;
  std::mutex mutex;
  bool stopping = false;  // guarded by mutex: no task is posted once it is set
  std::unordered_set<std::shared_ptr<connection>> connections;  // io thread only
};

/// One TCP connection between two data planes; both ends may send frames and
/// both grant credit. Everything but the atomics runs on the io thread.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(std::shared_ptr<plane_core> core, tcp::socket socket, std::string peer)
      : core_(std::move(core)), socket_(std::move(socket)), peer_(std::move(peer)) {}

  /// Grants this end's window and starts reading. `established` runs once: with
  /// an empty string when the peer's grant arrives, else with why it never will.
  void start(std::function<void(const std::string&)> established = {}) {
    established_ = std::move(established);
    core_->connections.insert(shared_from_this());
    grant(core_->options.credit_bytes);
    read_header();
  }

  void enqueue(outgoing_frame frame) {
    if (!open_) return frame.complete("link to " + peer_ + " is closed");
    queue_.push_back(std::move(frame));
    pump();
  }

  /// Closes the socket and completes every queued frame with an error. A
  /// `failure` is logged and reported; an orderly close is not.
  void close(const std::string& reason, bool failure) {
    if (!open_.exchange(false)) return;
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    auto self = shared_from_this();
    core_->connections.erase(self);
    incoming_ = {};
    if (failure) {
      std::cerr << "dataplane: link " << peer_ << ": " << reason << std::endl;
      if (core_->report) core_->report(peer_, reason);
    }
    if (established_) std::exchange(established_, {})(reason);
    auto pending = std::move(queue_);
    queue_.clear();
    for (auto& frame : pending) frame.complete("link to " + peer_ + " closed: " + reason);
  }

  plane_core& core() { return *core_; }
  const std::string& peer() const { return peer_; }
  bool is_open() const { return open_; }
  std::uint64_t bytes_in_flight() const { return in_flight_; }

 private:
  // -- receiving --------------------------------------------------------------

  void read_header() {
    asio::async_read(socket_, asio::buffer(header_in_),
                     [self = shared_from_this()](error_code ec, std::size_t n) { self->on_header(ec, n); });
  }

  void on_header(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec == asio::error::eof && n == 0) return close("closed by peer", false);
    if (ec && n == 0) return close("connection lost: " + ec.message(), true);
    if (ec) return lost(ec, n, frame_header_size, "header");
    if (auto problem = decode_header(header_in_, core_->options.max_frame_bytes, header_); !problem.empty())
      return close(problem, true);
    if (header_.kind == frame_kind::credit) return on_credit(header_.value);
    descriptor_in_.resize(header_.descriptor_length);
    asio::async_read(socket_, asio::buffer(descriptor_in_),
                     [self = shared_from_this()](error_code ec, std::size_t n) { self->on_descriptor(ec, n); });
  }

  void on_descriptor(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec) return lost(ec, n, descriptor_in_.size(), "descriptor");
    frame_descriptor d;
    auto problem = decode_descriptor(descriptor_in_.data(), descriptor_in_.size(), header_.value,
                                     core_->options.max_frame_bytes, d);
    if (!problem.empty()) return close(problem, true);
    std::pair<std::shared_ptr<void>, std::byte*> memory;
    try {
      memory = core_->allocate(d);
    } catch (const std::exception& e) {
      return close("allocating " + std::to_string(d.byte_length) + " bytes failed: " + e.what(), true);
    }
    if (memory.second == nullptr && d.byte_length > 0)
      return close("allocator returned no memory for " + std::to_string(d.byte_length) + " bytes", true);
    incoming_ = received_frame{std::move(d), std::move(memory.first), memory.second, peer_};
    received_ = 0;
    checksum_ = frame_checksum();
    read_payload();
  }

  void read_payload() {
    auto remaining = incoming_.descriptor.byte_length - received_;
    if (remaining == 0) return deliver();
    socket_.async_read_some(asio::buffer(incoming_.data + received_, std::min<std::uint64_t>(remaining, payload_chunk)),
                            [self = shared_from_this()](error_code ec, std::size_t n) { self->on_payload(ec, n); });
  }

  void on_payload(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec) return lost(ec, received_, incoming_.descriptor.byte_length, "payload");
    checksum_.update(incoming_.data + received_, n);
    received_ += n;
    read_payload();
  }

  void deliver() {
    if (auto sum = checksum_.value(); sum != incoming_.descriptor.checksum)
      return close("checksum mismatch: payload sums to " + std::to_string(sum) + ", descriptor says " +
                       std::to_string(incoming_.descriptor.checksum),
                   true);
    try {
      core_->deliver(std::exchange(incoming_, {}));
    } catch (const std::exception& e) {
      return close(std::string("frame handler failed: ") + e.what(), true);
    }
    grant(wire_size(header_.descriptor_length, header_.value));
    read_header();
  }

  void lost(error_code ec, std::size_t got, std::size_t expected, const char* part) {
    close("peer disconnected mid-frame (" + std::to_string(got) + " of " + std::to_string(expected) + " " + part +
              " bytes): " + ec.message(),
          true);
  }

  // -- sending ----------------------------------------------------------------

  void on_credit(std::uint64_t bytes) {
    if (!window_known_) {
      window_known_ = true;
      window_ = bytes;
      if (established_) std::exchange(established_, {})("");
    } else if (bytes > in_flight_) {
      return close("peer returned " + std::to_string(bytes) + " bytes of credit with only " +
                       std::to_string(in_flight_) + " in flight",
                   true);
    } else {
      in_flight_ -= bytes;
    }
    pump();
    read_header();
  }

  void grant(std::uint64_t bytes) {
    credit_owed_ += bytes;
    pump();
  }

  // Starts the next write if one is due: owed credit first (the peer may be
  // waiting for it), then the oldest frame if the window allows.
  void pump() {
    if (writing_ || !open_) return;
    if (credit_owed_ > 0) {
      credit_out_ = encode_header({frame_kind::credit, 0, std::exchange(credit_owed_, 0)});
      writing_ = true;
      asio::async_write(socket_, asio::buffer(credit_out_),
                        [self = shared_from_this()](error_code ec, std::size_t) { self->on_written(ec, false); });
      return;
    }
    if (queue_.empty() || !window_known_) return;
    auto& frame = queue_.front();
    if (in_flight_ != 0 && in_flight_ + frame.cost() > window_) return;
    in_flight_ += frame.cost();
    writing_ = true;
    std::array<asio::const_buffer, 3> buffers{asio::buffer(frame.header), asio::buffer(frame.descriptor),
                                              asio::buffer(frame.data, frame.length)};
    asio::async_write(socket_, buffers, transfer_unbounded{},
                      [self = shared_from_this()](error_code ec, std::size_t) { self->on_written(ec, true); });
  }

  void on_written(error_code ec, bool frame_written) {
    writing_ = false;
    if (!open_) return;
    if (ec) return close("write failed: " + ec.message(), true);
    if (!frame_written) return pump();
    auto frame = std::move(queue_.front());
    queue_.pop_front();
    pump();
    frame.complete("");
  }

  std::shared_ptr<plane_core> core_;  // first: destroyed after the socket that uses its io_context
  tcp::socket socket_;
  const std::string peer_;
  std::atomic<bool> open_{true};
  std::function<void(const std::string&)> established_;

  header_bytes header_in_{};
  frame_header header_;
  std::vector<std::byte> descriptor_in_;
  received_frame incoming_;
  std::uint64_t received_ = 0;
  frame_checksum checksum_;

  std::deque<outgoing_frame> queue_;
  bool writing_ = false;
  bool window_known_ = false;
  std::uint64_t window_ = 0;
  std::atomic<std::uint64_t> in_flight_{0};
  std::uint64_t credit_owed_ = 0;
  header_bytes credit_out_{};
};

namespace {

/// One data_plane::connect in progress: resolve, connect, wait for the peer's
/// credit grant. Lives on the io thread; the caller waits on `result`.
struct connect_attempt : std::enable_shared_from_this<connect_attempt> {
  connect_attempt(std::shared_ptr<plane_core> c, std::string n)
      : core(std::move(c)), name(std::move(n)), resolver(core->io), socket(core->io) {}

  void start(const std::string& host, std::uint16_t port) {
    resolver.async_resolve(host, std::to_string(port),
                           [self = shared_from_this()](error_code ec, tcp::resolver::results_type endpoints) {
                             if (self->settled) return;
                             if (ec) return self->settle("cannot resolve the host: " + ec.message());
                             self->connect(endpoints);
                           });
  }

  void connect(const tcp::resolver::results_type& endpoints) {
    asio::async_connect(socket, endpoints, [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
      if (self->settled) return;
      if (ec) return self->settle(ec.message());
      self->socket.set_option(tcp::no_delay(true), ec);
      self->established = std::make_shared<connection>(self->core, std::move(self->socket), self->name);
      self->established->start([self](const std::string& problem) {
        self->settle(problem.empty() ? "" : "no credit grant from the peer: " + problem);
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
    resolver.cancel();
    error_code ignored;
    socket.close(ignored);
    if (established) established->close("connect timed out", false);
  }

  std::shared_ptr<plane_core> core;
  const std::string name;
  tcp::resolver resolver;
  tcp::socket socket;
  std::shared_ptr<connection> established;
  std::promise<std::string> result;
  bool settled = false;
};

void accept(const std::shared_ptr<plane_core>& core) {
  core->acceptor.async_accept([core](error_code ec, tcp::socket socket) {
    if (!core->acceptor.is_open()) return;
    if (ec) {
      std::cerr << "dataplane: accept failed: " << ec.message() << std::endl;
    } else {
      auto peer = endpoint_name(socket.remote_endpoint(ec));
      socket.set_option(tcp::no_delay(true), ec);
      std::make_shared<connection>(core, std::move(socket), peer)->start();
    }
    accept(core);
  });
}

}  // namespace
}  // namespace detail

// -- link ---------------------------------------------------------------------

link::link(std::shared_ptr<detail::connection> connection) : connection_(std::move(connection)) {}

void link::send(frame_descriptor d, const std::byte* data, std::shared_ptr<void> keepalive, completion done) {
  auto& core = connection_->core();
  detail::outgoing_frame frame;
  frame.keepalive = std::move(keepalive);
  frame.done = std::move(done);
  auto problem = payload_length(d.type, d.shape, core.options.max_frame_bytes, d.byte_length);
  if (problem.empty()) {
    d.checksum = checksum_of(data, d.byte_length);
    frame.descriptor = encode_descriptor(d);
    frame.header = encode_header({frame_kind::tensor, std::uint32_t(frame.descriptor.size()), d.byte_length});
    frame.data = data;
    frame.length = d.byte_length;
  } else {
    problem = "cannot send to " + peer() + ": " + problem;
  }
  {
    std::lock_guard<std::mutex> guard(core.mutex);
    if (!core.stopping) {
      asio::post(core.io, [connection = connection_, problem, frame = std::move(frame)]() mutable {
        if (!problem.empty()) return frame.complete(problem);
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
  auto name = o.bind_address + ":" + std::to_string(o.port);
  error_code ec;
  auto address = asio::ip::make_address(o.bind_address, ec);
  if (ec) throw data_plane_error("data plane cannot listen on " + name + ": bad address: " + ec.message());
  tcp::endpoint endpoint(address, o.port);
  auto& acceptor = core_->acceptor;
  if (acceptor.open(endpoint.protocol(), ec) || acceptor.set_option(tcp::acceptor::reuse_address(true), ec) ||
      acceptor.bind(endpoint, ec) || acceptor.listen(asio::socket_base::max_listen_connections, ec))
    throw data_plane_error("data plane cannot listen on " + name + ": " + ec.message());
  core_->port = acceptor.local_endpoint().port();
  detail::accept(core_);
  core_->io_thread = std::thread([core = core_.get()] {
    // A callback that throws must not take the whole process down with it.
    for (;;) {
      try {
        core->io.run();
        return;
      } catch (const std::exception& e) {
        std::cerr << "dataplane: callback failed on the io thread: " << e.what() << std::endl;
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
    error_code ignored;
    core->acceptor.close(ignored);
    auto connections = core->connections;
    for (const auto& c : connections) c->close("data plane stopped", false);
  });
  core_->work.reset();
  core_->io_thread.join();
}

std::uint16_t data_plane::port() const { return core_->port; }

std::shared_ptr<link> data_plane::connect(const std::string& host, std::uint16_t port,
                                          std::chrono::milliseconds timeout) {
  auto name = host + ":" + std::to_string(port);
  auto attempt = std::make_shared<detail::connect_attempt>(core_, name);
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
