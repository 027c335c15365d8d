// `orrery generate --model DIR`: generation on this machine.

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "compute/cpu_threads.hpp"
#include "deploy/commands.hpp"
#include "deploy/local_model.hpp"
#include "deploy/sampling_flags.hpp"

namespace orrery::deploy {

namespace {

struct generate_options {
  std::string model;
  compute::generation_request request;
  int threads = compute::default_thread_count();
  bool ignore_eos = false;
};

}  // namespace

void add_generate_command(CLI::App& app) {
  auto opts = std::make_shared<generate_options>();
  auto* cmd = app.add_subcommand("generate", "Generate text, streaming tokens as they are produced");
  cmd->add_option("--model", opts->model, "HF-layout model directory")->required();
  cmd->add_option("--prompt", opts->request.prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", opts->request.max_new_tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", opts->threads, "CPU threads")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_flag("--ignore-eos", opts->ignore_eos, "Keep generating after the end-of-sequence token");
  add_sampling_flags(*cmd, opts->request.sampling);
  cmd->callback([opts] {
    opts->request.stop_at_eos = !opts->ignore_eos;
    generate_locally(opts->model, opts->request, opts->threads, std::cout);
  });
}

}  // namespace orrery::deploy
