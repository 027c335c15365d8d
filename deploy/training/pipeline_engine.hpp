#pragma once
// `orrery train --topology F`: the training stages of a running topology
// (actors/training_stage.hpp), one per node that the topology's placement
// gives layers, driven from this process. Micro-batches enter the first stage
// over the data plane, at most one per stage in flight (1F1B's bound on the
// activations each stage keeps); their losses and completions come back as
// CAF messages; the norm, the step and the checkpoint are CAF requests to
// every stage at once.
//
// The nodes read the starting model, and write their parts of each
// checkpoint, at the paths this process names: one machine, or a filesystem
// the nodes share with it. backup() has each stage's first member copy its
// weights and moments into its own node's memory and the next stage's node's
// (the last stage's to the first's; a stage alone, to its second member),
// over the data plane (actors/backup_store.hpp). A node lost mid-run (its
// connection breaks) is reported as training_node_lost; recover() moves its
// layers to its neighbours in the pipeline (planning/migration.hpp; a group
// member's replicas simply go on without it), loads every stage in a new
// session and puts it back at the last backup (each parameter from its own
// node's store, or sent by a survivor that holds it), or, where the backup
// is lost or older, at the last checkpoint.

#include <filesystem>
#include <memory>

#include "compute/llama_config.hpp"
#include "deploy/cluster/topology.hpp"
#include "deploy/training/engine.hpp"
#include "messages/types.hpp"

namespace orrery::deploy {

class pipeline_engine final : public training_engine {
 public:
  /// Connects to every node of `t` and loads the training stages from
  /// `model` (a directory the nodes see at that path). Throws
  /// std::runtime_error naming the node that is unreachable or cannot load.
  pipeline_engine(const topology& t, const std::filesystem::path& model, const compute::llama_config& config,
                  const training_settings& settings);
  ~pipeline_engine() override;

  std::vector<double> accumulate(const std::vector<compute::token_batch>& micro_batches) override;
  double squared_gradient_norm() override;
  void step(double learning_rate, double gradient_scale) override;
  std::vector<double> evaluate(const std::vector<compute::token_batch>& batches) override;
  void save(const std::filesystem::path& dir) override;
  void restore(const std::filesystem::path& dir) override;
  std::uint64_t backup() override;
  resume_point recover(const std::string& lost_node, const std::filesystem::path& checkpoint,
                       std::int64_t checkpoint_step) override;
  std::string describe() const override;

 private:
  struct state;
  std::unique_ptr<state> s_;
};

}  // namespace orrery::deploy
