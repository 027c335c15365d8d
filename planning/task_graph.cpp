#include "planning/task_graph.hpp"

#include <algorithm>
#include <functional>
#include <queue>
#include <stdexcept>
#include <utility>

namespace orrery::planning {

double schedule::busy(std::size_t resource) const {
  double total = 0;
  for (const span& s : spans)
    if (s.resource == resource)
      total += s.finish - s.start;
  return total;
}

std::size_t task_graph::add_resource(std::string name) {
  resources_.push_back(std::move(name));
  return resources_.size() - 1;
}

std::size_t task_graph::add_task(std::size_t resource, double occupy, std::vector<std::size_t> after,
                                 double delay, std::string label, int group) {
  if (resource >= resources_.size())
    throw std::logic_error("task_graph: unknown resource " + std::to_string(resource));
  for (std::size_t a : after)
    if (a >= tasks_.size())
      throw std::logic_error("task_graph: a task may only follow tasks added before it");
  tasks_.push_back({resource, occupy, delay, std::move(after), std::move(label), group});
  return tasks_.size() - 1;
}

schedule task_graph::run() const {
  std::size_t n = tasks_.size();
  std::vector<std::vector<std::size_t>> successors(n);
  std::vector<std::size_t> waiting(n);
  std::vector<double> ready(n, 0.0);
  for (std::size_t t = 0; t < n; ++t) {
    waiting[t] = tasks_[t].after.size();
    for (std::size_t a : tasks_[t].after)
      successors[a].push_back(t);
  }
  // Successors are never ready before their predecessors, so popping by
  // readiness hands each resource its tasks in order of readiness.
  using entry = std::pair<double, std::size_t>;
  std::priority_queue<entry, std::vector<entry>, std::greater<entry>> queue;
  for (std::size_t t = 0; t < n; ++t)
    if (waiting[t] == 0)
      queue.push({0.0, t});
  schedule out;
  out.resources = resources_;
  out.spans.resize(n);
  std::vector<double> free_at(resources_.size(), 0.0);
  while (!queue.empty()) {
    auto [at, t] = queue.top();
    queue.pop();
    const task& job = tasks_[t];
    double start = std::max(at, free_at[job.resource]);
    double finish = start + job.occupy;
    free_at[job.resource] = finish;
    out.spans[t] = {job.resource, start, finish, job.label, job.group};
    out.makespan = std::max(out.makespan, finish + job.delay);
    for (std::size_t s : successors[t]) {
      ready[s] = std::max(ready[s], finish + job.delay);
      if (--waiting[s] == 0)
        queue.push({ready[s], s});
    }
  }
  return out;
}

}  // namespace orrery::planning
