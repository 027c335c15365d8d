#include "deploy/bench/dataplane_bench.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>

#include "messages/checksum.hpp"
#include "messages/data_plane.hpp"

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;

namespace orrery::messages {
namespace {

// What the child does with a frame: carried in the route's request (data plane) or the
// raw header's first word.
enum class traffic : std::uint64_t { echo = 1, stream = 2, stream_end = 3 };

/// The bare socket's framing: just enough for the child to know what follows.
struct raw_header {
  std::uint64_t kind;
  std::uint64_t size;
};

constexpr auto reply_timeout = std::chrono::seconds(30);

/// Completion condition for the raw side's asio::read/write: asio's
/// transfer_all caps each system call at 64 KiB, which would handicap the raw
/// socket against the data plane's own unbounded writev/recv.
struct transfer_unbounded {
  std::size_t operator()(const boost::system::error_code& error, std::size_t) const {
    return error ? 0 : std::size_t(-1) >> 1;
  }
};

/// Receive buffers recycled by size, so that both sides time the transport
/// rather than page faults on fresh memory. Storage returns itself on release.
class buffer_pool : public std::enable_shared_from_this<buffer_pool> {
 public:
  std::pair<std::shared_ptr<void>, std::byte*> take(std::size_t size) {
    std::byte* data = nullptr;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      auto& free = free_[size];
      if (!free.empty()) {
        data = free.back();
        free.pop_back();
      }
    }
    if (data == nullptr) data = new std::byte[std::max<std::size_t>(size, 1)];
    std::shared_ptr<void> storage(data, [self = shared_from_this(), size](void* p) {
      std::lock_guard<std::mutex> guard(self->mutex_);
      self->free_[size].push_back(static_cast<std::byte*>(p));
    });
    return {storage, data};
  }
  ~buffer_pool() {
    for (auto& [size, buffers] : free_)
      for (auto* b : buffers) delete[] b;
  }

 private:
  std::mutex mutex_;
  std::map<std::size_t, std::vector<std::byte*>> free_;
};

void write_all(int fd, const void* data, std::size_t size) {
  auto* p = static_cast<const char*>(data);
  while (size > 0) {
    auto n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("dataplane bench: pipe to the other process broke");
    p += n;
    size -= std::size_t(n);
  }
}

template <typename T>
T read_value(int fd) {
  T value{};
  auto* p = reinterpret_cast<char*>(&value);
  std::size_t got = 0;
  while (got < sizeof value) {
    auto n = ::read(fd, p + got, sizeof value - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw std::runtime_error("dataplane bench: the echo process exited early (see its lines on stderr)");
    got += std::size_t(n);
  }
  return value;
}

frame_descriptor bench_descriptor(traffic kind, std::uint64_t bytes, std::uint32_t step) {
  // The request field says what the echo process does with the frame.
  frame_descriptor d;
  d.route = forward_route{0, std::uint64_t(kind), step, 0, {}};
  d.tensors = {{tensor_role::hidden, element_type::f32, {std::int64_t(bytes / 4)}, 0}};
  return d;
}

void print_failure(const std::string& peer, const std::string& problem) {
  std::cerr << "dataplane bench: link " << peer << " failed: " << problem << std::endl;
}

// -- the echo process ---------------------------------------------------------

void serve_raw(tcp::socket& socket) {
  std::vector<std::byte> buffer;
  const std::byte ack{1};
  for (;;) {
    raw_header h{};
    boost::system::error_code ec;
    asio::read(socket, asio::buffer(&h, sizeof h), ec);
    if (ec) return;  // the parent is done
    if (buffer.size() < h.size) buffer.resize(h.size);
    asio::read(socket, asio::buffer(buffer.data(), h.size), transfer_unbounded{});
    if (traffic(h.kind) == traffic::echo)
      asio::write(socket, asio::buffer(buffer.data(), h.size), transfer_unbounded{});
    else if (traffic(h.kind) == traffic::stream_end)
      asio::write(socket, asio::buffer(&ack, 1));
  }
}

void serve(int from_parent, int to_parent, std::uint64_t credit_bytes) {
  auto pool = std::make_shared<buffer_pool>();
  std::mutex mutex;
  std::shared_ptr<link> back;  // set before the parent sends its first frame
  auto reply = [&](received_frame f) {
    const auto& route = std::get<forward_route>(f.descriptor.route);
    auto kind = traffic(route.request);
    if (kind == traffic::stream) return;
    std::shared_ptr<link> to;
    {
      std::lock_guard<std::mutex> guard(mutex);
      to = back;
    }
    if (kind == traffic::echo)
      to->send(f.descriptor, f.data, f.storage);
    else
      to->send(bench_descriptor(traffic::stream_end, 0, route.step), nullptr, nullptr);
  };
  data_plane_options options;
  options.credit_bytes = credit_bytes;
  data_plane plane(
      options, [&](const frame_descriptor& d) { return pool->take(d.byte_length); }, reply, print_failure);
  asio::io_context io;
  tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  std::uint16_t ports[2] = {plane.port(), acceptor.local_endpoint().port()};
  write_all(to_parent, ports, sizeof ports);
  auto parent_port = read_value<std::uint16_t>(from_parent);
  {
    auto l = plane.connect("127.0.0.1", parent_port, std::chrono::seconds(10));
    std::lock_guard<std::mutex> guard(mutex);
    back = l;
  }
  write_all(to_parent, "r", 1);
  tcp::socket raw(io);
  acceptor.accept(raw);
  raw.set_option(tcp::no_delay(true));
  serve_raw(raw);
}

// -- the measuring process ----------------------------------------------------

/// Frames the child sent back, with their arrival times.
class echo_inbox {
 public:
  void arrive(received_frame f) {
    auto now = clock_type::now();
    std::lock_guard<std::mutex> guard(mutex_);
    arrived_.emplace_back(std::move(f), now);
    changed_.notify_one();
  }
  std::pair<received_frame, clock_type::time_point> next() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!changed_.wait_for(lock, reply_timeout, [&] { return !arrived_.empty(); }))
      throw std::runtime_error("dataplane bench: no reply from the echo process within 30 s");
    auto front = std::move(arrived_.front());
    arrived_.pop_front();
    return front;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<std::pair<received_frame, clock_type::time_point>> arrived_;
};

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/// Both sides of the measurement, connected to the child.
class bench_sides {
 public:
  bench_sides(int from_child, int to_child, std::uint64_t credit_bytes, std::uint64_t largest)
      : plane_(
            plane_options(credit_bytes), [this](const frame_descriptor& d) { return pool_->take(d.byte_length); },
            [this](received_frame f) { inbox_.arrive(std::move(f)); }, print_failure),
        payload_(largest),
        received_(largest) {
    for (std::size_t i = 0; i < payload_.size(); ++i) payload_[i] = std::byte(i * 131 + (i >> 12));
    auto ports = read_value<std::array<std::uint16_t, 2>>(from_child);
    auto mine = plane_.port();
    write_all(to_child, &mine, sizeof mine);
    link_ = plane_.connect("127.0.0.1", ports[0], std::chrono::seconds(10));
    read_value<char>(from_child);  // the child's link back is up
    raw_.connect({asio::ip::make_address("127.0.0.1"), ports[1]});
    raw_.set_option(tcp::no_delay(true));
  }

  double dataplane_seconds(std::uint64_t bytes, int frames) {
    auto keep = std::shared_ptr<void>(payload_.data(), [](void*) {});  // payload_ outlives every send
    auto start = clock_type::now();
    for (int i = 0; i < frames; ++i)
      link_->send(bench_descriptor(i + 1 < frames ? traffic::stream : traffic::stream_end, bytes, std::uint32_t(i)),
                  payload_.data(), keep);
    return seconds_between(start, inbox_.next().second);
  }

  double raw_seconds(std::uint64_t bytes, int frames) {
    auto start = clock_type::now();
    for (int i = 0; i < frames; ++i) raw_write(i + 1 < frames ? traffic::stream : traffic::stream_end, bytes);
    std::byte ack;
    asio::read(raw_, asio::buffer(&ack, 1));
    return seconds_between(start, clock_type::now());
  }

  double dataplane_round_trip(std::uint64_t bytes) {
    auto start = clock_type::now();
    link_->send(bench_descriptor(traffic::echo, bytes, 0), payload_.data(), nullptr);
    auto [frame, arrival] = inbox_.next();
    if (frame.descriptor.byte_length != bytes) throw std::runtime_error("dataplane bench: echo of the wrong size");
    return seconds_between(start, arrival);
  }

  double raw_round_trip(std::uint64_t bytes) {
    auto start = clock_type::now();
    raw_write(traffic::echo, bytes);
    asio::read(raw_, asio::buffer(received_.data(), bytes), transfer_unbounded{});
    return seconds_between(start, clock_type::now());
  }

 private:
  static data_plane_options plane_options(std::uint64_t credit_bytes) {
    data_plane_options o;
    o.credit_bytes = credit_bytes;
    return o;
  }

  void raw_write(traffic kind, std::uint64_t bytes) {
    raw_header h{std::uint64_t(kind), bytes};
    std::array<asio::const_buffer, 2> buffers{asio::buffer(&h, sizeof h), asio::buffer(payload_.data(), bytes)};
    asio::write(raw_, buffers, transfer_unbounded{});
  }

  std::shared_ptr<buffer_pool> pool_ = std::make_shared<buffer_pool>();
  echo_inbox inbox_;
  data_plane plane_;
  std::shared_ptr<link> link_;
  std::vector<std::byte> payload_;
  std::vector<std::byte> received_;
  asio::io_context io_;
  tcp::socket raw_{io_};
};

dataplane_bench_size measure(bench_sides& sides, std::uint64_t bytes, const dataplane_bench_options& options) {
  dataplane_bench_size row;
  row.bytes = bytes;
  row.frames_per_run = int(std::clamp<std::uint64_t>(options.bytes_per_run / bytes, 4, 8192));
  row.round_trips = int(std::clamp<std::uint64_t>((64ull << 20) / bytes, 3, 200));
  // One unmeasured pass each: buffer pools fill, TCP windows open.
  sides.raw_seconds(bytes, row.frames_per_run);
  sides.dataplane_seconds(bytes, row.frames_per_run);
  std::vector<double> dp_rate, raw_rate, dp_trip, raw_trip;
  auto megabytes = double(bytes) * row.frames_per_run / 1e6;
  for (int r = 0; r < options.repeats; ++r) {
    // Alternate which side goes first so neither always inherits the other's wake.
    bool raw_first = r % 2 == 0;
    for (int side = 0; side < 2; ++side) {
      if ((side == 0) == raw_first) {
        raw_rate.push_back(megabytes / sides.raw_seconds(bytes, row.frames_per_run));
        for (int i = 0; i < row.round_trips; ++i) raw_trip.push_back(sides.raw_round_trip(bytes) * 1e6);
      } else {
        dp_rate.push_back(megabytes / sides.dataplane_seconds(bytes, row.frames_per_run));
        for (int i = 0; i < row.round_trips; ++i) dp_trip.push_back(sides.dataplane_round_trip(bytes) * 1e6);
      }
    }
  }
  row.dataplane_mb_per_s = median(dp_rate);
  row.raw_mb_per_s = median(raw_rate);
  row.dataplane_round_trip_us = median(dp_trip);
  row.raw_round_trip_us = median(raw_trip);
  return row;
}

double checksum_speed() {
  std::vector<std::byte> bytes(64 << 20, std::byte{1});
  checksum_of(bytes.data(), bytes.size());  // fault the pages in
  constexpr int passes = 4;
  auto start = clock_type::now();
  std::uint32_t sink = 0;
  for (int i = 0; i < passes; ++i) sink ^= checksum_of(bytes.data(), bytes.size());
  auto seconds = seconds_between(start, clock_type::now());
  return sink == 0xFFFFFFFF ? 0 : double(bytes.size()) * passes / seconds / 1e9;  // keeps `sink` alive
}

/// The child's pid, killed and reaped whatever happens to the measurement.
class child_process {
 public:
  explicit child_process(pid_t pid) : pid_(pid) {}
  ~child_process() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

 private:
  pid_t pid_;
};

}  // namespace

dataplane_bench_result run_dataplane_bench(const dataplane_bench_options& options,
                                           const std::function<void(const std::string&)>& progress) {
  if (options.sizes.empty() || options.repeats < 1) throw std::runtime_error("dataplane bench: no sizes or repeats");
  for (auto size : options.sizes)
    if (size < 4 || size % 4 != 0)
      throw std::runtime_error("dataplane bench: size " + std::to_string(size) + " is not a positive multiple of 4");
  int to_child[2], from_child[2];
  if (::pipe(to_child) != 0 || ::pipe(from_child) != 0) throw std::runtime_error("dataplane bench: pipe failed");
  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("dataplane bench: fork failed");
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the measuring process
    int status = 0;
    try {
      serve(to_child[0], from_child[1], options.credit_bytes);
    } catch (const std::exception& e) {
      std::cerr << "dataplane bench: echo process: " << e.what() << std::endl;
      status = 1;
    }
    ::_exit(status);
  }
  child_process child(pid);
  ::close(to_child[0]);
  ::close(from_child[1]);
  dataplane_bench_result result;
  result.vector_checksum = frame_checksum::vector_available();
  result.checksum_gb_per_s = checksum_speed();
  {
    bench_sides sides(from_child[0], to_child[1], options.credit_bytes,
                      *std::max_element(options.sizes.begin(), options.sizes.end()));
    for (auto size : options.sizes) {
      auto row = measure(sides, size, options);
      progress(std::to_string(size) + " B: throughput data plane " + std::to_string(int(row.dataplane_mb_per_s)) +
               " MB/s, raw " + std::to_string(int(row.raw_mb_per_s)) + " MB/s; round trip data plane " +
               std::to_string(int(row.dataplane_round_trip_us)) + " us, raw " +
               std::to_string(int(row.raw_round_trip_us)) + " us");
      result.sizes.push_back(row);
    }
  }
  ::close(to_child[1]);
  ::close(from_child[0]);
  return result;
}

}  // namespace orrery::messages
