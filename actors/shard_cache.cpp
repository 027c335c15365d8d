#include "actors/shard_cache.hpp"

#include "compute/tensor_slice.hpp"

#include <c10/core/ScalarType.h>

#include "compute/model_dir.hpp"

namespace orrery::actors {

at::Tensor shared_shard::forward(const at::Tensor& input, const std::vector<compute::sequence_step>& batch,
                                 const compute::layer_context& context, compute::logits_rows rows) {
  std::lock_guard<std::mutex> lock(turn_);
  return context.plain() ? shard_.forward(input, batch, rows) : shard_.forward(input, batch, context, rows);
}

std::uint64_t shard_cache::held_bytes_locked() const {
  std::uint64_t bytes = 0;
  for (const auto& [k, weak] : shards_)
    if (auto held = weak.lock()) bytes += held->shard().weight_bytes();
  return bytes;
}

std::uint64_t shard_cache::held_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_bytes_locked();
}

std::shared_ptr<shared_shard> shard_cache::acquire(const std::string& fingerprint, const compute::model_dir& model,
                                                   int first, int last, const compute::shard_options& options,
                                                   bool& loaded, std::uint64_t owner) {
  // One load at a time: the budget check and the load it admits are one step.
  std::lock_guard<std::mutex> lock(mutex_);
  const key k{fingerprint, first, last, options.device.str(), static_cast<int>(options.dtype),
              options.slice ? options.slice->describe() : "", owner};
  loaded = false;
  if (auto held = shards_[k].lock()) return held;
  if (budget_ > 0) {
    // A group member holds its slice of the layers, not the layers.
    const auto parameters = options.slice ? compute::parameter_count(model.config(), first, last, *options.slice)
                                          : model.config().parameter_count(first, last);
    const auto needed = static_cast<std::uint64_t>(parameters) * c10::elementSize(options.dtype);
    const auto held = held_bytes_locked();
    if (held + needed > budget_)
      throw std::runtime_error("they need " + std::to_string(needed) + " bytes and the node holds " +
                               std::to_string(held) + " for its stages already; the memory budget is " +
                               std::to_string(budget_));
  }
  auto shard = std::make_shared<shared_shard>(compute::shard(model, first, last, options));
  loaded = true;
  shards_[k] = shard;
  for (auto it = shards_.begin(); it != shards_.end();) it = it->second.expired() ? shards_.erase(it) : std::next(it);
  return shard;
}

}  // namespace orrery::actors
