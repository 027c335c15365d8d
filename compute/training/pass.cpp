#include "compute/training/pass.hpp"

#include <ATen/ATen.h>
#include <ATen/core/Reduction.h>
#include <c10/core/InferenceMode.h>

#include <set>

#include "compute/model_error.hpp"
#include "compute/shard.hpp"

namespace orrery::compute {

namespace {

std::vector<kv_cache> fresh_caches(const shard& s, int sequences, int length) {
  std::vector<kv_cache> caches;
  caches.reserve(static_cast<std::size_t>(sequences));
  for (int i = 0; i < sequences; ++i) caches.push_back(s.new_cache(length));
  return caches;
}

std::vector<sequence_step> steps_of(std::vector<kv_cache>& caches, int length) {
  std::vector<sequence_step> batch;
  for (auto& c : caches) batch.push_back({&c, length});
  return batch;
}

at::Tensor cross_entropy_sum(const at::Tensor& logits, const at::Tensor& targets) {
  if (targets.dim() != 1 || targets.size(0) != logits.size(0))
    throw model_error("the loss needs one target per logits row: " + std::to_string(logits.size(0)) + " rows, " +
                      std::to_string(targets.numel()) + " targets");
  return at::nll_loss(at::log_softmax(logits, 1), targets.to(logits.device()), {}, at::Reduction::Sum);
}

}  // namespace

std::vector<named_parameter> trainable_parameters(const shard& s) {
  std::vector<named_parameter> out;
  std::set<const void*> seen;  // a tied head is the embedding's own tensor
  auto add = [&](std::string name, const at::Tensor& t, bool decays) {
    if (!t.defined() || !seen.insert(t.unsafeGetTensorImpl()).second) return;
    t.requires_grad_(true);
    out.push_back({std::move(name), t, decays});
  };
  add("model.embed_tokens.weight", s.embedding(), true);
  for (std::size_t i = 0; i < s.layers().size(); ++i) {
    const auto& w = s.layers()[i];
    const std::string prefix = "model.layers." + std::to_string(s.first_layer() + static_cast<int>(i)) + ".";
    add(prefix + "input_layernorm.weight", w.input_norm, false);
    add(prefix + "self_attn.qkv", w.qkv, true);
    add(prefix + "self_attn.o_proj.weight", w.o, true);
    add(prefix + "post_attention_layernorm.weight", w.post_norm, false);
    add(prefix + "mlp.gate_up", w.gate_up, true);
    add(prefix + "mlp.down_proj.weight", w.down, true);
  }
  add("model.norm.weight", s.final_norm(), false);
  // A tied head that a later stage holds is its own copy of the embedding:
  // under the embedding's name, so a pipeline adds its gradient to the first
  // stage's (both are the one tensor of the whole model).
  add(s.config().tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight", s.head(), true);
  return out;
}

bool holds_parameter(const llama_config& config, int first_layer, int last_layer, const std::string& name) {
  const bool embeds = first_layer == 0, heads = last_layer == config.num_layers;
  if (name == "model.embed_tokens.weight") return embeds || (heads && config.tie_word_embeddings);
  if (name == "model.norm.weight" || name == "lm_head.weight") return heads;
  const std::string prefix = "model.layers.";
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const int layer = std::stoi(name.substr(prefix.size()));
  return layer >= first_layer && layer < last_layer;
}

training_pass::training_pass(shard& s, const at::Tensor& input, int sequences, int length) {
  if (s.slice().heads() != s.config().num_heads)
    throw model_error("training runs whole layers; this shard holds " + s.slice().describe());
  input_ = s.has_embedding() ? input : input.detach().requires_grad_(true);
  auto caches = fresh_caches(s, sequences, length);
  layer_context grad;
  grad.grad = true;
  // The caches keep no autograd history (grad-mode attention reads this
  // pass's keys as computed), so they can go once the forward is done.
  output_ = s.forward(input_, steps_of(caches, length), grad, logits_rows::all);
}

double training_pass::backward_from_loss(const at::Tensor& targets, double scale) {
  c10::InferenceMode grad_mode(false);
  auto loss = cross_entropy_sum(output_, targets);
  (loss * scale).backward();
  return loss.item<double>();
}

void training_pass::backward(const at::Tensor& output_gradient) {
  c10::InferenceMode grad_mode(false);
  if (!output_gradient.sizes().equals(output_.sizes()))
    throw model_error("the gradient from the next stage is " + std::to_string(output_gradient.numel()) +
                      " values; this stage's output has " + std::to_string(output_.numel()));
  output_.backward(output_gradient.to(output_.device(), output_.scalar_type()));
}

at::Tensor training_pass::input_gradient() const {
  return input_.requires_grad() ? input_.grad() : at::Tensor();
}

at::Tensor evaluation_pass(shard& s, const at::Tensor& input, int sequences, int length) {
  auto caches = fresh_caches(s, sequences, length);
  return s.forward(input, steps_of(caches, length), logits_rows::all);
}

double loss_sum(const at::Tensor& logits, const at::Tensor& targets) {
  c10::InferenceMode inference;
  return cross_entropy_sum(logits, targets).item<double>();
}

}  // namespace orrery::compute
