#pragma once
// The element types orrery knows, in one enum for every folder: weights in
// model files (f32, f16, bf16) and tensors on the data plane (those and the
// integer types of token ids). Torch-free, CAF-free and Cap'n Proto-free, so
// file handling and the wire format compile in seconds; the external
// spellings convert in one place each: at::ScalarType in
// compute/scalar_type.hpp, frame.capnp's ElementType in messages/frame.cpp.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace orrery {

/// Element type of a tensor: a model's weights or a data-plane frame's tensor.
enum class element_type : std::uint8_t { f32, f16, bf16, i64, i32 };

/// Bytes per element of `type`.
std::size_t element_size(element_type type);

/// The short spelling: "f32", "f16", "bf16", "i64", "i32".
const char* to_string(element_type type);

/// The safetensors spelling: "F32", "F16", "BF16", "I64", "I32".
std::string_view safetensors_name(element_type type);

/// Parses a safetensors dtype string; nullopt for types orrery does not load
/// as weights (all but F32, F16, BF16).
std::optional<element_type> element_type_from_safetensors(std::string_view name);

/// Parses a weight dtype as a user or an HF config names it:
/// "fp32"/"float32"/"f32", "fp16"/"float16"/"f16", "bf16"/"bfloat16";
/// nullopt otherwise (the integer types are no weight dtype).
std::optional<element_type> element_type_from_name(std::string_view name);

/// What a device computes in unless told otherwise: fp32 on `cpu` (orrery's
/// CPU kernels are fp32), bf16 on a GPU.
element_type default_element_type(std::string_view device);

/// The user-facing spelling (`--dtype`, a topology's `dtype:`): "fp32",
/// "fp16", "bf16"; the integer types, which are no weight dtype, as to_string.
std::string_view dtype_name(element_type type);

/// A `--dtype` as given, or when empty the dtype_name of `device`'s
/// default_element_type.
std::string dtype_name_or_default(std::string_view given, std::string_view device);

/// The HF config spelling (`torch_dtype`): "float32", "float16", "bfloat16",
/// "int64", "int32".
std::string_view torch_dtype_name(element_type type);

/// Rounds to nearest even, as torch does for float -> bfloat16.
std::uint16_t float_to_bf16(float x);
float bf16_to_float(std::uint16_t x);

/// IEEE 754 binary16, round to nearest even.
std::uint16_t float_to_f16(float x);
float f16_to_float(std::uint16_t x);

}  // namespace orrery
