#include "planning/catalog.hpp"

#include <algorithm>
#include <functional>

namespace orrery::planning {

namespace {

constexpr double GB = 1e9;
constexpr double GiB = 1024.0 * 1024.0 * 1024.0;

// Efficiencies. CPU weight streaming: ARCHITECTURE.md measured stock libtorch +
// OpenBLAS decode at 8.6 GB/s against a 23 GB/s stream bound (37%). GPU
// figures (60% of DRAM bandwidth, 50% of dense peak for batch GEMMs) are
// typical of cuBLAS on Jetson-class parts (unverified: replace with the
// profiler's measurements where available).
constexpr double cpu_bandwidth_efficiency = 0.37;
constexpr double cpu_compute_efficiency = 0.4;
constexpr double gpu_bandwidth_efficiency = 0.6;
constexpr double gpu_compute_efficiency = 0.5;

template <class T>
const T& find_by_key(const std::vector<T>& catalog, const std::string& key, const char* what) {
  auto it = std::find_if(catalog.begin(), catalog.end(), [&](const T& e) { return e.key == key; });
  if (it != catalog.end())
    return *it;
  std::string known;
  for (const T& e : catalog)
    known += (known.empty() ? "" : ", ") + e.key;
  throw profile_error("unknown " + std::string(what) + " '" + key + "' (known: " + known + ")");
}

}  // namespace

const std::vector<device_spec>& device_catalog() {
  static const std::vector<device_spec> catalog = {
      // Jetson Nano module datasheet (DA-09366): 4 GB LPDDR4 at 25.6 GB/s,
      // 128-core Maxwell GPU, 472 GFLOPS FP16. ~0.8 GB kept for L4T and CUDA.
      {"nano", "NVIDIA Jetson Nano 4GB", 3.2 * GB, 472e9, 25.6 * GB, gpu_compute_efficiency,
       gpu_bandwidth_efficiency},
      // Jetson TX2 datasheet: 8 GB LPDDR4 (128-bit) at 59.7 GB/s, 256-core
      // Pascal GPU, 1.33 TFLOPS FP16. ~1 GB kept for the OS.
      {"tx2", "NVIDIA Jetson TX2", 7 * GB, 1.33e12, 59.7 * GB, gpu_compute_efficiency,
       gpu_bandwidth_efficiency},
      // Jetson Xavier NX datasheet: 8 GB LPDDR4x at 59.7 GB/s, 384-core Volta
      // GPU with 48 Tensor Cores; ~6 TFLOPS FP16 with Tensor Cores (unverified).
      {"nx", "NVIDIA Jetson Xavier NX", 7 * GB, 6e12, 59.7 * GB, gpu_compute_efficiency,
       gpu_bandwidth_efficiency},
      // Jetson AGX Orin 32GB datasheet: 32 GB LPDDR5 at 204.8 GB/s, 1792-core
      // Ampere GPU with 56 Tensor Cores; ~27 TFLOPS dense FP16 (unverified).
      {"orin", "NVIDIA Jetson AGX Orin 32GB", 30 * GB, 27e12, 204.8 * GB,
       gpu_compute_efficiency, gpu_bandwidth_efficiency},
      // Raspberry Pi 5 product brief: 8 GB LPDDR4X-4267 on a 32-bit bus
      // (17.1 GB/s), 4x Cortex-A76 at 2.4 GHz; 2 NEON FMA pipes x 4 fp32 lanes
      // = 16 FLOP/cycle/core -> 153.6 GFLOPS fp32.
      {"rpi5", "Raspberry Pi 5 8GB", 7 * GB, 153.6e9, 17.1 * GB, cpu_compute_efficiency,
       cpu_bandwidth_efficiency},
      // A desktop CPU: 8 cores at 4 GHz with two 256-bit FMA units (32 fp32
      // FLOP/cycle/core) = 1.02 TFLOPS; dual-channel DDR4-3200 = 51.2 GB/s; 32 GB.
      {"desktop", "desktop CPU (8-core AVX2, DDR4-3200)", 28 * GB, 1.024e12, 51.2 * GB,
       cpu_compute_efficiency, cpu_bandwidth_efficiency},
      // GeForce RTX 3090 (NVIDIA Ampere GA102 whitepaper): 24 GB GDDR6X at
      // 936 GB/s, 71 TFLOPS dense FP16 Tensor Core. ~1.5 GB kept for the CUDA context.
      {"rtx3090", "GPU server (NVIDIA RTX 3090 24GB)", 22.5 * GB, 71e12, 936 * GB,
       gpu_compute_efficiency, gpu_bandwidth_efficiency},
  };
  return catalog;
}

const std::vector<std::pair<std::string, link_spec>>& link_catalog() {
  // Bandwidths are Ethernet line rates in bytes/s; latencies are one-way
  // message latencies of a switched LAN through the kernel TCP stack
  // (typical, unverified). Wi-Fi: 802.11ac in a home, ~150 Mbit/s of TCP
  // goodput and a few ms per message (typical, unverified).
  static const std::vector<std::pair<std::string, link_spec>> catalog = {
      {"100mbit", {100e6 / 8, 0.5e-3}},
      {"500mbit", {500e6 / 8, 0.3e-3}},
      {"1gbit", {1e9 / 8, 0.2e-3}},
      {"wifi", {150e6 / 8, 3e-3}},
  };
  return catalog;
}

const std::vector<model_spec>& model_catalog() {
  // Llama 2 shapes from the model cards / config.json (Touvron et al. 2023),
  // fp16 weights. `small` and `tiny` match compute/llama_config.cpp's presets, run in fp32.
  static const std::vector<model_spec> catalog = {
      {"llama2-7b", 32, {4096, 11008, 32, 32, 32000, 4096, 2}},
      {"llama2-13b", 40, {5120, 13824, 40, 40, 32000, 4096, 2}},
      {"llama2-70b", 80, {8192, 28672, 64, 8, 32000, 4096, 2}},
      {"small", 12, {768, 2048, 12, 4, 32000, 1024, 4}},
      {"tiny", 4, {128, 352, 4, 2, 512, 256, 4}},
  };
  return catalog;
}

const device_spec& find_device(const std::string& key) {
  return find_by_key(device_catalog(), key, "device");
}

link_spec find_link(const std::string& key) {
  for (const auto& [name, spec] : link_catalog())
    if (name == key)
      return spec;
  std::string known;
  for (const auto& entry : link_catalog())
    known += (known.empty() ? "" : ", ") + entry.first;
  throw profile_error("unknown link '" + key + "' (known: " + known + ")");
}

const model_spec& find_model(const std::string& key) {
  return find_by_key(model_catalog(), key, "model");
}

// -- layers -------------------------------------------------------------------

namespace {

double kv_width(const transformer_shape& s) {
  return static_cast<double>(s.hidden) * s.kv_heads / s.heads;
}

// Parameters of one Llama block: Q and O (h x h), K and V (h x kv), and the
// SwiGLU MLP's three h x intermediate matrices; norms are negligible.
double block_parameters(const transformer_shape& s) {
  double h = s.hidden;
  return 2 * h * h + 2 * h * kv_width(s) + 3 * h * s.intermediate;
}

// FLOPs per token of a block at context `context`: 2 per parameter plus QK^T
// and AV, 2*h*context each.
double block_flops(const transformer_shape& s, double context) {
  return 2 * block_parameters(s) + 4.0 * s.hidden * context;
}

}  // namespace

std::vector<layer_profile> model_layers(const model_spec& model, const workload& work) {
  const transformer_shape& s = model.shape;
  double dtype = s.dtype_bytes, h = s.hidden;
  std::vector<layer_profile> layers;
  layers.push_back({"embedding", s.vocab * h * dtype, h * dtype, 0, h * dtype});
  // Activations kept for backward per token: 34h + 5*a*s bytes at fp16
  // (Korthikanti et al. 2022, "Reducing Activation Recomputation", section 4.1).
  double kept = (34 * h + 5.0 * s.heads * work.train_tokens) * dtype / 2;
  for (int l = 0; l < model.layers; ++l)
    layers.push_back({"block" + std::to_string(l), block_parameters(s) * dtype, h * dtype,
                      2 * kv_width(s) * dtype, kept});
  // The head's output is the sampled token id.
  layers.push_back({"head", s.vocab * h * dtype, 4, 0, s.vocab * dtype});
  return layers;
}

// -- rooflines ----------------------------------------------------------------

namespace {

struct roofline {
  double flops_rate;
  double bytes_rate;

  // Seconds for work that does `flops` and moves `bytes`.
  double seconds(double flops, double bytes) const {
    return std::max(flops / flops_rate, bytes / bytes_rate);
  }
};

// Per-token work of one layer kind at a context length.
struct layer_work {
  double weight_bytes;
  double kv_bytes_per_token;
  double flops_per_token;      // at the context
  double prefill_flops_share;  // fraction of prompt tokens doing the work (head: last only)
};

layer_timing timing(const roofline& r, const std::function<layer_work(double)>& work_at,
                    const workload& w, int max_context) {
  std::vector<time_curve::point> prefill, decode;
  for (double length : {1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, static_cast<double>(max_context)}) {
    if (length > max_context)
      break;
    // Prefill of `length` tokens reads the weights once; attention sees a mean context of length/2.
    layer_work lw = work_at(length / 2);
    double total = r.seconds(length * lw.prefill_flops_share * lw.flops_per_token, lw.weight_bytes);
    prefill.push_back({length, total / length});
    // A decode step reads the weights and the KV cache of `length` tokens.
    layer_work dw = work_at(length);
    decode.push_back({length, r.seconds(dw.flops_per_token,
                                        dw.weight_bytes + dw.kv_bytes_per_token * length)});
  }
  layer_timing t{time_curve(prefill), time_curve(decode), 0, 0};
  // Training: a sample of train_tokens tokens forward; backward does twice the FLOPs.
  layer_work tw = work_at(w.train_tokens / 2.0);
  t.forward = r.seconds(w.train_tokens * tw.flops_per_token, tw.weight_bytes);
  t.backward = 2 * t.forward;
  return t;
}

}  // namespace

device_profile device_timings(const device_spec& device, const model_spec& model,
                              const workload& work) {
  const transformer_shape& s = model.shape;
  double dtype = s.dtype_bytes, h = s.hidden;
  roofline r{device.peak_flops * device.compute_efficiency,
             device.memory_bandwidth * device.bandwidth_efficiency};
  device_profile out;
  out.name = device.key;
  out.memory_bytes = device.memory_bytes;
  // Embedding: a row lookup, h values read per token.
  out.layers.push_back(timing(r, [&](double) { return layer_work{h * dtype, 0, 0, 1}; }, work,
                              s.max_context));
  layer_timing block = timing(
      r,
      [&](double context) {
        return layer_work{block_parameters(s) * dtype, 2 * kv_width(s) * dtype,
                          block_flops(s, context), 1};
      },
      work, s.max_context);
  out.layers.insert(out.layers.end(), model.layers, block);
  // Head: logits only for the last prompt token during prefill.
  out.layers.push_back(timing(
      r, [&](double) { return layer_work{s.vocab * h * dtype, 0, 2 * s.vocab * h, 0}; }, work,
      s.max_context));
  // Galaxy's per-piece costs at the prompt length: a head owns 4*h*h/heads
  // weights (Q, K, V, O slices), a column 3*h (gate, up, down), and a
  // connective block reads and writes ~4 values per hidden unit.
  double tokens = work.prompt_tokens, head_params = 4 * h * h / s.heads;
  out.tp = tp_costs{r.seconds(2 * head_params + 4.0 * h / s.heads * tokens / 2,
                              head_params * dtype / tokens),
                    r.seconds(6 * h, 3 * h * dtype / tokens), r.seconds(10 * h, 4 * h * dtype)};
  return out;
}

profile catalog_profile(const std::vector<std::string>& devices, const std::string& link,
                        const std::string& model, const workload& work) {
  if (devices.empty())
    throw profile_error("--cluster: needs at least one device");
  const model_spec& m = find_model(model);
  profile p;
  p.model = m.key;
  p.layers = model_layers(m, work);
  p.shape = m.shape;
  p.work = work;
  for (const std::string& key : devices) {
    p.devices.push_back(device_timings(find_device(key), m, work));
    p.devices.back().name = key + "#" + std::to_string(p.devices.size() - 1);
  }
  p.links = link_matrix(find_link(link));
  p.source = 0;
  p.validate();
  return p;
}

}  // namespace orrery::planning
