#pragma once
// Streaming detokenisation: a token is a few bytes, often part of a UTF-8
// character (a byte tokenizer's always are), and a client streamed text (an
// HTTP event, a JSON string) must only ever get whole, valid characters.
// Bytes are held until their character is complete; a byte that cannot start
// or continue a character, or a character cut short, becomes U+FFFD, as a
// lossy UTF-8 decoder would render it.

#include <string>
#include <string_view>

namespace orrery::compute {

class utf8_stream {
 public:
  /// Takes `bytes` and returns the valid UTF-8 text now complete.
  std::string push(std::string_view bytes);
  /// Ends the stream: a character left incomplete comes back as U+FFFD.
  std::string finish();

 private:
  std::string pending_;  // the start of a character not yet complete
};

/// `bytes` as valid UTF-8: every malformed sequence becomes U+FFFD.
std::string valid_utf8(std::string_view bytes);

}  // namespace orrery::compute
