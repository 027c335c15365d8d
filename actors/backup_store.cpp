#include "actors/backup_store.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <condition_variable>
#include <stdexcept>

#include "actors/tensor_frame.hpp"

namespace orrery::actors {

void backup_store::put(std::uint64_t run, std::int64_t round, backed_up_parameter p) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& rounds = runs_[run];
  // Rounds past this one are of steps the run went back on (it recovered
  // from an older checkpoint): they will be made again.
  rounds.erase(rounds.upper_bound(round), rounds.end());
  rounds[round][p.name] = std::move(p.state);
  while (rounds.size() > rounds_kept) rounds.erase(rounds.begin());
  recent_.remove(run);
  recent_.push_front(run);
  while (recent_.size() > runs_kept) {
    runs_.erase(recent_.back());
    recent_.pop_back();
  }
}

std::vector<std::string> backup_store::missing(std::uint64_t run, std::int64_t round,
                                               const std::vector<std::string>& names) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::map<std::string, std::vector<at::Tensor>>* held = nullptr;
  if (auto r = runs_.find(run); r != runs_.end())
    if (auto it = r->second.find(round); it != r->second.end()) held = &it->second;
  std::vector<std::string> out;
  for (const auto& name : names)
    if (!held || !held->count(name)) out.push_back(name);
  return out;
}

std::vector<backed_up_parameter> backup_store::get(std::uint64_t run, std::int64_t round,
                                                   const std::vector<std::string>& names) const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<backed_up_parameter> out;
  for (const auto& name : names) {
    const std::vector<at::Tensor>* state = nullptr;
    if (auto r = runs_.find(run); r != runs_.end())
      if (auto it = r->second.find(round); it != r->second.end())
        if (auto p = it->second.find(name); p != it->second.end()) state = &p->second;
    if (!state)
      throw std::invalid_argument("no backup of '" + name + "' after round " + std::to_string(round) + " of run " +
                                  std::to_string(run) + " is held here");
    out.push_back({name, *state});
  }
  return out;
}

void backup_store::forget(std::uint64_t run) {
  std::lock_guard<std::mutex> lock(mutex_);
  runs_.erase(run);
  recent_.remove(run);
}

std::uint64_t backup_store::bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::uint64_t total = 0;
  for (const auto& [run, rounds] : runs_)
    for (const auto& [round, parameters] : rounds)
      for (const auto& [name, state] : parameters)
        for (const auto& t : state) total += t.nbytes();
  return total;
}

std::vector<at::Tensor> backup_state_of(const tensor_frame& frame) {
  const auto* route = std::get_if<messages::backup_route>(&frame.descriptor.route);
  if (!route) throw std::invalid_argument("not a backup frame");
  const auto& t = frame.tensors;
  const auto& layouts = frame.descriptor.tensors;
  const bool well_formed =
      t.size() == 3 && layouts.size() == t.size() && std::all_of(layouts.begin(), layouts.end(), [](const auto& l) { return l.role == messages::tensor_role::state; }) &&
      std::all_of(t.begin(), t.end(), [&](const at::Tensor& x) { return x.scalar_type() == at::kFloat && x.sizes() == t[0].sizes(); });
  if (!well_formed)
    throw std::invalid_argument("the backup frame of '" + route->name +
                                "' is not its weights and two moments (three float32 state tensors of one shape)");
  return t;
}

void backup_store::receive(tensor_frame frame) {
  const auto state = backup_state_of(frame);
  const auto& route = std::get<messages::backup_route>(frame.descriptor.route);
  put(route.run, route.round, {route.name, state});
}

void send_backup(messages::link& link, std::uint64_t session, std::uint64_t deployment, messages::backup_route route,
                 const std::vector<backed_up_parameter>& parameters) {
  // A few frames in flight at a time: each is packed into a buffer of its own.
  constexpr std::uint64_t max_queued_bytes = 256ull << 20;
  std::mutex mutex;
  std::condition_variable changed;
  std::uint64_t queued = 0;
  std::size_t pending = 0;
  std::string problem;
  for (const auto& p : parameters) {
    std::uint64_t bytes = 0;
    std::vector<outgoing_tensor> tensors;
    for (const auto& t : p.state) {
      bytes += t.nbytes();
      tensors.push_back({messages::tensor_role::state, t});
    }
    {
      std::unique_lock<std::mutex> lock(mutex);
      changed.wait(lock, [&] { return queued == 0 || queued + bytes <= max_queued_bytes || !problem.empty(); });
      if (!problem.empty()) break;
      queued += bytes;
      ++pending;
    }
    messages::frame_descriptor d;
    d.session = session;
    d.deployment = deployment;
    route.name = p.name;
    d.route = route;
    send_tensors(link, std::move(d), std::move(tensors), [&, bytes](const std::string& error) {
      std::lock_guard<std::mutex> lock(mutex);
      queued -= bytes;
      --pending;
      if (!error.empty() && problem.empty()) problem = error;
      changed.notify_all();
    });
  }
  std::unique_lock<std::mutex> lock(mutex);
  changed.wait(lock, [&] { return pending == 0; });
  if (!problem.empty()) throw std::runtime_error("sending backups to " + link.peer() + " failed: " + problem);
}

}  // namespace orrery::actors
