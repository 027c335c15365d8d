#include "compute/model_writer.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "compute/model_error.hpp"
#include "compute/text/tokenizer.hpp"

namespace orrery::compute {

namespace {

// Consecutive tensors grouped into files of at most max_bytes (a tensor
// larger than that gets a file of its own).
std::vector<std::vector<tensor_source>> split_into_files(std::vector<tensor_source> tensors,
                                                         std::uint64_t max_bytes) {
  std::vector<std::vector<tensor_source>> files(1);
  std::uint64_t in_file = 0;
  for (auto& t : tensors) {
    if (max_bytes > 0 && in_file > 0 && in_file + t.nbytes() > max_bytes) {
      files.emplace_back();
      in_file = 0;
    }
    in_file += t.nbytes();
    files.back().push_back(std::move(t));
  }
  return files;
}

void write_index(const std::filesystem::path& dir, const std::map<std::string, std::string>& weight_map,
                 std::uint64_t total_bytes) {
  nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::ofstream out(dir / "model.safetensors.index.json", std::ios::trunc);
  out << index.dump(2) << "\n";
  if (!out) throw model_error((dir / "model.safetensors.index.json").string() + ": write failed");
}

}  // namespace

std::string model_part_name(std::size_t k, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k, n);
  return name;
}

void finish_model_dir(const std::filesystem::path& dir, const llama_config& config,
                      const std::map<std::string, std::string>& weight_map, std::uint64_t total_bytes,
                      const std::filesystem::path& tokenizer_from) {
  if (!weight_map.empty()) write_index(dir, weight_map, total_bytes);
  if (tokenizer_from.empty())
    save_byte_tokenizer(dir);
  else
    copy_tokenizer(tokenizer_from, dir);
  config.save(dir / "config.json");  // last: its presence marks a complete model
}

void write_model_dir(const std::filesystem::path& dir, const llama_config& config, std::vector<tensor_source> tensors,
                     const model_write_options& options) {
  if (std::filesystem::exists(dir / "config.json"))
    throw model_error(dir.string() + ": already holds a model (config.json exists); choose another --out");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw model_error(dir.string() + ": cannot create directory: " + ec.message());

  std::uint64_t total = 0;
  for (const auto& t : tensors) total += t.nbytes();
  auto files = split_into_files(std::move(tensors), options.max_file_bytes);
  std::uint64_t written = 0;
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  for (std::size_t k = 0; k < files.size(); ++k) {
    auto name = files.size() == 1 ? std::string("model.safetensors") : model_part_name(k + 1, files.size());
    for (auto& t : files[k]) {
      auto fill = t.fill;
      t.fill = [&, fill, bytes = t.nbytes()](std::byte* out) {
        fill(out);
        written += bytes;
        if (options.progress) options.progress(written, total);
      };
    }
    write_safetensors(dir / name, files[k], metadata);
  }
  std::map<std::string, std::string> weight_map;  // none for one file
  if (files.size() > 1)
    for (std::size_t k = 0; k < files.size(); ++k)
      for (const auto& t : files[k]) weight_map[t.name] = model_part_name(k + 1, files.size());
  finish_model_dir(dir, config, weight_map, total, options.tokenizer_from);
}

}  // namespace orrery::compute
