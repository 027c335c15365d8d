#include "compute/training/checkpoint.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <map>
#include <string>

#include "compute/model_error.hpp"
#include "compute/model_writer.hpp"
#include "compute/scalar_type.hpp"
#include "compute/shard.hpp"
#include "compute/training/optimizer.hpp"

namespace orrery::compute {

namespace {

tensor_source float32_source(std::string name, const at::Tensor& t) {
  auto host = t.detach().to(at::kCPU, at::kFloat).contiguous();
  return {std::move(name), element_type::f32, host.sizes().vec(),
          [host](std::byte* out) { std::memcpy(out, host.data_ptr(), host.nbytes()); }};
}

}  // namespace

std::vector<tensor_source> hf_tensors(const std::vector<const shard*>& shards) {
  std::vector<tensor_source> out;
  for (const shard* s : shards) {
    const auto& c = s->config();
    if (s->slice().heads() != c.num_heads || s->slice().columns() != c.intermediate_size)
      throw model_error("a checkpoint holds whole layers; a shard holds " + s->slice().describe());
    if (s->has_embedding()) out.push_back(float32_source("model.embed_tokens.weight", s->embedding()));
    const std::int64_t q = static_cast<std::int64_t>(c.num_heads) * c.head_dim;
    const std::int64_t kv = static_cast<std::int64_t>(c.num_kv_heads) * c.head_dim;
    const std::int64_t columns = c.intermediate_size;
    for (std::size_t i = 0; i < s->layers().size(); ++i) {
      const auto& w = s->layers()[i];
      const std::string prefix = "model.layers." + std::to_string(s->first_layer() + static_cast<int>(i)) + ".";
      out.push_back(float32_source(prefix + "input_layernorm.weight", w.input_norm));
      out.push_back(float32_source(prefix + "self_attn.q_proj.weight", w.qkv.narrow(0, 0, q)));
      out.push_back(float32_source(prefix + "self_attn.k_proj.weight", w.qkv.narrow(0, q, kv)));
      out.push_back(float32_source(prefix + "self_attn.v_proj.weight", w.qkv.narrow(0, q + kv, kv)));
      out.push_back(float32_source(prefix + "self_attn.o_proj.weight", w.o));
      out.push_back(float32_source(prefix + "post_attention_layernorm.weight", w.post_norm));
      out.push_back(float32_source(prefix + "mlp.gate_proj.weight", w.gate_up.narrow(0, 0, columns)));
      out.push_back(float32_source(prefix + "mlp.up_proj.weight", w.gate_up.narrow(0, columns, columns)));
      out.push_back(float32_source(prefix + "mlp.down_proj.weight", w.down));
    }
    if (s->has_head()) {
      out.push_back(float32_source("model.norm.weight", s->final_norm()));
      if (!c.tie_word_embeddings) out.push_back(float32_source("lm_head.weight", s->head()));
    }
  }
  return out;
}

void write_trained_model(const std::filesystem::path& dir, const llama_config& config,
                         const std::vector<const shard*>& shards, const std::filesystem::path& tokenizer_from) {
  int next = 0;
  for (const shard* s : shards) {
    if (s->first_layer() != next)
      throw model_error("a checkpoint needs every layer once, in order: layer " + std::to_string(next) +
                        " is followed by a shard starting at " + std::to_string(s->first_layer()));
    next = s->last_layer();
  }
  if (next != config.num_layers)
    throw model_error("a checkpoint needs all " + std::to_string(config.num_layers) + " layers; the shards end at " +
                      std::to_string(next));
  auto trained = config;
  trained.storage = element_type::f32;
  model_write_options options;
  options.tokenizer_from = tokenizer_from;
  write_model_dir(dir, trained, hf_tensors(shards), options);
}

std::string optimizer_part_name(std::size_t k, std::size_t n) {
  char name[64];
  std::snprintf(name, sizeof name, "optimizer-%05zu-of-%05zu.safetensors", k, n);
  return name;
}

void save_optimizer(const std::filesystem::path& path, const adamw& optimizer,
                    const std::vector<std::string>& leave_out) {
  std::vector<tensor_source> tensors;
  for (const auto& [name, moment] : optimizer.state()) {
    const auto parameter = name.substr(name.find('/') + 1);
    if (std::find(leave_out.begin(), leave_out.end(), parameter) == leave_out.end())
      tensors.push_back(float32_source(name, moment));
  }
  write_safetensors(path, tensors, {{"steps", std::to_string(optimizer.steps())}});
}

void load_optimizer(const std::vector<std::filesystem::path>& paths, adamw& optimizer) {
  if (paths.empty()) throw model_error("no optimizer file to restore the moments from");
  std::vector<std::shared_ptr<const safetensors_file>> files;  // the moments are views of them
  std::map<std::string, at::Tensor> moments;
  std::int64_t steps = -1;
  for (const auto& path : paths) {
    files.push_back(safetensors_file::open(path));
    const auto& file = *files.back();
    for (const auto& [name, view] : file.tensors()) {
      if (view.type != element_type::f32) throw model_error(path.string() + ": '" + name + "' is not float32");
      moments[name] = at::from_blob(const_cast<std::byte*>(view.data), view.shape, at::kFloat);
    }
    auto found = file.metadata().find("steps");
    if (found == file.metadata().end()) throw model_error(path.string() + ": no 'steps' in its metadata");
    std::int64_t here = 0;
    try {
      here = std::stoll(found->second);
    } catch (const std::logic_error&) {
      throw model_error(path.string() + ": 'steps' is not a number: '" + found->second + "'");
    }
    if (steps >= 0 && here != steps)
      throw model_error(path.string() + ": saved after " + std::to_string(here) + " steps, " + paths.front().string() +
                        " after " + std::to_string(steps));
    steps = here;
  }
  try {
    optimizer.load_state(moments, steps);
  } catch (const model_error& e) {
    throw model_error(paths.front().parent_path().string() + ": " + e.what());
  }
}

std::vector<std::filesystem::path> optimizer_files(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / optimizer_file_name)) return {dir / optimizer_file_name};
  std::vector<std::filesystem::path> parts;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    const auto name = entry.path().filename().string();
    if (name.rfind("optimizer-", 0) == 0 && entry.path().extension() == ".safetensors") parts.push_back(entry.path());
  }
  if (parts.empty())
    throw model_error(dir.string() + ": holds no optimizer state (" + optimizer_file_name + " or optimizer-*-of-*.safetensors)");
  std::sort(parts.begin(), parts.end());
  return parts;
}

}  // namespace orrery::compute
