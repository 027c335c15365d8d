// `orrery bench train`: training layouts of one cluster side by side, and
// what a lost node costs a training run.
//
// Layouts (on a running cluster, typically `orrery testbed exec F -- orrery
// bench train --topology F …`): the fastest node alone, pure data parallelism
// over every node, a pure pipeline of every node and the planner's choice
// (deploy/profiling/training_placement.hpp), each trained for the same steps
// from the same model, its mean step after the first beside the simulator's
// predicted round, in samples/s.
//
// Recovery (`--kill NODE`; the topology's nodes run here as local processes
// that this command starts): the run trains over the topology as written, with
// weight backups every --backup-every steps, the node gets SIGKILL once step
// --kill-after is done, and the time from the kill to training resumed, what
// it resumed from, the steps repeated and the final loss beside a
// failure-free run's are reported.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "deploy/bench/bench_command.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"
#include "deploy/profiling/training_placement.hpp"
#include "deploy/training/trainer.hpp"
#include "messages/types.hpp"

namespace orrery::deploy {

namespace {

namespace fs = std::filesystem;

struct train_bench_options {
  std::string topology;
  std::string model;
  std::string data;
  int batch = 8;
  int micro_batch = 2;
  int length = 64;
  int steps = 4;
  bool refresh = false;
  std::string kill;  // recovery mode: the node to kill
  int checkpoint_every = 0;
  int backup_every = 2;
  int kill_after = 3;
};

// A scratch directory for the runs' checkpoints, removed afterwards.
struct scratch {
  fs::path dir = fs::temp_directory_path() / ("orrery-bench-train-" + std::to_string(::getpid()));
  scratch() { fs::create_directories(dir); }
  ~scratch() {
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
};

training_options training_of(const train_bench_options& o, const topology& t, const fs::path& out) {
  training_options options;
  options.model = t.model;
  options.data = o.data;
  options.out = out;
  options.steps = o.steps;
  options.batch = o.batch;
  options.micro_batch = o.micro_batch;
  options.length = o.length;
  options.eval_every = o.steps;  // one validation, after the timed steps
  options.checkpoint_every = 0;
  options.backup_every = 0;  // the layouts' rounds alone (recovery mode sets its own)
  options.quiet = true;
  return options;
}

// The device whose layers train fastest, by the profile.
std::size_t fastest_device(const planning::profile& p) {
  std::size_t best = 0;
  double best_seconds = INFINITY;
  for (std::size_t d = 0; d < p.devices.size(); ++d) {
    double seconds = 0;
    for (const auto& l : p.devices[d].layers) seconds += l.forward + l.backward;
    if (seconds < best_seconds) best = d, best_seconds = seconds;
  }
  return best;
}

nlohmann::json layouts(const train_bench_options& o) {
  auto t = load_topology_for_model(o.topology, o.model);
  const training_shape shape{o.batch, o.micro_batch, o.length};
  const auto profile = obtain_profile(t, training_workload(shape), profile_bar("profile"), o.refresh, true);
  struct layout {
    std::string key;
    training_placement placement;
  };
  std::vector<layout> runs;
  runs.push_back({"single_device", place_training(t, profile, "solo", solo_plan(profile, fastest_device(profile)))});
  runs.push_back({"data_parallel", data_parallel_placement(t, profile)});
  runs.push_back({"pipeline", place_training(t, profile, "pipeline", pipeline_plan(profile))});
  runs.push_back({"planned", plan_training(t, profile)});
  scratch out;
  nlohmann::json result = nlohmann::json::object();
  for (const auto& run : runs) {
    std::cerr << "bench: " << run.key << ": " << describe(run.placement) << "\n";
    std::ostringstream figures;
    const auto trained =
        train(training_of(o, t, out.dir / run.key), run.placement.placed, run.placement.round_s, figures);
    std::cerr << figures.str();
    const double measured = trained.measured_round_s;
    result[run.key] = {{"style", run.placement.style},
                       {"layout", run.placement.layout},
                       {"predicted_round_s", run.placement.round_s},
                       {"measured_round_s", measured},
                       {"measured_parts_s", {{"micro_batches", trained.measured_passes_s},
                                             {"gradient_norm_and_all_reduces", trained.measured_norm_s},
                                             {"update", trained.measured_update_s}}},
                       {"predicted_parts_s", {{"slowest_all_reduce", run.placement.allreduce_s},
                                              {"slowest_update", run.placement.update_s}}},
                       {"prediction_error", std::abs(run.placement.round_s - measured) / measured},
                       {"predicted_samples_per_s", run.placement.samples_per_s},
                       {"measured_samples_per_s", o.batch / measured},
                       {"final_loss", trained.loss}};
  }
  const double best_baseline = std::max(result["data_parallel"]["measured_samples_per_s"].get<double>(),
                                        result["pipeline"]["measured_samples_per_s"].get<double>());
  const double speedup = result["planned"]["measured_samples_per_s"].get<double>() / best_baseline;
  return {{"bench", "train"},
          {"topology", o.topology},
          {"cluster", t.cluster},
          {"model", t.model.string()},
          {"batch", o.batch},
          {"micro_batch", o.micro_batch},
          {"length", o.length},
          {"steps", o.steps},
          {"timed", "the mean step after the first (which warms caches); predicted: the 1F1B round simulation"},
          {"layouts", result},
          {"planned_over_best_of_data_parallel_and_pipeline", speedup},
          {"targets", {{"planned_over_best_of_data_parallel_and_pipeline", ">= 1.5 at 100 Mbit/s"},
                       {"prediction_error", "<= 0.2"}}}};
}

nlohmann::json recovery(const train_bench_options& o) {
  auto t = load_topology_for_model(o.topology, o.model);
  if (t.auto_placement)
    throw std::invalid_argument(o.topology + ": --kill trains over the topology as written; give a placement");
  const auto& victim = t.node(o.kill);
  scratch out;
  std::cerr << "bench: starting " << t.nodes.size() << " node processes\n";
  local_cluster cluster(t, out.dir / "logs");
  cluster.wait_ready(t.connect_timeout * 4);

  auto options = training_of(o, t, out.dir / "reference");
  options.checkpoint_every = o.checkpoint_every;
  options.backup_every = o.backup_every;
  std::ostringstream figures;
  std::cerr << "bench: " << o.steps << " steps without failures\n";
  const auto reference = train(options, t, 0, figures);

  options.out = out.dir / "killed";
  std::atomic<bool> done{false}, due{false};
  std::atomic<std::int64_t> killed_unix_ms{0};
  const pid_t pid = cluster.pid(victim.name);
  options.after_step = [&](std::int64_t next) {
    if (next == o.kill_after) due = true;
  };
  // SIGKILL from another thread once the step is done: the run is then in
  // the next step, or backing up before it.
  std::thread killer([&] {
    while (!done && !due) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    if (done) return;
    killed_unix_ms = unix_ms_now();
    ::kill(pid, SIGKILL);
  });
  std::cerr << "bench: the same steps; " << victim.name << " gets SIGKILL after step " << o.kill_after << "\n";
  training_result killed;
  try {
    killed = train(options, t, 0, figures);
  } catch (...) {
    done = true;
    killer.join();
    throw;
  }
  done = true;
  killer.join();
  std::cerr << figures.str();
  nlohmann::json out_json{{"bench", "train"},
                          {"mode", "recovery"},
                          {"topology", o.topology},
                          {"model", t.model.string()},
                          {"node", victim.name},
                          {"steps", o.steps},
                          {"checkpoint_every", o.checkpoint_every},
                          {"kill_after_step", o.kill_after},
                          {"backup_every", o.backup_every},
                          {"failure_free_final_loss", reference.loss},
                          {"final_loss", killed.loss},
                          {"final_loss_relative_difference",
                           std::abs(killed.loss - reference.loss) / std::max(std::abs(reference.loss), 1e-30)}};
  if (killed.recoveries.empty()) {
    out_json["failure"] = killed_unix_ms ? "the kill was not noticed: no recovery happened"
                                         : "the run ended before the kill; raise --steps";
    return out_json;
  }
  const auto& r = killed.recoveries.front();
  const double kill_to_resumed = (r.resumed_unix_ms - killed_unix_ms) / 1e3;
  out_json["lost_at_step"] = r.lost_at_step;
  out_json["resumed_at_step"] = r.resumed_at_step;
  out_json["resumed_from"] = r.source;
  out_json["backups"] = killed.backups;
  out_json["backup_bytes"] = killed.backup_bytes;
  out_json["backup_s"] = killed.backup_seconds;
  out_json["steps_repeated"] = r.lost_at_step - r.resumed_at_step;
  out_json["error_to_resumed_s"] = r.seconds;
  out_json["kill_to_resumed_s"] = kill_to_resumed;
  out_json["targets"] = {{"kill_to_resumed_s", {{"value", kill_to_resumed}, {"target", 5}, {"met", kill_to_resumed <= 5}}}};
  return out_json;
}

}  // namespace

void add_train_bench(CLI::App& bench) {
  auto opts = std::make_shared<train_bench_options>();
  auto* cmd = bench.add_subcommand(
      "train",
      "Training samples/s of the fastest node alone, pure data parallelism, a pure pipeline and the planned layout on a "
      "running cluster (e.g. `orrery testbed exec F -- orrery bench train --topology F --data data/kjv.txt`), each "
      "beside its predicted round; with --kill NODE, what losing that node mid-run costs (nodes started here)");
  cmd->add_option("--topology", opts->topology, "Topology file")->required()->check(CLI::ExistingFile);
  cmd->add_option("--model", opts->model, "Model directory to start from (overrides the topology's)")
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--data", opts->data, "Text file to train on")->required()->check(CLI::ExistingFile);
  cmd->add_option("--batch", opts->batch, "Samples per step")->capture_default_str()->check(at_least(1));
  cmd->add_option("--micro-batch", opts->micro_batch, "Samples per micro-batch; divides --batch")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--length", opts->length, "Tokens per sample")->capture_default_str()->check(at_least(2));
  cmd->add_option("--steps", opts->steps, "Steps per layout (the first is not timed)")
      ->capture_default_str()
      ->check(at_least(2));
  cmd->add_flag("--refresh", opts->refresh, "Profile the nodes again even where the cache has them");
  cmd->add_option("--kill", opts->kill, "Recovery: SIGKILL this node mid-run");
  cmd->add_option("--kill-after", opts->kill_after, "Recovery: the kill comes once this many steps are done")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--checkpoint-every", opts->checkpoint_every, "Recovery: steps between checkpoints (0: only at the end)")
      ->capture_default_str()
      ->check(at_least(0));
  cmd->add_option("--backup-every", opts->backup_every,
                  "Recovery: steps between in-memory weight backups on neighbouring nodes (0: none)")
      ->capture_default_str()
      ->check(at_least(0));
  cmd->callback([opts] {
    if (opts->batch % opts->micro_batch != 0)
      throw CLI::ValidationError("--micro-batch", std::to_string(opts->micro_batch) + " does not divide --batch " +
                                                      std::to_string(opts->batch));
    if (!opts->kill.empty() && opts->kill_after >= opts->steps)
      throw CLI::ValidationError("--kill-after", std::to_string(opts->kill_after) + " must be below --steps " +
                                                    std::to_string(opts->steps));
    std::cout << (opts->kill.empty() ? layouts(*opts) : recovery(*opts)).dump(2) << std::endl;
  });
}

}  // namespace orrery::deploy
