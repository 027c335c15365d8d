// `orrery profile`: measure a running cluster for the planners and write the
// profile (deploy/profiling/profiler.hpp).

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <memory>

#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/profiling/profiler.hpp"
#include "planning/pipeline.hpp"

namespace orrery::deploy {

namespace {

struct profile_options {
  std::string topology;
  std::string out;
  profiler_options profiler;
};

// Seconds per token of the whole model on one device at `length`.
double model_seconds(const planning::device_profile& d, double length, bool decode) {
  double total = 0;
  for (const auto& layer : d.layers) total += (decode ? layer.decode : layer.prefill).at(length);
  return total;
}

void print_summary(const planning::profile& p, std::ostream& out) {
  char line[200];
  out << "node        whole model: decode ms/token at 128 context   prefill tokens/s at 128   usable memory\n";
  for (const auto& d : p.devices) {
    std::snprintf(line, sizeof line, "%-10s  %44.2f   %23.0f   %s\n", d.name.c_str(), model_seconds(d, 128, true) * 1e3,
                  1.0 / model_seconds(d, 128, false), planning::format_bytes(d.memory_bytes).c_str());
    out << line;
  }
  for (const auto& [pair, link] : p.links.overrides()) {
    std::snprintf(line, sizeof line, "link %s <-> %s: %.1f Mbit/s, %.3f ms\n", p.devices[pair.first].name.c_str(),
                  p.devices[pair.second].name.c_str(), link.bandwidth * 8 / 1e6, link.latency * 1e3);
    out << line;
  }
}

}  // namespace

void add_profile_command(CLI::App& app) {
  auto opts = std::make_shared<profile_options>();
  auto* cmd = app.add_subcommand(
      "profile",
      "Measure a running cluster for the planners: each node's per-layer prefill and decode times and usable memory, "
      "and the bandwidth and latency of every link between two nodes over the data plane. Measurements are cached per "
      "model and node (" + default_profile_cache().string() + "); --refresh measures again.");
  cmd->add_option("--topology", opts->topology, "Topology file of the running cluster (`orrery up` or `orrery testbed up`)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", opts->out, "Where to write the profile (JSON, or YAML for .yaml/.yml); default: CLUSTER.profile.json");
  cmd->add_flag("--refresh", opts->profiler.refresh, "Measure again what the cache holds");
  cmd->add_option("--min-seconds", opts->profiler.min_seconds, "Wall time the repeats of each timed point add up to")
      ->capture_default_str()
      ->check(between(0.01, 60.0));
  cmd->add_option("--requests", opts->profiler.work.batch, "Concurrent requests of the workload the profile describes")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--prompt-tokens", opts->profiler.work.prompt_tokens, "Prompt length of that workload")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--new-tokens", opts->profiler.work.output_tokens, "Generated tokens of that workload")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->callback([opts] {
    auto t = load_topology(opts->topology);
    auto profile = profile_cluster(t, opts->profiler, profile_bar("profile"));
    std::string out = opts->out.empty() ? t.cluster + ".profile.json" : opts->out;
    planning::save_profile(profile, out);
    print_summary(profile, std::cout);
    std::cout << "profile of cluster '" << t.cluster << "' written to " << out << std::endl;
  });
}

}  // namespace orrery::deploy
