#pragma once
// The OpenAI HTTP API's requests and answers, apart from the server that
// carries them: a request body checked field by field against the served
// model (every refusal an api_error naming the field, shaped as OpenAI's
// errors are), stop strings found in streamed text, and the JSON of
// completions, chat completions and their stream chunks.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "compute/sampler.hpp"
#include "compute/text/tokenizer.hpp"
#include "deploy/serving/chat_template.hpp"

namespace orrery::deploy {

/// A request refused: the HTTP status and OpenAI's error object (message,
/// type, param: the field at fault, code).
struct api_error : std::runtime_error {
  api_error(int status, const std::string& message, std::string param = {}, std::string code = {},
            std::string type = "invalid_request_error");
  int status;
  std::string param, code, type;
};

/// {"error": {"message", "type", "param", "code"}} (null where empty).
nlohmann::json error_json(const api_error& e);

/// The JSON text of `j`; malformed UTF-8 (none should reach here) becomes
/// U+FFFD rather than an exception.
std::string json_text(const nlohmann::json& j);

/// What requests are checked against.
struct served_model {
  std::string id;
  int context = 0;  ///< positions, BOS and generated tokens included
  const compute::tokenizer* tokenizer = nullptr;
  chat_template chat;
};

enum class endpoint { completions, chat };

/// A request as the pipeline runs it.
struct completion_request {
  endpoint kind = endpoint::completions;
  std::string prompt;  ///< a chat's after its template
  std::size_t prompt_tokens = 0;  ///< BOS included
  int max_tokens = 16;
  compute::sampling_params sampling;
  std::vector<std::string> stop;
  bool stream = false;
  /// stream_options.include_usage: a last chunk with the usage counts.
  bool stream_usage = false;
};

/// Up to this many stop strings, as OpenAI allows.
inline constexpr std::size_t max_stop_strings = 4;

/// Parses and checks a request body for `kind`. Defaults as OpenAI's:
/// temperature 1, top_p 1; max_tokens 16 for completions, the rest of the
/// context for chat; a random seed unless `seed` is given. top_k and
/// repetition_penalty are accepted too (llama.cpp's server takes them).
/// Throws api_error: malformed JSON (where), a field of the wrong type or
/// out of range (which), an unknown model (404), a prompt or max_tokens
/// that does not fit the context (both figures), and fields that would
/// change the answer in ways orrery does not do (n > 1, logprobs, echo,
/// presence or frequency penalties, tools).
completion_request parse_request(endpoint kind, std::string_view body, const served_model& model);

/// Finds stop strings in text that arrives in pieces: what push() returns
/// can be shown; the end of the text that could still become a stop string
/// is held back until it cannot.
class stop_matcher {
 public:
  explicit stop_matcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  /// The text that may be shown now; once a stop string appears, the text
  /// before it, and stopped() holds.
  std::string push(std::string_view text);
  /// The text held back, at the end of a stream that did not stop.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

struct usage_counts {
  std::size_t prompt = 0, completion = 0;
};

nlohmann::json usage_json(const usage_counts& usage);

/// The whole answer of a request that did not stream.
nlohmann::json completion_json(const completion_request& request, const std::string& id, std::int64_t created,
                               const std::string& model, const std::string& text, const std::string& finish_reason,
                               const usage_counts& usage);

/// One chunk of a streamed answer: `text` (for chat, the delta's content;
/// the first chunk also names the role), and the finish reason on the last
/// (empty: null).
nlohmann::json chunk_json(const completion_request& request, const std::string& id, std::int64_t created,
                          const std::string& model, const std::string& text, const std::string& finish_reason,
                          bool first);

/// The usage chunk that closes a stream with include_usage (no choices).
nlohmann::json usage_chunk_json(const completion_request& request, const std::string& id, std::int64_t created,
                                const std::string& model, const usage_counts& usage);

}  // namespace orrery::deploy
