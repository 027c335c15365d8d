#include "compute/dtype.hpp"

#include <doctest/doctest.h>

#include <cmath>

using namespace orrery::compute;

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

TEST_CASE("dtype names parse in both spellings") {
  CHECK(dtype_from_safetensors("BF16") == dtype::bf16);
  CHECK_FALSE(dtype_from_safetensors("I8").has_value());
  CHECK(dtype_from_name("bfloat16") == dtype::bf16);
  CHECK(dtype_from_name("fp16") == dtype::f16);
  CHECK_FALSE(dtype_from_name("int8").has_value());
  CHECK(dtype_size(dtype::f32) == 4);
  CHECK(dtype_size(dtype::bf16) == 2);
}
