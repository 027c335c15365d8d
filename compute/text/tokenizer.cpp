#include "compute/text/tokenizer.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "compute/bounded_file.hpp"
#include "compute/llama_config.hpp"
#include "compute/text/bpe_tokenizer.hpp"
#include "compute/text/sentencepiece_tokenizer.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

std::vector<token_id> byte_tokenizer::encode(std::string_view text) const {
  std::vector<token_id> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<unsigned char>(c));
  return ids;
}

std::string byte_tokenizer::decode(token_id id) const {
  if (id == bos() || id == eos()) return {};
  if (id < 0 || id > 255) return "<" + std::to_string(id) + ">";
  return std::string(1, static_cast<char>(id));
}

void save_byte_tokenizer(const std::filesystem::path& model_dir) {
  auto path = model_dir / tokenizer_file_name;
  std::ofstream out(path, std::ios::trunc);
  if (!out) throw model_error(path.string() + ": cannot create file");
  nlohmann::json j = {{"kind", "byte_level"}, {"bos_token_id", 256}, {"eos_token_id", 257}};
  out << j.dump(2) << "\n";
}

std::unique_ptr<tokenizer> load_tokenizer(const std::filesystem::path& model_dir) {
  if (std::filesystem::exists(model_dir / "tokenizer.json") || std::filesystem::exists(model_dir / "tokenizer.model")) {
    // A model's BOS and EOS are its config's; a directory of tokenizer
    // files alone (`orrery tokenizer train`) declares its own.
    token_id bos = 0, eos = 0;
    if (std::filesystem::exists(model_dir / "config.json")) {
      const auto config = llama_config::load(model_dir / "config.json");
      bos = config.bos_token_id;
      eos = config.eos_token_id;
    } else {
      const auto shape = read_tokenizer_shape(model_dir);
      bos = shape.bos;
      eos = shape.eos;
    }
    if (std::filesystem::exists(model_dir / "tokenizer.json"))
      return std::make_unique<bpe_tokenizer>(model_dir / "tokenizer.json", bos, eos);
    return std::make_unique<sentencepiece_tokenizer>(model_dir / "tokenizer.model", bos, eos);
  }
  auto path = model_dir / tokenizer_file_name;
  if (!std::filesystem::exists(path))
    throw model_error(model_dir.string() + ": no tokenizer (tokenizer.json, tokenizer.model or " + tokenizer_file_name + ")");
  const auto j = read_json_object(path, max_tokenizer_json_bytes);
  const auto kind = j.value("kind", nlohmann::json());
  if (kind != "byte_level")
    throw model_error(path.string() + ": unknown tokenizer kind " +
                      (kind.is_string() ? "'" + kind.get<std::string>() + "'" : kind.dump()));
  return std::make_unique<byte_tokenizer>();
}

tokenizer_shape read_tokenizer_shape(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "tokenizer.model")) {
    sentencepiece_tokenizer sp(dir / "tokenizer.model", 0, 0);
    tokenizer_shape shape{sp.vocab_size(), 0, 0};
    const auto ids = sp.special_ids();
    shape.bos = ids.first;
    shape.eos = ids.second;
    return shape;
  }
  const auto file = dir / "tokenizer.json", config_file = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(file)) throw model_error(dir.string() + ": has neither tokenizer.json nor tokenizer.model");
  const auto j = read_json_object(file, max_tokenizer_json_bytes);
  const auto config = read_json_object(config_file, max_tokenizer_json_bytes);
  std::map<std::string, token_id> ids;
  const auto model = j.value("model", nlohmann::json::object());
  const auto vocab = model.value("vocab", nlohmann::json::object());
  for (const auto& [piece, id] : vocab.items())
    if (id.is_number_integer()) ids[piece] = id.get<token_id>();
  for (const auto& a : j.value("added_tokens", nlohmann::json::array()))
    if (a.contains("content") && a["content"].is_string() && a.contains("id") && a["id"].is_number_integer())
      ids[a["content"].get<std::string>()] = a["id"].get<token_id>();
  tokenizer_shape shape;
  for (const auto& [piece, id] : ids) shape.vocab_size = std::max(shape.vocab_size, id + 1);
  auto special = [&](const char* field) {
    const auto it = config.find(field);
    const auto content = it == config.end() ? std::string()
                         : it->is_string()  ? it->get<std::string>()
                         : it->is_object()  ? it->value("content", "")
                                            : std::string();
    const auto id = ids.find(content);
    if (content.empty() || id == ids.end())
      throw model_error(config_file.string() + ": " + field + " " + (content.empty() ? "is missing" : "'" + content + "' is not a token of " + file.string()));
    return id->second;
  };
  shape.bos = special("bos_token");
  shape.eos = special("eos_token");
  return shape;
}

void copy_tokenizer(const std::filesystem::path& from, const std::filesystem::path& to) {
  bool copied = false;
  for (const auto* name : tokenizer_files) {
    if (!std::filesystem::exists(from / name)) continue;
    if (std::filesystem::equivalent(from, to)) return;
    std::filesystem::copy_file(from / name, to / name, std::filesystem::copy_options::overwrite_existing);
    copied = true;
  }
  if (!copied) save_byte_tokenizer(to);
}

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (0 if invalid).
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char lead = byte(i);
  std::size_t n = lead >= 0xf0 && lead <= 0xf4 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc2 && lead < 0xe0 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k)
    if ((byte(i + k) & 0xc0) != 0x80) return 0;
  return n;
}

}  // namespace

std::string printable(std::string_view bytes) {
  std::string out;
  for (std::size_t i = 0; i < bytes.size();) {
    auto c = static_cast<unsigned char>(bytes[i]);
    if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t') {
      out += static_cast<char>(c);
      ++i;
    } else if (auto n = c >= 0x80 ? utf8_sequence_length(bytes, i) : 0; n > 0) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      out += escaped;
      ++i;
    }
  }
  return out;
}

}  // namespace orrery::compute
