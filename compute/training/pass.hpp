#pragma once
// One micro-batch through one shard with autograd, kept until its backward.
// A whole-model shard trains on its own; in a pipeline each stage keeps one
// pass per micro-batch in flight (1F1B), runs its backward when the
// gradient of its output arrives from the next stage, and sends the
// gradient of its input back. The stage with the head starts the backward
// from the loss.
//
// The loss of a step is the mean next-token cross-entropy over every token
// of its global batch. A micro-batch's backward starts from its summed loss
// times 1 / (tokens in the global batch), so gradients accumulated over
// micro-batches — and summed over a data-parallel group — are the global
// batch's gradient, whatever the split.

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "compute/llama_config.hpp"

namespace orrery::compute {

class shard;

/// A weight a training step updates, by the name checkpoints store it under.
struct named_parameter {
  std::string name;
  at::Tensor tensor;
  /// Weight decay applies (matrices); norms' gains are exempt.
  bool decays = true;
};

/// The shard's weights, each set to record gradients. A tied LM head is the
/// embedding itself and appears once. q|k|v and gate|up stay stacked as the
/// shard holds them ("model.layers.3.self_attn.qkv"); checkpoints unstack
/// them into HF's names (compute/training/checkpoint.hpp).
std::vector<named_parameter> trainable_parameters(const shard& s);

/// Whether a shard of layers [first_layer, last_layer) of a model shaped
/// `config` has the trainable parameter `name` (one of trainable_parameters'
/// names): where a recovered stage finds its layers in the backups of the
/// stages before it.
bool holds_parameter(const llama_config& config, int first_layer, int last_layer, const std::string& name);

class training_pass {
 public:
  /// Runs `input` — token ids [sequences * length] for the shard with the
  /// embedding, hidden states [sequences * length, hidden] otherwise — through
  /// `s` in grad mode, each sequence from position 0.
  training_pass(shard& s, const at::Tensor& input, int sequences, int length);

  /// Hidden states for the next stage, without autograd history (the
  /// shard with the head: its logits).
  at::Tensor output() const { return output_.detach(); }

  /// The shard with the head: the cross-entropy of its logits against
  /// `targets` (int64 [tokens]), summed; runs backward from that sum times
  /// `scale`. Returns the unscaled sum.
  double backward_from_loss(const at::Tensor& targets, double scale);

  /// Any other shard: runs backward from the gradient of its output.
  void backward(const at::Tensor& output_gradient);

  /// The gradient of the input hidden states after backward, for the
  /// previous stage; undefined for the shard with the embedding.
  at::Tensor input_gradient() const;

 private:
  at::Tensor input_;  // a leaf recording its gradient, unless token ids
  at::Tensor output_;
};

/// `input` (as training_pass takes it) through `s` without autograd, each
/// sequence from position 0: hidden states for the next stage, or from the
/// shard with the head its logits (validation).
at::Tensor evaluation_pass(shard& s, const at::Tensor& input, int sequences, int length);

/// The cross-entropy of `logits` ([tokens, vocabulary]) against `targets`
/// (int64 [tokens]), summed over the tokens.
double loss_sum(const at::Tensor& logits, const at::Tensor& targets);

}  // namespace orrery::compute
