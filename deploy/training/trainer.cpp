#include "deploy/training/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>

#include "base/remove_tree.hpp"
#include "compute/bounded_file.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/shard.hpp"
#include "compute/text/tokenizer.hpp"
#include "compute/training/checkpoint.hpp"
#include "compute/training/corpus.hpp"
#include "compute/training/optimizer.hpp"
#include "compute/training/pass.hpp"
#include "deploy/console/progress.hpp"
#include "deploy/cluster/topology.hpp"
#include "deploy/profiling/training_placement.hpp"
#include "deploy/training/engine.hpp"
#include "deploy/training/loss_curve.hpp"
#include "deploy/training/pipeline_engine.hpp"
#include "messages/types.hpp"

namespace orrery::deploy {

namespace fs = std::filesystem;
using nlohmann::json;

void training_options::check() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(steps > 0 || epochs > 0, "give --steps N or --epochs E (both are 0)");
  need(steps >= 0, "--steps must be >= 0");
  need(epochs >= 0 && std::isfinite(epochs), "--epochs must be a finite number >= 0");
  need(batch >= 1, "--batch must be >= 1");
  need(micro_batch >= 1 && batch % micro_batch == 0,
       "--micro-batch (" + std::to_string(micro_batch) + ") must divide --batch (" + std::to_string(batch) + ")");
  need(length >= 2, "--length must be >= 2");
  need(learning_rate > 0 && std::isfinite(learning_rate), "--lr must be a positive number");
  need(min_learning_rate >= 0 && min_learning_rate <= learning_rate, "--min-lr must be in [0, --lr]");
  need(clip >= 0, "--clip must be >= 0 (0: no clipping)");
  need(weight_decay >= 0, "--weight-decay must be >= 0");
  need(validation_fraction > 0 && validation_fraction <= 0.5, "--validation-fraction must be in (0, 0.5]");
  need(validation_sequences >= 1, "--validation-sequences must be >= 1");
  need(eval_every >= 1, "--eval-every must be >= 1");
  need(checkpoint_every >= 0, "--checkpoint-every must be >= 0");
  need(backup_every >= 0, "--backup-every must be >= 0");
  need(threads >= 0, "--threads must be >= 0");
}

json to_json(const training_options& o) {
  return {{"steps", o.steps},
          {"epochs", o.epochs},
          {"batch", o.batch},
          {"micro_batch", o.micro_batch},
          {"length", o.length},
          {"learning_rate", o.learning_rate},
          {"min_learning_rate", o.min_learning_rate},
          {"warmup_steps", o.warmup_steps},
          {"clip", o.clip},
          {"weight_decay", o.weight_decay},
          {"validation_fraction", o.validation_fraction},
          {"seed", o.seed}};
}

namespace {

// The flag each stored option comes from, for a resume that disagrees.
const std::vector<std::pair<const char*, const char*>> option_flags = {
    {"steps", "--steps"},
    {"epochs", "--epochs"},
    {"batch", "--batch"},
    {"micro_batch", "--micro-batch"},
    {"length", "--length"},
    {"learning_rate", "--lr"},
    {"min_learning_rate", "--min-lr"},
    {"warmup_steps", "--warmup"},
    {"clip", "--clip"},
    {"weight_decay", "--weight-decay"},
    {"validation_fraction", "--validation-fraction"},
    {"seed", "--seed"}};

struct run_log {
  std::vector<json> steps;
  std::vector<loss_point> training, validation;

  void add(const json& entry) {
    steps.push_back(entry);
    training.push_back({entry["step"].get<std::int64_t>(), entry["loss"].get<double>()});
    if (entry.contains("validation_loss"))
      validation.push_back({entry["step"].get<std::int64_t>(), entry["validation_loss"].get<double>()});
  }

  /// Forgets the steps from `next_step` on (they are run again).
  void truncate(std::int64_t next_step) {
    auto keep = [&](auto& entries, auto step_of) {
      entries.erase(std::remove_if(entries.begin(), entries.end(), [&](const auto& e) { return step_of(e) >= next_step; }),
                    entries.end());
    };
    keep(steps, [](const json& e) { return e["step"].get<std::int64_t>(); });
    keep(training, [](const loss_point& p) { return p.step; });
    keep(validation, [](const loss_point& p) { return p.step; });
  }
};

std::int64_t total_steps(const training_options& o, const compute::corpus& data) {
  if (o.steps > 0) return o.steps;
  const double per_step = static_cast<double>(o.batch) * o.length;
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(
                                       std::ceil(o.epochs * static_cast<double>(data.training_tokens()) / per_step)));
}

compute::learning_rate_schedule schedule_of(const training_options& o, std::int64_t total) {
  compute::learning_rate_schedule s;
  s.peak = o.learning_rate;
  s.floor = o.min_learning_rate;
  s.total_steps = total;
  s.warmup_steps = o.warmup_steps >= 0 ? o.warmup_steps : std::min<std::int64_t>(100, total / 20);
  return s;
}

double validation_loss(training_engine& engine, const compute::corpus& data, const training_options& o) {
  const int n = std::min(o.validation_sequences, data.validation_sequences(o.length));
  std::vector<compute::token_batch> batches;
  for (int first = 0; first < n; first += o.micro_batch)
    batches.push_back(data.validation_batch(first, std::min(o.micro_batch, n - first), o.length));
  double sum = 0;
  for (double loss : engine.evaluate(batches)) sum += loss;
  return sum / (static_cast<double>(n) * o.length);
}

// The model on one device: one shard of every layer and its optimizer.
class local_engine final : public training_engine {
 public:
  local_engine(const compute::model_dir& dir, const training_options& o, double batch_tokens)
      : config_(dir.config()), start_(dir.path()), model_(dir, 0, dir.config().num_layers, where(o)),
        optimizer_(compute::trainable_parameters(model_), compute::adamw_options{0.9, 0.95, 1e-8, o.weight_decay}),
        scale_(1.0 / batch_tokens), device_(o.device) {}

  std::vector<double> accumulate(const std::vector<compute::token_batch>& micro_batches) override {
    std::vector<double> losses;
    for (const auto& b : micro_batches) {
      compute::training_pass pass(model_, b.inputs, b.sequences, b.length);
      losses.push_back(pass.backward_from_loss(b.targets, scale_));
    }
    return losses;
  }
  double squared_gradient_norm() override { return compute::squared_gradient_norm(optimizer_.parameters()); }
  void step(double learning_rate, double gradient_scale) override { optimizer_.step(learning_rate, gradient_scale); }
  std::vector<double> evaluate(const std::vector<compute::token_batch>& batches) override {
    std::vector<double> losses;
    for (const auto& b : batches)
      losses.push_back(compute::loss_sum(compute::evaluation_pass(model_, b.inputs, b.sequences, b.length), b.targets));
    return losses;
  }
  void save(const fs::path& dir) override {
    compute::write_trained_model(dir, config_, {&model_}, start_);
    compute::save_optimizer(dir / compute::optimizer_file_name, optimizer_);
  }
  void restore(const fs::path& dir) override { compute::load_optimizer(compute::optimizer_files(dir), optimizer_); }
  resume_point recover(const std::string& lost_node, const fs::path&, std::int64_t) override {
    throw std::logic_error("one device has no node to lose (" + lost_node + ")");
  }
  std::string describe() const override { return device_; }

 private:
  static compute::shard_options where(const training_options& o) {
    compute::shard_options w;
    w.device = compute::device_from_name(o.device);
    w.dtype = at::kFloat;
    return w;
  }
  compute::llama_config config_;
  fs::path start_;  // the model trained from: its tokenizer goes with every checkpoint
  compute::shard model_;
  compute::adamw optimizer_;
  double scale_;
  std::string device_;
};

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) throw compute::model_error(path.string() + ": write failed");
}

// Replaces `out` with a checkpoint written beside it, so a run stopped at any
// point leaves either the previous checkpoint or this one, whole.
void write_checkpoint(const training_options& o, training_engine& engine, const compute::corpus& data,
                      std::int64_t next_step, std::int64_t total, const run_log& log) {
  const fs::path partial = o.out.string() + ".partial", old = o.out.string() + ".old";
  remove_tree(partial);
  fs::create_directories(partial);
  engine.save(partial);
  json state = {{"options", to_json(o)},
                {"next_step", next_step},
                {"total_steps", total},
                {"data", {{"path", fs::absolute(data.path()).string()}, {"content_hash", data.fingerprint()}}}};
  write_text(partial / training_state_file, state.dump(2) + "\n");
  std::string lines;
  for (const auto& entry : log.steps) lines += entry.dump() + "\n";
  write_text(partial / training_log_file, lines);
  write_text(partial / loss_curve_file,
             loss_curve_svg(log.training, log.validation,
                            "orrery train: " + data.path().filename().string() + ", " + std::to_string(next_step) +
                                " of " + std::to_string(total) + " steps"));
  remove_tree(old);
  if (fs::exists(o.out)) fs::rename(o.out, old);
  fs::rename(partial, o.out);
  remove_tree(old);
}

// The run a checkpoint in `o.out` belongs to must be this one: same text,
// same options; returns its state.
json resumable_state(const training_options& o, const compute::corpus& data) {
  const auto path = o.out / training_state_file;
  auto state = compute::read_json_object(path, compute::max_model_json_bytes);
  const auto saved = state.value("options", json::object());
  const auto now = to_json(o);
  for (const auto& [key, flag] : option_flags)
    if (saved.value(key, json()) != now[key])
      throw std::invalid_argument(std::string("--resume: ") + flag + " is " + now[key].dump() + " here, but the run in " +
                                  o.out.string() + " used " + saved.value(key, json()).dump());
  const auto hash = state.value("data", json::object()).value("content_hash", json());
  if (hash != json(data.fingerprint()))
    throw std::invalid_argument("--resume: --data " + o.data.string() + " is not the text the run in " +
                                o.out.string() + " trained on (its content differs)");
  return state;
}

run_log read_log(const fs::path& path, std::int64_t next_step) {
  run_log log;
  std::ifstream in(path);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    auto entry = json::parse(line, nullptr, false);
    if (entry.is_discarded() || !entry.contains("step") || !entry.contains("loss"))
      throw compute::model_error(path.string() + ":" + std::to_string(number) + ": not a step of the log");
    if (entry["step"].get<std::int64_t>() < next_step) log.add(entry);
  }
  return log;
}

}  // namespace

namespace {

std::string recovery_text(const training_result::recovery& r) {
  char line[384];
  std::snprintf(line, sizeof line, "node '%s' lost at step %lld, resumed at step %lld from %s (%lld repeated) in %.2f s",
                r.node.c_str(), static_cast<long long>(r.lost_at_step), static_cast<long long>(r.resumed_at_step),
                r.source.c_str(), static_cast<long long>(r.lost_at_step - r.resumed_at_step), r.seconds);
  return line;
}

// `cluster`: the nodes to train over as placed; none: one device.
// `predicted_round_s`: its plan's round, to report beside the measured one.
training_result run_training(const training_options& o, const std::optional<topology>& cluster,
                             double predicted_round_s, std::ostream& figures) {
  o.check();
  if (!o.resume && fs::exists(o.out) && !fs::is_empty(o.out))
    throw std::invalid_argument("--out " + o.out.string() +
                                " is not empty: pass --resume to continue the run there, or choose another directory");
  if (o.resume && !fs::exists(o.out / training_state_file))
    throw std::invalid_argument("--resume: " + o.out.string() + " holds no checkpoint (" +
                                (o.out / training_state_file).string() + " is missing)");
  const fs::path start_model = o.resume ? o.out : !o.model.empty() ? o.model : cluster ? cluster->model : fs::path();
  if (start_model.empty()) throw std::invalid_argument("give --model DIR (or --topology F, whose model it trains)");
  compute::set_gemm_threads(o.threads > 0 ? o.threads : compute::default_thread_count());
  compute::model_dir dir(start_model);
  const auto& config = dir.config();
  if (o.length > config.max_position_embeddings)
    throw std::invalid_argument("--length " + std::to_string(o.length) + " exceeds the model's context of " +
                                std::to_string(config.max_position_embeddings) + " positions");
  auto tokens = compute::load_tokenizer(start_model);
  auto data = compute::corpus::load(o.data, *tokens, o.validation_fraction, o.length);
  json state = o.resume ? resumable_state(o, data) : json::object();

  const double per_step_tokens = static_cast<double>(o.batch) * o.length;
  std::unique_ptr<training_engine> engine;
  if (cluster) {
    training_settings settings;
    settings.weight_decay = o.weight_decay;
    settings.batch_tokens = static_cast<std::uint64_t>(per_step_tokens);
    settings.micro_batches = static_cast<std::uint32_t>(o.batch / o.micro_batch);
    settings.micro_batch_sequences = static_cast<std::uint32_t>(o.micro_batch);
    engine = std::make_unique<pipeline_engine>(*cluster, start_model, config, settings);
  } else {
    engine = std::make_unique<local_engine>(dir, o, per_step_tokens);
  }
  const std::int64_t total = total_steps(o, data);
  const auto schedule = schedule_of(o, total);
  std::int64_t first = 0;
  run_log log;
  if (o.resume) {
    first = state.value("next_step", std::int64_t{0});
    if (first >= total)
      throw std::invalid_argument("--resume: the run in " + o.out.string() + " has done all its " +
                                  std::to_string(total) + " steps; raise --steps in a new run to train further");
    engine->restore(o.out);
    log = read_log(o.out / training_log_file, first);
  }
  std::cerr << "training " << start_model.string() << " (" << config.parameter_count() / 1e6 << "M parameters) on "
            << o.data.string() << ": " << data.training_tokens() << " tokens, " << data.validation_tokens()
            << " held out; " << total << " steps of " << o.batch << " x " << o.length << " tokens"
            << (first > 0 ? ", resuming at step " + std::to_string(first) : std::string()) << "; on "
            << engine->describe() << "\n";

  progress_bar bar("train");
  const auto started = std::chrono::steady_clock::now();
  double last_loss = NAN, last_validation = NAN;
  // Step times after the first (which warms caches and the allocator).
  double round_seconds = 0;
  // Of those steps: the micro-batches' passes, the gradient norm (with the
  // groups' all-reduces), the update.
  double passes_seconds = 0, norm_seconds = 0, update_seconds = 0;
  int rounds = 0;
  bool warm = false;
  std::vector<training_result::recovery> recovered;
  std::int64_t backups = 0;
  std::uint64_t backup_bytes = 0;
  double backup_seconds = 0;
  for (std::int64_t step = first; step < total;) {
    try {
      // Step 0's weights are the starting model's: no backup needed there.
      if (cluster && o.backup_every > 0 && step > 0 && step % o.backup_every == 0) {
        const auto b0 = std::chrono::steady_clock::now();
        backup_bytes = engine->backup();
        backup_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - b0).count();
        ++backups;
      }
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<compute::token_batch> micro_batches;
      for (int m = 0; m < o.batch; m += o.micro_batch)
        micro_batches.push_back(data.training_batch(o.seed, step, m, o.micro_batch, o.length));
      double loss = 0;
      for (double part : engine->accumulate(micro_batches)) loss += part;
      loss /= per_step_tokens;
      const auto t1 = std::chrono::steady_clock::now();
      const double norm = std::sqrt(engine->squared_gradient_norm());
      const auto t2 = std::chrono::steady_clock::now();
      const double lr = schedule.at(step);
      engine->step(lr, compute::clipping_scale(norm, o.clip));
      const auto t3 = std::chrono::steady_clock::now();
      auto between = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
      const double seconds = between(t0, t3);
      if (warm) {
        round_seconds += seconds, ++rounds;
        passes_seconds += between(t0, t1), norm_seconds += between(t1, t2), update_seconds += between(t2, t3);
      }
      warm = true;
      json entry = {{"step", step},           {"loss", loss},       {"learning_rate", lr},
                    {"gradient_norm", norm},  {"tokens", static_cast<std::int64_t>(per_step_tokens)},
                    {"seconds", seconds},     {"tokens_per_s", per_step_tokens / seconds}};
      last_loss = loss;
      const bool last = step + 1 == total;
      if ((step + 1) % o.eval_every == 0 || last) {
        last_validation = validation_loss(*engine, data, o);
        entry["validation_loss"] = last_validation;
      }
      log.add(entry);
      if (!o.quiet) {
        char what[160];
        std::snprintf(what, sizeof what, "loss %.3f  val %.3f  lr %.2e  %.0f tok/s", loss, last_validation, lr,
                      per_step_tokens / seconds);
        bar.show(step + 1, total, what, first);
      }
      if (last || (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0))
        write_checkpoint(o, *engine, data, step + 1, total, log);
      ++step;
      if (o.after_step) o.after_step(step);
    } catch (const training_node_lost& e) {
      // The survivors take the lost node's layers and continue from the
      // last backup, or the last checkpoint (or the start) where that is
      // newer: only the steps since are repeated.
      const bool checkpointed = fs::exists(o.out / training_state_file);
      const fs::path checkpoint = checkpointed ? o.out : start_model;
      const std::int64_t checkpoint_step =
          checkpointed ? compute::read_json_object(o.out / training_state_file, compute::max_model_json_bytes)
                             .value("next_step", std::int64_t{0})
                       : std::int64_t{0};
      const auto started_recovery = std::chrono::steady_clock::now();
      const auto resumed = engine->recover(e.node(), checkpoint, checkpoint_step);
      log.truncate(resumed.step);
      const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_recovery).count();
      recovered.push_back({e.node(), step, resumed.step, resumed.source, took, unix_ms_now()});
      std::cerr << (o.quiet ? "" : "\n") << e.what() << "\n"
                << "recovered: " << recovery_text(recovered.back()) << "; now on " << engine->describe() << "\n";
      step = resumed.step;
    }
  }
  training_result result;
  result.first_step = first;
  result.steps = total;
  result.loss = last_loss;
  result.validation_loss = last_validation;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  result.tokens_per_s = static_cast<double>(total - first) * per_step_tokens / std::max(result.seconds, 1e-9);
  char line[512];
  std::snprintf(line, sizeof line,
                "-- trained %lld steps (%lld in this run) in %.1f s | loss %.3f | validation %.3f | %.0f tokens/s | "
                "model in %s, loss curve %s\n",
                static_cast<long long>(total), static_cast<long long>(total - first), result.seconds, result.loss,
                result.validation_loss, result.tokens_per_s, o.out.c_str(), (o.out / loss_curve_file).c_str());
  figures << line;
  if (predicted_round_s > 0 && rounds > 0) {
    const double measured = round_seconds / rounds;
    std::snprintf(line, sizeof line,
                  "   round: predicted %.3f s, measured %.3f s (mean of %d steps after the first; %+.0f%%): micro-batches "
                  "%.3f s, gradient norm and all-reduces %.3f s, update %.3f s\n",
                  predicted_round_s, measured, rounds, 100 * (measured / predicted_round_s - 1), passes_seconds / rounds,
                  norm_seconds / rounds, update_seconds / rounds);
    figures << line;
    result.predicted_round_s = predicted_round_s;
    result.measured_passes_s = passes_seconds / rounds;
    result.measured_norm_s = norm_seconds / rounds;
    result.measured_update_s = update_seconds / rounds;
    result.measured_round_s = measured;
  }
  if (backups > 0) {
    std::snprintf(line, sizeof line, "   backups: %lld in memory on neighbouring nodes, %.1f MB each, %.2f s each\n",
                  static_cast<long long>(backups), backup_bytes / 1e6, backup_seconds / backups);
    figures << line;
  }
  for (const auto& r : recovered) figures << "   recovery: " << recovery_text(r) << "\n";
  result.recoveries = std::move(recovered);
  result.backups = backups;
  result.backup_bytes = backup_bytes;
  result.backup_seconds = backups > 0 ? backup_seconds / backups : 0;
  return result;
}

}  // namespace

training_result train(const training_options& o, std::ostream& figures) {
  if (o.topology.empty()) return run_training(o, std::nullopt, 0, figures);
  o.check();
  // The predicted round of a `placement: auto` plan; 0 for a written placement.
  double predicted_round_s = 0;
  // The model trained is the one placed: the topology's unless --model names
  // another. A resumed checkpoint has its start model's shape; placing by
  // that model keeps its cached profile (a checkpoint's files change).
  const auto model = o.model.string();
  auto cluster = resolve_training_placement(load_topology_for_model(o.topology, model),
                                            {o.batch, o.micro_batch, o.length}, std::cerr, &predicted_round_s);
  return run_training(o, cluster, predicted_round_s, figures);
}

training_result train(const training_options& o, const topology& cluster, double predicted_round_s,
                      std::ostream& figures) {
  return run_training(o, cluster, predicted_round_s, figures);
}

}  // namespace orrery::deploy
