#pragma once
// orrery's element types as libtorch's: the one conversion between
// orrery::element_type (base/element_type.hpp) and at::ScalarType, both ways,
// for weights (compute) and data-plane tensors (actors) alike.

#include <c10/core/ScalarType.h>

#include <string>

#include "base/element_type.hpp"

namespace orrery::compute {

/// The libtorch scalar type of `type`; throws std::invalid_argument for a
/// value outside the enum.
at::ScalarType scalar_type_of(element_type type);

/// The element type of `type`; throws std::invalid_argument naming it for a
/// scalar type orrery has none for (all but Float, Half, BFloat16, Long, Int).
element_type element_type_of(at::ScalarType type);

/// A weight dtype as the user names it (`fp32`, `fp16`, `bf16`, or another
/// spelling element_type_from_name takes) as a scalar type; throws
/// std::runtime_error naming the accepted spellings otherwise.
at::ScalarType scalar_type_from_name(const std::string& name);

}  // namespace orrery::compute
