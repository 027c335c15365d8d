#include "planning/random_profile.hpp"

#include <numeric>

namespace orrery::planning {

namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

int integer(std::mt19937_64& rng, int lo, int hi) {
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

std::vector<layer_profile> random_layers(std::mt19937_64& rng, std::size_t count) {
  std::vector<layer_profile> layers(count);
  for (std::size_t l = 0; l < count; ++l) {
    layer_profile& layer = layers[l];
    layer.name = "layer" + std::to_string(l);
    layer.weight_bytes = uniform(rng, 1e8, 1e9);
    layer.activation_bytes_per_token = uniform(rng, 1e3, 1e5);
    layer.kv_bytes_per_token = uniform(rng, 0, 2e4);
    layer.training_bytes_per_token = layer.activation_bytes_per_token * uniform(rng, 1, 8);
  }
  return layers;
}

// A device's cost of a layer: the layer's base cost over the device's speed,
// with per-layer noise so that no device is uniformly best.
layer_timing random_timing(std::mt19937_64& rng, double base, double speed) {
  double c = base / speed;
  layer_timing t;
  t.prefill = time_curve({{16, c * uniform(rng, 0.2, 1.2)}, {256, c * uniform(rng, 0.4, 2.0)}});
  t.decode = time_curve({{64, c * uniform(rng, 0.8, 1.5)}, {1024, c * uniform(rng, 1.0, 3.0)}});
  t.forward = 50 * c * uniform(rng, 0.7, 1.3);
  t.backward = 2 * t.forward * uniform(rng, 0.8, 1.2);
  return t;
}

double model_bytes(const profile& p) {
  int tokens = p.work.prompt_tokens + p.work.output_tokens;
  double total = 0;
  for (const auto& l : p.layers)
    total += l.weight_bytes + l.kv_bytes_per_token * tokens * p.work.batch;
  return total;
}

void random_devices(std::mt19937_64& rng, profile& p, std::size_t count,
                    const random_profile_options& options) {
  std::vector<double> base(p.layers.size());
  for (double& b : base)
    b = uniform(rng, 5e-4, 5e-3);
  std::vector<double> share(count);
  for (std::size_t d = 0; d < count; ++d) {
    device_profile dev;
    dev.name = "dev" + std::to_string(d);
    double speed = uniform(rng, 0.2, 5.0);
    for (double b : base)
      dev.layers.push_back(random_timing(rng, b, speed));
    dev.tp = tp_costs{1e-4 / speed, 1e-6 / speed, 1e-6 / speed};
    p.devices.push_back(std::move(dev));
    share[d] = uniform(rng, 0.1, 1.0);
  }
  double ratio = uniform(rng, options.min_memory_ratio, options.max_memory_ratio);
  double total_share = std::accumulate(share.begin(), share.end(), 0.0);
  for (std::size_t d = 0; d < count; ++d)
    p.devices[d].memory_bytes = ratio * model_bytes(p) * share[d] / total_share;
}

link_matrix random_links(std::mt19937_64& rng, std::size_t devices) {
  link_matrix links({uniform(rng, 1e6, 1.25e8), uniform(rng, 0, 5e-3)});
  for (std::size_t a = 0; a < devices; ++a)
    for (std::size_t b = a + 1; b < devices; ++b)
      if (integer(rng, 0, 2) == 0)
        links.set(a, b, {uniform(rng, 1e6, 1.25e8), uniform(rng, 0, 5e-3)});
  return links;
}

}  // namespace

profile random_profile(std::mt19937_64& rng, const random_profile_options& options) {
  profile p;
  p.model = "random";
  p.layers = random_layers(rng, options.layers);
  p.work.prompt_tokens = integer(rng, 1, 64);
  p.work.output_tokens = integer(rng, 1, 16);
  p.work.batch = integer(rng, 1, 4);
  p.work.micro_batches = integer(rng, 1, 6);
  p.work.micro_batch_size = integer(rng, 1, 6);
  p.work.train_tokens = integer(rng, 16, 128);
  random_devices(rng, p, options.devices, options);
  p.links = random_links(rng, options.devices);
  p.source = static_cast<std::size_t>(integer(rng, 0, static_cast<int>(options.devices) - 1));
  p.validate();
  return p;
}

}  // namespace orrery::planning
