// `orrery plan`: the planning library on the command line.

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "planning/auto_plan.hpp"
#include "planning/catalog.hpp"
#include "planning/timeline.hpp"

namespace orrery::deploy {

namespace planning = orrery::planning;

namespace {

struct plan_options {
  std::string profile_path;
  std::string cluster;
  std::string link = "100mbit";
  std::string model;
  std::string goal = "latency";
  std::string timeline_path;
  std::string save_profile_path;
  bool json = false;
  planning::workload work;
};

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty())
      out.push_back(item);
  return out;
}

planning::profile load(const plan_options& o) {
  if (!o.profile_path.empty())
    return planning::load_profile(o.profile_path);
  if (o.cluster.empty() || o.model.empty())
    throw std::runtime_error("plan: give --profile FILE, or --cluster and --model");
  return planning::catalog_profile(split_list(o.cluster), o.link, o.model, o.work);
}

std::string seconds_text(double s) {
  char text[32];
  std::snprintf(text, sizeof text, s < 1 ? "%.1f ms" : "%.3f s", s < 1 ? s * 1e3 : s);
  return text;
}

std::string figure(const planning::style_result& s, planning::objective goal) {
  char text[128];
  if (goal == planning::objective::training)
    std::snprintf(text, sizeof text, "round %s, %.2f samples/s", seconds_text(s.latency).c_str(), s.throughput);
  else
    std::snprintf(text, sizeof text, "latency %s/request, %.2f tokens/s", seconds_text(s.latency).c_str(),
                  s.throughput);
  return text;
}

void print_layout(const nlohmann::json& plan) {
  if (plan.contains("stages"))
    for (const auto& st : plan["stages"]) {
      std::cout << "    layers [" << st["layers"][0] << ", " << st["layers"][1] << ")  on ";
      if (st.contains("group")) {
        for (const auto& m : st["group"])
          std::cout << m["device_name"].get<std::string>() << " (" << m["samples"] << " samples) ";
      } else {
        std::cout << st["device_name"].get<std::string>();
      }
      std::cout << "\n";
    }
  if (plan.contains("group") && !plan.contains("stages"))
    for (const auto& m : plan["group"])
      std::cout << "    " << m["device_name"].get<std::string>() << ": " << m["heads"] << " heads, "
                << m["columns"] << " MLP columns, " << m["tokens"] << " prompt tokens\n";
  if (plan.contains("prefill")) {
    std::cout << "    prefill chunks:";
    for (const auto& c : plan["prefill"]["chunks"])
      std::cout << " " << c;
    std::cout << "\n";
  }
}

void print_devices(const planning::style_result& s, const planning::profile& p) {
  std::printf("    %-12s %10s %8s %14s %14s\n", "device", "busy", "util", "peak memory", "budget");
  for (const auto& d : s.devices) {
    auto it = std::find_if(p.devices.begin(), p.devices.end(),
                           [&](const planning::device_profile& dp) { return dp.name == d.name; });
    std::printf("    %-12s %10s %7.1f%% %14s %14s\n", d.name.c_str(), seconds_text(d.busy_seconds).c_str(),
                100 * d.utilisation, planning::format_bytes(d.peak_memory).c_str(),
                it == p.devices.end() ? "" : planning::format_bytes(it->memory_bytes).c_str());
  }
}

// The catalog's models plan the embedding and the head as layers of their
// own, so llama2-7b's 32 transformer blocks are 34 planning layers (and the
// ranges below count those); a measured profile folds them into its first
// and last block.
std::string layer_count(const planning::profile& p) {
  auto separate = [&](const char* name) {
    return std::any_of(p.layers.begin(), p.layers.end(), [&](const planning::layer_profile& l) { return l.name == name; });
  };
  const std::string total = std::to_string(p.layers.size());
  if (!separate("embedding") || !separate("head")) return total + " layers";
  return total + " planning layers: " + std::to_string(p.layers.size() - 2) + " transformer blocks + embedding + head";
}

void print_text(const planning::ranked_plans& ranked, const planning::profile& p) {
  std::cout << "model " << p.model << " (" << layer_count(p) << ") on " << p.devices.size()
            << " devices, source " << p.devices[p.source].name << "; objective "
            << planning::to_string(ranked.goal) << "\n";
  const planning::style_result& best = ranked.styles.front();
  std::cout << "chosen: " << best.style << ": " << figure(best, ranked.goal) << "\n";
  if (best.plan.contains("exact") && !best.plan["exact"].get<bool>())
    std::cout << "    (best placement found; the search hit its label cap, optimality not proven)\n";
  print_layout(best.plan);
  print_devices(best, p);
  std::cout << "runner-ups:\n";
  for (std::size_t i = 1; i < ranked.styles.size(); ++i) {
    const auto& s = ranked.styles[i];
    std::cout << "  " << s.style << ": " << (s.feasible ? figure(s, ranked.goal) : "infeasible: " + s.reason)
              << "\n";
  }
}

void run_plan(const plan_options& o) {
  planning::profile p = load(o);
  if (!o.save_profile_path.empty())
    planning::save_profile(p, o.save_profile_path);
  planning::ranked_plans ranked = planning::plan_auto(p, planning::parse_objective(o.goal));
  if (!o.timeline_path.empty()) {
    std::ofstream out(o.timeline_path);
    if (!out)
      throw std::runtime_error("plan: cannot write --timeline " + o.timeline_path);
    const auto& best = ranked.styles.front();
    out << planning::timeline_svg(best.timeline, p.model + ", " + best.style);
  }
  if (o.json)
    std::cout << planning::to_json(ranked).dump(2) << "\n";
  else
    print_text(ranked, p);
}

}  // namespace

void add_plan_command(CLI::App& app) {
  auto o = std::make_shared<plan_options>();
  CLI::App* sub = app.add_subcommand("plan", "Plan a model on a cluster: devices, layer ranges, "
                                              "groups and splits, with predictions");
  auto* profile = sub->add_option("--profile", o->profile_path, "Profile file (.json, .yaml)")
                      ->check(CLI::ExistingFile);
  auto* cluster = sub->add_option("--cluster", o->cluster,
                                  "Preset devices, comma-separated (nano, tx2, nx, orin, rpi5, desktop, "
                                  "rtx3090); the first is the source");
  sub->add_option("--link", o->link, "Link preset: 100mbit, 500mbit, 1gbit, wifi")
      ->capture_default_str();
  auto* model = sub->add_option("--model", o->model,
                                "Model preset: llama2-7b, llama2-13b, llama2-70b, small, tiny");
  profile->excludes(cluster)->excludes(model);
  sub->add_option("--objective", o->goal, "latency, throughput or training")
      ->check(CLI::IsMember({"latency", "throughput", "training"}))
      ->capture_default_str();
  sub->add_option("--prompt", o->work.prompt_tokens, "Prompt tokens (presets)")->capture_default_str()->check(at_least(1));
  sub->add_option("--output", o->work.output_tokens, "Generated tokens (presets)")->capture_default_str()->check(at_least(1));
  sub->add_option("--batch", o->work.batch, "Concurrent requests (presets)")->capture_default_str()->check(at_least(1));
  sub->add_option("--micro-batches", o->work.micro_batches, "Training micro-batches per round (presets)")
      ->capture_default_str()
      ->check(at_least(1));
  sub->add_option("--micro-batch-size", o->work.micro_batch_size, "Samples per micro-batch (presets)")
      ->capture_default_str()
      ->check(at_least(1));
  sub->add_option("--timeline", o->timeline_path, "Write the chosen plan's simulated timeline (SVG)");
  sub->add_option("--save-profile", o->save_profile_path, "Write the profile used (.json or .yaml)");
  sub->add_flag("--json", o->json, "Print JSON instead of text");
  sub->callback([o] { run_plan(*o); });
}

}  // namespace orrery::deploy
