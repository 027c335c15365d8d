#include "base/tensor_slice.hpp"

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

}  // namespace orrery
