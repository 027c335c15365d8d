#include "actors/group_ring.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <variant>

#include "base/tensor_slice.hpp"

namespace orrery::actors {

std::vector<std::int64_t> proportional_rows(const std::vector<std::int32_t>& shares, std::int64_t rows) {
  if (shares.empty()) return {rows};
  return largest_remainder_split(rows, std::vector<std::int64_t>(shares.begin(), shares.end()));
}

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
    pieces_[{route.request, route.step, route.position, route.sequence, route.tile, route.ring_step}] = std::move(frame.tensors.front());
  }
  arrived_.notify_all();
}

void group_ring::forget(std::uint64_t request) {
  std::lock_guard lock(mutex_);
  for (auto it = pieces_.lower_bound({request, 0, 0, 0, 0, 0}); it != pieces_.end() && std::get<0>(it->first) == request;) {
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

double group_ring::wait_ms() const {
  std::lock_guard lock(mutex_);
  return std::chrono::duration<double, std::milli>(waited_).count();
}

std::uint64_t group_ring::pieces_dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

void group_ring::send(const at::Tensor& chunk, const collective_key& key, piece p) {
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
  route.op = p.op;
  route.tile = p.tile;
  route.sequence = key.sequence;
  route.ring_step = p.ring_step;
  route.request = key.request;
  route.step = key.step;
  route.position = key.position;
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

at::Tensor group_ring::receive(const collective_key& key, piece p) {
  std::unique_lock lock(mutex_);
  const piece_key wanted{key.request, key.step, key.position, key.sequence, p.tile, p.ring_step};
  auto superseded = [&] { return options_.announced && options_.announced->load() > deployment_; };
  // The announced deployment is a node's, set without waking this wait: it
  // is looked at every poll_interval.
  constexpr auto poll_interval = std::chrono::milliseconds(20);
  const auto start = std::chrono::steady_clock::now();
  const auto until = start + options_.deadline;
  auto here = [&] { return pieces_.count(wanted) > 0 || !send_error_.empty(); };
  bool came = here();
  while (!came && !superseded() && std::chrono::steady_clock::now() < until)
    came = arrived_.wait_for(lock, std::min<std::chrono::steady_clock::duration>(poll_interval, until - std::chrono::steady_clock::now()),
                             here);
  waited_ += std::chrono::steady_clock::now() - start;
  if (!send_error_.empty()) throw ring_interrupted(send_error_);
  if (!came && superseded())
    throw ring_interrupted("deployment " + std::to_string(options_.announced->load()) + " replaced this ring's (" +
                           std::to_string(deployment_) + ") while it waited");
  const auto& from = options_.members[static_cast<std::size_t>((rank() + size() - 1) % size())];
  if (!came)
    throw ring_interrupted("group member '" + from + "' sent no piece of collective " + std::to_string(key.sequence) +
                           " (ring step " + std::to_string(p.ring_step) +
                           (p.tile > 0 ? ", tile " + std::to_string(p.tile) : std::string()) + ") of request " +
                           std::to_string(key.request) + " step " + std::to_string(key.step) + " within " +
                           std::to_string(options_.deadline.count()) + " ms");
  auto node = pieces_.extract(wanted);
  return std::move(node.mapped());
}

std::vector<at::Tensor> group_ring::tiled(const compute::partial_sum& partial,
                                          const std::function<void(std::uint32_t, at::Tensor&)>& first_step) const {
  const std::int64_t width = partial.width();
  const std::int64_t count = std::max<std::int64_t>(1, std::min<std::int64_t>(options_.tiles, width));
  std::vector<at::Tensor> tiles;
  for (std::int64_t t = 0; t < count; ++t) {
    tiles.push_back(partial.columns(width * t / count, width * (t + 1) / count).contiguous());
    first_step(static_cast<std::uint32_t>(t), tiles.back());
  }
  return tiles;
}

namespace {

at::Tensor side_by_side(const std::vector<at::Tensor>& tiles) {
  return tiles.size() == 1 ? tiles.front() : at::cat(tiles, 1);
}

// Chunk c of a ring over n members, for any integer c.
int wrap(int c, int n) { return ((c % n) + n) % n; }

}  // namespace

at::Tensor group_ring::all_reduce(const at::Tensor& partial, const collective_key& key) {
  auto whole = partial.reshape({partial.size(0), -1});
  return all_reduce(compute::partial_sum(whole.size(0), whole.size(1),
                                         [whole](std::int64_t b, std::int64_t e) { return whole.narrow(1, b, e - b); }),
                    key)
      .view(partial.sizes());
}

at::Tensor group_ring::all_reduce(const compute::partial_sum& partial, const collective_key& key) {
  const int n = size(), r = rank();
  constexpr auto op = messages::collective_op::all_reduce;
  const auto form = all_reduce_schedule_of(n, partial.rows() * partial.width() * 4).form;
  if (form == all_reduce_form::alone) return partial.whole();
  if (form == all_reduce_form::swap) {
    // Two members swap whole partials: one step where the ring takes two,
    // for the same bytes, and p0 + p1 has the same bits as p1 + p0.
    auto tiles = tiled(partial, [&](std::uint32_t t, at::Tensor& tile) { send(tile, key, {op, t, 0}); });
    for (std::uint32_t t = 0; t < tiles.size(); ++t)
      tiles[t] = tiles[t] + receive(key, {op, t, 0}).to(tiles[t].device()).view_as(tiles[t]);
    return side_by_side(tiles);
  }
  if (form == all_reduce_form::gathered) {
    // A few KB (a decode step's row): each ring step costs its fixed
    // per-message work far more than its bytes, so the partials travel
    // whole, n - 1 steps instead of 2 (n - 1), and every member adds all n
    // in rank order: the same sum, bitwise, everywhere.
    auto parts = all_gather_pieces(partial.whole().contiguous(), key, op);
    auto sum = parts.front().clone();
    for (std::size_t m = 1; m < parts.size(); ++m) sum += parts[m];
    return sum;
  }
  // Chunk c of a tile is the elements [bound(c), bound(c + 1)) of the
  // flattened tile. Reduce-scatter: after n - 1 steps chunk r + 1 holds
  // every member's part; all-gather: the summed chunks travel once around.
  auto chunk = [n](at::Tensor& flat, int c) {
    const std::int64_t elements = flat.numel();
    c = wrap(c, n);
    return flat.narrow(0, elements * c / n, elements * (c + 1) / n - elements * c / n);
  };
  std::vector<at::Tensor> flats;
  auto tiles = tiled(partial, [&](std::uint32_t t, at::Tensor& tile) {
    flats.push_back(tile.reshape({-1}).clone());
    // Copies: the all-gather writes into chunks sent earlier, and a send
    // reads its chunk whenever the io thread gets to it.
    send(chunk(flats.back(), r).clone(), key, {op, t, 0});
  });
  for (std::uint32_t t = 0; t < tiles.size(); ++t) {
    auto& flat = flats[t];
    for (int s = 0; s < n - 1; ++s) {
      if (s > 0) send(chunk(flat, r - s).clone(), key, {op, t, static_cast<std::uint16_t>(s)});
      auto into = chunk(flat, r - s - 1);
      into.add_(receive(key, {op, t, static_cast<std::uint16_t>(s)}).to(into.device()).view_as(into));
    }
    for (int s = 0; s < n - 1; ++s) {
      const auto step = static_cast<std::uint16_t>(n - 1 + s);
      send(chunk(flat, r + 1 - s).clone(), key, {op, t, step});
      auto into = chunk(flat, r - s);
      into.copy_(receive(key, {op, t, step}).to(into.device()).view_as(into));
    }
    tiles[t] = flat.view(tiles[t].sizes());
  }
  return side_by_side(tiles);
}

at::Tensor group_ring::reduce_scatter(const compute::partial_sum& partial, const std::vector<std::int64_t>& rows,
                                      const collective_key& key) {
  const int n = size(), r = rank();
  constexpr auto op = messages::collective_op::reduce_scatter;
  if (static_cast<int>(rows.size()) != n || std::accumulate(rows.begin(), rows.end(), std::int64_t{0}) != partial.rows())
    throw std::invalid_argument("reduce_scatter: " + std::to_string(rows.size()) + " row counts for " +
                                std::to_string(n) + " members do not split " + std::to_string(partial.rows()) + " rows");
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(n) + 1, 0);
  std::partial_sum(rows.begin(), rows.end(), offsets.begin() + 1);
  // Member m's rows of a tile.
  auto chunk = [&](at::Tensor& tile, int m) {
    m = wrap(m, n);
    return tile.narrow(0, offsets[static_cast<std::size_t>(m)], rows[static_cast<std::size_t>(m)]);
  };
  if (n == 1) return partial.whole();
  // Chunk c starts at member c + 1 and is added up around the ring, ending
  // at member c: member r sends chunk r - 1 - s at step s and adds what
  // comes into chunk r - 2 - s, which after n - 1 steps is its own. A chunk
  // is only ever added into before it is sent, so it travels uncopied.
  auto tiles = tiled(partial, [&](std::uint32_t t, at::Tensor& tile) { send(chunk(tile, r - 1), key, {op, t, 0}); });
  for (std::uint32_t t = 0; t < tiles.size(); ++t) {
    auto& tile = tiles[t];
    for (int s = 0; s < n - 1; ++s) {
      if (s > 0) send(chunk(tile, r - 1 - s), key, {op, t, static_cast<std::uint16_t>(s)});
      auto into = chunk(tile, r - 2 - s);
      into.add_(receive(key, {op, t, static_cast<std::uint16_t>(s)}).to(into.device()).view_as(into));
    }
    tile = chunk(tile, r);
  }
  return side_by_side(tiles);
}

std::vector<at::Tensor> group_ring::all_gather_pieces(const at::Tensor& mine, const collective_key& key,
                                                      messages::collective_op op) {
  const int n = size(), r = rank();
  // Member m's piece, in rank order; each travels n - 1 hops around the
  // ring, member r passing on at step s the piece it got at step s - 1.
  std::vector<at::Tensor> pieces(static_cast<std::size_t>(n));
  pieces[static_cast<std::size_t>(r)] = mine.contiguous();
  for (int s = 0; s < n - 1; ++s) {
    send(pieces[static_cast<std::size_t>(wrap(r - s, n))], key, {op, 0, static_cast<std::uint16_t>(s)});
    pieces[static_cast<std::size_t>(wrap(r - 1 - s, n))] =
        receive(key, {op, 0, static_cast<std::uint16_t>(s)}).to(mine.device());
  }
  return pieces;
}

at::Tensor group_ring::all_gather(const at::Tensor& mine, const collective_key& key, int dim) {
  if (size() == 1) return mine;
  return at::cat(all_gather_pieces(mine, key, messages::collective_op::all_gather), dim);
}

}  // namespace orrery::actors
