#pragma once
// A model on this machine alone, shared by `orrery model init` and `orrery
// generate --model`: create one with progress shown, load
// it whole as one shard, stream generated tokens, print the timings.

#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "compute/generation.hpp"
#include "compute/llama_config.hpp"

namespace CLI {
class App;
}

namespace orrery::deploy {

/// Where and in what a model runs on this machine (`--device`, `--dtype`,
/// `--threads`).
struct local_device {
  std::string device = "cpu";
  /// Empty: fp32 on a CPU, bf16 on a GPU.
  std::string dtype;
  int threads = 1;

  /// `dtype`, or the device's default when empty.
  std::string resolved_dtype() const;
};

/// Adds --device, --dtype and --threads to a command that runs a model here.
void add_device_flags(CLI::App& command, local_device& where);

/// Throws naming --device or --dtype when this machine cannot run a model
/// there in that dtype (fp16 on a CPU whose libtorch has no fp16 matmul).
void check_runs_here(const local_device& where);

/// Checks the request against the model before anything is printed, then
/// streams the prompt and the generated text to `text` (ending it with a
/// newline) and writes one line of figures to `figures`: prefill ms, decode
/// ms/token, tokens/s, KV cache bytes. Apart, so that `orrery generate … >
/// out.txt` holds the text alone.
compute::generation_result generate_locally(const std::filesystem::path& model, const compute::generation_request& request,
                                            const local_device& where, std::ostream& text, std::ostream& figures);

/// `orrery model score`: the logits of every position of `ids` (float32,
/// [ids, vocab], written raw to `logits_file` unless it is empty) and then
/// `greedy_steps` greedily decoded tokens, for comparisons with other
/// implementations. Returns what was computed as JSON.
nlohmann::json score_locally(const std::filesystem::path& model, const local_device& where,
                             const std::vector<std::int64_t>& ids, int greedy_steps,
                             const std::filesystem::path& logits_file);

/// Writes a random-initialised model into `dir`, showing progress on stderr.
/// `tokenizer_from`: a directory whose tokenizer files the model gets
/// (empty: the byte tokenizer).
void create_model(const std::filesystem::path& dir, const compute::llama_config& config, std::uint64_t seed,
                  std::uint64_t max_file_bytes, const std::filesystem::path& tokenizer_from = {});

}  // namespace orrery::deploy
