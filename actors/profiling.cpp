#include "actors/profiling.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include "actors/tensor_frame.hpp"
#include "compute/layer_timing.hpp"
#include "messages/errors.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

// -- usable memory -----------------------------------------------------------

std::uint64_t meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return std::numeric_limits<std::uint64_t>::max();
}

std::uint64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::uint64_t value = std::numeric_limits<std::uint64_t>::max();
  in >> value;
  return value;
}

// The cgroup v1 memory limit this process lives under (what `orrery testbed`
// sets) less what it already uses; "no limit" when there is none.
std::uint64_t cgroup_headroom() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // hierarchy-ID:controller-list:path
    auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::stringstream controllers(line.substr(first + 1, second - first - 1));
    std::string controller;
    while (std::getline(controllers, controller, ','))
      if (controller == "memory") {
        std::string dir = "/sys/fs/cgroup/memory" + line.substr(second + 1);
        std::uint64_t limit = read_number(dir + "/memory.limit_in_bytes");
        std::uint64_t usage = read_number(dir + "/memory.usage_in_bytes");
        // An unlimited v1 cgroup reports a limit near 2^63.
        if (limit >= (std::uint64_t{1} << 62) || usage == std::numeric_limits<std::uint64_t>::max())
          return std::numeric_limits<std::uint64_t>::max();
        return limit > usage ? limit - usage : 0;
      }
  }
  return std::numeric_limits<std::uint64_t>::max();
}

void set_usable_memory(layer_timing_report& report, std::uint64_t budget) {
  report.usable_memory_bytes = meminfo_available();
  report.memory_limited_by = "available memory";
  if (auto headroom = cgroup_headroom(); headroom < report.usable_memory_bytes) {
    report.usable_memory_bytes = headroom;
    report.memory_limited_by = "cgroup limit";
  }
  if (budget > 0 && budget < report.usable_memory_bytes) {
    report.usable_memory_bytes = budget;
    report.memory_limited_by = "memory budget";
  }
}

measured_curve curve_of(const std::string& layer, const std::string& phase,
                        const std::vector<compute::timing_point>& points) {
  measured_curve curve{layer, phase, {}, {}};
  for (const auto& p : points) {
    curve.lengths.push_back(p.length);
    curve.seconds.push_back(p.seconds);
  }
  return curve;
}

caf::error profiling_error(const std::string& text) { return make_error(errc::profiling_failed, text); }

// -- link probes --------------------------------------------------------------

constexpr std::uint64_t bulk_frame_bytes = 1 << 20;
// A bulk probe long enough that the link's rate, not its first burst or its
// queue, sets the time; capped so a fast loopback ends quickly.
constexpr double bulk_target_seconds = 0.4;
constexpr std::uint64_t max_bulk_frames = 1024;
constexpr int latency_rounds = 15;

class link_prober {
 public:
  link_prober(caf::actor_system& system, std::shared_ptr<messages::link> link, node_actor node, std::uint16_t reply_port)
      : self_(system), link_(std::move(link)), node_(std::move(node)), reply_port_(reply_port),
        buffer_(std::make_shared<std::vector<std::byte>>(bulk_frame_bytes)) {
    std::random_device entropy;
    next_id_ = (std::uint64_t{entropy()} << 32) | entropy();
  }

  link_measurement measure() {
    std::vector<double> round_trips;
    for (int i = 0; i < latency_rounds; ++i) round_trips.push_back(exchange(4, 1));
    std::nth_element(round_trips.begin(), round_trips.begin() + latency_rounds / 2, round_trips.end());
    const double latency = round_trips[latency_rounds / 2] / 2;
    std::uint64_t frames = 4;
    for (;;) {
      double seconds = exchange(bulk_frame_bytes, frames);
      std::uint64_t bytes = frames * bulk_frame_bytes;
      if (seconds >= bulk_target_seconds || frames >= max_bulk_frames)
        return {static_cast<double>(bytes) / std::max(seconds - latency, 1e-9), latency, bytes};
      // Aim past the target from what this round showed, at least doubling.
      double scale = std::max(2.0, 1.2 * bulk_target_seconds / std::max(seconds, 1e-6));
      frames = std::min<std::uint64_t>(max_bulk_frames, static_cast<std::uint64_t>(frames * scale));
    }
  }

 private:
  // Seconds from the first frame of a probe until the peer's answer to the
  // last one is back.
  double exchange(std::uint64_t frame_bytes, std::uint64_t frames) {
    const std::uint64_t id = next_id_++;
    // Asked before the first frame leaves, so no answer can come too early.
    auto answered = self_->request(node_, std::chrono::seconds(60), probe_expect_atom_v, id, frames);
    auto start = clock_type::now();
    for (std::uint64_t i = 0; i < frames; ++i) {
      messages::frame_descriptor d;
      d.session = probe_session;
      d.route = messages::probe_route{id, reply_port_};
      d.tensors = {{messages::tensor_role::hidden, element_type::f32, {static_cast<std::int64_t>(frame_bytes / 4)}, 0}};
      link_->send(std::move(d), buffer_->data(), buffer_, {});
    }
    std::string failure;
    answered.receive([](std::uint64_t) {}, [&](caf::error& e) { failure = to_string(e); });
    if (!failure.empty()) throw std::runtime_error("the peer did not answer every probe frame: " + failure);
    return std::chrono::duration<double>(clock_type::now() - start).count();
  }

  caf::scoped_actor self_;
  std::shared_ptr<messages::link> link_;
  node_actor node_;
  std::uint16_t reply_port_;
  std::shared_ptr<std::vector<std::byte>> buffer_;
  std::uint64_t next_id_ = 0;
};

// Seconds of this process's own work per byte of a gradient all-reduce: one
// member's side of a two-member swap (a copy of its gradient sent, the
// other's received, their sum written back), over its own loopback at its CPU
// share. The wire is not in it: links are probed apart.
double reduce_seconds_per_byte() {
  constexpr std::int64_t values = 8 << 20;  // 32 MB of float32, about a layer of `small`
  constexpr int rounds = 3;
  std::mutex mutex;
  std::condition_variable arrived;
  std::vector<at::Tensor> received;
  messages::data_plane_options options;
  options.bind_address = "127.0.0.1";
  messages::data_plane to(options, tensor_allocator(),
                          [&](messages::received_frame frame) {
                            auto tensors = tensor_frame_of(frame).tensors;
                            std::lock_guard<std::mutex> lock(mutex);
                            received.push_back(tensors.at(0));
                            arrived.notify_all();
                          },
                          [](const std::string&, const std::string&) {});
  messages::data_plane from(options, tensor_allocator(), [](messages::received_frame) {},
                            [](const std::string&, const std::string&) {});
  auto link = from.connect("127.0.0.1", to.port(), std::chrono::seconds(5));
  at::Tensor gradient = at::rand({values});
  double seconds = 0;
  for (int r = 0; r <= rounds; ++r) {  // round 0 warms the allocator and the links
    const auto start = std::chrono::steady_clock::now();
    messages::frame_descriptor d;
    d.route = messages::collective_route{};
    auto copy = gradient.clone();
    send_tensors(*link, d, {{messages::tensor_role::gradient, copy}}, [](const std::string&) {});
    at::Tensor theirs;
    {
      std::unique_lock<std::mutex> lock(mutex);
      if (!arrived.wait_for(lock, std::chrono::seconds(60), [&] { return !received.empty(); }))
        throw std::runtime_error("a 32 MB frame to its own data plane did not arrive within 60 s");
      theirs = received.back();
      received.clear();
    }
    gradient.copy_(copy + theirs.view_as(copy));
    if (r > 0) seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  link->close();
  return seconds / (rounds * static_cast<double>(gradient.nbytes()));
}

}  // namespace

layer_timer_actor spawn_layer_timer(caf::actor_system& system, std::string node, std::string device, std::string dtype,
                                    int threads, std::uint64_t memory_budget) {
  return system.spawn<caf::detached>([=](layer_timer_actor::pointer self) -> layer_timer_actor::behavior_type {
    return {
        [=](layer_timing_request& request) -> caf::result<layer_timing_report> {
          self->quit();
          layer_timing_report report;
          report.node = node;
          try {
            compute::layer_timing_options options;
            options.prefill_lengths.assign(request.prefill_lengths.begin(), request.prefill_lengths.end());
            options.decode_contexts.assign(request.decode_contexts.begin(), request.decode_contexts.end());
            options.min_seconds = request.min_seconds;
            options.threads = threads;
            options.device = device;
            options.dtype = dtype;
            options.train_tokens = request.train_tokens;
            options.train_sequences = request.train_sequences;
            const auto timings = compute::measure_layer_times(request.model_dir, options);
            for (const auto& kind : timings.kinds) {
              if (!kind.prefill.empty()) report.curves.push_back(curve_of(kind.kind, "prefill", kind.prefill));
              if (!kind.decode.empty()) report.curves.push_back(curve_of(kind.kind, "decode", kind.decode));
              if (options.train_tokens > 0) {
                report.curves.push_back({kind.kind, "train_forward", {request.train_tokens}, {kind.train_forward}});
                report.curves.push_back({kind.kind, "train_backward", {request.train_tokens}, {kind.train_backward}});
                report.curves.push_back({kind.kind, "train_update", {request.train_tokens}, {kind.train_update}});
              }
            }
            if (options.train_tokens > 0)
              report.curves.push_back({"node", "train_reduce", {request.train_tokens}, {reduce_seconds_per_byte()}});
            report.burst_context = timings.burst.context;
            report.burst_wall_seconds = timings.burst.wall_seconds;
          } catch (const std::exception& e) {
            return profiling_error("node '" + node + "': cannot time the model's layers: " + e.what());
          }
          set_usable_memory(report, memory_budget);
          return report;
        },
    };
  });
}

link_prober_actor spawn_link_prober(caf::actor_system& system, std::shared_ptr<messages::data_plane> plane,
                                    node_actor node) {
  return system.spawn<caf::detached>([plane, node](link_prober_actor::pointer self) -> link_prober_actor::behavior_type {
    return {
        [=](link_probe& probe) -> caf::result<link_measurement> {
          self->quit();
          std::string where = probe.host + ":" + std::to_string(probe.data_port);
          try {
            auto link = plane->connect(probe.host, probe.data_port, std::chrono::seconds(5));
            auto measured = link_prober(self->system(), link, node, plane->port()).measure();
            link->close();
            return measured;
          } catch (const std::exception& e) {
            return profiling_error("probing the data plane at " + where + ": " + e.what());
          }
        },
    };
  });
}

void probe_responder::answer(std::uint64_t id, const std::string& host, std::uint16_t port) {
  static const auto answer_bytes = std::make_shared<std::array<std::byte, 4>>();
  const std::string address = host + ":" + std::to_string(port);
  auto& link = links_[address];
  if (!link || !link->is_open()) link = plane_->connect(host, port, std::chrono::seconds(5));
  messages::frame_descriptor d;
  d.session = probe_session;
  d.route = messages::probe_route{id, 0};
  d.tensors = {{messages::tensor_role::hidden, element_type::f32, {1}, 0}};
  link->send(std::move(d), answer_bytes->data(), answer_bytes, {});
}

void probe_sink::received(std::uint64_t id) {
  probes_[id].received += 1;
  complete_if_done(id);
}

void probe_sink::expect(std::uint64_t id, std::uint64_t answers, caf::typed_response_promise<std::uint64_t> promise) {
  auto& p = probes_[id];
  p.expected = answers;
  p.promise = std::move(promise);
  complete_if_done(id);
}

void probe_sink::complete_if_done(std::uint64_t id) {
  auto it = probes_.find(id);
  if (it == probes_.end() || !it->second.promise.pending() || it->second.received < it->second.expected) return;
  it->second.promise.deliver(it->second.received);
  probes_.erase(it);
}

}  // namespace orrery::actors
