#include "compute/text/utf8_stream.hpp"

namespace orrery::compute {

namespace {

constexpr std::string_view replacement = "\xEF\xBF\xBD";

// The length of the character `lead` starts, 0 if it starts none.
int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;  // a continuation byte, an overlong lead (C0, C1) or past U+10FFFF
}

// Whether `byte` may follow the bytes of a character before it, at index `i`
// (RFC 3629's table: the second byte's range depends on the lead, which keeps
// out overlong forms, surrogates and code points past U+10FFFF).
bool continues(unsigned char lead, std::size_t i, unsigned char byte) {
  if (i == 1) {
    if (lead == 0xE0) return byte >= 0xA0 && byte <= 0xBF;
    if (lead == 0xED) return byte >= 0x80 && byte <= 0x9F;
    if (lead == 0xF0) return byte >= 0x90 && byte <= 0xBF;
    if (lead == 0xF4) return byte >= 0x80 && byte <= 0x8F;
  }
  return byte >= 0x80 && byte <= 0xBF;
}

}  // namespace

std::string utf8_stream::push(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    const auto byte = static_cast<unsigned char>(c);
    if (!pending_.empty()) {
      const auto lead = static_cast<unsigned char>(pending_[0]);
      if (continues(lead, pending_.size(), byte)) {
        pending_.push_back(c);
        if (static_cast<int>(pending_.size()) == sequence_length(lead)) {
          out += pending_;
          pending_.clear();
        }
        continue;
      }
      out += replacement;  // cut short: this byte starts afresh
      pending_.clear();
    }
    const int length = sequence_length(byte);
    if (length == 1)
      out.push_back(c);
    else if (length == 0)
      out += replacement;
    else
      pending_.push_back(c);
  }
  return out;
}

std::string utf8_stream::finish() {
  if (pending_.empty()) return {};
  pending_.clear();
  return std::string(replacement);
}

std::string valid_utf8(std::string_view bytes) {
  utf8_stream stream;
  auto text = stream.push(bytes);
  return text + stream.finish();
}

}  // namespace orrery::compute
