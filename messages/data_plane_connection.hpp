#pragma once
// Inside the data plane (messages/data_plane.hpp): one connection's side of
// the wire protocol (messages/frame.hpp) over its byte stream. It reads
// headers through a staging buffer and payloads straight into the
// allocator's memory, writes queued frames and owed credit with one gathered
// write, and keeps the credit window. Only messages/data_plane.cpp includes
// this; everything here runs on the plane's io thread unless it says so.

#include <boost/asio/post.hpp>

#include <atomic>
#include <cstring>
#include <deque>
#include <mutex>
#include <unordered_set>

#include "messages/checksum.hpp"
#include "messages/data_plane.hpp"
#include "messages/log.hpp"
#include "messages/transport.hpp"

namespace orrery::messages {

/// The data plane's logger.
const logger& data_plane_log();

namespace detail {

namespace asio = boost::asio;
using boost::system::error_code;

namespace {

// Payload bytes read per system call at most: a chunk is checksummed right
// after it lands, so it should still sit in L2 (2 MiB per core here).
constexpr std::size_t payload_chunk = 1 << 20;

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
  std::unique_ptr<messages::listener> listener;  // set before the io thread starts
  std::thread io_thread;
  std::mutex mutex;
  bool stopping = false;                                        // guarded by mutex: no task is posted once it is set
  std::unordered_set<std::shared_ptr<connection>> connections;  // io thread only
};

/// One stream between two data planes; both ends may send frames and both
/// grant credit. Everything but the atomics runs on the io thread.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(std::shared_ptr<plane_core> core, std::unique_ptr<byte_stream> stream)
      : core_(std::move(core)), stream_(std::move(stream)), peer_(stream_->peer()) {}

  /// Grants this end's window and starts reading. `established` runs once: with
  /// an empty string when the peer's grant arrives, else with why it never will.
  void start(std::function<void(const std::string&)> established = {}) {
    established_ = std::move(established);
    core_->connections.insert(shared_from_this());
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      credit_owed_ = core_->options.credit_bytes;
    }
    pump();
    process();
  }

  /// Writes a small frame from the caller's thread when the link is idle,
  /// sparing the latency path one wake-up of the io thread; otherwise counts it
  /// as posted (the caller then posts enqueue) so that a later frame cannot
  /// overtake it. A frame sent here is completed exactly once: by on_written,
  /// or by close() if that comes first (a data plane stopping meanwhile).
  bool send_now(outgoing_frame& frame) {
    std::unique_lock<std::mutex> lock(send_mutex_);
    if (frame.length > direct_send_limit || !open_ || writing_ || posted_ > 0 || !queue_.empty() ||
        !admits(frame.cost())) {
      ++posted_;
      return false;
    }
    queue_.push_back(std::move(frame));
    gather(1);
    // Whatever the stream does not take now, the io thread writes.
    auto n = stream_->write_now(const_buffer_span(out_.data(), out_.size()));
    std::size_t total = 0;
    for (const auto& b : out_) total += b.size();
    if (n == total) {
      // All of it went: done here, without waking the io thread.
      out_.clear();
      auto written = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      written.complete("");
      return true;
    }
    writing_ = true;
    lock.unlock();
    asio::post(core_->io, [self = shared_from_this(), n] { self->on_written({}, n); });
    return true;
  }

  void enqueue(outgoing_frame frame) {
    bool queued = false;
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      --posted_;
      if ((queued = open_)) queue_.push_back(std::move(frame));
    }
    if (!queued) return frame.complete("link to " + peer_ + " is closed");
    pump();
  }

  /// Closes the stream and completes every queued frame with an error. A
  /// `failure` is logged and reported; an orderly close is not.
  void close(const std::string& reason, bool failure) {
    std::deque<outgoing_frame> pending;
    {
      // Under the send mutex: no direct send is writing to the stream being closed.
      std::lock_guard<std::mutex> guard(send_mutex_);
      if (!open_.exchange(false)) return;
      stream_->close();
      pending = std::move(queue_);
      queue_.clear();
    }
    auto self = shared_from_this();
    core_->connections.erase(self);
    incoming_ = {};
    if (failure) {
      data_plane_log().warn("link " + peer_ + ": " + reason);
      if (core_->report) core_->report(peer_, reason);
    }
    if (established_) std::exchange(established_, {})(reason);
    for (auto& frame : pending) frame.complete("link to " + peer_ + " closed: " + reason);
  }

  plane_core& core() { return *core_; }
  const std::string& peer() const { return peer_; }
  bool is_open() const { return open_; }
  std::uint64_t bytes_in_flight() const { return in_flight_; }

 private:
  // -- receiving --------------------------------------------------------------
  //
  // Headers and descriptors arrive through a staging buffer, so a burst of
  // small frames costs one system call rather than three per frame; whatever
  // of a payload came along is copied out (at most staging_size bytes per
  // frame), the rest is read straight into the allocated memory.

  enum class phase { header, descriptor, payload };

  /// Consumes what is staged as far as it goes, then waits for more.
  void process() {
    while (open_) {
      auto staged = staged_end_ - staged_begin_;
      auto* at = staging_.data() + staged_begin_;
      if (phase_ == phase::header) {
        if (staged < frame_header_size) return read_staged();
        header_bytes bytes;
        std::memcpy(bytes.data(), at, bytes.size());
        staged_begin_ += frame_header_size;
        if (auto problem = decode_header(bytes, core_->options.max_frame_bytes, header_); !problem.empty())
          return close(problem, true);
        if (header_.kind == frame_kind::credit) {
          on_credit(header_.value);
        } else {
          phase_ = phase::descriptor;
        }
      } else if (phase_ == phase::descriptor) {
        if (staged < header_.descriptor_length) return read_staged();
        staged_begin_ += header_.descriptor_length;
        if (!accept_descriptor(at)) return;
        phase_ = phase::payload;
      } else {
        auto take = std::min<std::uint64_t>(staged, incoming_.descriptor.byte_length - received_);
        if (take > 0) std::memcpy(incoming_.data + received_, at, take);
        staged_begin_ += take;
        payload_arrived(take);
        if (received_ < incoming_.descriptor.byte_length) return read_payload();
        deliver();
        phase_ = phase::header;
      }
    }
  }

  /// Validates the staged descriptor and allocates its payload; false when the connection closed.
  bool accept_descriptor(const std::byte* at) {
    frame_descriptor d;
    auto problem = decode_descriptor(at, header_.descriptor_length, header_.value, core_->options.max_frame_bytes, d);
    if (!problem.empty()) return close(problem, true), false;
    std::pair<std::shared_ptr<void>, std::byte*> memory;
    try {
      memory = core_->allocate(d);
    } catch (const std::exception& e) {
      return close("allocating " + std::to_string(d.byte_length) + " bytes failed: " + e.what(), true), false;
    }
    if (memory.second == nullptr && d.byte_length > 0)
      return close("allocator returned no memory for " + std::to_string(d.byte_length) + " bytes", true), false;
    incoming_ = received_frame{std::move(d), std::move(memory.first), memory.second, peer_};
    received_ = 0;
    checksum_ = frame_checksum();
    return true;
  }

  void read_staged() {
    // Keep the partial header or descriptor (< 4 KiB) and read behind it.
    std::memmove(staging_.data(), staging_.data() + staged_begin_, staged_end_ - staged_begin_);
    staged_end_ -= staged_begin_;
    staged_begin_ = 0;
    before_waiting();
    stream_->async_read_some(asio::buffer(staging_.data() + staged_end_, staging_.size() - staged_end_),
                             [self = shared_from_this()](error_code ec, std::size_t n) { self->on_staged(ec, n); });
  }

  void on_staged(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec) return lost(ec);
    staged_end_ += n;
    process();
  }

  void read_payload() {
    before_waiting();
    auto remaining = incoming_.descriptor.byte_length - received_;
    stream_->async_read_some(asio::buffer(incoming_.data + received_, std::min<std::uint64_t>(remaining, payload_chunk)),
                             [self = shared_from_this()](error_code ec, std::size_t n) { self->on_payload(ec, n); });
  }

  void on_payload(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec) return lost(ec);
    payload_arrived(n);
    if (received_ < incoming_.descriptor.byte_length) return read_payload();
    deliver();
    phase_ = phase::header;
    process();
  }

  // Checksums the bytes that just landed, while they are still in cache.
  void payload_arrived(std::uint64_t n) {
    checksum_.update(incoming_.data + received_, n);
    received_ += n;
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
    std::lock_guard<std::mutex> guard(send_mutex_);
    credit_owed_ += wire_size(header_.descriptor_length, header_.value);
  }

  void lost(error_code ec) {
    auto staged = staged_end_ - staged_begin_;
    if (phase_ == phase::header && staged == 0)
      return close(ec == asio::error::eof ? "closed by peer" : "connection lost: " + ec.message(),
                   ec != asio::error::eof);
    std::string where =
        phase_ == phase::payload
            ? std::to_string(received_) + " of " + std::to_string(incoming_.descriptor.byte_length) + " payload bytes"
            : std::to_string(staged) + " bytes of a " + (phase_ == phase::header ? "header" : "descriptor");
    close("peer disconnected mid-frame (" + where + "): " + ec.message(), true);
  }

  // -- sending ----------------------------------------------------------------
  //
  // One gathered write carries any owed credit and as many queued frames as the
  // window and one writev allow. Credit for delivered frames is returned when
  // the reader is about to wait and a sixteenth of the window is owed (or with
  // the next outgoing frame), so a burst of small frames is answered by one
  // credit frame (frame.hpp's credit rule). The writer state below is
  // guarded by send_mutex_ because send_now writes from callers' threads; while
  // writing_ is set, out_ belongs to the write in progress.

  void on_credit(std::uint64_t bytes) {
    bool first = false;
    std::string problem;
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      if (!window_known_) {
        first = window_known_ = true;
        window_ = bytes;
      } else if (bytes > in_flight_) {
        problem = "peer returned " + std::to_string(bytes) + " bytes of credit with only " +
                  std::to_string(in_flight_) + " in flight";
      } else {
        in_flight_ -= bytes;
      }
    }
    if (!problem.empty()) return close(problem, true);
    if (first && established_) std::exchange(established_, {})("");
    pump();
  }

  // Posted rather than called: a frame the handler just queued runs first and
  // takes the credit along in its write.
  void before_waiting() {
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      if (credit_owed_ < return_threshold(core_->options.credit_bytes)) return;
    }
    if (std::exchange(pump_posted_, true)) return;
    asio::post(core_->io, [self = shared_from_this()] {
      self->pump_posted_ = false;
      self->pump();
    });
  }

  // Under send_mutex_.
  bool admits(std::uint64_t cost) const { return admits(in_flight_, cost); }
  bool admits(std::uint64_t in_flight, std::uint64_t cost) const {
    return window_known_ && (in_flight <= return_threshold(window_) || in_flight + cost <= window_);
  }
  // Credit a receiver may hold back, and a sender may therefore exceed its
  // window by: both ends compute it from the same granted window.
  static std::uint64_t return_threshold(std::uint64_t window) { return window / 16; }

  // Under send_mutex_: fills out_ with owed credit and the first `frames`
  // queued frames, which count as in flight from here on.
  void gather(std::size_t frames) {
    out_.clear();
    if (credit_owed_ > 0) {
      credit_out_ = encode_header({frame_kind::credit, 0, std::exchange(credit_owed_, 0)});
      out_.push_back(asio::buffer(credit_out_));
    }
    for (std::size_t i = 0; i < frames; ++i) {
      auto& frame = queue_[i];
      in_flight_ += frame.cost();
      out_.push_back(asio::buffer(frame.header));
      out_.push_back(asio::buffer(frame.descriptor));
      out_.push_back(asio::buffer(frame.data, frame.length));
    }
    batch_ = frames;
  }

  void pump() {
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      if (writing_ || !open_) return;
      // Admit frames one by one: each admission raises what the next must fit beside.
      std::uint64_t admitted = 0;
      std::size_t frames = 0;
      while (frames < std::min(queue_.size(), max_batch) && window_known_ &&
             admits(in_flight_ + admitted, queue_[frames].cost()))
        admitted += queue_[frames++].cost();
      gather(frames);
      if (out_.empty()) return;
      writing_ = true;
    }
    write_some();
  }

  void write_some() {
    stream_->async_write_some(const_buffer_span(out_.data(), out_.size()),
                              [self = shared_from_this()](error_code ec, std::size_t n) { self->on_written(ec, n); });
  }

  void on_written(error_code ec, std::size_t n) {
    if (!open_) return;
    if (ec) return close("write failed: " + ec.message(), true);
    std::vector<outgoing_frame> written;
    bool finished = false;
    {
      std::lock_guard<std::mutex> guard(send_mutex_);
      // Drop what went out; on a short write, resume inside the buffer it ended in.
      auto sent = out_.begin();
      for (; sent != out_.end() && n >= sent->size(); ++sent) n -= sent->size();
      out_.erase(out_.begin(), sent);
      if ((finished = out_.empty())) {
        writing_ = false;
        for (std::size_t i = 0; i < batch_; ++i) {
          written.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      } else {
        out_.front() += n;  // smaller than the front buffer, which the loop above left
      }
    }
    if (!finished) return write_some();
    pump();
    for (auto& frame : written) frame.complete("");
  }

  // Frames of three buffers and one credit header fill the buffers of one
  // gathered write.
  static constexpr std::size_t max_batch = (max_gather_buffers - 1) / 3;
  static constexpr std::size_t staging_size = 64 << 10;
  // Payloads up to this size may be written from the caller's thread: the
  // latency-bound ones, and cheap enough (a few microseconds of copying) to
  // keep off the io thread.
  static constexpr std::uint64_t direct_send_limit = 64 << 10;

  std::shared_ptr<plane_core> core_;  // first: destroyed after the stream that uses its io_context
  const std::unique_ptr<byte_stream> stream_;
  const std::string peer_;
  std::atomic<bool> open_{true};
  std::function<void(const std::string&)> established_;

  std::vector<std::byte> staging_ = std::vector<std::byte>(staging_size);
  std::size_t staged_begin_ = 0;
  std::size_t staged_end_ = 0;
  phase phase_ = phase::header;
  frame_header header_;
  received_frame incoming_;
  std::uint64_t received_ = 0;
  frame_checksum checksum_;

  std::mutex send_mutex_;
  std::deque<outgoing_frame> queue_;
  std::size_t posted_ = 0;  // frames posted to enqueue that have not arrived yet
  bool writing_ = false;
  std::vector<asio::const_buffer> out_;
  std::size_t batch_ = 0;
  bool window_known_ = false;
  std::uint64_t window_ = 0;
  std::atomic<std::uint64_t> in_flight_{0};
  std::uint64_t credit_owed_ = 0;
  bool pump_posted_ = false;
  header_bytes credit_out_{};
};

}  // namespace detail
}  // namespace orrery::messages
