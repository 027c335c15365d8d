#pragma once
// What the data plane needs from the wire beneath it: a byte stream that reads
// and writes asynchronously, and a transport that listens for and connects to
// peers, producing ready streams (ARCHITECTURE.md, "Seams every parallel
// layout uses": TCP, then TLS). The data plane's protocol (frames, credits,
// checks) sits on top and is the same over every transport, as KJ's
// AsyncIoStream carries any protocol and gloo's tcp/tls sits beside tcp/.
//
// Plain TCP is messages/tcp_transport.hpp. A TLS transport is one more
// implementation: its listener accepts TCP, runs the server handshake and only
// then passes the stream on; its connect resolves, connects, runs the client
// handshake and only then completes. A stream reaches the data plane ready to
// carry frames, so the protocol never sees a handshake. The data plane's
// connect timeout bounds a dialer's handshake (it cancels the connect); on the
// accepting side only the listener can bound it, so a TLS listener needs a
// deadline of its own for a dialer that never speaks.
//
// Cost: the data plane starts one operation per system call it wants, through
// one virtual call each; completions are stored inline (io_completion), so no
// operation allocates.

#include <boost/asio/buffer.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <utility>

namespace orrery::messages {

/// Buffers one gathered write takes at most, as one writev in Asio takes (the
/// data plane batches frames to fit).
inline constexpr std::size_t max_gather_buffers = 64;

/// The buffers of one gathered write, in order; a view of buffers the caller
/// owns. It is a ConstBufferSequence, so an implementation hands it to Asio as
/// it is (no copy into a container per write).
class const_buffer_span {
 public:
  using value_type = boost::asio::const_buffer;
  using const_iterator = const boost::asio::const_buffer*;

  const_buffer_span(const boost::asio::const_buffer* first, std::size_t count) : first_(first), count_(count) {}

  const_iterator begin() const { return first_; }
  const_iterator end() const { return first_ + count_; }
  std::size_t size() const { return count_; }

 private:
  const boost::asio::const_buffer* first_;
  std::size_t count_;
};

/// Completion of one stream operation, called once on the io thread with the
/// error (empty on success) and the bytes transferred. The callable is stored
/// inline: libstdc++'s std::function keeps nothing inline that is not
/// trivially copyable (a captured shared_ptr is not), so it would allocate
/// for every read and write. A callable that does not fit fails to compile.
class io_completion {
 public:
  static constexpr std::size_t capacity = 4 * sizeof(void*);

  io_completion() = default;

  template <typename Callable, typename = std::enable_if_t<!std::is_same_v<std::decay_t<Callable>, io_completion>>>
  // Implicit, as std::function's is: a lambda converts where a completion is expected.
  io_completion(Callable&& callable) {
    using stored = std::decay_t<Callable>;
    static_assert(sizeof(stored) <= capacity && alignof(stored) <= alignof(std::max_align_t),
                  "io_completion stores its callable inline: capture less (a shared_ptr to the state, say)");
    static_assert(std::is_nothrow_move_constructible_v<stored>, "io_completion moves its callable");
    new (&storage_) stored(std::forward<Callable>(callable));
    operations_ = &operations_of<stored>;
  }

  io_completion(io_completion&& other) noexcept : operations_(std::exchange(other.operations_, nullptr)) {
    if (operations_) operations_->move(&other.storage_, &storage_);
  }

  io_completion& operator=(io_completion&& other) noexcept {
    if (this != &other) {
      reset();
      if ((operations_ = std::exchange(other.operations_, nullptr))) operations_->move(&other.storage_, &storage_);
    }
    return *this;
  }

  io_completion(const io_completion&) = delete;
  io_completion& operator=(const io_completion&) = delete;

  ~io_completion() { reset(); }

  explicit operator bool() const { return operations_ != nullptr; }

  void operator()(const boost::system::error_code& error, std::size_t bytes) {
    operations_->call(&storage_, error, bytes);
  }

 private:
  struct operations {
    void (*call)(void* callable, const boost::system::error_code& error, std::size_t bytes);
    // Moves the callable from `from` to `to` and destroys what is left in `from`.
    void (*move)(void* from, void* to);
    void (*destroy)(void* callable);
  };

  template <typename Stored>
  static constexpr operations operations_of{
      [](void* callable, const boost::system::error_code& error, std::size_t bytes) {
        (*static_cast<Stored*>(callable))(error, bytes);
      },
      [](void* from, void* to) {
        new (to) Stored(std::move(*static_cast<Stored*>(from)));
        static_cast<Stored*>(from)->~Stored();
      },
      [](void* callable) { static_cast<Stored*>(callable)->~Stored(); }};

  void reset() {
    if (auto* o = std::exchange(operations_, nullptr)) o->destroy(&storage_);
  }

  std::aligned_storage_t<capacity, alignof(std::max_align_t)> storage_;
  const operations* operations_ = nullptr;
};

/// A connected stream of bytes to one peer, ready to carry frames (any
/// handshake is done). The data plane keeps at most one read and one write in
/// flight at a time, and calls everything on the io thread of the io_context
/// the stream was made in, except write_now: that comes from a sender's
/// thread, while a read may be in flight on the io thread.
class byte_stream {
 public:
  virtual ~byte_stream() = default;

  /// Writes some bytes from `buffers` (at most max_gather_buffers); `done`
  /// gets how many. The buffers and their bytes stay valid until then.
  virtual void async_write_some(const_buffer_span buffers, io_completion done) = 0;

  /// Writes what the stream takes at once without blocking, on the calling
  /// thread, and returns how many bytes that was; called only while no write
  /// is in flight. A stream whose state belongs to the io thread (TLS: the
  /// session encrypts and sequences records) returns 0, and the data plane
  /// writes the bytes with async_write_some instead.
  virtual std::size_t write_now(const_buffer_span buffers) = 0;

  /// Reads at least one byte into `buffer`; `done` gets how many. An orderly
  /// end of the stream completes with boost::asio::error::eof.
  virtual void async_read_some(boost::asio::mutable_buffer buffer, io_completion done) = 0;

  /// Closes both directions; operations in flight complete with an error.
  virtual void close() = 0;

  /// host:port of the other end: as asked for by a connect, as seen by an accept.
  virtual const std::string& peer() const = 0;
};

/// Called once on the io thread with a ready stream, or with why there is none
/// (then `stream` is null).
using stream_handler = std::function<void(std::unique_ptr<byte_stream> stream, const std::string& problem)>;

/// Accepts peers on one bound address.
class listener {
 public:
  virtual ~listener() = default;

  /// The bound port (the ephemeral one picked when asked for 0).
  virtual std::uint16_t port() const = 0;

  /// Accepts peers until close(), calling `accepted` for each once its stream
  /// is ready (TLS: after the server handshake). A peer that fails before then
  /// reaches `accepted` with a problem; the listener keeps accepting.
  virtual void start(stream_handler accepted) = 0;

  /// Stops accepting and abandons handshakes in progress (a pending read
  /// would keep the io_context, and so a stopping data plane, waiting); no
  /// call of `accepted` follows. On the io thread.
  virtual void close() = 0;
};

/// A connect in progress.
class pending_connect {
 public:
  virtual ~pending_connect() = default;

  /// Gives up, handshake included: the connect completes with a problem soon
  /// unless it already has. On the io thread.
  virtual void cancel() = 0;
};

/// Makes byte streams of one kind (plain TCP, TLS, ...). Shared by every data
/// plane that uses it, so it holds no per-plane state.
class transport {
 public:
  virtual ~transport() = default;

  /// Binds address:port (0: an ephemeral port) and listens, in `io`.
  /// @throws std::runtime_error saying why (bad address, address in use, ...).
  virtual std::unique_ptr<listener> listen(boost::asio::io_context& io, const std::string& address,
                                           std::uint16_t port) = 0;

  /// Starts connecting to host:port; called on `io`'s thread, where `done`
  /// runs once the stream is ready to carry frames (TLS: after the client
  /// handshake) or with why it never will (refused, cannot resolve, ...).
  virtual std::shared_ptr<pending_connect> connect(boost::asio::io_context& io, const std::string& host,
                                                   std::uint16_t port, stream_handler done) = 0;
};

}  // namespace orrery::messages
