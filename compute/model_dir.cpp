#include "compute/model_dir.hpp"

#include <nlohmann/json.hpp>

#include "compute/bounded_file.hpp"
#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

constexpr const char* single_file = "model.safetensors";
constexpr const char* index_file = "model.safetensors.index.json";

std::string layer_prefix(int layer) {
  return "model.layers." + std::to_string(layer) + ".";
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::map<std::string, std::string> read_weight_map(const std::filesystem::path& index) {
  const auto j = read_json_object(index, max_model_json_bytes);
  if (!j.contains("weight_map") || !j["weight_map"].is_object())
    throw model_error(index.string() + ": missing object 'weight_map'");
  std::map<std::string, std::string> map;
  for (const auto& [name, file] : j["weight_map"].items()) {
    if (!file.is_string()) throw model_error(index.string() + ": weight_map entry '" + name + "' is not a file name");
    auto file_name = file.get<std::string>();
    if (file_name.find('/') != std::string::npos)
      throw model_error(index.string() + ": weight_map entry '" + name + "' points outside the directory");
    map[name] = file_name;
  }
  return map;
}

}  // namespace

std::vector<std::string> shard_tensor_names(const llama_config& config, int first, int last) {
  std::vector<std::string> names;
  if (first == 0) names.push_back("model.embed_tokens.weight");
  for (int layer = first; layer < last; ++layer) {
    for (const char* suffix :
         {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
          "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
          "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"})
      names.push_back(layer_prefix(layer) + suffix);
  }
  if (last == config.num_layers) {
    names.push_back("model.norm.weight");
    if (!config.tie_word_embeddings) names.push_back("lm_head.weight");
  }
  return names;
}

std::vector<std::int64_t> tensor_shape(const llama_config& c, const std::string& name) {
  std::int64_t h = c.hidden_size, q = static_cast<std::int64_t>(c.num_heads) * c.head_dim,
               kv = static_cast<std::int64_t>(c.num_kv_heads) * c.head_dim, f = c.intermediate_size;
  auto ends_with = [&](const char* suffix) {
    std::string s(suffix);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (name == "model.embed_tokens.weight" || name == "lm_head.weight") return {c.vocab_size, h};
  if (ends_with("layernorm.weight") || name == "model.norm.weight") return {h};
  if (ends_with("q_proj.weight")) return {q, h};
  if (ends_with("k_proj.weight") || ends_with("v_proj.weight")) return {kv, h};
  if (ends_with("o_proj.weight")) return {h, q};
  if (ends_with("gate_proj.weight") || ends_with("up_proj.weight")) return {f, h};
  if (ends_with("down_proj.weight")) return {h, f};
  throw model_error("no Llama tensor is named '" + name + "'");
}

model_dir::model_dir(std::filesystem::path dir) : dir_(std::move(dir)) {
  if (!std::filesystem::is_directory(dir_))
    throw model_error(dir_.string() + ": not a model directory (run `orrery model init` to create one)");
  config_ = llama_config::load(dir_ / "config.json");
  if (std::filesystem::exists(dir_ / index_file)) {
    weight_map_ = read_weight_map(dir_ / index_file);
  } else if (!std::filesystem::exists(dir_ / single_file)) {
    throw model_error(dir_.string() + ": holds neither " + single_file + " nor " + index_file);
  }
}

std::shared_ptr<const safetensors_file> model_dir::file_for(const std::string& name) const {
  std::string file_name = single_file;
  if (!weight_map_.empty()) {
    auto it = weight_map_.find(name);
    if (it == weight_map_.end())
      throw model_error((dir_ / index_file).string() + ": missing tensor '" + name + "'");
    file_name = it->second;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto& file = files_[file_name];
  if (!file) file = safetensors_file::open(dir_ / file_name);
  return file;
}

tensor_view model_dir::tensor(const std::string& name) const {
  auto file = file_for(name);
  const tensor_view* view = file->find(name);
  if (view == nullptr) throw model_error(file->path().string() + ": missing tensor '" + name + "'");
  auto expected = tensor_shape(config_, name);
  if (view->shape != expected)
    throw model_error(file->path().string() + ": tensor '" + name + "' has shape " +
                      shape_text(view->shape) + " but config.json implies " + shape_text(expected));
  return *view;  // the view stays valid: files_ keeps every mapped file open
}

std::vector<std::filesystem::path> model_dir::opened_files() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::filesystem::path> paths;
  for (const auto& [name, file] : files_) paths.push_back(file->path());
  return paths;
}

}  // namespace orrery::compute
