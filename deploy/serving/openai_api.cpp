#include "deploy/serving/openai_api.hpp"

#include <algorithm>
#include <limits>
#include <random>

#include "compute/generation.hpp"

namespace orrery::deploy {

api_error::api_error(int status, const std::string& message, std::string param, std::string code, std::string type)
    : std::runtime_error(message), status(status), param(std::move(param)), code(std::move(code)), type(std::move(type)) {}

nlohmann::json error_json(const api_error& e) {
  auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json(nullptr) : nlohmann::json(s); };
  return {{"error", {{"message", e.what()}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
}

std::string json_text(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

namespace {

using json = nlohmann::json;

api_error bad_field(const std::string& field, const std::string& problem) {
  return api_error(400, "'" + field + "' " + problem, field);
}

// `field` of `body` as a number in [low, high], or `fallback` when absent or null.
double number_field(const json& body, const char* field, double fallback, double low, double high) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number()) throw bad_field(field, "must be a number, got " + json_text(*it));
  const double v = it->get<double>();
  if (!(v >= low && v <= high))
    throw bad_field(field, "must be between " + json_text(low) + " and " + json_text(high) + ", got " + json_text(*it));
  return v;
}

// `field` as an integer in [low, high], or `fallback`.
std::int64_t integer_field(const json& body, const char* field, std::int64_t fallback, std::int64_t low, std::int64_t high) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) throw bad_field(field, "must be an integer, got " + json_text(*it));
  // nlohmann keeps a non-negative integer unsigned: both bounds on both kinds.
  const bool outside = it->is_number_unsigned()
                           ? it->get<std::uint64_t>() > static_cast<std::uint64_t>(high) ||
                                 static_cast<std::int64_t>(it->get<std::uint64_t>()) < low
                           : it->get<std::int64_t>() < low || it->get<std::int64_t>() > high;
  if (outside)
    throw bad_field(field, "must be between " + std::to_string(low) + " and " + std::to_string(high) + ", got " + json_text(*it));
  return it->get<std::int64_t>();
}

bool bool_field(const json& body, const char* field, bool fallback) {
  const auto it = body.find(field);
  if (it == body.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw bad_field(field, "must be true or false, got " + json_text(*it));
  return it->get<bool>();
}

std::string completion_prompt(const json& body) {
  const auto it = body.find("prompt");
  if (it == body.end() || it->is_null()) throw bad_field("prompt", "is required");
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array() && it->size() == 1 && (*it)[0].is_string()) return (*it)[0].get<std::string>();
  throw bad_field("prompt", "must be a string (or a list of one string): orrery serves one prompt a request");
}

std::vector<chat_message> chat_messages(const json& body) {
  const auto it = body.find("messages");
  if (it == body.end() || it->is_null()) throw bad_field("messages", "is required");
  if (!it->is_array() || it->empty()) throw bad_field("messages", "must be a non-empty list of messages");
  std::vector<chat_message> out;
  for (std::size_t i = 0; i < it->size(); ++i) {
    const auto& m = (*it)[i];
    const auto at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad_field(at, "must be an object with 'role' and 'content'");
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) throw bad_field(at + ".role", "is required (system, user or assistant)");
    std::string r = role->get<std::string>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system turn
    if (r != "system" && r != "user" && r != "assistant")
      throw bad_field(at + ".role", "must be system, user or assistant, got '" + role->get<std::string>() + "'");
    const auto content = m.find("content");
    std::string text;
    if (content == m.end() || content->is_null()) {
      throw bad_field(at + ".content", "is required");
    } else if (content->is_string()) {
      text = content->get<std::string>();
    } else if (content->is_array()) {
      for (const auto& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw bad_field(at + ".content", "parts must be {\"type\": \"text\", \"text\": ...}: orrery's models read text only");
        text += part["text"].get<std::string>();
      }
    } else {
      throw bad_field(at + ".content", "must be a string or a list of text parts");
    }
    out.push_back({r, text});
  }
  return out;
}

std::vector<std::string> stop_strings(const json& body) {
  const auto it = body.find("stop");
  if (it == body.end() || it->is_null()) return {};
  std::vector<std::string> out;
  if (it->is_string()) {
    out.push_back(it->get<std::string>());
  } else if (it->is_array()) {
    for (const auto& s : *it) {
      if (!s.is_string()) throw bad_field("stop", "must be a string or a list of strings");
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad_field("stop", "must be a string or a list of strings");
  }
  if (out.size() > max_stop_strings) throw bad_field("stop", "may hold at most " + std::to_string(max_stop_strings) + " strings");
  if (std::any_of(out.begin(), out.end(), [](const std::string& s) { return s.empty(); }))
    throw bad_field("stop", "may not hold an empty string");
  return out;
}

// Fields that would change the answer in ways orrery does not do: refused
// rather than silently ignored.
void refuse_unsupported(const json& body) {
  auto set = [&](const char* field) {
    const auto it = body.find(field);
    // false, 0, {} and [] ask for nothing (clients send them by default).
    return it != body.end() && !it->is_null() && !(it->is_boolean() && !it->get<bool>()) &&
           !(it->is_number() && it->get<double>() == 0) && !(it->is_structured() && it->empty());
  };
  if (integer_field(body, "n", 1, 1, 1 << 20) != 1) throw bad_field("n", "must be 1: orrery writes one choice a request");
  if (integer_field(body, "best_of", 1, 1, 1 << 20) != 1) throw bad_field("best_of", "must be 1");
  for (const char* field : {"logprobs", "top_logprobs", "echo", "suffix", "tools", "functions", "logit_bias"})
    if (set(field)) throw bad_field(field, "is not supported by orrery");
  for (const char* field : {"presence_penalty", "frequency_penalty"})
    if (set(field)) throw bad_field(field, "is not supported by orrery (its repetition_penalty is HF's)");
  const auto format = body.find("response_format");
  if (format != body.end() && !format->is_null() && !(format->is_object() && format->value("type", "") == "text"))
    throw bad_field("response_format", "must be {\"type\": \"text\"}: orrery does not constrain its output");
}

}  // namespace

completion_request parse_request(endpoint kind, std::string_view body_text, const served_model& model) {
  json body;
  try {
    body = json::parse(body_text.begin(), body_text.end());
  } catch (const json::parse_error& e) {
    throw api_error(400, "the request body is not valid JSON (at byte " + std::to_string(e.byte) + "): " + e.what());
  }
  if (!body.is_object()) throw api_error(400, "the request body must be a JSON object");
  const auto name = body.find("model");
  if (name == body.end() || !name->is_string()) throw bad_field("model", "is required (GET /v1/models lists it)");
  if (name->get<std::string>() != model.id)
    throw api_error(404, "the model '" + name->get<std::string>() + "' does not exist here; this server serves '" + model.id + "'",
                    "model", "model_not_found");
  refuse_unsupported(body);

  completion_request r;
  r.kind = kind;
  const char* prompt_field = kind == endpoint::chat ? "messages" : "prompt";
  r.prompt = kind == endpoint::chat ? model.chat.render(chat_messages(body)) : completion_prompt(body);
  r.prompt_tokens = compute::prompt_tokens(*model.tokenizer, r.prompt).size();
  const auto context = static_cast<std::size_t>(model.context);
  if (r.prompt_tokens >= context)
    throw api_error(400,
                    "the prompt is " + std::to_string(r.prompt_tokens) + " tokens (with BOS), but the model's context is " +
                        std::to_string(context) + " tokens, which leaves no room for one generated token",
                    prompt_field, "context_length_exceeded");
  const auto room = static_cast<std::int64_t>(context - r.prompt_tokens);
  const char* tokens_field = kind == endpoint::chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const std::int64_t fallback = kind == endpoint::chat ? room : std::min<std::int64_t>(16, room);
  const auto max_tokens = integer_field(body, tokens_field, fallback, 1, std::numeric_limits<std::int32_t>::max());
  if (max_tokens > room)
    throw api_error(400,
                    "'" + std::string(tokens_field) + "' is " + std::to_string(max_tokens) + ", but the prompt's " +
                        std::to_string(r.prompt_tokens) + " tokens (with BOS) leave room for " + std::to_string(room) +
                        " in the model's context of " + std::to_string(context),
                    tokens_field, "context_length_exceeded");
  r.max_tokens = static_cast<int>(max_tokens);

  r.sampling.temperature = static_cast<float>(number_field(body, "temperature", 1.0, 0.0, 2.0));
  r.sampling.top_p = static_cast<float>(number_field(body, "top_p", 1.0, 0.0, 1.0));
  if (r.sampling.top_p == 0.0f) throw bad_field("top_p", "must be above 0");
  r.sampling.top_k = static_cast<int>(integer_field(body, "top_k", 0, 0, std::numeric_limits<std::int32_t>::max()));
  r.sampling.repetition_penalty = static_cast<float>(number_field(body, "repetition_penalty", 1.0, 0.01, 100.0));
  static thread_local std::mt19937_64 entropy{std::random_device{}()};
  const auto seed = body.find("seed");
  if (seed != body.end() && !seed->is_null()) {
    if (!seed->is_number_integer()) throw bad_field("seed", "must be an integer, got " + json_text(*seed));
    r.sampling.seed = seed->is_number_unsigned() ? seed->get<std::uint64_t>() : static_cast<std::uint64_t>(seed->get<std::int64_t>());
  } else {
    r.sampling.seed = entropy();
  }
  r.stop = stop_strings(body);
  r.stream = bool_field(body, "stream", false);
  const auto options = body.find("stream_options");
  if (options != body.end() && !options->is_null()) {
    if (!options->is_object()) throw bad_field("stream_options", "must be an object");
    if (!r.stream) throw bad_field("stream_options", "is only allowed with \"stream\": true");
    r.stream_usage = bool_field(*options, "include_usage", false);
  }
  return r;
}

std::string stop_matcher::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);
  std::size_t first = std::string::npos;
  for (const auto& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    auto out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest end of the text that begins a stop string.
  std::size_t keep = 0;
  for (const auto& s : stops_)
    for (std::size_t l = std::min(s.size() - 1, held_.size()); l > keep; --l)
      if (held_.compare(held_.size() - l, l, s, 0, l) == 0) {
        keep = l;
        break;
      }
  auto out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string stop_matcher::finish() { return stopped_ ? std::string() : std::exchange(held_, {}); }

nlohmann::json usage_json(const usage_counts& u) {
  return {{"prompt_tokens", u.prompt}, {"completion_tokens", u.completion}, {"total_tokens", u.prompt + u.completion}};
}

namespace {

json finish_value(const std::string& reason) { return reason.empty() ? json(nullptr) : json(reason); }

}  // namespace

nlohmann::json completion_json(const completion_request& request, const std::string& id, std::int64_t created,
                               const std::string& model, const std::string& text, const std::string& finish_reason,
                               const usage_counts& usage) {
  json choice = {{"index", 0}, {"finish_reason", finish_value(finish_reason)}, {"logprobs", nullptr}};
  if (request.kind == endpoint::chat)
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  else
    choice["text"] = text;
  return {{"id", id},
          {"object", request.kind == endpoint::chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})},
          {"usage", usage_json(usage)}};
}

nlohmann::json chunk_json(const completion_request& request, const std::string& id, std::int64_t created,
                          const std::string& model, const std::string& text, const std::string& finish_reason, bool first) {
  json choice = {{"index", 0}, {"finish_reason", finish_value(finish_reason)}, {"logprobs", nullptr}};
  if (request.kind == endpoint::chat) {
    json delta = json::object();
    if (first) delta["role"] = "assistant";
    if (!text.empty() || finish_reason.empty()) delta["content"] = text;
    choice["delta"] = delta;
  } else {
    choice["text"] = text;
  }
  return {{"id", id},
          {"object", request.kind == endpoint::chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({choice})}};
}

nlohmann::json usage_chunk_json(const completion_request& request, const std::string& id, std::int64_t created,
                                const std::string& model, const usage_counts& usage) {
  return {{"id", id},
          {"object", request.kind == endpoint::chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace orrery::deploy
