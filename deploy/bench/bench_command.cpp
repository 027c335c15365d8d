// `orrery bench …`: each benchmark prints one JSON object on stdout and its
// progress on stderr.

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "compute/cpu_threads.hpp"
#include "deploy/bench/bench_command.hpp"
#include "deploy/bench/compute_bench.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"

namespace orrery::deploy {

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks; each prints one JSON object on stdout");
  bench->require_subcommand(1);
  add_compute_bench(*bench);
  add_planner_bench(*bench);
  add_dataplane_bench(*bench);
  add_pipeline_bench(*bench);
  add_parallel_bench(*bench);
  add_recovery_bench(*bench);
  add_placement_bench(*bench);
  add_testbed_bench(*bench);
  add_generate_bench(*bench);
  add_train_bench(*bench);
  add_serve_bench(*bench);
}

void add_compute_bench(CLI::App& bench) {
  auto opts = std::make_shared<compute::compute_bench_options>();
  opts->threads = compute::default_thread_count();
  auto* cmd = bench.add_subcommand(
      "compute", "Decode speed on one device beside a plain loop over the same weights and the memory-bandwidth bound");
  cmd->add_option("--model", opts->model, "HF-layout model directory (e.g. from `orrery model init --preset small`)")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--threads", opts->threads, "CPU threads, the same for every side")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--prompt-tokens", opts->prompt_tokens, "Prompt length, BOS included")
      ->capture_default_str()
      ->check(between(2, 100000));
  cmd->add_option("--new-tokens", opts->new_tokens, "Decode steps timed")->capture_default_str()->check(at_least(1));
  cmd->add_option("--repeats", opts->repeats, "Interleaved runs per side; medians are reported")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_flag("!--no-stock", opts->include_stock, "Skip timing the stock libtorch-GEMM path");
  cmd->add_option("--device", opts->device, "cpu or cuda:N")->capture_default_str();
  cmd->add_option("--dtype", opts->dtype, "fp32, fp16, bf16 (default: fp32 on cpu, bf16 on cuda)");
  cmd->add_option("--hf-script", opts->hf_script,
                  "Also time HF transformers' generate on the same model and device with this script "
                  "(deploy/gpu/hf_reference.py; needs python3 with torch and transformers)")
      ->check(CLI::ExistingFile);
  cmd->callback([opts] {
    check_runs_here({opts->device, opts->dtype, opts->threads});
    auto result = compute::run_compute_bench(*opts, [](const std::string& line) { std::cerr << "bench: " << line << "\n"; });
    std::cout << result.dump(2) << std::endl;
  });
}

}  // namespace orrery::deploy
