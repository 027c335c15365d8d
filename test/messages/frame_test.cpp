#include <doctest/doctest.h>

#include <cstring>
#include <stdexcept>

#include "messages/frame.hpp"

using namespace orrery::messages;
using orrery::element_type;

namespace {

constexpr std::uint64_t limit = 1 << 20;

std::string header_problem(header_bytes bytes) {
  frame_header out;
  return decode_header(bytes, limit, out);
}

frame_descriptor sample_descriptor() {
  frame_descriptor d;
  d.session = 0xFEEDFACECAFEBEEFull;
  d.deployment = 0xABCDEF0123ull;
  d.route = forward_route{3, 0x1234567890ull, 17, 40, {0.7f, 40, 0.9f, 1.1f, 99, true}};
  d.tensors = {{tensor_role::hidden, element_type::bf16, {1, 7, 64}, 7 * 64 * 2}};
  d.byte_length = 7 * 64 * 2;
  d.checksum = 0xDEADBEEF;
  return d;
}

std::string descriptor_problem(const frame_descriptor& d, std::uint64_t payload_bytes) {
  auto bytes = encode_descriptor(d);
  frame_descriptor out;
  return decode_descriptor(bytes.data(), bytes.size(), payload_bytes, limit, out);
}

}  // namespace

TEST_CASE("headers round trip and every field is checked") {
  frame_header in{frame_kind::tensor, 64, 4096};
  auto bytes = encode_header(in);
  frame_header out;
  REQUIRE(decode_header(bytes, limit, out).empty());
  CHECK(out.kind == frame_kind::tensor);
  CHECK(out.descriptor_length == 64);
  CHECK(out.value == 4096);

  auto corrupt = [&](std::size_t at, std::byte value) {
    auto b = bytes;
    b[at] = value;
    return header_problem(b);
  };
  CHECK(corrupt(0, std::byte{'X'}).find("bad magic") != std::string::npos);
  CHECK(corrupt(4, std::byte{1}).find("unknown version 1 (expected 2)") != std::string::npos);  // a peer of the old wire format
  CHECK(corrupt(5, std::byte{9}).find("unknown frame kind 9") != std::string::npos);
  CHECK(corrupt(6, std::byte{1}).find("reserved") != std::string::npos);
  CHECK(header_problem(encode_header({frame_kind::tensor, 12, 0})).find("descriptor length 12") != std::string::npos);
  CHECK(header_problem(encode_header({frame_kind::tensor, 0, 0})).find("descriptor length 0") != std::string::npos);
  CHECK(header_problem(encode_header({frame_kind::tensor, 1 << 20, 0})).find("descriptor length") != std::string::npos);
  CHECK(header_problem(encode_header({frame_kind::tensor, 64, limit + 1})).find("exceeds the limit") !=
        std::string::npos);
  CHECK(header_problem(encode_header({frame_kind::credit, 0, 1ull << 40})).empty());
  CHECK(header_problem(encode_header({frame_kind::credit, 8, 0})).find("credit frame") != std::string::npos);
}

TEST_CASE("payload lengths follow shape and type, within limits") {
  std::uint64_t bytes = 0;
  CHECK(payload_length(element_type::i64, {3, 5}, limit, bytes).empty());
  CHECK(bytes == 120);
  CHECK(payload_length(element_type::f32, {}, limit, bytes).empty());
  CHECK(bytes == 4);
  CHECK(payload_length(element_type::f32, {0, 1ll << 40}, limit, bytes).empty());
  CHECK(bytes == 0);
  CHECK(payload_length(element_type::f32, {2, -1}, limit, bytes).find("negative") != std::string::npos);
  CHECK(payload_length(element_type::f32, {1ll << 40, 1ll << 40}, limit, bytes).find("exceeds") != std::string::npos);
  CHECK(payload_length(element_type::f32, {limit / 4 + 1}, limit, bytes).find("exceeds") != std::string::npos);
  CHECK(payload_length(element_type::f32, std::vector<std::int64_t>(max_rank + 1, 1), limit, bytes).find("rank") !=
        std::string::npos);
}

TEST_CASE("descriptors round trip through Cap'n Proto") {
  for (auto type : {element_type::f32, element_type::f16, element_type::bf16, element_type::i64, element_type::i32}) {
    auto d = sample_descriptor();
    d.tensors[0].type = type;
    d.tensors[0].byte_length = d.byte_length = 7 * 64 * element_size(type);
    auto bytes = encode_descriptor(d);
    CHECK(bytes.size() % 8 == 0);
    CHECK(bytes.size() <= max_descriptor_bytes);
    frame_descriptor out;
    REQUIRE(decode_descriptor(bytes.data(), bytes.size(), d.byte_length, limit, out).empty());
    CHECK(out.session == d.session);
    CHECK(out.deployment == d.deployment);
    REQUIRE(std::holds_alternative<forward_route>(out.route));
    const auto& route = std::get<forward_route>(out.route);
    CHECK(route.stage == 3);
    CHECK(route.request == 0x1234567890ull);
    CHECK(route.step == 17);
    CHECK(route.position == 40);
    CHECK(route.sampling.temperature == 0.7f);
    CHECK(route.sampling.top_k == 40);
    CHECK(route.sampling.top_p == 0.9f);
    CHECK(route.sampling.repetition_penalty == 1.1f);
    CHECK(route.sampling.seed == 99);
    CHECK(route.sampling.return_logits);
    REQUIRE(out.tensors.size() == 1);
    CHECK(out.tensors[0].role == tensor_role::hidden);
    CHECK(out.tensors[0].type == type);
    CHECK(out.tensors[0].shape == d.tensors[0].shape);
    CHECK(out.tensors[0].byte_length == d.byte_length);
    CHECK(out.byte_length == d.byte_length);
    CHECK(out.checksum == d.checksum);
  }
}

TEST_CASE("descriptors that disagree with themselves or the header are rejected") {
  auto d = sample_descriptor();
  CHECK(descriptor_problem(d, d.byte_length + 1).find("header payload length") != std::string::npos);
  auto lying = d;
  lying.tensors[0].byte_length += 2;
  CHECK(descriptor_problem(lying, lying.byte_length).find("tensor 0 (hidden): byte length") != std::string::npos);
  auto longer = d;
  longer.byte_length += 2;
  CHECK(descriptor_problem(longer, longer.byte_length).find("disagrees with its tensors") != std::string::npos);
  auto negative = d;
  negative.tensors[0].shape = {-1, 7, 64};
  CHECK(descriptor_problem(negative, d.byte_length).find("negative") != std::string::npos);
  auto unknown = d;
  unknown.tensors[0].type = element_type(9);
  CHECK(descriptor_problem(unknown, d.byte_length).find("tensor 0: unknown element type 9") != std::string::npos);
  auto role = d;
  role.tensors[0].role = tensor_role(7);
  CHECK(descriptor_problem(role, d.byte_length).find("tensor 0: unknown role 7") != std::string::npos);
  auto crowded = d;
  crowded.tensors.assign(max_tensors + 1, {tensor_role::tokens, element_type::i64, {0}, 0});
  crowded.byte_length = 0;
  CHECK(descriptor_problem(crowded, 0).find("9 tensors exceed the limit of 8") != std::string::npos);

  auto bytes = encode_descriptor(d);
  frame_descriptor out;
  bytes.resize(bytes.size() + 8);
  CHECK(decode_descriptor(bytes.data(), bytes.size(), d.byte_length, limit, out).find("disagrees with its content") !=
        std::string::npos);
  std::vector<std::byte> garbage(64, std::byte{0xA5});
  CHECK(decode_descriptor(garbage.data(), garbage.size(), 0, limit, out).find("Cap'n Proto") != std::string::npos);
  bytes.resize(bytes.size() - 16);
  CHECK(decode_descriptor(bytes.data(), bytes.size(), d.byte_length, limit, out).find("Cap'n Proto") !=
        std::string::npos);
}

TEST_CASE("a frame carries several tensors, each starting at a multiple of 8 bytes") {
  std::vector<tensor_layout> tensors = {{tensor_role::hidden, element_type::bf16, {1, 3}, 0},
                                        {tensor_role::tokens, element_type::i64, {1}, 0},
                                        {tensor_role::logits, element_type::f32, {1, 5}, 0}};
  std::uint64_t total = 0;
  REQUIRE(payload_length(tensors, limit, total).empty());
  CHECK(tensors[0].byte_length == 6);
  CHECK(tensors[1].byte_length == 8);
  CHECK(tensors[2].byte_length == 20);
  CHECK(tensor_offsets(tensors) == std::vector<std::uint64_t>{0, 8, 16});
  CHECK(total == 36);  // the last tensor ends the payload: no padding after it

  frame_descriptor d;
  d.session = 5;
  d.route = session_route{12, 3};
  d.tensors = tensors;
  d.byte_length = total;
  auto bytes = encode_descriptor(d);
  frame_descriptor out;
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), total, limit, out).empty());
  REQUIRE(out.tensors.size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(out.tensors[i].role == tensors[i].role);
    CHECK(out.tensors[i].shape == tensors[i].shape);
  }
  CHECK(std::get<session_route>(out.route).request == 12);

  auto bad = tensors;
  bad[1].shape = {-4};
  CHECK(payload_length(bad, limit, total).find("tensor 1 (tokens): negative dimension") != std::string::npos);
}

TEST_CASE("every route kind round trips, and the kinds are named") {
  const std::vector<frame_route> routes = {
      forward_route{1, 2, 3, 4, {}}, backward_route{5, 6, 7}, collective_route{8, 9, collective_op::reduce_scatter, 10, 11, 12},
      session_route{13, 14}, probe_route{15, 16}, backup_route{17, 18, "w", true, 19}};
  const std::vector<std::string> names = {"forward", "backward", "collective", "to-session", "probe", "backup"};
  for (std::size_t i = 0; i < routes.size(); ++i) {
    frame_descriptor d;
    d.route = routes[i];
    auto bytes = encode_descriptor(d);
    frame_descriptor out;
    REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
    CHECK(out.route.index() == i);
    CHECK(route_kind(out.route) == names[i]);
  }
  frame_descriptor d;
  d.route = collective_route{8, 9, collective_op::reduce_scatter, 10, 11, 12, 13, 14, 15};
  auto bytes = encode_descriptor(d);
  frame_descriptor out;
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  const auto& c = std::get<collective_route>(out.route);
  CHECK(c.group == 8);
  CHECK(c.rank == 9);
  CHECK(c.op == collective_op::reduce_scatter);
  CHECK(c.tile == 10);
  CHECK(c.request == 11);
  CHECK(c.step == 12);
  CHECK(c.sequence == 13);
  CHECK(c.ring_step == 14);
  CHECK(c.position == 15);
  // A prompt's leading chunk and a window of guesses keep their flags.
  frame_descriptor window;
  window.route = forward_route{1, 2, 3, 4, {}, false, 5, 77, true};
  bytes = encode_descriptor(window);
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  const auto& f = std::get<forward_route>(out.route);
  CHECK(f.position == 4);
  CHECK_FALSE(f.sample);
  CHECK(f.drafts == 5);
  CHECK(f.fork_from == 77);
  CHECK(f.end);
  window.route = forward_route{1, 2, 3, 4, {}};
  bytes = encode_descriptor(window);
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  CHECK(std::get<forward_route>(out.route).sample);  // the default samples
  CHECK(std::get<forward_route>(out.route).drafts == 0);
  CHECK(std::get<probe_route>(routes[4]).reply_port == 16);
  // A piece of a training micro-batch split across a data-parallel stage,
  // forward and back, names its rows.
  frame_descriptor piece;
  forward_route rows;
  rows.pass = pass_kind::training;
  rows.sequences = 3;
  rows.first_row = 2;
  rows.micro_batch_sequences = 8;
  piece.route = rows;
  bytes = encode_descriptor(piece);
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  CHECK(std::get<forward_route>(out.route).sequences == 3);
  CHECK(std::get<forward_route>(out.route).first_row == 2);
  CHECK(std::get<forward_route>(out.route).micro_batch_sequences == 8);
  piece.route = backward_route{5, 6, 7, 2, 3, 8};
  bytes = encode_descriptor(piece);
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  const auto& g = std::get<backward_route>(out.route);
  CHECK(g.first_row == 2);
  CHECK(g.sequences == 3);
  CHECK(g.micro_batch_sequences == 8);

  frame_descriptor unknown;
  unknown.route = unknown_route{9};
  CHECK_THROWS_WITH_AS(encode_descriptor(unknown), doctest::Contains("unknown kind 9"), std::invalid_argument);
}

TEST_CASE("a backup route round trips with its three state tensors, and is named") {
  CHECK(std::string(to_string(tensor_role::state)) == "state");
  for (bool restore : {false, true}) {
    CAPTURE(restore);
    frame_descriptor d;
    d.session = 0xFEEDFACECAFEBEEFull;
    d.deployment = 3;
    d.route = backup_route{0xFEDCBA9876543210ull, -7, "model.layers.12.self_attn.qkv", restore, 65535};
    for (int k = 0; k < 3; ++k) d.tensors.push_back({tensor_role::state, element_type::f32, {384, 128}, 0});
    REQUIRE(payload_length(d.tensors, 1ull << 31, d.byte_length).empty());
    CHECK(d.byte_length == 3 * 384 * 128 * 4);
    CHECK(descriptor_problem(d, d.byte_length).empty());
    auto bytes = encode_descriptor(d);
    frame_descriptor out;
    REQUIRE(decode_descriptor(bytes.data(), bytes.size(), d.byte_length, 1ull << 31, out).empty());
    CHECK(out.session == d.session);
    CHECK(out.deployment == 3);
    CHECK(std::string(route_kind(out.route)) == "backup");
    REQUIRE(std::holds_alternative<backup_route>(out.route));
    const auto& b = std::get<backup_route>(out.route);
    CHECK(b.run == 0xFEDCBA9876543210ull);
    CHECK(b.round == -7);
    CHECK(b.name == "model.layers.12.self_attn.qkv");
    CHECK(b.restore == restore);
    CHECK(b.stage == 65535);
    REQUIRE(out.tensors.size() == 3);
    for (const auto& t : out.tensors) {
      CHECK(t.role == tensor_role::state);
      CHECK(t.type == element_type::f32);
      CHECK(t.shape == std::vector<std::int64_t>{384, 128});
      CHECK(t.byte_length == 384 * 128 * 4);
    }
  }
  // The defaults, and a name that is empty, round trip too.
  frame_descriptor d;
  d.route = backup_route{};
  auto bytes = encode_descriptor(d);
  frame_descriptor out;
  REQUIRE(decode_descriptor(bytes.data(), bytes.size(), 0, limit, out).empty());
  const auto& b = std::get<backup_route>(out.route);
  CHECK(b.run == 0);
  CHECK(b.round == 0);
  CHECK(b.name.empty());
  CHECK_FALSE(b.restore);
  CHECK(b.stage == 0);
}
