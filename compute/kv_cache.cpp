#include "compute/kv_cache.hpp"

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

// The dimension of a cache's storage that counts positions.
constexpr std::int64_t position_dim = 3;

}  // namespace

kv_cache::kv_cache(int layers, int kv_heads, int capacity, int head_dim, at::TensorOptions options)
    : storage_(at::zeros({layers, 2, kv_heads, capacity, head_dim}, options)), capacity_(capacity) {}

at::Tensor kv_cache::keys(int layer) const {
  return storage_.select(0, layer).select(0, 0);
}

at::Tensor kv_cache::values(int layer) const {
  return storage_.select(0, layer).select(0, 1);
}

std::size_t kv_cache::bytes() const {
  return static_cast<std::size_t>(storage_.numel()) * storage_.element_size();
}

void kv_cache::advance(int tokens) {
  if (tokens < 0 || length_ + tokens > capacity_)
    throw model_error("sequence of " + std::to_string(length_ + tokens) + " tokens exceeds its KV cache of " +
                      std::to_string(capacity_) + " positions");
  length_ += tokens;
}

void kv_cache::truncate(int length) {
  if (length < 0 || length > length_)
    throw model_error("cannot truncate a KV cache of " + std::to_string(length_) + " tokens to " +
                      std::to_string(length) + " (a length in [0, " + std::to_string(length_) + "])");
  length_ = length;
}

kv_cache kv_cache::copy_prefix(int tokens, int capacity) const {
  if (tokens < 0 || tokens > length_ || tokens > capacity)
    throw model_error("cannot copy the first " + std::to_string(tokens) + " tokens of a KV cache of " +
                      std::to_string(length_) + " tokens into one of " + std::to_string(capacity) + " positions");
  kv_cache copy(static_cast<int>(storage_.size(0)), static_cast<int>(storage_.size(2)), capacity,
                static_cast<int>(storage_.size(4)), storage_.options());
  copy.storage_.narrow(position_dim, 0, tokens).copy_(storage_.narrow(position_dim, 0, tokens));
  copy.length_ = tokens;
  return copy;
}

}  // namespace orrery::compute
