// `orrery model init` and `orrery model info`.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <memory>

#include "base/element_type.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/text/tokenizer.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/cli/local_model.hpp"

namespace orrery::deploy {

namespace {

struct init_options {
  std::string arch = "llama";
  std::string preset;
  std::uint64_t seed = 0;
  std::string out;
  std::string dtype = "fp32";
  std::uint64_t max_file_mb = 0;
  std::string tokenizer;
};

void run_init(const init_options& o) {
  if (o.arch != "llama") throw bad_flag("--arch", o.arch, "is not supported (known: llama)");
  auto config = compute::llama_config::preset(o.preset);
  auto type = element_type_from_name(o.dtype);
  if (!type) throw bad_flag("--dtype", o.dtype, "is not one of fp32, fp16, bf16");
  config.storage = *type;
  if (!o.tokenizer.empty()) {  // the embedding and head sized for its vocabulary
    const auto shape = compute::read_tokenizer_shape(o.tokenizer);
    config.vocab_size = shape.vocab_size;
    config.bos_token_id = shape.bos;
    config.eos_token_id = shape.eos;
  }
  std::cerr << "writing '" << o.preset << "' (" << config.parameter_count() / 1e6 << "M parameters, " << o.dtype
            << ", seed " << o.seed << ") to " << o.out << "\n";
  create_model(o.out, config, o.seed, o.max_file_mb * 1'000'000, o.tokenizer);
  std::cout << o.out << "\n";
}

struct score_options {
  std::string model;
  local_device where;
  std::string ids;
  int greedy = 0;
  std::string logits;
};

// `256,72,105`. Split here rather than by CLI11, whose list splitting reads
// an empty --ids as the one id 0 and drops empty items (`1,,3` scored 1, 3).
std::vector<std::int64_t> token_ids(const std::string& list) {
  if (list.empty()) throw bad_flag("--ids", list, "is empty: give token ids, comma separated (e.g. 256,72,105)");
  std::vector<std::int64_t> ids;
  for (std::size_t start = 0;;) {
    const auto comma = std::min(list.find(',', start), list.size());
    const std::string item = list.substr(start, comma - start);
    std::int64_t id = 0;
    auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), id);
    if (item.empty() || error != std::errc() || end != item.data() + item.size())
      throw bad_flag("--ids", list,
                     "holds '" + item + "' at index " + std::to_string(ids.size()) + ", which is not a token id");
    ids.push_back(id);
    if (comma == list.size()) return ids;
    start = comma + 1;
  }
}

void run_score(const score_options& o) {
  std::cout << score_locally(o.model, o.where, token_ids(o.ids), o.greedy, o.logits).dump() << std::endl;
}

void run_info(const std::string& path) {
  compute::model_dir dir(path);
  const auto& c = dir.config();
  std::printf("%s: llama, %d layers, hidden %d, intermediate %d, %d heads (%d KV, head dim %d), vocab %d,\n"
              "  context %d, rope theta %g, %s head, %.1fM parameters stored as %s\n",
              path.c_str(), c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim,
              c.vocab_size, c.max_position_embeddings, c.rope_theta, c.tie_word_embeddings ? "tied" : "separate",
              c.parameter_count() / 1e6, std::string(torch_dtype_name(c.storage)).c_str());
}

}  // namespace

void add_model_command(CLI::App& app) {
  auto* model = app.add_subcommand("model", "Create and inspect HF-layout model directories");
  model->require_subcommand(1);

  auto opts = std::make_shared<init_options>();
  auto* init = model->add_subcommand("init", "Write a deterministic random-initialised model that HF transformers loads");
  init->add_option("--arch", opts->arch, "Architecture")->capture_default_str();
  init->add_option("--preset", opts->preset, "Shape: tiny, small, llama2-7b")->required();
  init->add_option("--seed", opts->seed, "Seed: the same seed writes the same weights")
      ->capture_default_str()
      ->check(at_least<std::uint64_t>(0));
  init->add_option("--out", opts->out, "Directory to create")->required();
  init->add_option("--dtype", opts->dtype, "Storage dtype: fp32, fp16, bf16")->capture_default_str();
  init->add_option("--max-file-mb", opts->max_file_mb,
                   "Split weights into model-0000k-of-0000n.safetensors files of at most this many MB; 0 writes one file")
      ->capture_default_str()
      ->check(at_least<std::uint64_t>(0));
  init->add_option("--tokenizer", opts->tokenizer,
                   "A directory of tokenizer files (`orrery tokenizer train`, or an HF model's tokenizer.json / "
                   "tokenizer.model): the model gets them, and its vocabulary, BOS and EOS (default: bytes)")
      ->check(CLI::ExistingDirectory);
  init->callback([opts] { run_init(*opts); });

  auto score = std::make_shared<score_options>();
  auto* score_cmd = model->add_subcommand(
      "score", "Logits of every position of a token-id sequence and a greedy continuation, for comparing orrery with "
               "other implementations (JSON on stdout; logits as raw float32 [ids, vocab])");
  score_cmd->add_option("dir", score->model, "Model directory")->required()->check(CLI::ExistingDirectory);
  score_cmd->add_option("--ids", score->ids, "Token ids, comma separated")->required();
  score_cmd->add_option("--greedy", score->greedy, "Greedy decode steps after the ids")
      ->capture_default_str()
      ->check(at_least(0));
  score_cmd->add_option("--logits", score->logits, "File to write the logits to");
  add_device_flags(*score_cmd, score->where);
  score_cmd->callback([score] { run_score(*score); });

  auto path = std::make_shared<std::string>();
  auto* info = model->add_subcommand("info", "Print a model directory's shape");
  info->add_option("dir", *path, "Model directory")->required();
  info->callback([path] { run_info(*path); });
}

}  // namespace orrery::deploy
