#include "base/element_type.hpp"

#include <cmath>
#include <cstring>

namespace orrery {

std::size_t element_size(element_type type) {
  switch (type) {
    case element_type::f32:
    case element_type::i32:
      return 4;
    case element_type::f16:
    case element_type::bf16:
      return 2;
    case element_type::i64:
      return 8;
  }
  return 0;
}

const char* to_string(element_type type) {
  switch (type) {
    case element_type::f32: return "f32";
    case element_type::f16: return "f16";
    case element_type::bf16: return "bf16";
    case element_type::i64: return "i64";
    case element_type::i32: return "i32";
  }
  return "unknown";
}

std::string_view safetensors_name(element_type type) {
  switch (type) {
    case element_type::f32: return "F32";
    case element_type::f16: return "F16";
    case element_type::bf16: return "BF16";
    case element_type::i64: return "I64";
    case element_type::i32: return "I32";
  }
  return "?";
}

std::optional<element_type> element_type_from_safetensors(std::string_view name) {
  if (name == "F32") return element_type::f32;
  if (name == "F16") return element_type::f16;
  if (name == "BF16") return element_type::bf16;
  return std::nullopt;
}

std::optional<element_type> element_type_from_name(std::string_view name) {
  if (name == "fp32" || name == "float32" || name == "f32") return element_type::f32;
  if (name == "fp16" || name == "float16" || name == "f16") return element_type::f16;
  if (name == "bf16" || name == "bfloat16") return element_type::bf16;
  return std::nullopt;
}

element_type default_element_type(std::string_view device) {
  return device == "cpu" ? element_type::f32 : element_type::bf16;
}

std::string_view dtype_name(element_type type) {
  switch (type) {
    case element_type::f32: return "fp32";
    case element_type::f16: return "fp16";
    case element_type::bf16: return "bf16";
    case element_type::i64:
    case element_type::i32:
      return to_string(type);
  }
  return "?";
}

std::string dtype_name_or_default(std::string_view given, std::string_view device) {
  return std::string(!given.empty() ? given : dtype_name(default_element_type(device)));
}

std::string_view torch_dtype_name(element_type type) {
  switch (type) {
    case element_type::f32: return "float32";
    case element_type::f16: return "float16";
    case element_type::bf16: return "bfloat16";
    case element_type::i64: return "int64";
    case element_type::i32: return "int32";
  }
  return "?";
}

namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

float float_of(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

}  // namespace

std::uint16_t float_to_bf16(float x) {
  std::uint32_t u = bits_of(x);
  if (std::isnan(x)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<std::uint16_t>(u >> 16);
}

float bf16_to_float(std::uint16_t x) {
  return float_of(static_cast<std::uint32_t>(x) << 16);
}

std::uint16_t float_to_f16(float x) {
  std::uint32_t u = bits_of(x);
  std::uint32_t sign = (u >> 16) & 0x8000;
  u &= 0x7fffffff;
  if (u >= 0x7f800000)  // inf or nan
    return static_cast<std::uint16_t>(sign | 0x7c00 | (u > 0x7f800000 ? 0x200 : 0));
  if (u >= 0x477ff000)  // rounds to beyond the largest half: inf
    return static_cast<std::uint16_t>(sign | 0x7c00);
  if (u < 0x38800000) {  // subnormal half (or zero): scale by 2^24 and round
    float scaled = float_of(u) * 16777216.0f;
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::nearbyint(scaled)));
  }
  std::uint32_t mantissa_rounding = 0xfff + ((u >> 13) & 1);
  u = (u - 0x38000000 + mantissa_rounding) >> 13;
  return static_cast<std::uint16_t>(sign | u);
}

float f16_to_float(std::uint16_t x) {
  std::uint32_t sign = static_cast<std::uint32_t>(x & 0x8000) << 16;
  std::uint32_t exponent = (x >> 10) & 0x1f;
  std::uint32_t mantissa = x & 0x3ff;
  if (exponent == 0) {
    float value = static_cast<float>(mantissa) / 16777216.0f;
    return sign ? -value : value;
  }
  if (exponent == 31) return float_of(sign | 0x7f800000 | (mantissa << 13));
  return float_of(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace orrery
