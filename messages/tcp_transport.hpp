#pragma once
// Plain TCP under the data plane (messages/transport.hpp): the default
// transport, and the only place in orrery's runtime that holds a TCP socket.
// Nagle's algorithm is off on every stream, since the data plane coalesces
// frames itself and a small frame must not wait for an ack.

#include <memory>

#include "messages/transport.hpp"

namespace orrery::messages {

class tcp_transport final : public transport {
 public:
  std::unique_ptr<listener> listen(boost::asio::io_context& io, const std::string& address,
                                   std::uint16_t port) override;

  std::shared_ptr<pending_connect> connect(boost::asio::io_context& io, const std::string& host, std::uint16_t port,
                                           stream_handler done) override;
};

/// The one plain TCP transport every data plane shares unless told otherwise.
std::shared_ptr<transport> plain_tcp();

}  // namespace orrery::messages
