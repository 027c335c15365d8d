#include "messages/frame.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <sstream>

#include "messages/frame.capnp.h"

namespace orrery::messages {
namespace {

constexpr std::uint16_t element_type_count = 5;

template <typename T>
void store_le(std::byte* at, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) at[i] = std::byte(value >> (8 * i) & 0xFF);
}

template <typename T>
T load_le(const std::byte* at) {
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value |= T(std::to_integer<T>(at[i])) << (8 * i);
  return value;
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::ostringstream s;
  s << "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

std::string check_descriptor(const frame_descriptor& d, std::uint64_t payload_bytes, std::uint64_t max_payload_bytes) {
  std::uint64_t expected = 0;
  if (auto problem = payload_length(d.type, d.shape, max_payload_bytes, expected); !problem.empty()) return problem;
  if (d.byte_length != expected)
    return "descriptor byte length " + std::to_string(d.byte_length) + " disagrees with shape " +
           shape_string(d.shape) + " of " + to_string(d.type) + " (" + std::to_string(expected) + " bytes)";
  if (payload_bytes != d.byte_length)
    return "header payload length " + std::to_string(payload_bytes) + " disagrees with descriptor byte length " +
           std::to_string(d.byte_length);
  return {};
}

}  // namespace

std::size_t element_size(element_type type) {
  switch (type) {
    case element_type::f32:
    case element_type::i32:
      return 4;
    case element_type::f16:
    case element_type::bf16:
      return 2;
    case element_type::i64:
      return 8;
  }
  return 0;
}

const char* to_string(element_type type) {
  switch (type) {
    case element_type::f32:
      return "f32";
    case element_type::f16:
      return "f16";
    case element_type::bf16:
      return "bf16";
    case element_type::i64:
      return "i64";
    case element_type::i32:
      return "i32";
  }
  return "unknown";
}

header_bytes encode_header(const frame_header& header) {
  header_bytes bytes{};
  store_le(bytes.data(), frame_magic);
  bytes[4] = std::byte{frame_version};
  bytes[5] = std::byte(header.kind);
  store_le(bytes.data() + 8, header.descriptor_length);
  store_le(bytes.data() + 16, header.value);
  return bytes;
}

std::string decode_header(const header_bytes& bytes, std::uint64_t max_payload_bytes, frame_header& out) {
  auto magic = load_le<std::uint32_t>(bytes.data());
  if (magic != frame_magic) {
    std::ostringstream s;
    s << "bad magic 0x" << std::hex << magic << " (expected 0x" << frame_magic << ")";
    return s.str();
  }
  auto version = std::to_integer<unsigned>(bytes[4]);
  if (version != frame_version)
    return "unknown version " + std::to_string(version) + " (expected " + std::to_string(frame_version) + ")";
  auto kind = std::to_integer<unsigned>(bytes[5]);
  if (kind != unsigned(frame_kind::tensor) && kind != unsigned(frame_kind::credit))
    return "unknown frame kind " + std::to_string(kind);
  if (load_le<std::uint16_t>(bytes.data() + 6) != 0 || load_le<std::uint32_t>(bytes.data() + 12) != 0)
    return "reserved header bytes are not zero";
  out.kind = frame_kind(kind);
  out.descriptor_length = load_le<std::uint32_t>(bytes.data() + 8);
  out.value = load_le<std::uint64_t>(bytes.data() + 16);
  if (out.kind == frame_kind::credit) {
    if (out.descriptor_length != 0) return "credit frame carries a descriptor";
    return {};
  }
  if (out.descriptor_length == 0 || out.descriptor_length > max_descriptor_bytes || out.descriptor_length % 8 != 0)
    return "descriptor length " + std::to_string(out.descriptor_length) + " is not a multiple of 8 in [8, " +
           std::to_string(max_descriptor_bytes) + "]";
  if (out.value > max_payload_bytes)
    return "payload length " + std::to_string(out.value) + " exceeds the limit of " +
           std::to_string(max_payload_bytes) + " bytes";
  return {};
}

std::string payload_length(element_type type, const std::vector<std::int64_t>& shape, std::uint64_t max_bytes,
                           std::uint64_t& out) {
  if (shape.size() > max_rank)
    return "rank " + std::to_string(shape.size()) + " exceeds the limit of " + std::to_string(max_rank);
  // Dividing the limit down instead of multiplying up cannot overflow.
  std::uint64_t bytes = element_size(type);
  for (auto dim : shape) {
    if (dim < 0) return "negative dimension in shape " + shape_string(shape);
    if (dim != 0 && bytes > max_bytes / std::uint64_t(dim))
      return "shape " + shape_string(shape) + " of " + to_string(type) + " exceeds the limit of " +
             std::to_string(max_bytes) + " bytes";
    bytes *= std::uint64_t(dim);
  }
  if (bytes > max_bytes)
    return "shape " + shape_string(shape) + " exceeds the limit of " + std::to_string(max_bytes) + " bytes";
  out = bytes;
  return {};
}

std::vector<std::byte> encode_descriptor(const frame_descriptor& d) {
  capnp::MallocMessageBuilder message(16 + d.shape.size());
  auto root = message.initRoot<wire::FrameDescriptor>();
  root.setRequestId(d.request_id);
  root.setSession(d.session);
  root.setDeployment(d.deployment);
  root.setReplyPort(d.reply_port);
  root.setStep(d.step);
  root.setSourceStage(d.source_stage);
  root.setDestinationStage(d.destination_stage);
  root.setElementType(wire::ElementType(d.type));
  auto shape = root.initShape(static_cast<unsigned>(d.shape.size()));
  for (unsigned i = 0; i < d.shape.size(); ++i) shape.set(i, d.shape[i]);
  root.setByteLength(d.byte_length);
  root.setChecksum(d.checksum);
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  std::vector<std::byte> out(bytes.size());
  std::memcpy(out.data(), bytes.begin(), bytes.size());
  return out;
}

std::string decode_descriptor(const std::byte* data, std::size_t size, std::uint64_t payload_bytes,
                              std::uint64_t max_payload_bytes, frame_descriptor& out) {
  if (size % sizeof(capnp::word) != 0 || size > max_descriptor_bytes)
    return "descriptor length " + std::to_string(size) + " is invalid";
  // Cap'n Proto reads words in place; copy so that any caller buffer works.
  std::vector<capnp::word> words(size / sizeof(capnp::word));
  std::memcpy(words.data(), data, size);
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 2 * max_descriptor_bytes / sizeof(capnp::word);
  options.nestingLimit = 4;
  try {
    capnp::FlatArrayMessageReader message(kj::arrayPtr(words.data(), words.size()), options);
    if (message.getEnd() != words.data() + words.size())
      return "descriptor length " + std::to_string(size) + " disagrees with its content (" +
             std::to_string((message.getEnd() - words.data()) * sizeof(capnp::word)) + " bytes)";
    auto root = message.getRoot<wire::FrameDescriptor>();
    auto type = static_cast<std::uint16_t>(root.getElementType());
    if (type >= element_type_count) return "unknown element type " + std::to_string(type);
    auto shape = root.getShape();
    if (shape.size() > max_rank)
      return "rank " + std::to_string(shape.size()) + " exceeds the limit of " + std::to_string(max_rank);
    frame_descriptor d;
    d.request_id = root.getRequestId();
    d.session = root.getSession();
    d.deployment = root.getDeployment();
    d.reply_port = root.getReplyPort();
    d.step = root.getStep();
    d.source_stage = root.getSourceStage();
    d.destination_stage = root.getDestinationStage();
    d.type = element_type(type);
    for (auto dim : shape) d.shape.push_back(dim);
    d.byte_length = root.getByteLength();
    d.checksum = root.getChecksum();
    if (auto problem = check_descriptor(d, payload_bytes, max_payload_bytes); !problem.empty()) return problem;
    out = std::move(d);
    return {};
  } catch (const kj::Exception& e) {
    return "descriptor is not a valid Cap'n Proto message: " + std::string(e.getDescription().cStr());
  }
}

}  // namespace orrery::messages
