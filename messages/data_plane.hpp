#pragma once
// The data plane: tensor bytes between processes over a byte stream (plain TCP
// unless data_plane_options::transport says otherwise; messages/transport.hpp),
// beside (never inside) CAF's control messages (ARCHITECTURE.md, "Control plane
// and data plane"). A frame is a fixed header, a Cap'n Proto descriptor and the raw
// bytes (wire format and credit rule in messages/frame.hpp). The sender writes
// all three with one scatter/gather write straight from the caller's memory
// (queued frames and owed credit share one writev); the receiver validates
// header and descriptor before asking the allocator for memory, then reads the
// payload straight into it, checksumming each chunk while it is still in
// cache. Headers arrive through a 64 KiB staging buffer so that a burst of
// small frames costs one system call; the part of a payload that came along
// in that read is copied out of it (at most 64 KiB per frame). No libtorch
// here: the owner of a data_plane supplies an allocator that creates its
// tensor and returns the tensor's bytes.
//
// Threads: a data_plane runs its own io thread. Allocator, handlers and `done`
// callbacks run on it, so they must be quick (hand off, never block) and must
// not call data_plane::connect. A frame of at most 64 KiB sent on an idle link
// is written by link::send on the caller's thread (one io-thread wake-up less
// per hop); its `done` still runs on the io thread. A frame that breaks the
// protocol closes only its connection, with a line on stderr naming the peer
// and a call of the link_error_handler; an orderly close by the peer is silent.
//
// Note: POSIX declares a function ::link, so code that says `using namespace
// orrery::messages` must spell the class messages::link.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "messages/frame.hpp"
#include "messages/tcp_transport.hpp"
#include "messages/transport.hpp"

namespace orrery::messages {

namespace detail {
class connection;
struct plane_core;
}  // namespace detail

/// A frame delivered to the frame handler: checksum verified, bytes in place.
struct received_frame {
  frame_descriptor descriptor;
  /// What the allocator returned; keeps `data` alive.
  std::shared_ptr<void> storage;
  /// descriptor.byte_length bytes.
  std::byte* data = nullptr;
  /// host:port of the sending end.
  std::string peer;
};

/// Called on the io thread once a descriptor has been fully validated: returns
/// the storage (kept alive by received_frame) and where to read byte_length bytes
/// into. Throwing closes that connection as failed.
using frame_allocator = std::function<std::pair<std::shared_ptr<void>, std::byte*>(const frame_descriptor&)>;

/// Called on the io thread with each frame whose checksum passed, in the order
/// each connection sent them.
using frame_handler = std::function<void(received_frame)>;

/// Called on the io thread when a connection fails (malformed frame, peer gone
/// mid-frame, stream error); `peer` is host:port.
using link_error_handler = std::function<void(const std::string& peer, const std::string& problem)>;

/// Settings of one data_plane.
struct data_plane_options {
  std::string bind_address = "127.0.0.1";
  /// 0 picks an ephemeral port; data_plane::port() tells which.
  std::uint16_t port = 0;
  /// Largest payload accepted from (and sent to) a peer.
  std::uint64_t max_frame_bytes = 1ull << 31;
  /// Bytes a peer may have in flight towards this data plane.
  std::uint64_t credit_bytes = 64ull << 20;
  /// What carries the frames, both ways: listening, connecting, the streams.
  /// Never null.
  std::shared_ptr<messages::transport> transport = plain_tcp();
};

/// Failure to set up a data plane or a link; the message names the address.
class data_plane_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An outgoing connection to another data_plane. Thread-safe.
class link {
 public:
  /// Completion of one send; `error` is empty on success.
  using completion = std::function<void(const std::string& error)>;

  /// Queues one frame; frames go out in the order send() was called. Fills
  /// `d.byte_length` and `d.checksum` (computed here, on the caller's thread).
  /// `data` (byte_length bytes) must stay valid until `done` runs; the link holds
  /// `keepalive` until then. `done` runs once the bytes are written or the
  /// frame failed (invalid shape, link closed); it is never dropped. It runs on
  /// the io thread, except for a small frame on an idle link that the socket
  /// took whole from the caller's thread: then it runs there, before send()
  /// returns (waking the io thread for it would cost a latency-bound ring step
  /// a context switch). `done` must not take a lock the caller holds.
  void send(frame_descriptor d, const std::byte* data, std::shared_ptr<void> keepalive, completion done = {});

  /// A payload that is still arriving in `data` (a device-to-host copy in
  /// flight): wait(end) returns once bytes [0, end) are in place.
  struct arriving_payload {
    std::size_t piece_bytes = 0;
    std::function<void(std::size_t end)> wait;
  };

  /// send() for an arriving payload: the checksum is computed a piece at a
  /// time as each piece lands, so producing the payload overlaps
  /// checksumming it, and the frame is queued as soon as the last piece is in.
  void send(frame_descriptor d, const std::byte* data, std::shared_ptr<void> keepalive, completion done,
            const arriving_payload& arriving);

  /// host:port as passed to data_plane::connect.
  const std::string& peer() const;

  /// False once the link has been closed by either end or failed.
  bool is_open() const;

  /// Closes the link; frames not yet written complete with an error.
  void close();

  /// Bytes sent but not yet credited back by the peer (header and descriptor
  /// included); the credit rule of frame.hpp bounds it.
  std::uint64_t bytes_in_flight() const;

 private:
  friend class data_plane;
  explicit link(std::shared_ptr<detail::connection> connection);

  std::shared_ptr<detail::connection> connection_;
};

/// One per process: listens for links from peers, opens links to them, and
/// owns the io thread that runs both.
class data_plane {
 public:
  /// Binds and starts listening. @throws data_plane_error naming the address.
  data_plane(data_plane_options options, frame_allocator allocate, frame_handler deliver, link_error_handler report);

  /// Closes every connection (pending sends complete with an error) and joins the io thread.
  ~data_plane();

  data_plane(const data_plane&) = delete;
  data_plane& operator=(const data_plane&) = delete;

  /// The bound listening port.
  std::uint16_t port() const;

  /// Connects to the data plane at host:port and waits for its credit grant.
  /// Never call it from an io-thread callback.
  /// @throws data_plane_error naming host:port and the reason (refused, timed out, ...).
  std::shared_ptr<link> connect(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout);

 private:
  std::shared_ptr<detail::plane_core> core_;
};

}  // namespace orrery::messages
