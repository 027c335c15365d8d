// `orrery generate`: on this machine (--model DIR) or over the nodes of a
// running topology (--topology F).

#include <CLI/CLI.hpp>
#include <iostream>
#include <memory>

#include "compute/cpu_threads.hpp"
#include "compute/generation.hpp"
#include "compute/tokenizer.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"
#include "deploy/cli/sampling_flags.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"

namespace orrery::deploy {

namespace {

struct generate_options {
  std::string model;
  std::string topology;
  std::string advertise_host;
  compute::generation_request request;
  local_device where{"cpu", "", compute::default_thread_count()};
  bool ignore_eos = false;
};

generate_request to_message(const compute::generation_request& r) {
  const auto& s = r.sampling;
  return {r.prompt, r.max_new_tokens, {s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.seed, false}, r.stop_at_eos, 0, {}, 0};
}

// The text goes to stdout, the plan and the figures to stderr. The request is
// checked against the topology's model before any node is contacted, so a
// prompt that does not fit is refused before it is echoed.
void generate_over_topology(const generate_options& o) {
  auto t = load_topology(o.topology);
  const auto prompt_tokens = compute::prompt_tokens(*compute::load_tokenizer(t.model), o.request.prompt).size();
  compute::check_request(o.request, static_cast<std::int64_t>(prompt_tokens), t.model_config.max_position_embeddings);
  placement_prediction predicted;
  const bool automatic = t.auto_placement;
  if (automatic)
    t = resolve_placement(t, 1, static_cast<int>(prompt_tokens), o.request.max_new_tokens, std::cerr, &predicted);
  pipeline_client client(t, o.advertise_host);
  auto summary = generate_over(client, to_message(o.request), std::cout, std::cerr);
  if (automatic)
    std::cerr << "   predicted decode " << predicted.decode_ms_per_token << " ms/token, measured "
              << compute::decode_ms_per_token(summary.decode_ms, summary.tokens.size()) << " ms/token\n";
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto opts = std::make_shared<generate_options>();
  auto* cmd = app.add_subcommand("generate", "Generate text, streaming tokens as they are produced");
  auto* model = cmd->add_option("--model", opts->model, "HF-layout model directory: generate on this machine");
  auto* topology = cmd->add_option("--topology", opts->topology,
                                   "Topology file: generate over its running nodes (see `orrery up`)")
                       ->check(CLI::ExistingFile);
  model->excludes(topology);
  cmd->add_option("--prompt", opts->request.prompt, "Prompt text")->required();
  cmd->add_option("--max-tokens", opts->request.max_new_tokens, "Tokens to generate (with the prompt, at most the model's context)")
      ->capture_default_str()
      ->check(at_least(1));
  add_device_flags(*cmd, opts->where);
  cmd->add_option("--advertise-host", opts->advertise_host,
                  "Address the last stage reaches this process at (with --topology; default: the testbed's client "
                  "address for a testbed topology, else 127.0.0.1)");
  cmd->add_flag("--ignore-eos", opts->ignore_eos, "Keep generating after the end-of-sequence token");
  add_sampling_flags(*cmd, opts->request.sampling);
  cmd->callback([opts] {
    opts->request.stop_at_eos = !opts->ignore_eos;
    if (!opts->topology.empty()) {
      generate_over_topology(*opts);
    } else if (!opts->model.empty()) {
      generate_locally(opts->model, opts->request, opts->where, std::cout, std::cerr);
    } else {
      throw std::invalid_argument("generate needs --model DIR (this machine) or --topology FILE (a cluster)");
    }
  });
}

}  // namespace orrery::deploy
