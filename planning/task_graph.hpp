#pragma once
// The discrete-event core of the simulator: tasks on resources (a device's
// compute, a directed network link, a training stage) with precedence. A task
// starts when its predecessors' results have arrived (finish + their delay,
// i.e. a link's latency) and its resource is free; each resource serves its
// tasks one at a time in order of readiness (ties: the task added first).

#include <cstddef>
#include <string>
#include <vector>

namespace orrery::planning {

/// A task as executed.
struct span {
  std::size_t resource = 0;
  double start = 0;
  double finish = 0;
  std::string label;
  int group = -1;  ///< request / micro-batch / tile, for colouring timelines
};

/// The outcome of running a task graph.
struct schedule {
  std::vector<std::string> resources;
  std::vector<span> spans;  ///< indexed by task id
  double makespan = 0;

  /// Seconds `resource` was busy.
  double busy(std::size_t resource) const;
};

/// Tasks with precedence on resources, scheduled by one run.
class task_graph {
 public:
  /// Adds a resource (serves one task at a time); returns its id.
  std::size_t add_resource(std::string name);

  /// Adds a task occupying `resource` for `occupy` seconds once every task in
  /// `after` has finished and its delay passed; its own result reaches its
  /// successors `delay` seconds after it finishes. Returns its id.
  std::size_t add_task(std::size_t resource, double occupy, std::vector<std::size_t> after,
                       double delay = 0, std::string label = {}, int group = -1);

  std::size_t task_count() const { return tasks_.size(); }

  /// Runs the graph; every task must depend only on tasks added before it.
  schedule run() const;

 private:
  struct task {
    std::size_t resource;
    double occupy;
    double delay;
    std::vector<std::size_t> after;
    std::string label;
    int group;
  };

  std::vector<std::string> resources_;
  std::vector<task> tasks_;
};

}  // namespace orrery::planning
