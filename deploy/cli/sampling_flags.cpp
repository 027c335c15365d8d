#include "deploy/cli/sampling_flags.hpp"

#include <CLI/CLI.hpp>

#include "deploy/cli/flag_checks.hpp"

namespace orrery::deploy {

void add_sampling_flags(CLI::App& command, compute::sampling_params& params) {
  command.add_option("--temperature", params.temperature, "Sampling temperature; 0 is greedy")
      ->capture_default_str()
      ->check(at_least(0.0f));
  command.add_option("--top-k", params.top_k, "Sample among the k most likely tokens; 0 keeps all")
      ->capture_default_str()
      ->check(at_least(0));
  command.add_option("--top-p", params.top_p, "Sample from the smallest set of tokens whose probability reaches p")
      ->capture_default_str()
      ->check(in_interval(0.0f, std::optional<float>(1.0f), false));
  command.add_option("--repetition-penalty", params.repetition_penalty,
                     "Divide positive (multiply negative) logits of tokens already present; 1 is off")
      ->capture_default_str()
      ->check(above(0.0f));
  command.add_option("--seed", params.seed, "Seed of the sampler: the same seed gives the same tokens")
      ->capture_default_str()
      ->check(at_least<std::uint64_t>(0));
}

}  // namespace orrery::deploy
