#include "compute/scalar_type.hpp"

#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

using namespace orrery::compute;
using orrery::element_type;

TEST_CASE("every element type is a libtorch scalar type and back, and other scalar types are named") {
  for (auto type : {element_type::f32, element_type::f16, element_type::bf16, element_type::i64, element_type::i32})
    CHECK(element_type_of(scalar_type_of(type)) == type);
  CHECK((scalar_type_of(element_type::bf16) == at::kBFloat16));
  CHECK((scalar_type_of(element_type::i64) == at::kLong));
  CHECK_THROWS_AS(scalar_type_of(element_type(9)), std::invalid_argument);
  try {
    element_type_of(at::kDouble);
    FAIL("a Double tensor has no element type");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("Double") != std::string::npos);
  }
}

TEST_CASE("weight dtypes by name are scalar types; other names fail naming the spellings") {
  CHECK((scalar_type_from_name("fp16") == at::kHalf));
  CHECK((scalar_type_from_name("bfloat16") == at::kBFloat16));
  CHECK_THROWS_WITH_AS(scalar_type_from_name("i64"), "dtype 'i64' is not one of fp32, fp16, bf16", std::runtime_error);
}
