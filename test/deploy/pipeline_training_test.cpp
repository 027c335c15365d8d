// Training over real `orrery node` processes: a pipeline's steps against the
// same steps on one device (losses, gradient norms, weights), checkpoints
// that resume on another layout, and a node lost mid-run.

#include <ATen/ATen.h>
#include <doctest/doctest.h>
#include <nlohmann/json.hpp>
#include <signal.h>

#include <fstream>
#include <functional>
#include <regex>
#include <sstream>

#include "compute/model_dir.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "compute/training/pass.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "deploy/cluster/topology.hpp"
#include "deploy/training/trainer.hpp"
#include "test/loopback_cluster.hpp"
#include "test/run_process.hpp"

using namespace orrery;
using nlohmann::json;
using orrery::test::temp_dir;
using orrery::test::write_topology;

namespace {

const std::string english = "/usr/share/common-licenses/GPL-3";

std::vector<json> log_of(const std::filesystem::path& out) {
  std::vector<json> entries;
  std::ifstream in(out / "train_log.jsonl");
  for (std::string line; std::getline(in, line);) entries.push_back(json::parse(line));
  return entries;
}

deploy::training_options options(const std::filesystem::path& model, const std::filesystem::path& out) {
  deploy::training_options o;
  o.model = model;
  o.data = english;
  o.out = out;
  o.steps = 3;
  o.batch = 8;
  o.micro_batch = 2;  // 4 micro-batches a step: more than the stages, so 1F1B's window fills
  o.length = 32;
  o.eval_every = 2;
  o.threads = 1;
  o.quiet = true;
  return o;
}

// The trained weights of a checkpoint by name, as one device holds them.
std::map<std::string, at::Tensor> weights_of(const std::filesystem::path& dir) {
  compute::model_dir model(dir);
  compute::shard whole(model, 0, model.config().num_layers);
  std::map<std::string, at::Tensor> out;
  for (const auto& p : compute::trainable_parameters(whole)) out[p.name] = p.tensor.detach().clone();
  return out;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

}  // namespace

TEST_CASE("a pipeline of node processes trains step for step as one device: losses, norms and weights within 1e-5") {
  for (bool tied : {false, true}) {
    CAPTURE(tied);
    temp_dir dir;
    auto config = compute::llama_config::preset("tiny");
    config.tie_word_embeddings = tied;
    compute::init_model(dir / "m", config, {21, 0, {}});
    std::ostringstream figures;
    deploy::train(options(dir / "m", dir / "local"), figures);
    const auto local_log = log_of(dir / "local");
    const auto local_weights = weights_of(dir / "local");
    REQUIRE(local_log.size() == 3);

    // Pipelines of 1-3 stages, and data-parallel groups (uneven speeds) alone and in a pipeline.
    const std::vector<std::pair<std::string, std::function<std::filesystem::path(const std::string&)>>> layouts = {
        {"1 stage", [&](const std::string& n) { return write_topology(dir, n, {{0, 4}}); }},
        {"2 stages", [&](const std::string& n) { return write_topology(dir, n, {{0, 2}, {2, 4}}); }},
        {"3 stages", [&](const std::string& n) { return write_topology(dir, n, {{0, 1}, {1, 3}, {3, 4}}); }},
        {"a group of 2", [&](const std::string& n) { return test::write_group_topology(dir, n, {{1.0, 1.0}}); }},
        {"a group of 2 (1 : 0.5), then 1", [&](const std::string& n) { return test::write_group_topology(dir, n, {{1.0, 0.5}, {1.0}}); }},
        {"1, then a group of 3 (1 : 0.5 : 0.5)", [&](const std::string& n) { return test::write_group_topology(dir, n, {{1.0}, {1.0, 0.5, 0.5}}); }},
        // Micro-batches of 4 rows: 2 + 1 + 1, then 2 + 2, so a member of the
        // second group gathers its rows from two members of the first, and
        // sends their gradients back to both.
        {"a group of 3 (1 : 0.5 : 0.5), then a group of 2, rows re-split", [&](const std::string& n) { return test::write_group_topology(dir, n, {{1.0, 0.5, 0.5}, {1.0, 1.0}}); }},
    };
    int number = 0;
    for (const auto& [layout, write] : layouts) {
      CAPTURE(layout);
      const auto name = "p" + std::to_string(number++);
      auto t = deploy::load_topology(write(name));
      deploy::local_cluster cluster(t, dir / ("logs-" + name), test::orrery_binary());
      cluster.wait_ready(std::chrono::seconds(20));
      auto o = options(dir / "m", dir / name);
      o.topology = t.file;
      if (layout.find("re-split") != std::string::npos) o.micro_batch = 4;  // the same global batch of 8
      deploy::train(o, figures);

      const auto log = log_of(dir / name);
      REQUIRE(log.size() == local_log.size());
      double worst = 0;
      for (std::size_t i = 0; i < log.size(); ++i) {
        CAPTURE(i);
        for (const char* key : {"loss", "gradient_norm"}) {
          CAPTURE(key);
          const double r = relative(log[i][key].get<double>(), local_log[i][key].get<double>());
          CHECK(r < 1e-5);
          worst = std::max(worst, r);
        }
        REQUIRE(log[i].contains("validation_loss") == local_log[i].contains("validation_loss"));
        if (log[i].contains("validation_loss"))
          CHECK(relative(log[i]["validation_loss"].get<double>(), local_log[i]["validation_loss"].get<double>()) < 1e-5);
      }
      const auto weights = weights_of(dir / name);
      REQUIRE(weights.size() == local_weights.size());
      double worst_weight = 0;
      int bitwise = 0;
      for (const auto& [key, w] : local_weights) {
        CAPTURE(key);
        REQUIRE(weights.count(key) == 1);
        const double r = (weights.at(key) - w).norm().item<double>() / w.norm().item<double>();
        CHECK(r < 1e-5);
        worst_weight = std::max(worst_weight, r);
        bitwise += at::equal(weights.at(key), w) ? 1 : 0;
      }
      MESSAGE(std::string(tied ? "tied" : "untied") << ", " << layout << ": losses and norms within " << worst
                                         << ", weights within " << worst_weight << " (" << bitwise << " of "
                                         << weights.size() << " tensors bitwise equal)");
    }
  }
}

TEST_CASE("placement: auto trains over the stages and groups planned from the nodes' measured training times, as one device") {
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {21, 0, {}});
  std::ostringstream local_figures;
  deploy::train(options(dir / "m", dir / "local"), local_figures);
  const auto local_log = log_of(dir / "local");
  const auto local_weights = weights_of(dir / "local");

  auto file = test::write_auto_topology(dir, "autotrain", "training", 3);
  auto t = deploy::load_topology(file);
  deploy::local_cluster cluster(t, dir / "logs", test::orrery_binary());
  cluster.wait_ready(std::chrono::seconds(20));
  ::setenv("XDG_CACHE_HOME", (dir / "cache").c_str(), 1);
  auto o = options(dir / "m", dir / "auto");
  o.topology = file;
  std::ostringstream figures;
  const auto result = deploy::train(o, figures);
  ::unsetenv("XDG_CACHE_HOME");
  INFO(figures.str());

  // The nodes measured training passes, cached apart from inference times
  // under the sample shape (32 tokens, micro-batches of 2).
  int training_caches = 0;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir / "cache")) {
    const auto name = e.path().filename().string();
    if (name.find("-train-32x2.json") == std::string::npos) continue;
    ++training_caches;
    const auto cached = json::parse(std::ifstream(e.path()));
    for (const auto& c : cached.at("curves")) CHECK(c.at("seconds").at(0).get<double>() > 0);
  }
  CHECK(training_caches == 3);
  // The plan's predicted round beside the measured one.
  CHECK(result.predicted_round_s > 0);
  CHECK(result.measured_round_s > 0);
  CHECK(figures.str().find("   round: predicted ") != std::string::npos);
  // In parts: each measured, their sum the round.
  CHECK(figures.str().find("gradient norm and all-reduces") != std::string::npos);
  CHECK(result.measured_passes_s > 0);
  CHECK(result.measured_update_s > 0);
  CHECK(result.measured_passes_s + result.measured_norm_s + result.measured_update_s ==
        doctest::Approx(result.measured_round_s).epsilon(1e-6));

  // Whatever was planned trains as one device does.
  const auto log = log_of(dir / "auto");
  REQUIRE(log.size() == local_log.size());
  for (std::size_t i = 0; i < log.size(); ++i) {
    CAPTURE(i);
    CHECK(relative(log[i]["loss"].get<double>(), local_log[i]["loss"].get<double>()) < 1e-5);
    CHECK(relative(log[i]["gradient_norm"].get<double>(), local_log[i]["gradient_norm"].get<double>()) < 1e-5);
  }
  const auto weights = weights_of(dir / "auto");
  for (const auto& [key, w] : local_weights) {
    CAPTURE(key);
    REQUIRE(weights.count(key) == 1);
    CHECK((weights.at(key) - w).norm().item<double>() / w.norm().item<double>() < 1e-5);
  }

  // --model names another model than the topology's: that one is placed
  // and trained (it was trained while the topology's was planned).
  auto deeper = compute::llama_config::preset("tiny");
  deeper.num_layers = 6;
  compute::init_model(dir / "m6", deeper, {5, 0, {}});
  auto other = options(dir / "m6", dir / "auto6");
  other.topology = file;
  ::setenv("XDG_CACHE_HOME", (dir / "cache").c_str(), 1);
  std::ostringstream other_figures;
  deploy::train(other, other_figures);
  ::unsetenv("XDG_CACHE_HOME");
  CHECK(compute::model_dir(dir / "auto6").config().num_layers == 6);
  CHECK(log_of(dir / "auto6").size() == 3);
}

TEST_CASE("a node killed mid-training: the survivors take its layers from the in-memory backups, repeat the steps since and end where one device ends") {
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {8, 0, {}});
  // No checkpoint before the end: what a recovery resumes from is a backup
  // in the nodes' memory, or the starting model.
  constexpr int backup_every = 5;
  const std::vector<std::string> common = {"--data", english, "--steps", "150", "--batch", "4", "--micro-batch", "2",
                                           "--length", "32", "--checkpoint-every", "0", "--backup-every",
                                           std::to_string(backup_every), "--threads", "1"};
  auto args = [&](std::vector<std::string> head) {
    head.insert(head.end(), common.begin(), common.end());
    return head;
  };
  auto local = test::run_orrery(args({"train", "--model", "m", "--out", "local", "--quiet"}), dir.path());
  REQUIRE(local.exit_code == 0);
  const auto reference = weights_of(dir / "local");
  const auto reference_log = log_of(dir / "local");

  // A pipeline (its arithmetic is one device's: bitwise) whose middle node
  // goes: its layers come from the next node's copy, its neighbours' from
  // their own. A data-parallel group in a pipeline (sums in another order:
  // within 1e-4 at the end) whose first member goes: it made the group's
  // backup, which the survivor takes from the next stage's node.
  struct scenario {
    std::string name, victim;
    std::function<std::filesystem::path()> write;
    bool bitwise;
  };
  const std::vector<scenario> scenarios = {
      {"pipeline", "n1", [&] { return write_topology(dir, "kp", {{0, 1}, {1, 3}, {3, 4}}); }, true},
      {"group", "g0-0", [&] { return test::write_group_topology(dir, "kg", {{1.0, 1.0}, {1.0}}); }, false},
  };
  for (const auto& sc : scenarios) {
    CAPTURE(sc.name);
    auto t = deploy::load_topology(sc.write());
    deploy::local_cluster cluster(t, dir / ("logs-" + sc.name), test::orrery_binary());
    cluster.wait_ready(std::chrono::seconds(20));
    const auto out = dir / sc.name;
    auto command = args({"train", "--topology", t.file.string(), "--out", out.string()});
    command.insert(command.begin(), test::orrery_binary());
    const auto err_file = dir / (sc.name + ".err");
    const pid_t trainer = test::start_process(command, dir.path(), dir / (sc.name + ".out"), err_file);
    // The progress lines ("train [###...] 12/150 ...") say how far it is.
    auto steps_done = [&] {
      const auto err = test::slurp(err_file);
      const auto at = err.rfind("/150 ");
      if (at == std::string::npos) return 0;
      const auto start = err.find_last_not_of("0123456789", at - 1) + 1;
      return std::stoi(err.substr(start, at - start));
    };
    REQUIRE(test::eventually([&] { return steps_done() >= 2 * backup_every + 2; }, std::chrono::seconds(60)));
    ::kill(cluster.pid(sc.victim), SIGKILL);
    const int code = test::wait_process(trainer);
    const auto err = test::slurp(err_file), printed = test::slurp(dir / (sc.name + ".out"));
    INFO(err);
    REQUIRE(code == 0);
    CHECK(err.find("node '" + sc.victim + "' was lost") != std::string::npos);
    const std::regex recovered("recovered: node '" + sc.victim +
                               "' lost at step ([0-9]+), resumed at step ([0-9]+) from the in-memory backup of round ([0-9]+)");
    std::smatch m;
    REQUIRE(std::regex_search(err, m, recovered));
    const int lost_at = std::stoi(m[1]), resumed_at = std::stoi(m[2]);
    CHECK(std::stoi(m[3]) == resumed_at);
    CHECK(resumed_at >= 2 * backup_every);
    CHECK(resumed_at % backup_every == 0);
    CHECK(lost_at - resumed_at <= backup_every);  // at most the steps since the last backup repeated
    CHECK(printed.find("recovery: node '" + sc.victim + "'") != std::string::npos);
    CHECK(printed.find("backups: ") != std::string::npos);
    MESSAGE(sc.name << ": " << printed.substr(printed.find("backups:")));

    const auto log = log_of(out);
    REQUIRE(log.size() == reference_log.size());  // every step once: the repeated ones replaced
    const auto weights = weights_of(out);
    if (sc.bitwise) {
      for (std::size_t i = 0; i < log.size(); ++i) CHECK(log[i]["loss"] == reference_log[i]["loss"]);
      for (const auto& [name, w] : reference) {
        CAPTURE(name);
        CHECK(at::equal(weights.at(name), w));
      }
    } else {
      CHECK(relative(log.back()["loss"].get<double>(), reference_log.back()["loss"].get<double>()) < 1e-4);
      for (const auto& [name, w] : reference) {
        CAPTURE(name);
        CHECK((weights.at(name) - w).norm().item<double>() / w.norm().item<double>() < 1e-4);
      }
    }
  }
}

TEST_CASE("a node that writes its checkpoint part where the client cannot see it (another machine's disk) fails the save, named") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: a node in a mount namespace of its own (its own disk, as on another machine) needs root");
    return;
  }
  temp_dir dir;
  compute::init_model(dir / "m", compute::llama_config::preset("tiny"), {8, 0, {}});
  const auto file = write_topology(dir, "apart", {{0, 2}, {2, 4}});
  const auto t = deploy::load_topology(file);
  const auto store = dir / "store", out = store / "out";
  std::filesystem::create_directories(store);
  // n1 sees a tmpfs of its own where the client keeps --out (and writes each
  // checkpoint beside it, in out.partial, first): what n1 writes there never
  // reaches the client's disk, as on a machine without shared storage that
  // happens to have a directory of the same name.
  const std::vector<std::vector<std::string>> nodes = {
      {test::orrery_binary(), "node", "--topology", file.string(), "--name", "n0"},
      {"/usr/bin/unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
       "mount -t tmpfs tmpfs \"$0\" && mkdir \"$0/out.partial\" && exec \"$1\" node --topology \"$2\" --name n1",
       store.string(), test::orrery_binary(),
       file.string()}};
  std::vector<pid_t> pids;
  for (std::size_t i = 0; i < nodes.size(); ++i)
    pids.push_back(test::start_process(nodes[i], dir.path(), dir / ("n" + std::to_string(i) + ".out"),
                                       dir / ("n" + std::to_string(i) + ".err")));
  for (const auto& n : t.nodes) {
    INFO(test::slurp(dir / "n1.err"));
    REQUIRE(test::eventually([&] { return test::accepts_connections(n.port); }, std::chrono::seconds(20)));
  }
  auto train = test::run_orrery({"train", "--topology", file.string(), "--data", english, "--out", out.string(), "--steps",
                                 "2", "--batch", "4", "--micro-batch", "2", "--length", "32", "--checkpoint-every", "1",
                                 "--threads", "1", "--quiet"},
                                dir.path());
  for (pid_t pid : pids) ::kill(pid, SIGTERM);
  for (pid_t pid : pids) test::wait_process(pid);
  INFO(train.err);
  CHECK(train.exit_code != 0);
  CHECK(train.err.find("node 'n1' wrote its part of the checkpoint to " + out.string() + ".partial/") !=
        std::string::npos);
  CHECK(train.err.find("which this client does not see") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(out / "config.json"));  // no model that points at files it lacks
}
