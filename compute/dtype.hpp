#pragma once
// Element types of model files. Kept torch-free so file handling compiles in
// seconds; compute code maps them to at::ScalarType where it needs tensors.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace orrery::compute {

enum class dtype { f32, f16, bf16 };

/// Bytes per element.
std::size_t dtype_size(dtype t);

/// The safetensors spelling: "F32", "F16", "BF16".
std::string_view safetensors_name(dtype t);

/// Parses a safetensors dtype string; nullopt for types orrery does not load.
std::optional<dtype> dtype_from_safetensors(std::string_view name);

/// Parses a user-facing name: "fp32"/"float32", "fp16"/"float16", "bf16"/"bfloat16".
std::optional<dtype> dtype_from_name(std::string_view name);

/// What a device computes in unless told otherwise: fp32 on `cpu` (orrery's
/// CPU kernels are fp32), bf16 on a GPU.
dtype default_dtype(std::string_view device);

/// A `--dtype` as given, or when empty the name of `device`'s default_dtype.
std::string dtype_name_or_default(std::string_view given, std::string_view device);

/// The user-facing spelling: "fp32", "fp16", "bf16".
std::string_view dtype_name(dtype t);

/// The HF config spelling (`torch_dtype`): "float32", "float16", "bfloat16".
std::string_view torch_dtype_name(dtype t);

/// Rounds to nearest even, as torch does for float -> bfloat16.
std::uint16_t float_to_bf16(float x);
float bf16_to_float(std::uint16_t x);

/// IEEE 754 binary16, round to nearest even.
std::uint16_t float_to_f16(float x);
float f16_to_float(std::uint16_t x);

}  // namespace orrery::compute
