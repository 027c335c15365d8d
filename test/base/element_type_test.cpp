#include "base/element_type.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <string>

using namespace orrery;

TEST_CASE("bf16 and f16 conversions round to nearest even and invert exactly on representable values") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_f16(1.0f) == 0x3c00);
  CHECK(float_to_f16(-2.0f) == 0xc000);
  CHECK(float_to_f16(65504.0f) == 0x7bff);
  CHECK(float_to_f16(1e6f) == 0x7c00);                     // overflow -> inf
  CHECK(f16_to_float(0x0001) == doctest::Approx(5.9604645e-8));  // smallest subnormal
  // 1 + 2^-8 lies exactly between two bf16 values: ties go to the even one.
  CHECK(float_to_bf16(1.00390625f) == 0x3f80);
  CHECK(float_to_bf16(1.01171875f) == 0x3f82);
  for (float x : {0.0f, 0.5f, -3.25f, 1024.0f, 0.000244140625f}) {
    CHECK(bf16_to_float(float_to_bf16(x)) == x);
    CHECK(f16_to_float(float_to_f16(x)) == x);
  }
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  CHECK(std::isnan(f16_to_float(float_to_f16(std::nanf("")))));
}

TEST_CASE("weight dtypes parse in both spellings, and only the float types") {
  CHECK(element_type_from_safetensors("BF16") == element_type::bf16);
  CHECK_FALSE(element_type_from_safetensors("I8").has_value());
  CHECK_FALSE(element_type_from_safetensors("I64").has_value());
  CHECK(element_type_from_name("bfloat16") == element_type::bf16);
  CHECK(element_type_from_name("fp16") == element_type::f16);
  CHECK_FALSE(element_type_from_name("int8").has_value());
  CHECK_FALSE(element_type_from_name("i64").has_value());
  for (auto type : {element_type::f32, element_type::f16, element_type::bf16}) {
    CHECK(element_type_from_name(dtype_name(type)) == type);
    CHECK(element_type_from_name(torch_dtype_name(type)) == type);
    CHECK(element_type_from_safetensors(safetensors_name(type)) == type);
  }
  CHECK(default_element_type("cpu") == element_type::f32);
  CHECK(default_element_type("cuda:0") == element_type::bf16);
  CHECK(dtype_name_or_default("", "cuda:1") == "bf16");
  CHECK(dtype_name_or_default("fp16", "cpu") == "fp16");
}

TEST_CASE("element sizes and short names cover every element type") {
  CHECK(element_size(element_type::f32) == 4);
  CHECK(element_size(element_type::f16) == 2);
  CHECK(element_size(element_type::bf16) == 2);
  CHECK(element_size(element_type::i64) == 8);
  CHECK(element_size(element_type::i32) == 4);
  CHECK(std::string(to_string(element_type::bf16)) == "bf16");
  CHECK(std::string(to_string(element_type::i64)) == "i64");
}
