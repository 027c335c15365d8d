#include <doctest/doctest.h>

#include <cstring>

#include "messages/frame.hpp"

using namespace orrery::messages;

namespace {

constexpr std::uint64_t limit = 1 << 20;

std::string header_problem(header_bytes bytes) {
  frame_header out;
  return decode_header(bytes, limit, out);
}

frame_descriptor sample_descriptor() {
  frame_descriptor d;
  d.request_id = 0x1234567890ull;
  d.session = 0xFEEDFACECAFEBEEFull;
  d.deployment = 0xABCDEF0123ull;
  d.step = 17;
  d.source_stage = 2;
  d.destination_stage = 3;
  d.type = element_type::bf16;
  d.shape = {1, 7, 64};
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

TEST_CASE("element sizes and names") {
  CHECK(element_size(element_type::f32) == 4);
  CHECK(element_size(element_type::f16) == 2);
  CHECK(element_size(element_type::bf16) == 2);
  CHECK(element_size(element_type::i64) == 8);
  CHECK(element_size(element_type::i32) == 4);
  CHECK(std::string(to_string(element_type::bf16)) == "bf16");
}

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
  CHECK(corrupt(4, std::byte{2}).find("unknown version 2") != std::string::npos);
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
    d.type = type;
    d.byte_length = 7 * 64 * element_size(type);
    auto bytes = encode_descriptor(d);
    CHECK(bytes.size() % 8 == 0);
    CHECK(bytes.size() <= max_descriptor_bytes);
    frame_descriptor out;
    REQUIRE(decode_descriptor(bytes.data(), bytes.size(), d.byte_length, limit, out).empty());
    CHECK(out.request_id == d.request_id);
    CHECK(out.session == d.session);
    CHECK(out.deployment == d.deployment);
    CHECK(out.step == d.step);
    CHECK(out.source_stage == d.source_stage);
    CHECK(out.destination_stage == d.destination_stage);
    CHECK(out.type == type);
    CHECK(out.shape == d.shape);
    CHECK(out.byte_length == d.byte_length);
    CHECK(out.checksum == d.checksum);
  }
}

TEST_CASE("descriptors that disagree with themselves or the header are rejected") {
  auto d = sample_descriptor();
  CHECK(descriptor_problem(d, d.byte_length + 1).find("header payload length") != std::string::npos);
  auto lying = d;
  lying.byte_length += 2;
  CHECK(descriptor_problem(lying, lying.byte_length).find("disagrees with shape") != std::string::npos);
  auto negative = d;
  negative.shape = {-1, 7, 64};
  CHECK(descriptor_problem(negative, d.byte_length).find("negative") != std::string::npos);
  auto unknown = d;
  unknown.type = element_type(9);
  CHECK(descriptor_problem(unknown, d.byte_length).find("unknown element type 9") != std::string::npos);

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
