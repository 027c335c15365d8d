// The OpenAI API's pieces apart from the HTTP server: request bodies checked
// field by field (defaults, and every refusal's status and field), stop
// strings found in streamed text, streamed bytes turned into whole UTF-8
// characters, and chat templates recognised from tokenizer_config.json.

#include <doctest/doctest.h>

#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "compute/text/tokenizer.hpp"
#include "compute/text/utf8_stream.hpp"
#include "deploy/serving/chat_template.hpp"
#include "deploy/serving/openai_api.hpp"
#include "test/temp_dir.hpp"

using orrery::compute::byte_tokenizer;
using orrery::compute::utf8_stream;
using orrery::compute::valid_utf8;
using orrery::deploy::api_error;
using orrery::deploy::chat_message;
using orrery::deploy::chat_template;
using orrery::deploy::completion_request;
using orrery::deploy::endpoint;
using orrery::deploy::parse_request;
using orrery::deploy::served_model;
using orrery::deploy::stop_matcher;
using orrery::test::temp_dir;
namespace fs = std::filesystem;

namespace {

// U+FFFD, as utf8_stream writes it.
const std::string replacement = "\xEF\xBF\xBD";

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A model "m" of 64 positions over the byte tokenizer (one token a byte, and
// BOS), with the plain chat template.
const byte_tokenizer tok{};
const served_model model{"m", 64, &tok, chat_template()};

completion_request parse(std::string_view body, endpoint kind = endpoint::completions) {
  return parse_request(kind, body, model);
}

// The api_error parse_request throws for `body`, none if it accepts it.
std::optional<api_error> refusal(std::string_view body, endpoint kind = endpoint::completions) {
  try {
    parse_request(kind, body, model);
  } catch (const api_error& e) {
    return e;
  }
  return std::nullopt;
}

// A completions request for prompt "hi" with `fields` added ("" for none).
std::string completion_body(const std::string& fields) {
  return R"({"model": "m", "prompt": "hi")" + (fields.empty() ? "" : ", " + fields) + "}";
}

// A chat request of one user message "Hi" with `fields` added.
std::string chat_body(const std::string& fields) {
  return R"({"model": "m", "messages": [{"role": "user", "content": "Hi"}])" + (fields.empty() ? "" : ", " + fields) + "}";
}

// Checks that `body` is refused with `status`, naming `param`.
void check_refused(const std::string& body, int status, const std::string& param, endpoint kind = endpoint::completions) {
  INFO("body: " << body);
  const auto e = refusal(body, kind);
  REQUIRE_MESSAGE(e.has_value(), "the body was accepted");
  CHECK(e->status == status);
  CHECK(e->param == param);
  CHECK(e->type == "invalid_request_error");
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  REQUIRE_MESSAGE(out, "cannot write " << path);
  out << text;
}

// chat_template::for_model on a directory whose tokenizer_config.json is `json`.
chat_template template_of(const std::string& json) {
  temp_dir dir;
  write_file(dir / "tokenizer_config.json", json);
  return chat_template::for_model(dir.path());
}

// A matcher for `stops` (a function, so a braced list of strings is a vector).
stop_matcher matcher(std::vector<std::string> stops) { return stop_matcher(std::move(stops)); }

const std::vector<chat_message> system_and_user = {{"system", "You are terse."}, {"user", "Hi"}};

}  // namespace

// ---------------------------------------------------------------------------
// parse_request

TEST_CASE("a completion request gets OpenAI's defaults: 16 tokens, temperature 1, top_p 1, no stop, no stream") {
  const auto r = parse(completion_body(""));
  CHECK(r.kind == endpoint::completions);
  CHECK(r.prompt == "hi");
  CHECK(r.prompt_tokens == 3);  // BOS + 2 bytes
  CHECK(r.max_tokens == 16);
  CHECK(r.sampling.temperature == 1.0f);
  CHECK(r.sampling.top_p == 1.0f);
  CHECK(r.sampling.top_k == 0);
  CHECK(r.sampling.repetition_penalty == 1.0f);
  CHECK(r.stop.empty());
  CHECK_FALSE(r.stream);
  CHECK_FALSE(r.stream_usage);
}

TEST_CASE("a completion's default max_tokens shrinks to the room the prompt leaves in the context") {
  const auto r = parse(R"({"model": "m", "prompt": ")" + std::string(60, 'a') + R"("})");
  CHECK(r.prompt_tokens == 61);
  CHECK(r.max_tokens == 3);
}

TEST_CASE("a chat request renders its messages with the template and defaults max_tokens to the rest of the context") {
  const auto r = parse(chat_body(""), endpoint::chat);
  CHECK(r.kind == endpoint::chat);
  CHECK(r.prompt == "user: Hi\nassistant:");
  CHECK(r.prompt_tokens == 20);  // BOS + 19 bytes
  CHECK(r.max_tokens == 64 - 20);
  CHECK(r.sampling.temperature == 1.0f);
  CHECK(r.sampling.top_p == 1.0f);
}

TEST_CASE("given sampling fields, max_tokens, stop strings and stream options are kept") {
  const auto r = parse(completion_body(
      R"("max_tokens": 61, "temperature": 0, "top_p": 0.5, "top_k": 40, "repetition_penalty": 1.3, "seed": 42,)"
      R"( "stop": ["a", "b", "c", "d"], "stream": true, "stream_options": {"include_usage": true})"));
  CHECK(r.max_tokens == 61);  // exactly the room left: 64 - 3
  CHECK(r.sampling.temperature == 0.0f);
  CHECK(r.sampling.top_p == 0.5f);
  CHECK(r.sampling.top_k == 40);
  CHECK(r.sampling.repetition_penalty == doctest::Approx(1.3));
  CHECK(r.sampling.seed == 42);
  CHECK(r.stop == std::vector<std::string>{"a", "b", "c", "d"});
  CHECK(r.stream);
  CHECK(r.stream_usage);
}

TEST_CASE("a single stop string and a one-string prompt list are read") {
  const auto r = parse(R"({"model": "m", "prompt": ["hello"], "stop": "\n"})");
  CHECK(r.prompt == "hello");
  CHECK(r.stop == std::vector<std::string>{"\n"});
}

TEST_CASE("a seed given is kept exactly; without one, requests get different seeds") {
  CHECK(parse(completion_body(R"("seed": 42)")).sampling.seed == 42);
  CHECK(parse(completion_body(R"("seed": 18446744073709551615)")).sampling.seed == 18446744073709551615ull);
  CHECK(parse(completion_body(R"("seed": -1)")).sampling.seed == 18446744073709551615ull);
  CHECK(parse(completion_body(R"("seed": null)")).sampling.seed != parse(completion_body("")).sampling.seed);
}

TEST_CASE("null fields take their defaults") {
  const auto r = parse(completion_body(R"("max_tokens": null, "temperature": null, "top_p": null, "stop": null, "stream": null)"));
  CHECK(r.max_tokens == 16);
  CHECK(r.sampling.temperature == 1.0f);
  CHECK(r.sampling.top_p == 1.0f);
  CHECK(r.stop.empty());
  CHECK_FALSE(r.stream);
}

TEST_CASE("malformed JSON is a 400 that says at which byte") {
  const auto e = refusal(R"({"model": "m", "prompt": )");
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(contains(e->what(), "byte"));
  CHECK(contains(e->what(), "not valid JSON"));
  CHECK(e->param.empty());
}

TEST_CASE("a body that is not an object, or has no model, is a 400") {
  const auto e = refusal("[1, 2]");
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  check_refused(R"({"prompt": "hi"})", 400, "model");
  check_refused(R"({"model": 7, "prompt": "hi"})", 400, "model");
}

TEST_CASE("an unknown model is a 404 naming param model with code model_not_found") {
  const auto e = refusal(R"({"model": "other", "prompt": "hi"})");
  REQUIRE(e.has_value());
  CHECK(e->status == 404);
  CHECK(e->param == "model");
  CHECK(e->code == "model_not_found");
  CHECK(contains(e->what(), "'other'"));
  CHECK(contains(e->what(), "'m'"));
  // The same for a chat.
  const auto chat = refusal(R"({"model": "other", "messages": [{"role": "user", "content": "Hi"}]})", endpoint::chat);
  REQUIRE(chat.has_value());
  CHECK(chat->status == 404);
  CHECK(chat->param == "model");
}

TEST_CASE("a field of the wrong type is a 400 naming the field and what was found") {
  check_refused(completion_body(R"("temperature": "hot")"), 400, "temperature");
  check_refused(completion_body(R"("top_p": "1")"), 400, "top_p");
  check_refused(completion_body(R"("max_tokens": 1.5)"), 400, "max_tokens");
  check_refused(completion_body(R"("max_tokens": "8")"), 400, "max_tokens");
  check_refused(completion_body(R"("top_k": 2.5)"), 400, "top_k");
  check_refused(completion_body(R"("seed": "x")"), 400, "seed");
  check_refused(completion_body(R"("seed": 1.5)"), 400, "seed");
  check_refused(completion_body(R"("stream": "yes")"), 400, "stream");
  check_refused(completion_body(R"("stop": 7)"), 400, "stop");
  check_refused(completion_body(R"("stop": ["a", 7])"), 400, "stop");
  check_refused(R"({"model": "m", "prompt": 5})", 400, "prompt");
  check_refused(R"({"model": "m", "prompt": ["a", "b"]})", 400, "prompt");
  check_refused(R"({"model": "m"})", 400, "prompt");
  check_refused(R"({"model": "m", "messages": "hi"})", 400, "messages", endpoint::chat);
  check_refused(R"({"model": "m", "messages": []})", 400, "messages", endpoint::chat);
  check_refused(R"({"model": "m", "messages": ["hi"]})", 400, "messages[0]", endpoint::chat);
  const auto e = refusal(completion_body(R"("temperature": "hot")"));
  REQUIRE(e.has_value());
  CHECK(contains(e->what(), "must be a number"));
  CHECK(contains(e->what(), "\"hot\""));
}

TEST_CASE("temperature, top_p and max_tokens out of range are 400s naming the field") {
  check_refused(completion_body(R"("temperature": 5)"), 400, "temperature");
  check_refused(completion_body(R"("temperature": 2.01)"), 400, "temperature");
  check_refused(completion_body(R"("temperature": -0.1)"), 400, "temperature");
  CHECK(parse(completion_body(R"("temperature": 2)")).sampling.temperature == 2.0f);
  check_refused(completion_body(R"("top_p": 1.5)"), 400, "top_p");
  check_refused(completion_body(R"("top_p": 0)"), 400, "top_p");
  check_refused(completion_body(R"("top_p": -0.5)"), 400, "top_p");
  check_refused(completion_body(R"("max_tokens": -1)"), 400, "max_tokens");
  check_refused(completion_body(R"("max_tokens": 100000)"), 400, "max_tokens");
  check_refused(completion_body(R"("max_tokens": 99999999999)"), 400, "max_tokens");
  check_refused(completion_body(R"("top_k": -1)"), 400, "top_k");
  check_refused(completion_body(R"("repetition_penalty": 0)"), 400, "repetition_penalty");
  const auto e = refusal(completion_body(R"("temperature": 5)"));
  REQUIRE(e.has_value());
  CHECK(contains(e->what(), "between"));
  CHECK(contains(e->what(), "got 5"));
}

TEST_CASE("max_tokens 0 is refused as out of range, naming max_tokens") {
  // JSON's non-negative integers parse as unsigned; the range's lower bound
  // must hold for them too, or 0 reaches the pipeline (which refuses it
  // with no param, and inside a 200 when streaming).
  check_refused(completion_body(R"("max_tokens": 0)"), 400, "max_tokens");
  check_refused(chat_body(R"("max_tokens": 0)"), 400, "max_tokens", endpoint::chat);
}

TEST_CASE("max_tokens past the room the prompt leaves is a 400 with both figures, coded context_length_exceeded") {
  const auto e = refusal(completion_body(R"("max_tokens": 62)"));  // room: 64 - 3 = 61
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "max_tokens");
  CHECK(e->code == "context_length_exceeded");
  CHECK(contains(e->what(), "62"));
  CHECK(contains(e->what(), "61"));
  CHECK(contains(e->what(), "64"));
}

TEST_CASE("a chat's max_completion_tokens is read and named in its refusal") {
  CHECK(parse(chat_body(R"("max_completion_tokens": 5)"), endpoint::chat).max_tokens == 5);
  check_refused(chat_body(R"("max_completion_tokens": 45)"), 400, "max_completion_tokens", endpoint::chat);  // room 44
}

TEST_CASE("a prompt that fills the whole context is refused at prompt; one token short of it leaves room for one") {
  const auto full = R"({"model": "m", "prompt": ")" + std::string(63, 'a') + R"("})";  // 64 tokens with BOS
  const auto e = refusal(full);
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "prompt");
  CHECK(e->code == "context_length_exceeded");
  CHECK(contains(e->what(), "64"));
  const auto r = parse(R"({"model": "m", "prompt": ")" + std::string(62, 'a') + R"("})");
  CHECK(r.prompt_tokens == 63);
  CHECK(r.max_tokens == 1);
  check_refused(R"({"model": "m", "prompt": ")" + std::string(200, 'a') + R"("})", 400, "prompt");
}

TEST_CASE("a chat whose rendered messages fill the context is refused at messages") {
  const auto body = R"({"model": "m", "messages": [{"role": "user", "content": ")" + std::string(60, 'a') + R"("}]})";
  check_refused(body, 400, "messages", endpoint::chat);
}

TEST_CASE("n and best_of other than 1 are refused; n 1 is accepted") {
  check_refused(completion_body(R"("n": 2)"), 400, "n");
  check_refused(completion_body(R"("best_of": 3)"), 400, "best_of");
  CHECK(parse(completion_body(R"("n": 1)")).max_tokens == 16);
}

TEST_CASE("presence and frequency penalties, logprobs, echo and tools are refused rather than ignored; zero and false pass") {
  check_refused(completion_body(R"("presence_penalty": 0.5)"), 400, "presence_penalty");
  check_refused(completion_body(R"("frequency_penalty": -1)"), 400, "frequency_penalty");
  check_refused(completion_body(R"("logprobs": 2)"), 400, "logprobs");
  check_refused(completion_body(R"("echo": true)"), 400, "echo");
  check_refused(chat_body(R"("tools": [{"type": "function", "function": {"name": "f"}}])"), 400, "tools", endpoint::chat);
  check_refused(chat_body(R"("response_format": {"type": "json_object"})"), 400, "response_format", endpoint::chat);
  const auto r = parse(completion_body(R"("presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": null, "echo": false)"));
  CHECK(r.prompt == "hi");
  CHECK(parse(chat_body(R"("response_format": {"type": "text"}, "logprobs": false)"), endpoint::chat).prompt ==
        "user: Hi\nassistant:");
}

TEST_CASE("up to four stop strings are taken; five, or an empty one, are refused at stop") {
  CHECK(parse(completion_body(R"("stop": ["1", "2", "3", "4"])")).stop.size() == 4);
  check_refused(completion_body(R"("stop": ["1", "2", "3", "4", "5"])"), 400, "stop");
  check_refused(completion_body(R"("stop": "")"), 400, "stop");
  check_refused(completion_body(R"("stop": ["a", ""])"), 400, "stop");
}

TEST_CASE("stream_options without stream true is refused; with it include_usage is read") {
  check_refused(completion_body(R"("stream_options": {"include_usage": true})"), 400, "stream_options");
  check_refused(completion_body(R"("stream": false, "stream_options": {"include_usage": true})"), 400, "stream_options");
  check_refused(completion_body(R"("stream": true, "stream_options": 1)"), 400, "stream_options");
  CHECK(parse(completion_body(R"("stream": true, "stream_options": {"include_usage": true})")).stream_usage);
  const auto r = parse(completion_body(R"("stream": true, "stream_options": {"include_usage": false})"));
  CHECK(r.stream);
  CHECK_FALSE(r.stream_usage);
}

TEST_CASE("a message's text parts are concatenated into its content") {
  const auto r = parse(R"({"model": "m", "messages": [{"role": "user", "content": [)"
                       R"({"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}]})",
                       endpoint::chat);
  CHECK(r.prompt == "user: Hello\nassistant:");
  check_refused(R"({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})",
                400, "messages[0].content", endpoint::chat);
  check_refused(R"({"model": "m", "messages": [{"role": "user"}]})", 400, "messages[0].content", endpoint::chat);
  check_refused(R"({"model": "m", "messages": [{"role": "user", "content": 3}]})", 400, "messages[0].content", endpoint::chat);
}

TEST_CASE("a bad role is named at its message's index; developer is read as system") {
  const auto e = refusal(R"({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})",
                         endpoint::chat);
  REQUIRE(e.has_value());
  CHECK(e->status == 400);
  CHECK(e->param == "messages[1].role");
  CHECK(contains(e->what(), "robot"));
  check_refused(R"({"model": "m", "messages": [{"content": "a"}]})", 400, "messages[0].role", endpoint::chat);
  const auto r = parse(R"({"model": "m", "messages": [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"}]})",
                       endpoint::chat);
  CHECK(r.prompt == "system: Be terse.\nuser: Hi\nassistant:");
}

TEST_CASE("an error's JSON is OpenAI's shape, with null for an empty param and code") {
  const auto j = orrery::deploy::error_json(api_error(400, "bad", "", ""));
  CHECK(j["error"]["message"] == "bad");
  CHECK(j["error"]["type"] == "invalid_request_error");
  CHECK(j["error"]["param"].is_null());
  CHECK(j["error"]["code"].is_null());
  const auto named = orrery::deploy::error_json(api_error(404, "gone", "model", "model_not_found"));
  CHECK(named["error"]["param"] == "model");
  CHECK(named["error"]["code"] == "model_not_found");
}

// ---------------------------------------------------------------------------
// stop_matcher

TEST_CASE("a stop string in a later push ends the text just before it") {
  auto m = matcher({"STOP"});
  std::string shown = m.push("Hel");
  CHECK_FALSE(m.stopped());
  shown += m.push("lo STOP there");
  CHECK(m.stopped());
  CHECK(shown == "Hello ");
  CHECK(m.push("more") == "");
  CHECK(m.finish() == "");
}

TEST_CASE("a stop string split across pushes is held back and then cut whole") {
  auto m = matcher({"STOP"});
  CHECK(m.push("Hello ST") == "Hello ");  // "ST" could begin STOP
  CHECK_FALSE(m.stopped());
  CHECK(m.push("O") == "");
  CHECK_FALSE(m.stopped());
  CHECK(m.push("P there") == "");
  CHECK(m.stopped());
  CHECK(m.finish() == "");
}

TEST_CASE("text that only begins a stop string is held back and returned by finish") {
  auto m = matcher({"STOP"});
  CHECK(m.push("abc STO") == "abc ");
  CHECK_FALSE(m.stopped());
  CHECK(m.finish() == "STO");
  CHECK_FALSE(m.stopped());
}

TEST_CASE("held text that stops beginning a stop string is released") {
  auto m = matcher({"STOP"});
  CHECK(m.push("xS") == "x");
  CHECK(m.push("Tx") == "STx");
  CHECK_FALSE(m.stopped());
  CHECK(m.finish() == "");
}

TEST_CASE("the earliest of two stop strings wins, whatever their order in the list") {
  auto m = matcher({"world", "lo"});
  CHECK(m.push("hello world") == "hel");
  CHECK(m.stopped());
  auto split = matcher({"world", "lo"});
  std::string shown = split.push("hel");
  shown += split.push("lo wor");
  CHECK(split.stopped());
  CHECK(shown == "hel");
}

TEST_CASE("without stop strings everything is shown at once") {
  auto m = matcher({});
  CHECK(m.push("abc") == "abc");
  CHECK(m.finish() == "");
  CHECK_FALSE(m.stopped());
}

// ---------------------------------------------------------------------------
// utf8_stream

TEST_CASE("a 3-byte character pushed a byte at a time comes out whole after its third byte") {
  utf8_stream s;
  CHECK(s.push("\xE2") == "");
  CHECK(s.push("\x82") == "");
  CHECK(s.push("\xAC") == "\xE2\x82\xAC");  // U+20AC
  CHECK(s.finish() == "");
}

TEST_CASE("a byte that cannot start a character becomes U+FFFD") {
  utf8_stream s;
  CHECK(s.push("a\xFF" "b") == "a" + replacement + "b");
  CHECK(s.push("\x80") == replacement);  // a continuation with no lead
  CHECK(valid_utf8("\xFF") == replacement);
}

TEST_CASE("a character cut short by an ASCII byte gives U+FFFD and then that byte") {
  utf8_stream s;
  CHECK(s.push("\xE2\x82") == "");
  CHECK(s.push("A") == replacement + "A");
  CHECK(s.finish() == "");
  CHECK(valid_utf8("\xC3" "b") == replacement + "b");
}

TEST_CASE("finish on a pending lead byte gives U+FFFD, once") {
  utf8_stream s;
  CHECK(s.push("ok\xF0\x9F") == "ok");
  CHECK(s.finish() == replacement);
  CHECK(s.finish() == "");
  CHECK(s.push("x") == "x");
}

TEST_CASE("an overlong form and a surrogate are replaced, byte by byte") {
  CHECK(valid_utf8("\xC0\x80") == replacement + replacement);
  CHECK(valid_utf8("\xE0\x80\x80") == replacement + replacement + replacement);   // overlong 3-byte
  CHECK(valid_utf8("\xED\xA0\x80") == replacement + replacement + replacement);   // U+D800
  CHECK(valid_utf8("\xF4\x90\x80\x80") == replacement + replacement + replacement + replacement);  // past U+10FFFF
  utf8_stream s;
  CHECK(s.push("\xED") == "");
  CHECK(s.push("\xA0") == replacement + replacement);
  CHECK(s.push("\x80") == replacement);
  CHECK(s.finish() == "");
  // The highest code point before the surrogates is fine.
  CHECK(valid_utf8("\xED\x9F\xBF") == "\xED\x9F\xBF");
}

TEST_CASE("a valid 4-byte emoji passes unchanged, whole or a byte at a time") {
  const std::string emoji = "\xF0\x9F\x98\x80";  // U+1F600
  CHECK(valid_utf8("hi " + emoji + "!") == "hi " + emoji + "!");
  utf8_stream s;
  std::string out;
  for (std::size_t i = 0; i < emoji.size(); ++i) {
    const auto piece = s.push(emoji.substr(i, 1));
    CHECK(piece == (i + 1 < emoji.size() ? "" : emoji));
    out += piece;
  }
  out += s.finish();
  CHECK(out == emoji);
}

// ---------------------------------------------------------------------------
// chat_template

TEST_CASE("a chat_template with <|im_start|> renders ChatML exactly") {
  const auto t = template_of(
      R"({"chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"})");
  CHECK(t.kind() == chat_template::family::chatml);
  CHECK(t.name() == "chatml");
  CHECK(contains(t.origin(), "tokenizer_config.json"));
  CHECK(t.render(system_and_user) ==
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n");
}

TEST_CASE("a chat_template with <|start_header_id|> renders Llama 3 exactly") {
  const auto t = template_of(
      R"({"bos_token": "<|begin_of_text|>", "chat_template": "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"})");
  CHECK(t.kind() == chat_template::family::llama3);
  CHECK(t.name() == "llama3");
  CHECK(t.render(system_and_user) ==
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST_CASE("a model directory without tokenizer_config.json gets the plain template") {
  temp_dir dir;
  const auto t = chat_template::for_model(dir.path());
  CHECK(t.kind() == chat_template::family::plain);
  CHECK(t.name() == "plain");
  CHECK(contains(t.origin(), "no tokenizer_config.json"));
  CHECK(t.render({{"user", "Hi"}}) == "user: Hi\nassistant:");
  CHECK(t.render(system_and_user) == "system: You are terse.\nuser: Hi\nassistant:");
}

TEST_CASE("a config without chat_template, or with one of no known family, gets the plain template") {
  CHECK(template_of(R"({"model_max_length": 2048})").kind() == chat_template::family::plain);
  const auto unknown = template_of(R"({"chat_template": "{{ messages[0]['content'] }}"})");
  CHECK(unknown.kind() == chat_template::family::plain);
  CHECK(contains(unknown.origin(), "none of the families"));
}

TEST_CASE("a list-valued chat_template is read from its default entry") {
  const auto t = template_of(R"({"chat_template": [)"
                             R"({"name": "tool_use", "template": "{{ '<|start_header_id|>' }}"},)"
                             R"({"name": "default", "template": "{{ '<|im_start|>' }}"}]})");
  CHECK(t.kind() == chat_template::family::chatml);
  const auto no_default = template_of(R"({"chat_template": [{"name": "tool_use", "template": "<|im_start|>"}]})");
  CHECK(no_default.kind() == chat_template::family::plain);
}

TEST_CASE("a tokenizer_config.json that is not JSON throws, naming the file") {
  temp_dir dir;
  write_file(dir / "tokenizer_config.json", R"({"chat_template": "<|im_start|>",)");
  CHECK_THROWS_AS(chat_template::for_model(dir.path()), std::runtime_error);
  try {
    chat_template::for_model(dir.path());
  } catch (const std::runtime_error& e) {
    CHECK(contains(e.what(), "tokenizer_config.json"));
  }
}

TEST_CASE("Llama 2 puts the system text in <<SYS>> in the first user turn; Mistral before its text") {
  const auto llama2 = template_of(R"({"chat_template": "[INST] <<SYS>>\n"})");
  CHECK(llama2.kind() == chat_template::family::llama2);
  CHECK(llama2.render({{"system", "S"}, {"user", "Hi"}, {"assistant", "Yo"}, {"user", "Bye"}}) ==
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST] Yo</s>[INST] Bye [/INST]");
  const auto mistral = template_of(R"({"chat_template": "[INST] {{ message['content'] }} [/INST]"})");
  CHECK(mistral.kind() == chat_template::family::mistral);
  CHECK(mistral.render({{"system", "S"}, {"user", "Hi"}, {"assistant", "Yo"}}) == "[INST] S\n\nHi [/INST]Yo</s>");
}
