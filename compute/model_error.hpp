#pragma once
// The one error type compute/ throws for bad model input: a file that is not
// what it claims, a missing tensor, a config orrery cannot run, a prompt that
// does not fit. The message always names the file (or model) and the problem.

#include <stdexcept>
#include <string>

namespace orrery::compute {

class model_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace orrery::compute
