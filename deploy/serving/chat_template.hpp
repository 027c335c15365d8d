#pragma once
// Chat messages as one prompt. HF model directories carry their template in
// tokenizer_config.json as Jinja; orrery does not run Jinja, it recognises
// the template families the models users download use by their markers
// (ChatML for Qwen2, the header tokens of Llama 3, [INST] for Llama 2 and
// Mistral) and renders them itself. A model without a template, or with one
// none of these is, gets the documented default:
//
//   system: You are terse.
//   user: Hi
//   assistant:
//
// (one "role: content" line per message, then "assistant:"), and the server
// says at start-up which it uses and why.

#include <filesystem>
#include <string>
#include <vector>

namespace orrery::deploy {

struct chat_message {
  std::string role;  ///< system, user or assistant
  std::string content;
};

class chat_template {
 public:
  enum class family { plain, chatml, llama3, llama2, mistral };

  explicit chat_template(family kind = family::plain, std::string origin = "orrery's default") : kind_(kind), origin_(std::move(origin)) {}

  /// The template of `model_dir`'s tokenizer_config.json (`chat_template`:
  /// a string, or a list of named templates of which `default` is used);
  /// plain where there is none or it is none of the families. Throws
  /// std::runtime_error naming the file when it is there but not JSON.
  static chat_template for_model(const std::filesystem::path& model_dir);

  /// The prompt: every message, then the assistant's turn opened for the
  /// model to write. BOS is not part of it (generation adds it).
  std::string render(const std::vector<chat_message>& messages) const;

  family kind() const { return kind_; }
  /// The family's name (chatml, llama3, ...).
  std::string name() const;
  /// Where it came from, for the start-up line.
  const std::string& origin() const { return origin_; }

 private:
  family kind_;
  std::string origin_;
};

}  // namespace orrery::deploy
