// The data plane over real loopback sockets: round trips, credits, hostile
// peers (a raw Asio client writing malformed frames) and connect failures.

#include <doctest/doctest.h>

#include <boost/asio.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "messages/checksum.hpp"
#include "messages/data_plane.hpp"
#include "test/messages/recording_plane.hpp"

using namespace orrery::messages;
using orrery::element_type;
namespace messages = orrery::messages;  // `link` alone collides with POSIX ::link()
using namespace std::chrono_literals;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

using namespace orrery::test;

frame_descriptor descriptor_of(element_type type, std::vector<std::int64_t> shape, std::uint16_t source,
                               std::uint32_t step) {
  frame_descriptor d;
  // The stage field tells the sending link: 1000 * link + step is the request.
  d.route = forward_route{source, 1000ull * source + step, step, 0, {}};
  d.tensors = {{tensor_role::hidden, type, std::move(shape), 0}};
  return d;
}

const forward_route& route_of(const frame_descriptor& d) { return std::get<forward_route>(d.route); }
forward_route& route_of(frame_descriptor& d) { return std::get<forward_route>(d.route); }

/// A hostile or clumsy peer: a bare Asio socket connected to a data plane.
struct raw_client {
  explicit raw_client(std::uint16_t port) {
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
    socket.set_option(tcp::no_delay(true));
    header_bytes grant;  // every data plane grants its window first
    asio::read(socket, asio::buffer(grant));
    name = "127.0.0.1:" + std::to_string(socket.local_endpoint().port());
  }
  void write(const bytes& b) { asio::write(socket, asio::buffer(b)); }
  /// Whether the other end closed the connection within `timeout`.
  bool closed_by_peer(std::chrono::milliseconds timeout) {
    std::array<char, 256> sink;
    bool closed = false;
    std::function<void()> read = [&] {
      socket.async_read_some(asio::buffer(sink), [&](boost::system::error_code ec, std::size_t) {
        if (ec)
          closed = true;
        else
          read();
      });
    };
    read();
    io.run_for(timeout);
    return closed;
  }
  asio::io_context io;
  tcp::socket socket{io};
  std::string name;
};

bytes concat(std::initializer_list<bytes> parts) {
  bytes out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

bytes header(frame_kind kind, std::uint32_t descriptor_length, std::uint64_t value) {
  auto h = encode_header({kind, descriptor_length, value});
  return bytes(h.begin(), h.end());
}

/// header + descriptor + payload exactly as a correct sender would write them,
/// with `tamper` applied to the descriptor first.
bytes frame_bytes(const bytes& payload, const std::function<void(frame_descriptor&)>& tamper = {},
                  std::uint64_t header_payload_length = ~0ull) {
  auto d = descriptor_of(element_type::f32, {std::int64_t(payload.size() / 4)}, 9, 0);
  d.byte_length = payload.size();
  d.tensors[0].byte_length = payload.size();
  d.checksum = checksum_of(payload.data(), payload.size());
  if (tamper) tamper(d);
  auto descriptor = encode_descriptor(d);
  auto length = header_payload_length == ~0ull ? d.byte_length : header_payload_length;
  return concat({header(frame_kind::tensor, std::uint32_t(descriptor.size()), length), descriptor, payload});
}

}  // namespace

TEST_CASE("frames of every size and dtype cross several links intact and in order") {
  endpoint receiver, sender;
  constexpr int link_count = 3;
  std::vector<std::vector<frame_descriptor>> plans(link_count);
  for (std::uint16_t l = 0; l < link_count; ++l) {
    for (auto type : {element_type::f32, element_type::f16, element_type::bf16, element_type::i64, element_type::i32}) {
      std::int64_t four_kib = 4096 / std::int64_t(element_size(type));
      for (std::vector<std::int64_t> shape :
           {std::vector<std::int64_t>{0}, {1}, {1023}, {four_kib}, {3, 333}, {2, 0, 5}}) {
        plans[l].push_back(descriptor_of(type, shape, l, std::uint32_t(plans[l].size())));
      }
    }
  }
  plans[0].push_back(descriptor_of(element_type::f32, {16, 1 << 20}, 0, std::uint32_t(plans[0].size())));  // 64 MiB
  std::size_t total = 0;
  for (const auto& p : plans) total += p.size();

  auto& completions = sender.box.completions;
  std::vector<std::shared_ptr<messages::link>> links;
  for (int l = 0; l < link_count; ++l) links.push_back(sender.connect_to(receiver));
  std::vector<std::thread> threads;
  for (int l = 0; l < link_count; ++l)
    threads.emplace_back([&, l] {
      for (const auto& d : plans[l]) send_pattern(*links[l], d, sender.box);
    });
  for (auto& t : threads) t.join();
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == total; }));

  std::vector<std::uint32_t> next_step(link_count, 0);
  for (const auto& f : receiver.box.frames) {
    const auto& d = f.descriptor;
    const auto& route = route_of(d);
    REQUIRE(route.stage < link_count);
    const auto& sent = plans[route.stage][next_step[route.stage]++];
    CAPTURE(route.stage);
    CAPTURE(route.step);
    CHECK(route.step == route_of(sent).step);  // order per link
    CHECK(route.request == route_of(sent).request);
    REQUIRE(d.tensors.size() == 1);
    CHECK(d.tensors[0].type == sent.tensors[0].type);
    CHECK(d.tensors[0].shape == sent.tensors[0].shape);
    CHECK(d.byte_length == byte_length_of(sent));
    CHECK(f.peer.rfind("127.0.0.1:", 0) == 0);
    auto expected = pattern(d.byte_length, route.request);
    CHECK(std::memcmp(f.data, expected.data(), expected.size()) == 0);
  }
  REQUIRE(sender.box.wait([&] { return completions.size() == total; }));
  std::lock_guard<std::mutex> guard(sender.box.mutex);
  CHECK(std::all_of(completions.begin(), completions.end(), [](const std::string& e) { return e.empty(); }));
}

TEST_CASE("an orderly close is no failure on either side") {
  endpoint receiver, sender;
  std::vector<std::shared_ptr<messages::link>> links;
  for (int l = 0; l < 3; ++l) links.push_back(sender.connect_to(receiver));
  for (auto& l : links) l->close();
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::any_of(links.begin(), links.end(), [](auto& l) { return l->is_open(); }) &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  CHECK(std::none_of(links.begin(), links.end(), [](auto& l) { return l->is_open(); }));
  std::this_thread::sleep_for(50ms);  // the receiving side sees the close too
  std::lock_guard<std::mutex> receiver_guard(receiver.box.mutex), sender_guard(sender.box.mutex);
  CHECK(receiver.box.failures.empty());
  CHECK(sender.box.failures.empty());
}

TEST_CASE("credits bound the bytes in flight towards a slow receiver, and nothing is lost") {
  constexpr std::uint64_t window = 64 << 10;
  data_plane_options options;
  options.credit_bytes = window;
  endpoint receiver(options), sender;
  auto l = sender.connect_to(receiver);

  constexpr int frame_count = 40;
  auto frame = descriptor_of(element_type::f32, {4096}, 0, 0);  // 16 KiB
  auto cost = wire_size(encode_descriptor(frame).size(), byte_length_of(frame));
  std::atomic<int> written{0};
  std::atomic<int> handled{0};
  std::atomic<std::uint64_t> worst_in_flight{0};
  std::atomic<int> worst_ahead{0};
  receiver.box.on_frame = [&](const received_frame&) {
    // Frames written but not yet handled here can only be those the window allows.
    worst_ahead = std::max(worst_ahead.load(), written.load() - handled.load());
    worst_in_flight = std::max(worst_in_flight.load(), l->bytes_in_flight());
    std::this_thread::sleep_for(5ms);
    ++handled;
  };
  auto payload = std::make_shared<bytes>(pattern(byte_length_of(frame), 1));
  for (std::uint32_t step = 0; step < frame_count; ++step) {
    auto d = frame;
    route_of(d).step = step;
    l->send(d, payload->data(), payload, [&](const std::string& error) {
      CHECK(error.empty());
      ++written;
    });
  }
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == frame_count; }));
  for (std::uint32_t step = 0; step < frame_count; ++step) CHECK(route_of(receiver.box.frames[step].descriptor).step == step);
  CHECK(worst_ahead.load() <= int(window / cost));
  CHECK(worst_ahead.load() >= 2);  // the window was used, not just one frame at a time
  CHECK(worst_in_flight.load() <= window);
  CHECK(worst_in_flight.load() > 0);
}

TEST_CASE("small frames are answered by one credit once a sixteenth of the window is owed, and a frame the held-back credit would stop still goes") {
  constexpr std::uint64_t window = 64 << 10;  // a sixteenth: 4 KiB
  data_plane_options options;
  options.credit_bytes = window;
  endpoint receiver(options), sender(options);
  auto l = sender.connect_to(receiver);
  auto send = [&](std::int64_t floats, std::uint32_t step) {
    auto d = descriptor_of(element_type::f32, {floats}, 0, step);
    auto payload = std::make_shared<bytes>(pattern(byte_length_of(d), step));
    l->send(d, payload->data(), payload, [](const std::string& error) { CHECK(error.empty()); });
    return wire_size(encode_descriptor(d).size(), byte_length_of(d));
  };
  std::uint64_t small = 0;
  for (std::uint32_t step = 0; step < 3; ++step) small += send(256, step);  // 3 x 1 KiB
  REQUIRE(small < window / 16);
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == 3; }));
  std::this_thread::sleep_for(100ms);
  CHECK(l->bytes_in_flight() == small);  // handled, but the credit is held back
  // Beside what is in flight this frame exceeds the window: it goes because
  // no more than the held-back sixteenth is in flight.
  const auto large = send(16000, 3);
  REQUIRE(small + large > window);
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == 4; }));
  const auto expected = pattern(16000 * 4, 3);
  CHECK(std::memcmp(receiver.box.frames[3].data, expected.data(), expected.size()) == 0);
  // Now more than a sixteenth is owed: it comes back.
  bool returned = false;
  for (int i = 0; i < 200 && !returned; ++i) {
    returned = l->bytes_in_flight() == 0;
    if (!returned) std::this_thread::sleep_for(10ms);
  }
  CHECK(returned);
}

TEST_CASE("a small frame on an idle link completes on the sending thread, before send returns") {
  endpoint receiver, sender;
  auto l = sender.connect_to(receiver);
  std::this_thread::sleep_for(50ms);  // the opening credit grants have crossed: the link is idle
  auto d = descriptor_of(element_type::f32, {64}, 0, 0);
  auto payload = std::make_shared<bytes>(pattern(byte_length_of(d), 0));
  std::thread::id completed_on;
  bool completed = false;
  l->send(d, payload->data(), payload, [&](const std::string& error) {
    CHECK(error.empty());
    completed_on = std::this_thread::get_id();
    completed = true;
  });
  CHECK(completed);
  CHECK(completed_on == std::this_thread::get_id());
  REQUIRE(receiver.box.wait([&] { return receiver.box.frames.size() == 1; }));
  CHECK(std::memcmp(receiver.box.frames[0].data, payload->data(), payload->size()) == 0);
}

TEST_CASE("a malformed frame closes only its own connection, reported with the peer, without allocating its claim") {
  endpoint receiver, sender;
  auto good = sender.connect_to(receiver);
  auto payload = pattern(1024, 3);

  struct hostile_case {
    const char* name;
    bytes wire;
    const char* problem;
    bool allocates_honest_size = false;  // descriptor valid: 1024 bytes may be allocated, nothing else
    bool client_hangs_up = false;
  };
  auto corrupt = [](bytes b, std::size_t at, std::byte value) {
    b[at] = value;
    return b;
  };
  auto valid = frame_bytes(payload);
  auto flipped = valid;
  flipped.back() ^= std::byte{1};
  std::vector<hostile_case> cases = {
      {"bad magic", corrupt(valid, 0, std::byte{'X'}), "bad magic"},
      {"unknown version", corrupt(valid, 4, std::byte{9}), "unknown version 9"},
      {"unknown kind", corrupt(valid, 5, std::byte{7}), "unknown frame kind 7"},
      {"descriptor length over the limit", header(frame_kind::tensor, 1 << 20, 1024), "descriptor length"},
      {"payload length over the limit", frame_bytes(payload, {}, 1ull << 40), "exceeds the limit"},
      {"header payload length lies", frame_bytes(payload, {}, 1 << 20), "header payload length"},
      {"byte length disagrees with shape",
       frame_bytes(
           payload, [](frame_descriptor& d) { d.tensors[0].byte_length = 1 << 20; }, 1 << 20),
       "disagrees with shape"},
      {"unknown dtype", frame_bytes(payload, [](frame_descriptor& d) { d.tensors[0].type = element_type(9); }),
       "unknown element type 9"},
      {"negative dimension", frame_bytes(payload, [](frame_descriptor& d) { d.tensors[0].shape = {-256}; }), "negative"},
      {"shape overflows",
       frame_bytes(payload,
                   [](frame_descriptor& d) {
                     d.tensors[0].shape = {1ll << 40, 1ll << 40};
                   }),
       "exceeds the limit"},
      {"garbage Cap'n Proto", concat({header(frame_kind::tensor, 64, 1024), bytes(64, std::byte{0xA5}), payload}),
       "Cap'n Proto"},
      {"checksum mismatch", flipped, "checksum mismatch", true},
      {"disconnect mid-frame", bytes(valid.begin(), valid.end() - 512), "mid-frame", true, true},
      {"credit never lent", concat({header(frame_kind::credit, 0, 1 << 20), header(frame_kind::credit, 0, 4096)}),
       "credit"},
  };

  for (auto& c : cases) {
    CAPTURE(c.name);
    std::size_t allocations_before = 0;
    receiver.box.note([&] { allocations_before = receiver.box.allocations.size(); });
    raw_client client(receiver.plane.port());
    client.write(c.wire);
    if (c.client_hangs_up)
      client.socket.close();
    else
      CHECK(client.closed_by_peer(5s));
    REQUIRE(receiver.box.wait([&] {
      return std::any_of(receiver.box.failures.begin(), receiver.box.failures.end(),
                         [&](const auto& f) { return f.first == client.name; });
    }));
    {
      std::lock_guard<std::mutex> guard(receiver.box.mutex);
      auto failure = std::find_if(receiver.box.failures.begin(), receiver.box.failures.end(),
                                  [&](const auto& f) { return f.first == client.name; });
      CHECK_MESSAGE(failure->second.find(c.problem) != std::string::npos, failure->second);
      for (auto i = allocations_before; i < receiver.box.allocations.size(); ++i) {
        CHECK(c.allocates_honest_size);
        CHECK(receiver.box.allocations[i] == 1024);
      }
    }
    // The well-behaved link on the same data plane keeps delivering.
    auto before = receiver.box.frame_count();
    send_pattern(*good, descriptor_of(element_type::i64, {33}, 1, std::uint32_t(before)), sender.box);
    CHECK(receiver.box.wait([&] { return receiver.box.frames.size() == before + 1; }));
    CHECK(good->is_open());
  }
  std::lock_guard<std::mutex> receiver_guard(receiver.box.mutex), sender_guard(sender.box.mutex);
  CHECK(receiver.box.failures.size() == cases.size());
  CHECK(sender.box.failures.empty());
}

TEST_CASE("connect fails within its timeout, naming host:port and the reason") {
  endpoint local;
  std::uint16_t closed_port;
  {
    asio::io_context io;
    tcp::acceptor probe(io, {asio::ip::make_address("127.0.0.1"), 0});
    closed_port = probe.local_endpoint().port();
  }
  auto failure_of = [&](const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout) {
    auto start = std::chrono::steady_clock::now();
    std::string message;
    try {
      local.plane.connect(host, port, timeout);
    } catch (const data_plane_error& e) {
      message = e.what();
    }
    CHECK(std::chrono::steady_clock::now() - start < timeout + 500ms);
    return message;
  };
  auto refused = failure_of("127.0.0.1", closed_port, 2s);
  CHECK(refused.find("127.0.0.1:" + std::to_string(closed_port)) != std::string::npos);
  CHECK(refused.find("refused") != std::string::npos);

  // A listener that never speaks the protocol never grants credit.
  asio::io_context io;
  tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
  auto mute = failure_of("127.0.0.1", silent.local_endpoint().port(), 300ms);
  CHECK(mute.find("127.0.0.1:" + std::to_string(silent.local_endpoint().port())) != std::string::npos);
  CHECK(mute.find("timed out") != std::string::npos);
  std::lock_guard<std::mutex> guard(local.box.mutex);
  CHECK(local.box.failures.empty());
}

TEST_CASE("stopping a data plane completes every queued frame, never drops one") {
  data_plane_options options;
  options.credit_bytes = 64 << 10;
  endpoint receiver(options);
  receiver.box.on_frame = [](const received_frame&) { std::this_thread::sleep_for(10ms); };
  auto sender = std::make_unique<endpoint>();
  auto l = sender->connect_to(receiver);
  inbox completed;  // outlives the sender's data plane
  auto& completions = completed.completions;
  for (std::uint32_t step = 0; step < 20; ++step)
    send_pattern(*l, descriptor_of(element_type::f32, {8192}, 0, step), completed);
  sender.reset();
  CHECK(completions.size() == 20);
  CHECK(std::any_of(completions.begin(), completions.end(),
                    [](const std::string& e) { return e.find("data plane stopped") != std::string::npos; }));
  CHECK_FALSE(l->is_open());
  send_pattern(*l, descriptor_of(element_type::f32, {1}, 0, 20), completed);
  CHECK(completions.size() == 21);
  CHECK(completions.back().find("closed") != std::string::npos);
}
