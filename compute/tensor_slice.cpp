#include "compute/tensor_slice.hpp"

#include <algorithm>
#include <numeric>

#include "compute/model_error.hpp"

namespace orrery::compute {

namespace {

std::string listed(const std::vector<int>& shares) {
  std::string text;
  for (int share : shares) text += (text.empty() ? "" : ", ") + std::to_string(share);
  return text;
}

// `rows` in proportion to `shares`, at least one each: a member without head
// rows would have no logits to add to the group's.
std::vector<int> vocab_split(int rows, const std::vector<int>& shares) {
  std::vector<int> out;
  for (auto share : largest_remainder_split(rows, std::vector<std::int64_t>(shares.begin(), shares.end())))
    out.push_back(static_cast<int>(share));
  for (auto& share : out)
    if (share == 0) {
      ++share;
      --*std::max_element(out.begin(), out.end());
    }
  return out;
}

}  // namespace

tensor_slice whole_layer(const llama_config& config) {
  return slice_of(config, 0, config.num_heads, 0, config.intermediate_size, 0, config.vocab_size);
}

std::vector<tensor_slice> tensor_slices(const llama_config& config, const std::vector<int>& heads,
                                        const std::vector<int>& columns) {
  if (heads.empty() || heads.size() != columns.size())
    throw model_error("a tensor-parallel split needs one head share and one column share per member, got " +
                      std::to_string(heads.size()) + " and " + std::to_string(columns.size()));
  const int head_total = std::accumulate(heads.begin(), heads.end(), 0);
  const int column_total = std::accumulate(columns.begin(), columns.end(), 0);
  if (head_total != config.num_heads || column_total != config.intermediate_size)
    throw model_error("a tensor-parallel split of " + std::to_string(head_total) + " heads (" + listed(heads) +
                      ") and " + std::to_string(column_total) + " MLP columns (" + listed(columns) +
                      ") does not cover the model's " + std::to_string(config.num_heads) + " heads and " +
                      std::to_string(config.intermediate_size) + " columns");
  for (std::size_t m = 0; m < heads.size(); ++m)
    if (heads[m] < 1 || columns[m] < 1)
      throw model_error("member " + std::to_string(m) + " of a tensor-parallel split gets " + std::to_string(heads[m]) +
                        " heads and " + std::to_string(columns[m]) + " MLP columns; every member needs at least one of each");
  const auto vocab = vocab_split(config.vocab_size, columns);
  std::vector<tensor_slice> slices;
  int head = 0, column = 0, row = 0;
  for (std::size_t m = 0; m < heads.size(); ++m) {
    slices.push_back(slice_of(config, head, head + heads[m], column, column + columns[m], row, row + vocab[m]));
    head = slices.back().head_end;
    column = slices.back().column_end;
    row = slices.back().vocab_end;
  }
  return slices;
}

std::int64_t parameter_count(const llama_config& config, int first, int last, const tensor_slice& slice) {
  const std::int64_t h = config.hidden_size, d = config.head_dim;
  const std::int64_t per_layer = 2 * h * slice.heads() * d + 2 * h * slice.kv_heads() * d + 3 * h * slice.columns() + 2 * h;
  std::int64_t total = per_layer * (last - first);
  if (first == 0) total += static_cast<std::int64_t>(config.vocab_size) * h;
  if (last == config.num_layers) total += h + (config.tie_word_embeddings ? 0 : std::int64_t{slice.vocab()} * h);
  return total;
}

tensor_slice slice_of(const llama_config& config, int head_begin, int head_end, int column_begin, int column_end,
                      int vocab_begin, int vocab_end) {
  const int per_kv = config.num_heads / config.num_kv_heads;
  // A cut inside a KV group gives both sides that KV head.
  return {head_begin, head_end,   head_begin / per_kv, (head_end + per_kv - 1) / per_kv,
          column_begin, column_end, vocab_begin,        vocab_end};
}

bool is_slice_of(const llama_config& config, const tensor_slice& slice) {
  return slice.head_begin >= 0 && slice.heads() >= 1 && slice.head_end <= config.num_heads && slice.column_begin >= 0 &&
         slice.columns() >= 1 && slice.column_end <= config.intermediate_size && slice.vocab_begin >= 0 &&
         slice.vocab() >= 1 && slice.vocab_end <= config.vocab_size &&
         slice == slice_of(config, slice.head_begin, slice.head_end, slice.column_begin, slice.column_end,
                           slice.vocab_begin, slice.vocab_end);
}

bool cuts_kv_group(const llama_config& config, const tensor_slice& slice) {
  const int per_kv = config.num_heads / config.num_kv_heads;
  return slice.head_begin % per_kv != 0 || slice.head_end % per_kv != 0;
}

int kv_head_of(const llama_config& config, const tensor_slice& slice, int local_head) {
  const int per_kv = config.num_heads / config.num_kv_heads;
  return (slice.head_begin + local_head) / per_kv - slice.kv_head_begin;
}

}  // namespace orrery::compute
