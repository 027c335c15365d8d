// `orrery tokenizer train` and `orrery tokenizer encode`: tokenizer files a
// model can be made for (`orrery model init --tokenizer DIR`), and the ids a
// model directory's tokenizer gives a text (compared with HF's).

#include <CLI/CLI.hpp>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "compute/text/bpe_tokenizer.hpp"
#include "compute/text/sentencepiece_tokenizer.hpp"
#include "compute/text/tokenizer.hpp"
#include "deploy/cli/commands.hpp"
#include "deploy/cli/flag_checks.hpp"
#include "deploy/console/progress.hpp"

namespace orrery::deploy {

namespace {

struct train_tokenizer_options {
  std::string data;
  std::string kind = "bpe";
  int vocab_size = 2048;
  std::string out;
};

void run_train(const train_tokenizer_options& o) {
  std::pair<compute::token_id, compute::token_id> ids;
  if (o.kind == "bpe") {
    std::ifstream in(o.data, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    progress_bar bar("tokenizer");
    ids = compute::train_byte_level_bpe(text.str(), o.vocab_size, o.out,
                                        [&](int done, int total) { bar.show(done, total, "merges"); });
  } else if (o.kind == "sentencepiece") {
    std::cerr << "tokenizer: training SentencePiece BPE on " << o.data << "\n";
    ids = compute::train_sentencepiece(o.data, o.vocab_size, o.out);
  } else {
    throw bad_flag("--kind", o.kind, "is neither bpe nor sentencepiece");
  }
  const auto shape = compute::read_tokenizer_shape(o.out);
  std::cout << nlohmann::json{{"dir", o.out}, {"kind", o.kind}, {"vocab_size", shape.vocab_size}, {"bos", ids.first}, {"eos", ids.second}}.dump()
            << std::endl;
}

void run_encode(const std::string& model, const std::string& text) {
  const auto tok = compute::load_tokenizer(model);
  const auto ids = tok->encode(text);
  std::string decoded;
  for (auto id : ids) decoded += tok->decode(id);
  std::cout << nlohmann::json{{"ids", ids}, {"decoded", decoded}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
            << std::endl;
}

}  // namespace

void add_tokenizer_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenizer", "Train tokenizer files, and show the ids a model's tokenizer gives a text");
  cmd->require_subcommand(1);
  auto train = std::make_shared<train_tokenizer_options>();
  auto* t = cmd->add_subcommand("train",
                                "Train a tokenizer on a text file: byte-level BPE written as HF's tokenizer.json (bpe) or a "
                                "SentencePiece BPE model with byte fallback (sentencepiece); then `orrery model init --tokenizer DIR`");
  t->add_option("--data", train->data, "Text file to learn from")->required()->check(CLI::ExistingFile);
  t->add_option("--kind", train->kind, "bpe or sentencepiece")->capture_default_str();
  t->add_option("--vocab-size", train->vocab_size, "Token ids in all (bpe: 256 bytes, the merges, BOS and EOS)")
      ->capture_default_str()
      ->check(between(258, 1 << 20));
  t->add_option("--out", train->out, "Directory to write the tokenizer files to")->required();
  t->callback([train] { run_train(*train); });
  auto model = std::make_shared<std::string>();
  auto text = std::make_shared<std::string>();
  auto* e = cmd->add_subcommand("encode", "Print the token ids of a text under a model directory's tokenizer (JSON)");
  e->add_option("--model", *model, "Model (or tokenizer) directory")->required()->check(CLI::ExistingDirectory);
  e->add_option("--text", *text, "Text to encode")->required();
  e->callback([model, text] { run_encode(*model, *text); });
}

}  // namespace orrery::deploy
