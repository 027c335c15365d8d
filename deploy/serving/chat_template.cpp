#include "deploy/serving/chat_template.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace orrery::deploy {

namespace {

// The family a Jinja template renders, by the markers only it writes.
chat_template::family family_of(const std::string& jinja) {
  using f = chat_template::family;
  if (jinja.find("<|im_start|>") != std::string::npos) return f::chatml;
  if (jinja.find("<|start_header_id|>") != std::string::npos) return f::llama3;
  if (jinja.find("<<SYS>>") != std::string::npos) return f::llama2;
  if (jinja.find("[INST]") != std::string::npos) return f::mistral;
  return f::plain;
}

// Llama 2 and Mistral have no system turn: Llama 2 puts the system text in
// <<SYS>> at the head of the first user turn, Mistral before its text.
std::string inst_render(const std::vector<chat_message>& messages, bool llama2) {
  std::string system, out;
  bool first_user = true;
  for (const auto& m : messages) {
    if (m.role == "system") {
      system += (system.empty() ? "" : "\n") + m.content;
    } else if (m.role == "user") {
      std::string text = m.content;
      if (first_user && !system.empty()) text = llama2 ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + text : system + "\n\n" + text;
      first_user = false;
      out += "[INST] " + text + " [/INST]";
    } else {
      out += (llama2 ? " " : "") + m.content + "</s>";
    }
  }
  return out;
}

}  // namespace

chat_template chat_template::for_model(const std::filesystem::path& model_dir) {
  const auto file = model_dir / "tokenizer_config.json";
  std::ifstream in(file);
  if (!in) return chat_template(family::plain, "orrery's default (the model has no tokenizer_config.json)");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(file.string() + ": not JSON: " + e.what());
  }
  std::string jinja;
  const auto it = config.find("chat_template");
  if (it != config.end() && it->is_string()) jinja = it->get<std::string>();
  if (it != config.end() && it->is_array())
    for (const auto& named : *it)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") && named["template"].is_string())
        jinja = named["template"].get<std::string>();
  if (jinja.empty()) return chat_template(family::plain, "orrery's default (" + file.string() + " has no chat_template)");
  const auto kind = family_of(jinja);
  if (kind == family::plain)
    return chat_template(family::plain, "orrery's default (the chat_template in " + file.string() +
                                            " is none of the families orrery renders: chatml, llama3, llama2, mistral)");
  return chat_template(kind, "the chat_template in " + file.string());
}

std::string chat_template::render(const std::vector<chat_message>& messages) const {
  std::string out;
  switch (kind_) {
    case family::chatml:
      for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
      return out + "<|im_start|>assistant\n";
    case family::llama3:
      for (const auto& m : messages) out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
      return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case family::llama2: return inst_render(messages, true);
    case family::mistral: return inst_render(messages, false);
    case family::plain: break;
  }
  for (const auto& m : messages) out += m.role + ": " + m.content + "\n";
  return out + "assistant:";
}

std::string chat_template::name() const {
  switch (kind_) {
    case family::chatml: return "chatml";
    case family::llama3: return "llama3";
    case family::llama2: return "llama2";
    case family::mistral: return "mistral";
    case family::plain: break;
  }
  return "plain";
}

}  // namespace orrery::deploy
