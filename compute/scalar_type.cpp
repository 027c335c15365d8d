#include "compute/scalar_type.hpp"

#include <stdexcept>

namespace orrery::compute {

at::ScalarType scalar_type_of(element_type type) {
  switch (type) {
    case element_type::f32: return at::kFloat;
    case element_type::f16: return at::kHalf;
    case element_type::bf16: return at::kBFloat16;
    case element_type::i64: return at::kLong;
    case element_type::i32: return at::kInt;
  }
  throw std::invalid_argument("unknown element type " + std::to_string(static_cast<int>(type)));
}

element_type element_type_of(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return element_type::f32;
    case at::kHalf: return element_type::f16;
    case at::kBFloat16: return element_type::bf16;
    case at::kLong: return element_type::i64;
    case at::kInt: return element_type::i32;
    default:
      throw std::invalid_argument(std::string("orrery has no element type for ") + c10::toString(type) +
                                  " tensors (it has f32, f16, bf16, i64, i32)");
  }
}

at::ScalarType scalar_type_from_name(const std::string& name) {
  auto parsed = element_type_from_name(name);
  if (!parsed) throw std::runtime_error("dtype '" + name + "' is not one of fp32, fp16, bf16");
  return scalar_type_of(*parsed);
}

}  // namespace orrery::compute
