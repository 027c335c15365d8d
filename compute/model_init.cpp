#include "compute/model_init.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/safetensors.hpp"
#include "compute/splitmix.hpp"
#include "compute/tokenizer.hpp"

namespace orrery::compute {

namespace {

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return h;
}

// Half-width of the uniform distribution a tensor is drawn from, following
// torch's defaults: nn.Linear draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
// nn.Embedding N(0, 1) (here U with the same standard deviation, sqrt(3));
// RMSNorm weights start at exactly 1.
double init_half_width(const std::string& name, const std::vector<std::int64_t>& shape) {
  if (shape.size() == 1) return 0.0;
  if (name == "model.embed_tokens.weight") return std::sqrt(3.0);
  return 1.0 / std::sqrt(static_cast<double>(shape[1]));
}

void store(float value, element_type type, std::byte* out) {
  if (type == element_type::f32) {
    std::memcpy(out, &value, 4);
    return;
  }
  std::uint16_t half = type == element_type::bf16 ? float_to_bf16(value) : float_to_f16(value);
  std::memcpy(out, &half, 2);
}

tensor_source random_tensor(const llama_config& config, const std::string& name, std::uint64_t seed) {
  tensor_source source{name, config.storage, tensor_shape(config, name), {}};
  double half_width = init_half_width(name, source.shape);
  element_type type = config.storage;
  std::int64_t numel = static_cast<std::int64_t>(source.nbytes() / element_size(type));
  source.fill = [=](std::byte* out) {
    std::uint64_t state = seed ^ fnv1a(name);
    for (std::int64_t i = 0; i < numel; ++i) {
      float value = 1.0f;
      if (half_width > 0) {
        double u = unit_interval(state);
        value = static_cast<float>((2 * u - 1) * half_width);
      }
      store(value, type, out + static_cast<std::size_t>(i) * element_size(type));
    }
  };
  return source;
}

std::string part_name(std::size_t k, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k, n);
  return name;
}

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

void write_index(const std::filesystem::path& dir, const std::vector<std::vector<tensor_source>>& files,
                 std::uint64_t total_bytes) {
  nlohmann::json weight_map = nlohmann::json::object();
  for (std::size_t k = 0; k < files.size(); ++k)
    for (const auto& t : files[k]) weight_map[t.name] = part_name(k + 1, files.size());
  nlohmann::json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
  std::ofstream out(dir / "model.safetensors.index.json", std::ios::trunc);
  out << index.dump(2) << "\n";
  if (!out) throw model_error((dir / "model.safetensors.index.json").string() + ": write failed");
}

}  // namespace

void init_model(const std::filesystem::path& dir, const llama_config& config,
                const model_init_options& options) {
  config.validate("model preset");
  if (std::filesystem::exists(dir / "config.json"))
    throw model_error(dir.string() + ": already holds a model (config.json exists); choose another --out");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw model_error(dir.string() + ": cannot create directory: " + ec.message());

  std::vector<tensor_source> tensors;
  std::uint64_t total = 0;
  for (const auto& name : shard_tensor_names(config, 0, config.num_layers)) {
    tensors.push_back(random_tensor(config, name, options.seed));
    total += tensors.back().nbytes();
  }
  auto files = split_into_files(std::move(tensors), options.max_file_bytes);
  std::uint64_t written = 0;
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  for (std::size_t k = 0; k < files.size(); ++k) {
    auto name = files.size() == 1 ? std::string("model.safetensors") : part_name(k + 1, files.size());
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
  if (files.size() > 1) write_index(dir, files, total);
  save_byte_tokenizer(dir);
  config.save(dir / "config.json");  // last: its presence marks a complete model
}

}  // namespace orrery::compute
