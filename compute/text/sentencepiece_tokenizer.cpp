#include "compute/text/sentencepiece_tokenizer.hpp"

#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iterator>

#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>

#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

// The module's functions (text/sentencepiece_module.cpp), loaded once.
struct module {
  void* (*load)(const char*, char*, std::size_t);
  void (*free)(void*);
  long (*encode)(void*, const char*, std::size_t, int*, std::size_t, char*, std::size_t);
  int (*size)(void*);
  int (*bos)(void*);
  int (*eos)(void*);
  int (*piece)(void*, int, char*, std::size_t);
};

const module& sentencepiece_module() {
  static const module m = [] {
    void* handle = ::dlopen(ORRERY_SENTENCEPIECE_MODULE, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle)
      throw model_error(std::string("cannot load orrery's SentencePiece module ") + ORRERY_SENTENCEPIECE_MODULE + ": " + ::dlerror());
    auto symbol = [handle](const char* name) {
      void* f = ::dlsym(handle, name);
      if (!f) throw model_error(std::string("orrery's SentencePiece module lacks ") + name);
      return f;
    };
    module out;
    out.load = reinterpret_cast<decltype(out.load)>(symbol("orrery_spm_load"));
    out.free = reinterpret_cast<decltype(out.free)>(symbol("orrery_spm_free"));
    out.encode = reinterpret_cast<decltype(out.encode)>(symbol("orrery_spm_encode"));
    out.size = reinterpret_cast<decltype(out.size)>(symbol("orrery_spm_size"));
    out.bos = reinterpret_cast<decltype(out.bos)>(symbol("orrery_spm_bos"));
    out.eos = reinterpret_cast<decltype(out.eos)>(symbol("orrery_spm_eos"));
    out.piece = reinterpret_cast<decltype(out.piece)>(symbol("orrery_spm_piece"));
    return out;
  }();
  return m;
}

// What one piece reads as in a stream of text.
std::string piece_text(const std::string& piece, int kind) {
  if (kind == 1) return {};                                     // control: BOS, EOS, padding
  if (kind == 2) return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));  // <0xNN>
  if (kind == 3) return "\xE2\x81\x87";                         // ⁇, as SentencePiece renders an unknown piece
  std::string out;
  for (std::size_t i = 0; i < piece.size();) {
    if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581, SentencePiece's space
      out.push_back(' ');
      i += 3;
    } else {
      out.push_back(piece[i++]);
    }
  }
  return out;
}

}  // namespace

sentencepiece_tokenizer::sentencepiece_tokenizer(const std::filesystem::path& model_file, token_id bos, token_id eos)
    : bos_(bos), eos_(eos) {
  const auto& m = sentencepiece_module();
  char error[512] = {};
  processor_ = m.load(model_file.c_str(), error, sizeof error);
  if (!processor_) throw model_error(model_file.string() + ": not a SentencePiece model: " + error);
  declared_ = {m.bos(processor_), m.eos(processor_)};
  const int n = m.size(processor_);
  text_.reserve(static_cast<std::size_t>(n));
  for (int id = 0; id < n; ++id) {
    char piece[1024] = {};
    const int kind = m.piece(processor_, id, piece, sizeof piece);
    text_.push_back(piece_text(piece, kind));
  }
}

sentencepiece_tokenizer::~sentencepiece_tokenizer() {
  if (processor_) sentencepiece_module().free(processor_);
}

std::vector<token_id> sentencepiece_tokenizer::encode(std::string_view text) const {
  const auto& m = sentencepiece_module();
  std::vector<int> ids(text.size() + 16);
  char error[512] = {};
  for (;;) {
    const long n = m.encode(processor_, text.data(), text.size(), ids.data(), ids.size(), error, sizeof error);
    if (n < 0) throw model_error(std::string("SentencePiece could not encode the text: ") + error);
    if (static_cast<std::size_t>(n) <= ids.size()) return {ids.begin(), ids.begin() + n};
    ids.resize(static_cast<std::size_t>(n));
  }
}

std::string sentencepiece_tokenizer::decode(token_id id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= text_.size()) return "<" + std::to_string(id) + ">";
  if (id == bos_ || id == eos_) return {};
  return text_[static_cast<std::size_t>(id)];
}

int sentencepiece_tokenizer::vocab_size() const { return static_cast<int>(text_.size()); }

std::pair<token_id, token_id> sentencepiece_tokenizer::special_ids() const { return declared_; }

std::pair<token_id, token_id> train_sentencepiece(const std::filesystem::path& corpus, int vocab_size,
                                                  const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const auto prefix = (dir / "tokenizer").string();
  const auto log = prefix + ".train.log";
  // Debian's spm_train in a process of its own: in this one the trainer's
  // logging writes to a std::cerr the deep-bound module does not share.
  // Identity normalisation, whitespace kept: text (newlines too, through
  // byte fallback) comes back as it went in, as with Llama 2's tokenizer.
  const std::vector<std::string> arguments = {
      "spm_train", "--input=" + corpus.string(), "--model_prefix=" + prefix, "--vocab_size=" + std::to_string(vocab_size),
      "--model_type=bpe", "--byte_fallback=true", "--character_coverage=1.0", "--normalization_rule_name=identity",
      "--remove_extra_whitespaces=false",
      "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1", "--input_sentence_size=2000000",
      "--shuffle_input_sentence=true", "--minloglevel=1"};
  const pid_t pid = ::fork();
  if (pid < 0) throw model_error("cannot start spm_train: fork failed");
  if (pid == 0) {
    if (!std::freopen(log.c_str(), "w", stderr) || !std::freopen("/dev/null", "w", stdout)) ::_exit(126);
    std::vector<char*> argv;
    for (const auto& a : arguments) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::ifstream in(log);
  const std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove(log);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw model_error(WIFEXITED(status) && WEXITSTATUS(status) == 127
                          ? std::string("spm_train is not installed (Debian package sentencepiece)")
                          : corpus.string() + ": spm_train failed: " + output.substr(output.size() > 2000 ? output.size() - 2000 : 0));
  std::filesystem::remove(prefix + ".vocab");  // the model file holds the pieces
  std::ofstream out(dir / "tokenizer_config.json", std::ios::trunc);
  out << nlohmann::json{{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"},
                        {"add_bos_token", true}, {"add_eos_token", false}, {"legacy", true}}
             .dump(2)
      << "\n";
  return {1, 2};
}

}  // namespace orrery::compute
