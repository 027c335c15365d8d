#pragma once
// Transitional: the element types live in base/element_type.hpp as
// orrery::element_type. Only test/deploy/placement_test.cpp (being edited
// elsewhere) still includes this header and writes compute::dtype; delete
// this file once it includes base/element_type.hpp and writes element_type.

#include "base/element_type.hpp"

namespace orrery::compute {

using dtype = orrery::element_type;

}  // namespace orrery::compute
