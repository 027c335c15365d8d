// `orrery generate`: on this machine (--model DIR) or over the nodes of a
// running topology (--topology F).

#include <CLI/CLI.hpp>
#include <algorithm>
#include <iostream>
#include <memory>

#include "compute/cpu_threads.hpp"
#include "compute/generation.hpp"
#include "compute/text/tokenizer.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"
#include "deploy/cli/sampling_flags.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/profiling/auto_placement.hpp"

namespace orrery::deploy {

namespace {

// Guesses per trip unless --speculate says otherwise: the tokens are the
// same, and a request whose guesses keep failing stops guessing for a while.
constexpr int default_max_drafts = 6;

struct generate_options {
  std::string model;
  std::string topology;
  std::string advertise_host;
  compute::generation_request request;
  local_device where{"cpu", "", compute::default_thread_count()};
  bool ignore_eos = false;
  std::string prefill_chunks = "auto";
  int speculate = default_max_drafts;
  bool window_ahead = true;
  int outline = 0;
  int outline_tokens = 32;
};

// The prompt's chunks for --prefill-chunks (`auto` or a count): the
// planner's where it planned the placement, else, on CPU nodes, equal
// chunks, one per pipeline position, of at least min_chunk_tokens tokens.
// A GPU runs a short chunk in about the time of a long one (measured on an
// H200: tiny's 192-token prompt over 4 stages took 6.3 ms whole and 10.2 ms
// in 4 chunks), so without a profile GPU nodes take the prompt whole. One
// chunk is sent as the whole prompt (an empty list).
std::vector<std::int32_t> prefill_chunks_for(const std::string& flag, const topology& placed,
                                             const planning::chunk_plan* planned, int prompt_tokens) {
  std::vector<std::int32_t> lengths;
  if (flag == "auto") {
    if (planned && !planned->lengths.empty())
      lengths.assign(planned->lengths.begin(), planned->lengths.end());
    else if (std::all_of(placed.nodes.begin(), placed.nodes.end(), [](const auto& n) { return n.device == "cpu"; }))
      lengths = planning::equal_chunks(prompt_tokens, std::min(pipeline_positions(placed), prompt_tokens / min_chunk_tokens));
  } else {
    int count = 0;
    try {
      std::size_t used = 0;
      count = std::stoi(flag, &used);
      if (used != flag.size()) throw std::invalid_argument(flag);
    } catch (const std::exception&) {
      throw bad_flag("--prefill-chunks", flag, "is neither 'auto' nor a number of chunks");
    }
    if (count < 1 || count > prompt_tokens)
      throw bad_flag("--prefill-chunks", flag,
                     "must be between 1 and the prompt's " + std::to_string(prompt_tokens) + " tokens (with BOS)");
    lengths = planning::equal_chunks(prompt_tokens, count);
  }
  if (lengths.size() <= 1) lengths.clear();
  return lengths;
}

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
  planning::chunk_plan planned;
  const bool automatic = t.auto_placement;
  if (automatic)
    t = resolve_placement(t, 1, static_cast<int>(prompt_tokens), o.request.max_new_tokens, std::cerr, &predicted, &planned);
  auto request = to_message(o.request);
  request.prefill_chunks = prefill_chunks_for(o.prefill_chunks, t, automatic ? &planned : nullptr, static_cast<int>(prompt_tokens));
  request.max_drafts = o.speculate;
  request.overlap_windows = o.window_ahead;
  request.outline_points = o.outline;
  request.outline_tokens = o.outline_tokens;
  if (o.outline > 0) request.prefill_chunks.clear();  // the outline's prompt is the template's
  pipeline_client client(t, o.advertise_host);
  auto summary = generate_over(client, request, std::cout, std::cerr);
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
  cmd->add_option("--prefill-chunks", opts->prefill_chunks,
                  "With --topology: send the prompt in this many chunks that flow through the stages one behind the "
                  "other (Jupiter), or 'auto': the planner's chunks with `placement: auto`, else on CPU nodes one "
                  "chunk per pipeline stage of at least 32 tokens (GPU nodes: whole); 1 sends it whole")
      ->capture_default_str();
  cmd->add_option("--speculate", opts->speculate,
                  "With --topology: guess up to this many tokens per trip through the pipeline from the prompt and the "
                  "text so far (prompt lookup) and keep those the model would have produced; the output is the same. "
                  "0 decodes one token per trip")
      ->capture_default_str()
      ->check(between(0, 32));
  cmd->add_option("--outline", opts->outline,
                  "With --topology: write a short outline first, then up to this many of its points side by side, each "
                  "continuing the question and the outline (shared KV, no second prefill) for --max-tokens; the answer "
                  "is the outline, then the points in order. It changes the text; 0 (the default) is off")
      ->capture_default_str()
      ->check(between(0, 16));
  cmd->add_option("--outline-tokens", opts->outline_tokens, "With --outline: the outline's length at most")
      ->capture_default_str()
      ->check(between(1, 4096));
  cmd->add_flag("!--no-window-ahead", opts->window_ahead,
                "With --speculate: verify one window of guesses at a time, rather than sending the next window while "
                "one is verified (as if all its guesses were kept; the last stage drops it when they were not)");
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
