#include "base/tensor_slice.hpp"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace orrery {

namespace {

std::string range(int begin, int end) { return "[" + std::to_string(begin) + ", " + std::to_string(end) + ")"; }

}  // namespace

std::string tensor_slice::describe() const {
  return "heads " + range(head_begin, head_end) + " (kv " + range(kv_head_begin, kv_head_end) + "), columns " +
         range(column_begin, column_end) + ", vocab " + range(vocab_begin, vocab_end);
}

bool tensor_slice::operator==(const tensor_slice& o) const {
  return head_begin == o.head_begin && head_end == o.head_end && kv_head_begin == o.kv_head_begin &&
         kv_head_end == o.kv_head_end && column_begin == o.column_begin && column_end == o.column_end &&
         vocab_begin == o.vocab_begin && vocab_end == o.vocab_end;
}

std::vector<std::int64_t> largest_remainder_split(std::int64_t total, const std::vector<std::int64_t>& shares) {
  std::int64_t sum = 0;
  for (auto share : shares) sum += share;
  if (sum <= 0) throw std::invalid_argument("largest_remainder_split: the shares add up to " + std::to_string(sum));
  std::vector<std::int64_t> out;
  std::vector<std::pair<std::int64_t, std::size_t>> remainders;  // (remainder, index)
  std::int64_t given = 0;
  for (std::size_t i = 0; i < shares.size(); ++i) {
    out.push_back(total * shares[i] / sum);
    given += out.back();
    remainders.emplace_back(total * shares[i] % sum, i);
  }
  std::stable_sort(remainders.begin(), remainders.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (std::size_t i = 0; given < total; ++i, ++given) ++out[remainders[i].second];
  return out;
}

}  // namespace orrery
