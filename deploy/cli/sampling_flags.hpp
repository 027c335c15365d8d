#pragma once
// The sampling flags shared by every command that generates.

#include "compute/sampler.hpp"

namespace CLI {
class App;
}

namespace orrery::deploy {

/// Adds --temperature, --top-k, --top-p, --repetition-penalty and --seed,
/// writing into `params` (which must outlive parsing).
void add_sampling_flags(CLI::App& command, compute::sampling_params& params);

}  // namespace orrery::deploy
