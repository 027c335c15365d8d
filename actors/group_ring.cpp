#include "actors/group_ring.hpp"

#include <ATen/ATen.h>

#include <stdexcept>
#include <variant>

namespace orrery::actors {

group_ring::group_ring(options o) : options_(std::move(o)) {
  if (options_.members.empty() || options_.rank < 0 || options_.rank >= size())
    throw std::invalid_argument("group_ring: rank " + std::to_string(options_.rank) + " of a group of " +
                                std::to_string(options_.members.size()));
}

void group_ring::connect(std::shared_ptr<messages::link> next, std::uint64_t deployment) {
  std::lock_guard lock(mutex_);
  next_ = std::move(next);
  deployment_ = deployment;
  dropped_ += pieces_.size();
  pieces_.clear();
  send_error_.clear();
}

void group_ring::deliver(tensor_frame frame) {
  const auto& d = frame.descriptor;
  const auto& route = std::get<messages::collective_route>(d.route);
  {
    std::lock_guard lock(mutex_);
    ++received_;
    if (d.deployment != deployment_ || frame.tensors.size() != 1) {
      ++dropped_;
      return;
    }
    pieces_[{route.request, route.step, route.sequence, route.ring_step}] = std::move(frame.tensors.front());
  }
  arrived_.notify_all();
}

void group_ring::forget(std::uint64_t request) {
  std::lock_guard lock(mutex_);
  for (auto it = pieces_.lower_bound({request, 0, 0, 0}); it != pieces_.end() && std::get<0>(it->first) == request;) {
    it = pieces_.erase(it);
    ++dropped_;
  }
}

std::uint64_t group_ring::pieces_received() const {
  std::lock_guard lock(mutex_);
  return received_;
}

std::uint64_t group_ring::bytes_sent() const {
  std::lock_guard lock(mutex_);
  return bytes_sent_;
}

std::uint64_t group_ring::pieces_dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

void group_ring::send(const at::Tensor& chunk, const collective_key& key, std::uint16_t ring_step) {
  std::shared_ptr<messages::link> next;
  messages::frame_descriptor d;
  {
    std::lock_guard lock(mutex_);
    if (!send_error_.empty()) throw ring_interrupted(send_error_);
    next = next_;
    d.deployment = deployment_;
    bytes_sent_ += static_cast<std::uint64_t>(chunk.nbytes());
  }
  const auto& to = options_.members[static_cast<std::size_t>((rank() + 1) % size())];
  if (!next || !next->is_open())
    throw ring_interrupted("the group's link to member '" + to + "' is " + (next ? "closed" : "not wired"));
  d.session = options_.session;
  messages::collective_route route;
  route.group = options_.group;
  route.rank = static_cast<std::uint16_t>(rank());
  route.op = messages::collective_op::all_reduce;
  route.sequence = key.sequence;
  route.ring_step = ring_step;
  route.request = key.request;
  route.step = key.step;
  d.route = route;
  send_tensors(*next, std::move(d), {{messages::tensor_role::hidden, chunk}},
               [weak = weak_from_this(), to](const std::string& error) {
                 auto self = weak.lock();
                 if (error.empty() || !self) return;
                 {
                   std::lock_guard lock(self->mutex_);
                   self->send_error_ = "sending to group member '" + to + "' failed: " + error;
                 }
                 self->arrived_.notify_all();
               });
}

at::Tensor group_ring::receive(const collective_key& key, std::uint16_t ring_step) {
  std::unique_lock lock(mutex_);
  const piece_key wanted{key.request, key.step, key.sequence, ring_step};
  auto superseded = [&] { return options_.announced && options_.announced->load() > deployment_; };
  // The announced deployment is a node's, set without waking this wait: it
  // is looked at every poll_interval.
  constexpr auto poll_interval = std::chrono::milliseconds(20);
  const auto until = std::chrono::steady_clock::now() + options_.deadline;
  bool came = false;
  while (!came && !superseded() && std::chrono::steady_clock::now() < until)
    came = arrived_.wait_for(lock, std::min<std::chrono::steady_clock::duration>(poll_interval, until - std::chrono::steady_clock::now()),
                             [&] { return pieces_.count(wanted) > 0 || !send_error_.empty(); });
  if (!send_error_.empty()) throw ring_interrupted(send_error_);
  if (!came && superseded())
    throw ring_interrupted("deployment " + std::to_string(options_.announced->load()) + " replaced this ring's (" +
                           std::to_string(deployment_) + ") while it waited");
  const auto& from = options_.members[static_cast<std::size_t>((rank() + size() - 1) % size())];
  if (!came)
    throw ring_interrupted("group member '" + from + "' sent no piece of collective " + std::to_string(key.sequence) +
                             " (ring step " + std::to_string(ring_step) + ") of request " + std::to_string(key.request) +
                             " step " + std::to_string(key.step) + " within " +
                             std::to_string(options_.deadline.count()) + " ms");
  auto node = pieces_.extract(wanted);
  return std::move(node.mapped());
}

at::Tensor group_ring::all_reduce(const at::Tensor& partial, const collective_key& key) {
  const int n = size();
  if (n == 1) return partial;
  if (n == 2) {
    // Two members swap whole partials: one step where the ring takes two,
    // for the same bytes, and p0 + p1 has the same bits as p1 + p0.
    auto mine = partial.contiguous();
    send(mine, key, 0);
    return mine + receive(key, 0).to(mine.device()).view_as(mine);
  }
  // Chunk c is the elements [bound(c), bound(c + 1)) of the flattened tensor.
  auto sum = partial.contiguous().reshape({-1}).clone();
  const std::int64_t elements = sum.numel();
  auto bound = [&](int c) { return elements * c / n; };
  auto chunk = [&](int c) {
    c = ((c % n) + n) % n;
    return sum.narrow(0, bound(c), bound(c + 1) - bound(c));
  };
  const int r = rank();
  // Reduce-scatter: after n - 1 steps chunk r + 1 holds every member's part.
  for (int s = 0; s < n - 1; ++s) {
    send(chunk(r - s).clone(), key, static_cast<std::uint16_t>(s));
    auto into = chunk(r - s - 1);
    into.add_(receive(key, static_cast<std::uint16_t>(s)).to(into.device()).view_as(into));
  }
  // All-gather: the summed chunks travel once around the ring.
  for (int s = 0; s < n - 1; ++s) {
    send(chunk(r + 1 - s).clone(), key, static_cast<std::uint16_t>(n - 1 + s));
    auto into = chunk(r - s);
    into.copy_(receive(key, static_cast<std::uint16_t>(n - 1 + s)).to(into.device()).view_as(into));
  }
  return sum.view(partial.sizes());
}

}  // namespace orrery::actors
