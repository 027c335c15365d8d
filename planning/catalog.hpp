#pragma once
// Presets for `orrery plan --cluster … --link … --model …`: devices, links and
// models whose profiles are derived, not measured. A layer's time is a
// roofline: max(FLOPs / effective compute rate, bytes moved / effective memory
// bandwidth). Each figure names its source in catalog.cpp; measured profiles
// from the profiler always take precedence.

#include <string>
#include <vector>

#include "planning/profile.hpp"

namespace orrery::planning {

/// A device preset: datasheet peaks and the fraction of them a runtime reaches.
struct device_spec {
  std::string key;                   ///< name on the command line ("nano")
  std::string name;                  ///< full name
  double memory_bytes = 0;           ///< usable for the model (after OS / runtime reserve)
  double peak_flops = 0;             ///< in the model's compute type (fp16 on GPUs, fp32 on CPUs)
  double memory_bandwidth = 0;       ///< bytes/s, datasheet peak
  double compute_efficiency = 0;     ///< fraction of peak_flops reached by dense layers
  double bandwidth_efficiency = 0;   ///< fraction of memory_bandwidth reached by weight streaming
};

/// A named model: its transformer shape (layers are derived from it).
struct model_spec {
  std::string key;
  int layers = 0;
  transformer_shape shape;
};

/// Every device preset.
const std::vector<device_spec>& device_catalog();

/// Every link preset, by key ("100mbit", "500mbit", "1gbit", "wifi").
const std::vector<std::pair<std::string, link_spec>>& link_catalog();

/// Every model preset ("llama2-7b", "llama2-13b", "llama2-70b", "small", "tiny").
const std::vector<model_spec>& model_catalog();

/// The preset named `key`; throws profile_error listing the known keys.
const device_spec& find_device(const std::string& key);
link_spec find_link(const std::string& key);
const model_spec& find_model(const std::string& key);

/// The model's layers: embedding, one per transformer block, head (norm + LM head).
std::vector<layer_profile> model_layers(const model_spec& model, const workload& work);

/// A device's timings for every layer of `model` from its roofline.
device_profile device_timings(const device_spec& device, const model_spec& model,
                              const workload& work);

/// A whole profile from presets; the first device is the source.
/// @param devices device keys, repeated for several devices of a kind.
profile catalog_profile(const std::vector<std::string>& devices, const std::string& link,
                        const std::string& model, const workload& work = {});

}  // namespace orrery::planning
