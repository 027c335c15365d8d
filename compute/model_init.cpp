#include "compute/model_init.hpp"

#include <cmath>
#include <cstring>

#include "compute/model_dir.hpp"
#include "compute/model_error.hpp"
#include "compute/model_writer.hpp"
#include "compute/safetensors.hpp"
#include "compute/splitmix.hpp"

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

}  // namespace

void init_model(const std::filesystem::path& dir, const llama_config& config,
                const model_init_options& options) {
  config.validate("model preset");
  std::vector<tensor_source> tensors;
  for (const auto& name : shard_tensor_names(config, 0, config.num_layers))
    tensors.push_back(random_tensor(config, name, options.seed));
  write_model_dir(dir, config, std::move(tensors), {options.max_file_bytes, options.progress, options.tokenizer_from});
}

}  // namespace orrery::compute
