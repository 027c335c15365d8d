// `orrery demo`: the quick start's main job. Until the pipeline lands it
// creates the `tiny` model if absent and generates on this one device.

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "compute/cpu_threads.hpp"
#include "deploy/commands.hpp"
#include "deploy/local_model.hpp"

namespace orrery::deploy {

namespace {

struct demo_options {
  std::string model = "models/tiny";
  std::string prompt = "The orrery turns: ";
  int max_tokens = 48;
  int threads = compute::default_thread_count();
};

}  // namespace

void add_demo_command(CLI::App& app) {
  auto opts = std::make_shared<demo_options>();
  auto* cmd = app.add_subcommand("demo", "Create the tiny model if absent and generate with it");
  cmd->add_option("--model", opts->model, "Where the tiny model lives (created if absent)")->capture_default_str();
  cmd->add_option("--prompt", opts->prompt, "Prompt text")->capture_default_str();
  cmd->add_option("--max-tokens", opts->max_tokens, "Tokens to generate")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->add_option("--threads", opts->threads, "CPU threads")->capture_default_str()->check(CLI::PositiveNumber);
  cmd->callback([opts] {
    ensure_model(opts->model, "tiny", 0);
    std::cout << "orrery demo: greedy generation with the random-initialised 'tiny' Llama on this CPU\n"
              << "(random weights produce arbitrary bytes; they are shown escaped)\n\n";
    compute::generation_request request;
    request.prompt = opts->prompt;
    request.max_new_tokens = opts->max_tokens;
    request.stop_at_eos = false;
    generate_locally(opts->model, request, opts->threads, std::cout);
  });
}

}  // namespace orrery::deploy
