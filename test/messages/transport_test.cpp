// The data plane over a transport made here, to prove that the transport seam
// carries everything: frames, credit and failures. Its streams wrap plain TCP
// streams but write one byte per write, read at most 7 bytes per read, never
// write from a caller's thread, and count every byte. Were the data plane to
// reach past the seam anywhere (a socket of its own, a write assumed whole, a
// header assumed to arrive in one read), frames would tear or counts disagree.

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "messages/data_plane.hpp"
#include "test/messages/recording_plane.hpp"

using namespace orrery::messages;
using orrery::element_type;
namespace messages = orrery::messages;  // `link` alone collides with POSIX ::link()
using namespace std::chrono_literals;
namespace asio = boost::asio;
using boost::system::error_code;

namespace {

using namespace orrery::test;

/// What one stream moved, kept by the test after the stream is gone.
struct stream_tally {
  bool dialed = false;  // made by a connect, not an accept
  std::atomic<std::uint64_t> bytes_written{0};
  std::atomic<std::uint64_t> bytes_read{0};
  std::atomic<std::uint64_t> writes{0};
  std::atomic<std::uint64_t> direct_writes_refused{0};
};

/// The tallies of every stream a trickle_transport made.
struct transport_tally {
  std::mutex mutex;
  std::vector<std::shared_ptr<stream_tally>> streams;

  std::shared_ptr<stream_tally> add(bool dialed) {
    auto t = std::make_shared<stream_tally>();
    t->dialed = dialed;
    std::lock_guard<std::mutex> guard(mutex);
    streams.push_back(t);
    return t;
  }
  std::shared_ptr<stream_tally> only(bool dialed) {
    std::lock_guard<std::mutex> guard(mutex);
    std::shared_ptr<stream_tally> found;
    for (const auto& s : streams)
      if (s->dialed == dialed) {
        REQUIRE_FALSE(found);
        found = s;
      }
    REQUIRE(found);
    return found;
  }
};

constexpr std::size_t read_piece = 7;

/// A TCP stream that trickles: one byte per write, at most read_piece bytes
/// per read. After `break_after` written bytes its writes fail, as over a cut
/// cable.
class trickle_stream final : public byte_stream {
 public:
  trickle_stream(std::unique_ptr<byte_stream> inner, std::shared_ptr<stream_tally> tally, std::uint64_t break_after)
      : inner_(std::move(inner)), tally_(std::move(tally)), break_after_(break_after) {}

  void async_write_some(const_buffer_span buffers, io_completion done) override {
    // The data plane's completion, kept here, keeps its connection and so this
    // stream alive: the inner completions need capture only `this`.
    write_done_ = std::move(done);
    if (tally_->bytes_written >= break_after_) {
      // An empty write completes at once (on the io thread, as completions
      // must), and then reports the cut.
      inner_->async_write_some(const_buffer_span(&piece_, 0), [this](const error_code&, std::size_t) {
        std::exchange(write_done_, {})(asio::error::connection_reset, 0);
      });
      return;
    }
    // The data plane never starts a write of nothing.
    auto first = std::find_if(buffers.begin(), buffers.end(), [](const auto& b) { return b.size() > 0; });
    piece_ = asio::const_buffer(first->data(), 1);
    inner_->async_write_some(const_buffer_span(&piece_, 1), [this](const error_code& ec, std::size_t n) {
      tally_->bytes_written += n;
      ++tally_->writes;
      std::exchange(write_done_, {})(ec, n);
    });
  }

  std::size_t write_now(const_buffer_span) override {
    ++tally_->direct_writes_refused;
    return 0;
  }

  void async_read_some(asio::mutable_buffer buffer, io_completion done) override {
    read_done_ = std::move(done);
    inner_->async_read_some(asio::buffer(buffer.data(), std::min(buffer.size(), read_piece)),
                            [this](const error_code& ec, std::size_t n) {
                              tally_->bytes_read += n;
                              std::exchange(read_done_, {})(ec, n);
                            });
  }

  void close() override { inner_->close(); }
  const std::string& peer() const override { return inner_->peer(); }

 private:
  std::unique_ptr<byte_stream> inner_;
  std::shared_ptr<stream_tally> tally_;
  const std::uint64_t break_after_;
  asio::const_buffer piece_;
  io_completion write_done_;
  io_completion read_done_;
};

/// Plain TCP underneath, trickle streams on top.
class trickle_transport final : public transport {
 public:
  explicit trickle_transport(std::uint64_t break_after = ~0ull) : break_after_(break_after) {}

  std::unique_ptr<listener> listen(asio::io_context& io, const std::string& address, std::uint16_t port) override {
    return std::make_unique<wrapping_listener>(plain_tcp()->listen(io, address, port), wrapping(false));
  }

  std::shared_ptr<pending_connect> connect(asio::io_context& io, const std::string& host, std::uint16_t port,
                                           stream_handler done) override {
    return plain_tcp()->connect(io, host, port, [wrap = wrapping(true), done](auto stream, const std::string& p) {
      done(wrap(std::move(stream)), p);
    });
  }

  transport_tally tally;

 private:
  using wrapper = std::function<std::unique_ptr<byte_stream>(std::unique_ptr<byte_stream>)>;

  wrapper wrapping(bool dialed) {
    return [this, dialed](std::unique_ptr<byte_stream> stream) -> std::unique_ptr<byte_stream> {
      if (!stream) return nullptr;
      return std::make_unique<trickle_stream>(std::move(stream), tally.add(dialed), break_after_);
    };
  }

  class wrapping_listener final : public listener {
   public:
    wrapping_listener(std::unique_ptr<listener> inner, wrapper wrap) : inner_(std::move(inner)), wrap_(std::move(wrap)) {}
    std::uint16_t port() const override { return inner_->port(); }
    void start(stream_handler accepted) override {
      inner_->start([wrap = wrap_, accepted](auto stream, const std::string& p) { accepted(wrap(std::move(stream)), p); });
    }
    void close() override { inner_->close(); }

   private:
    std::unique_ptr<listener> inner_;
    wrapper wrap_;
  };

  const std::uint64_t break_after_;
};

/// One end of a handshake: the stream, the byte it sends or expects, and who
/// gets the stream once the handshake is done.
struct handshake : std::enable_shared_from_this<handshake> {
  using step = void (*)(handshake&);

  handshake(std::unique_ptr<byte_stream> s, stream_handler d) : stream(std::move(s)), done(std::move(d)) {}

  void send(char c, step next) {
    byte = c;
    piece = asio::const_buffer(&byte, 1);
    stream->async_write_some(const_buffer_span(&piece, 1),
                             [self = shared_from_this(), next](const error_code& ec, std::size_t) {
                               if (ec) return self->fail(ec.message());
                               next(*self);
                             });
  }

  void expect(char c, step next) {
    stream->async_read_some(asio::buffer(&byte, 1),
                            [self = shared_from_this(), c, next](const error_code& ec, std::size_t) {
                              if (ec) return self->fail(ec.message());
                              if (self->byte != c)
                                return self->fail(std::string("expected '") + c + "', got '" + self->byte + "'");
                              next(*self);
                            });
  }

  void succeed() {
    if (done) std::exchange(done, {})(std::move(stream), "");
  }

  void fail(const std::string& why) {
    if (!done) return;
    auto peer = stream->peer();
    stream->close();
    std::exchange(done, {})(nullptr, "handshake with " + peer + " failed: " + why);
  }

  /// Closes the stream under the operation in flight, which then fails.
  void interrupt() {
    if (stream) stream->close();
  }

  std::unique_ptr<byte_stream> stream;
  stream_handler done;
  char byte = 0;
  asio::const_buffer piece;
};

/// A transport with a handshake, as TLS has one: over plain TCP the dialer
/// sends `hello`, the listener answers `welcome`, and only then does either
/// data plane get the stream.
class handshaking_transport final : public transport {
 public:
  static constexpr char hello = 'H';
  static constexpr char welcome = 'W';

  std::unique_ptr<listener> listen(asio::io_context& io, const std::string& address, std::uint16_t port) override {
    return std::make_unique<answering_listener>(plain_tcp()->listen(io, address, port), refused);
  }

  std::shared_ptr<pending_connect> connect(asio::io_context& io, const std::string& host, std::uint16_t port,
                                           stream_handler done) override {
    auto attempt = std::make_shared<dialing>();
    // Weak: the TCP connect holds this handler, and the attempt holds the TCP connect.
    attempt->tcp = plain_tcp()->connect(
        io, host, port, [weak = std::weak_ptr<dialing>(attempt), done](auto stream, const std::string& problem) {
          auto attempt = weak.lock();
          if (!attempt || !stream) return done(nullptr, problem);
          attempt->shake = std::make_shared<handshake>(std::move(stream), done);
          attempt->shake->send(hello, [](handshake& h) { h.expect(welcome, [](handshake& h) { h.succeed(); }); });
        });
    return attempt;
  }

  /// Dialers the listeners turned away.
  std::atomic<int> refused{0};

 private:
  struct dialing final : pending_connect {
    void cancel() override {
      tcp->cancel();
      if (shake) shake->interrupt();
    }
    std::shared_ptr<pending_connect> tcp;
    std::shared_ptr<handshake> shake;
  };

  class answering_listener final : public listener {
   public:
    answering_listener(std::unique_ptr<listener> inner, std::atomic<int>& refused)
        : inner_(std::move(inner)), refused_(refused) {}

    std::uint16_t port() const override { return inner_->port(); }

    void start(stream_handler accepted) override {
      inner_->start([this, accepted](auto stream, const std::string& problem) {
        if (!stream) return accepted(nullptr, problem);
        auto h = std::make_shared<handshake>(std::move(stream), [this, accepted](auto ready, const std::string& p) {
          if (!ready) ++refused_;
          accepted(std::move(ready), p);
        });
        in_progress_.push_back(h);
        h->expect(hello, [](handshake& h) { h.send(welcome, [](handshake& h) { h.succeed(); }); });
      });
    }

    void close() override {
      inner_->close();
      for (const auto& w : in_progress_)
        if (auto h = w.lock()) {
          h->done = nullptr;
          h->interrupt();
        }
    }

   private:
    std::unique_ptr<listener> inner_;
    std::atomic<int>& refused_;
    std::vector<std::weak_ptr<handshake>> in_progress_;
  };
};

data_plane_options over(std::shared_ptr<transport> t, std::uint64_t credit_bytes = 64ull << 20) {
  data_plane_options options;
  options.transport = std::move(t);
  options.credit_bytes = credit_bytes;
  return options;
}

frame_descriptor descriptor_of(element_type type, std::vector<std::int64_t> shape, std::uint64_t request) {
  frame_descriptor d;
  d.route = forward_route{1, request, std::uint32_t(request), 0, {}};
  d.tensors = {{tensor_role::hidden, type, std::move(shape), 0}};
  return d;
}

std::uint64_t wire_size_of(const frame_descriptor& d) { return wire_size(encode_descriptor(d).size(), d.byte_length); }

}  // namespace

TEST_CASE("the data plane carries frames and credit intact over a stream that trickles a byte at a time") {
  auto trickle = std::make_shared<trickle_transport>();
  // A window smaller than the frames below: credit must come back, through
  // the same trickle, before most frames may go.
  constexpr std::uint64_t window = 2048;
  endpoint receiver(over(trickle, window)), sender(over(trickle));
  auto l = sender.plane.connect("127.0.0.1", receiver.plane.port(), 5s);

  std::vector<frame_descriptor> plan;
  std::uint64_t request = 0;
  for (std::vector<std::int64_t> shape : {std::vector<std::int64_t>{0}, {1}, {3, 5}, {1023}, {600}, {2, 0, 5}})
    for (auto type : {element_type::f32, element_type::bf16, element_type::i64})
      plan.push_back(descriptor_of(type, shape, ++request));
  // The first frame goes once the sender's grant is out, on an idle link, so
  // the data plane tries to write it from this thread; the rest go at once.
  auto dialed = trickle->tally.only(true);
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (dialed->bytes_written < frame_header_size && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  send_pattern(*l, plan.front(), sender.box);
  REQUIRE(sender.box.wait([&] { return sender.box.completions.size() == 1; }));
  for (std::size_t i = 1; i < plan.size(); ++i) send_pattern(*l, plan[i], sender.box);
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == plan.size(); }));
  REQUIRE(sender.box.wait([&] { return sender.box.completions.size() == plan.size(); }));

  std::uint64_t frame_bytes = 0;
  {
    std::lock_guard<std::mutex> guard(receiver.box.mutex);
    for (std::size_t i = 0; i < plan.size(); ++i) {
      const auto& got = receiver.box.frames[i];
      CAPTURE(i);
      CHECK(request_of(got.descriptor) == request_of(plan[i]));  // in order
      REQUIRE(got.descriptor.tensors.size() == 1);
      CHECK(got.descriptor.tensors[0].type == plan[i].tensors[0].type);
      CHECK(got.descriptor.tensors[0].shape == plan[i].tensors[0].shape);
      auto expected = pattern(got.descriptor.byte_length, request_of(plan[i]));
      CHECK(std::memcmp(got.data, expected.data(), expected.size()) == 0);
      CHECK(got.peer.rfind("127.0.0.1:", 0) == 0);
      frame_bytes += wire_size_of(got.descriptor);
    }
    CHECK(frame_bytes > 4 * window);
  }
  {
    std::lock_guard<std::mutex> guard(sender.box.mutex);
    CHECK(std::all_of(sender.box.completions.begin(), sender.box.completions.end(), [](const auto& e) { return e.empty(); }));
  }
  // Every credited byte came back through the trickle.
  deadline = std::chrono::steady_clock::now() + 5s;
  while (l->bytes_in_flight() > 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  CHECK(l->bytes_in_flight() == 0);

  auto accepted = trickle->tally.only(false);
  // The sender wrote its grant and the frames, one byte per write and nothing
  // from its own threads; the receiver wrote its grant and returned credit
  // in whole credit frames.
  CHECK(dialed->bytes_written == frame_header_size + frame_bytes);
  CHECK(dialed->writes == dialed->bytes_written);
  CHECK(dialed->direct_writes_refused > 0);
  CHECK(accepted->bytes_written % frame_header_size == 0);
  CHECK(accepted->bytes_written > 2 * frame_header_size);
  // Both ends read exactly what the other wrote.
  auto settled = std::chrono::steady_clock::now() + 5s;
  while (accepted->bytes_written != dialed->bytes_read && std::chrono::steady_clock::now() < settled)
    std::this_thread::sleep_for(1ms);
  CHECK(accepted->bytes_read == dialed->bytes_written);
  CHECK(dialed->bytes_read == accepted->bytes_written);
  std::lock_guard<std::mutex> receiver_guard(receiver.box.mutex), sender_guard(sender.box.mutex);
  CHECK(receiver.box.failures.empty());
  CHECK(sender.box.failures.empty());
}

TEST_CASE("a stream that breaks mid-frame fails its link at both ends, and no frame is dropped") {
  // The sender's stream gives out 100 bytes into the first frame's payload
  // (after its grant, the header and the descriptor). The receiver runs plain
  // TCP: the trickle is the same protocol on the wire.
  auto frame = descriptor_of(element_type::f32, {256}, 1);
  const std::uint64_t break_after = 2 * frame_header_size + encode_descriptor(frame).size() + 100;
  auto breaking = std::make_shared<trickle_transport>(break_after);
  endpoint receiver(over(plain_tcp())), sender(over(breaking));
  auto l = sender.plane.connect("127.0.0.1", receiver.plane.port(), 5s);
  constexpr int frame_count = 3;
  for (int i = 0; i < frame_count; ++i) send_pattern(*l, descriptor_of(element_type::f32, {256}, i + 1), sender.box);

  REQUIRE(sender.box.wait([&] { return sender.box.completions.size() == frame_count && !sender.box.failures.empty(); }));
  REQUIRE(receiver.box.wait([&] { return !receiver.box.failures.empty(); }));
  CHECK_FALSE(l->is_open());
  std::lock_guard<std::mutex> receiver_guard(receiver.box.mutex), sender_guard(sender.box.mutex);
  CHECK(receiver.box.frames.empty());
  for (const auto& e : sender.box.completions) CHECK(!e.empty());
  CHECK(sender.box.failures.front().first == "127.0.0.1:" + std::to_string(receiver.plane.port()));
  CHECK_MESSAGE(sender.box.failures.front().second.find("write failed") != std::string::npos, sender.box.failures.front().second);
  CHECK_MESSAGE(receiver.box.failures.front().second.find("mid-frame (100 of 1024 payload bytes)") != std::string::npos,
                receiver.box.failures.front().second);
  CHECK(breaking->tally.only(true)->bytes_written == break_after);
}

TEST_CASE("a transport's handshake is done before the data plane sees the stream; one refused or cut short fails the connect") {
  // A listener that never answers, outliving the data planes: the kernel
  // accepts for it, then nothing more happens.
  asio::io_context never_run;
  auto silent = plain_tcp()->listen(never_run, "127.0.0.1", 0);
  auto shaking = std::make_shared<handshaking_transport>();
  endpoint a(over(shaking)), b(over(shaking)), plain(over(plain_tcp()));

  // Both ends shake hands, and then frames flow as over TCP: the protocol
  // never sees the handshake's bytes.
  auto l = a.plane.connect("127.0.0.1", b.plane.port(), 5s);
  send_pattern(*l, descriptor_of(element_type::f32, {1000}, 1), a.box);
  REQUIRE(b.box.wait([&] { return b.box.frames.size() == 1; }));
  {
    std::lock_guard<std::mutex> guard(b.box.mutex);
    auto expected = pattern(4000, 1);
    CHECK(std::memcmp(b.box.frames[0].data, expected.data(), expected.size()) == 0);
  }

  auto failure_of = [](endpoint& from, std::uint16_t port, std::chrono::milliseconds timeout) {
    auto start = std::chrono::steady_clock::now();
    std::string message;
    try {
      from.plane.connect("127.0.0.1", port, timeout);
    } catch (const data_plane_error& e) {
      message = e.what();
    }
    CHECK(std::chrono::steady_clock::now() - start < timeout + 500ms);
    return message;
  };
  // A data plane that does not shake hands answers with its credit grant,
  // whose first byte is the 'O' of "ORRF".
  auto plain_port = std::to_string(plain.plane.port());
  CHECK(failure_of(a, plain.plane.port(), 5s) ==
        "connect to 127.0.0.1:" + plain_port + " failed: handshake with 127.0.0.1:" + plain_port +
            " failed: expected 'W', got 'O'");
  // A dialer that does not shake hands is turned away, and the listener goes on.
  CHECK(failure_of(plain, b.plane.port(), 5s).find("no credit grant from the peer") != std::string::npos);
  // The dialer can see its failure before the listener has counted the refusal.
  for (int attempt = 0; attempt < 100 && shaking->refused == 0; ++attempt) std::this_thread::sleep_for(10ms);
  CHECK(shaking->refused == 1);
  CHECK(a.plane.connect("127.0.0.1", b.plane.port(), 5s)->is_open());
  // Dialing the silent listener, the connect times out and cancels the
  // handshake in flight; were its read left pending, `a` could not stop.
  CHECK(failure_of(a, silent->port(), 300ms).find("timed out") != std::string::npos);
}
