#include "messages/errors.hpp"

#include <caf/actor_system_config.hpp>
#include <caf/atom.hpp>
#include <caf/message.hpp>

namespace orrery {

const char* to_string(errc code) {
  switch (code) {
    case errc::invalid_request: return "invalid_request";
    case errc::not_ready: return "not_ready";
    case errc::model_mismatch: return "model_mismatch";
    case errc::load_failed: return "load_failed";
    case errc::unreachable: return "unreachable";
    case errc::no_capacity: return "no_capacity";
    case errc::request_failed: return "request_failed";
    case errc::profiling_failed: return "profiling_failed";
    case errc::cancelled: return "cancelled";
  }
  return "unknown";
}

caf::error make_error(errc code, std::string text) {
  return caf::error{static_cast<std::uint8_t>(code), caf::atom("orrery"), caf::make_message(std::move(text))};
}

std::string error_text_of(const caf::error& e) {
  if (e.category() != caf::atom("orrery") || !e.context().match_elements<std::string>()) return {};
  return e.context().get_as<std::string>(0);
}

void add_error_category(caf::actor_system_config& cfg) {
  cfg.add_error_category(caf::atom("orrery"), [](std::uint8_t code, caf::atom_value, const caf::message& context) {
    const auto text = context.match_elements<std::string>() ? context.get_as<std::string>(0) : caf::to_string(context);
    return std::string(to_string(static_cast<errc>(code))) + ": " + text;
  });
}

}  // namespace orrery
