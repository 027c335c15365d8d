#include "messages/tcp_transport.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <algorithm>
#include <array>
#include <stdexcept>

namespace orrery::messages {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

std::string endpoint_name(const tcp::endpoint& endpoint) {
  auto address = endpoint.address();
  auto host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(endpoint.port());
}

class tcp_stream final : public byte_stream {
 public:
  tcp_stream(tcp::socket socket, std::string peer) : socket_(std::move(socket)), peer_(std::move(peer)) {
    error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
  }

  void async_write_some(const_buffer_span buffers, io_completion done) override {
    socket_.async_write_some(buffers,
                             [done = std::move(done)](error_code ec, std::size_t n) mutable { done(ec, n); });
  }

  std::size_t write_now(const_buffer_span buffers) override {
    std::array<iovec, max_gather_buffers> iov;
    std::size_t count = 0;
    for (const auto& b : buffers) {
      if (count == iov.size()) break;
      iov[count++] = {const_cast<void*>(b.data()), b.size()};
    }
    msghdr message{};
    message.msg_iov = iov.data();
    message.msg_iovlen = count;
    // Non-blocking: whatever the socket does not take now, the io thread writes.
    auto n = ::sendmsg(socket_.native_handle(), &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    return std::size_t(std::max<ssize_t>(n, 0));
  }

  void async_read_some(asio::mutable_buffer buffer, io_completion done) override {
    socket_.async_read_some(buffer, [done = std::move(done)](error_code ec, std::size_t n) mutable { done(ec, n); });
  }

  void close() override {
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  const std::string& peer() const override { return peer_; }

 private:
  tcp::socket socket_;
  const std::string peer_;
};

// Pending accepts hold the acceptor's state, so the listener may go while one
// is still queued on the io_context.
class tcp_listener final : public listener {
 public:
  explicit tcp_listener(asio::io_context& io) : state_(std::make_shared<state>(io)) {}

  void bind(const std::string& address, std::uint16_t port) {
    error_code ec;
    auto ip = asio::ip::make_address(address, ec);
    if (ec) throw std::runtime_error("bad address: " + ec.message());
    tcp::endpoint endpoint(ip, port);
    auto& acceptor = state_->acceptor;
    if (acceptor.open(endpoint.protocol(), ec) || acceptor.set_option(tcp::acceptor::reuse_address(true), ec) ||
        acceptor.bind(endpoint, ec) || acceptor.listen(asio::socket_base::max_listen_connections, ec))
      throw std::runtime_error(ec.message());
    port_ = acceptor.local_endpoint().port();
  }

  std::uint16_t port() const override { return port_; }

  void start(stream_handler accepted) override {
    state_->accepted = std::move(accepted);
    accept(state_);
  }

  void close() override {
    error_code ignored;
    state_->acceptor.close(ignored);
    state_->accepted = nullptr;
  }

 private:
  struct state {
    explicit state(asio::io_context& io) : acceptor(io) {}
    tcp::acceptor acceptor;
    stream_handler accepted;
  };

  static void accept(const std::shared_ptr<state>& s) {
    s->acceptor.async_accept([s](error_code ec, tcp::socket socket) {
      if (!s->acceptor.is_open()) return;
      if (ec) {
        s->accepted(nullptr, "accept failed: " + ec.message());
      } else {
        auto peer = endpoint_name(socket.remote_endpoint(ec));
        s->accepted(std::make_unique<tcp_stream>(std::move(socket), std::move(peer)), "");
      }
      accept(s);
    });
  }

  std::shared_ptr<state> state_;
  std::uint16_t port_ = 0;
};

/// Resolve, then connect to the first endpoint that answers.
class tcp_connect final : public pending_connect, public std::enable_shared_from_this<tcp_connect> {
 public:
  tcp_connect(asio::io_context& io, std::string name, stream_handler done)
      : resolver_(io), socket_(io), name_(std::move(name)), done_(std::move(done)) {}

  void start(const std::string& host, std::uint16_t port) {
    resolver_.async_resolve(host, std::to_string(port),
                            [self = shared_from_this()](error_code ec, tcp::resolver::results_type endpoints) {
                              if (ec) return self->done_(nullptr, "cannot resolve the host: " + ec.message());
                              self->connect(endpoints);
                            });
  }

  void cancel() override {
    resolver_.cancel();
    error_code ignored;
    socket_.close(ignored);
  }

 private:
  void connect(const tcp::resolver::results_type& endpoints) {
    asio::async_connect(socket_, endpoints, [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
      if (ec) return self->done_(nullptr, ec.message());
      self->done_(std::make_unique<tcp_stream>(std::move(self->socket_), self->name_), "");
    });
  }

  tcp::resolver resolver_;
  tcp::socket socket_;
  const std::string name_;
  const stream_handler done_;
};

}  // namespace

std::unique_ptr<listener> tcp_transport::listen(asio::io_context& io, const std::string& address,
                                                std::uint16_t port) {
  auto l = std::make_unique<tcp_listener>(io);
  l->bind(address, port);
  return l;
}

std::shared_ptr<pending_connect> tcp_transport::connect(asio::io_context& io, const std::string& host,
                                                        std::uint16_t port, stream_handler done) {
  auto attempt = std::make_shared<tcp_connect>(io, host + ":" + std::to_string(port), std::move(done));
  attempt->start(host, port);
  return attempt;
}

std::shared_ptr<transport> plain_tcp() {
  static const auto shared = std::make_shared<tcp_transport>();
  return shared;
}

}  // namespace orrery::messages
