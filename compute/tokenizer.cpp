#include "compute/tokenizer.hpp"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compute/bounded_file.hpp"
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
  auto path = model_dir / tokenizer_file_name;
  const auto j = read_json_object(path, max_tokenizer_json_bytes);
  const auto kind = j.value("kind", nlohmann::json());
  if (kind != "byte_level")
    throw model_error(path.string() + ": unknown tokenizer kind " +
                      (kind.is_string() ? "'" + kind.get<std::string>() + "'" : kind.dump()));
  return std::make_unique<byte_tokenizer>();
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
