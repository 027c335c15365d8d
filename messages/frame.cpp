#include "messages/frame.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <sstream>

#include "messages/frame.capnp.h"

namespace orrery::messages {
namespace {

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

constexpr std::uint16_t tensor_role_count = 7;

// orrery::element_type on the wire is frame.capnp's ElementType; these two are
// the only conversions. Each switch names every value of its enum, so a type
// added to one enum and not the other fails the build (-Wswitch).

/// The wire spelling of `type`. A value outside the enum (only a test makes
/// one) goes out as its number, for the receiver to reject.
wire::ElementType wire_element_type(element_type type) {
  switch (type) {
    case element_type::f32: return wire::ElementType::F32;
    case element_type::f16: return wire::ElementType::F16;
    case element_type::bf16: return wire::ElementType::BF16;
    case element_type::i64: return wire::ElementType::I64;
    case element_type::i32: return wire::ElementType::I32;
  }
  return wire::ElementType(static_cast<std::uint16_t>(type));
}

/// The element type a wire value names; nullopt for a value frame.capnp has not.
std::optional<element_type> element_type_of(wire::ElementType type) {
  switch (type) {
    case wire::ElementType::F32: return element_type::f32;
    case wire::ElementType::F16: return element_type::f16;
    case wire::ElementType::BF16: return element_type::bf16;
    case wire::ElementType::I64: return element_type::i64;
    case wire::ElementType::I32: return element_type::i32;
  }
  return std::nullopt;
}

/// Where a tensor that follows `end` starts.
constexpr std::uint64_t aligned(std::uint64_t end) {
  return (end + tensor_alignment - 1) / tensor_alignment * tensor_alignment;
}

std::string check_descriptor(frame_descriptor& d, std::uint64_t payload_bytes, std::uint64_t max_payload_bytes) {
  const auto claimed = d.tensors;
  std::uint64_t expected = 0;
  if (auto problem = payload_length(d.tensors, max_payload_bytes, expected); !problem.empty()) return problem;
  for (std::size_t i = 0; i < claimed.size(); ++i)
    if (claimed[i].byte_length != d.tensors[i].byte_length)
      return "tensor " + std::to_string(i) + " (" + to_string(claimed[i].role) + "): byte length " +
             std::to_string(claimed[i].byte_length) + " disagrees with shape " + shape_string(claimed[i].shape) +
             " of " + to_string(claimed[i].type) + " (" + std::to_string(d.tensors[i].byte_length) + " bytes)";
  if (d.byte_length != expected)
    return "descriptor byte length " + std::to_string(d.byte_length) + " disagrees with its tensors (" +
           std::to_string(expected) + " bytes)";
  if (payload_bytes != d.byte_length)
    return "header payload length " + std::to_string(payload_bytes) + " disagrees with descriptor byte length " +
           std::to_string(d.byte_length);
  return {};
}

void encode_sampling(const sampling_settings& from, wire::Sampling::Builder to) {
  to.setTemperature(from.temperature);
  to.setTopK(from.top_k);
  to.setTopP(from.top_p);
  to.setRepetitionPenalty(from.repetition_penalty);
  to.setSeed(from.seed);
  to.setReturnLogits(from.return_logits);
}

sampling_settings decode_sampling(wire::Sampling::Reader from) {
  return {from.getTemperature(), from.getTopK(), from.getTopP(), from.getRepetitionPenalty(), from.getSeed(),
          from.getReturnLogits()};
}

// Each alternative of frame_route into the descriptor's route union.
struct route_encoder {
  mutable wire::FrameDescriptor::Route::Builder to;
  void operator()(const forward_route& r) const {
    auto f = to.initForward();
    f.setStage(r.stage);
    f.setRequest(r.request);
    f.setStep(r.step);
    f.setPosition(r.position);
    encode_sampling(r.sampling, f.initSampling());
    f.setSample(r.sample);
    f.setDrafts(r.drafts);
    f.setForkFrom(r.fork_from);
    f.setEnd(r.end);
    f.setPass(wire::PassKind(r.pass));
    f.setSequences(r.sequences);
    f.setFirstRow(r.first_row);
    f.setMicroBatchSequences(r.micro_batch_sequences);
  }
  void operator()(const backward_route& r) const {
    auto b = to.initBackward();
    b.setStage(r.stage);
    b.setRequest(r.request);
    b.setStep(r.step);
    b.setFirstRow(r.first_row);
    b.setSequences(r.sequences);
    b.setMicroBatchSequences(r.micro_batch_sequences);
  }
  void operator()(const collective_route& r) const {
    auto c = to.initCollective();
    c.setGroup(r.group);
    c.setRank(r.rank);
    c.setOp(wire::CollectiveOp(r.op));
    c.setTile(r.tile);
    c.setRequest(r.request);
    c.setStep(r.step);
    c.setSequence(r.sequence);
    c.setRingStep(r.ring_step);
    c.setPosition(r.position);
  }
  void operator()(const session_route& r) const {
    auto s = to.initToSession();
    s.setRequest(r.request);
    s.setStep(r.step);
  }
  void operator()(const probe_route& r) const {
    auto p = to.initProbe();
    p.setProbe(r.probe);
    p.setReplyPort(r.reply_port);
  }
  void operator()(const backup_route& r) const {
    auto b = to.initBackup();
    b.setRun(r.run);
    b.setRound(r.round);
    b.setName(r.name.c_str());
    b.setRestore(r.restore);
    b.setStage(r.stage);
  }
  void operator()(const unknown_route& r) const {
    throw std::invalid_argument("cannot encode a route of unknown kind " + std::to_string(r.which));
  }
};

frame_route decode_route(wire::FrameDescriptor::Route::Reader from) {
  using which = wire::FrameDescriptor::Route::Which;
  switch (from.which()) {
    case which::FORWARD: {
      auto f = from.getForward();
      return forward_route{f.getStage(),    f.getRequest(), f.getStep(),  f.getPosition(),
                           decode_sampling(f.getSampling()), f.getSample(), f.getDrafts(), f.getForkFrom(), f.getEnd(),
                           pass_kind(f.getPass()), f.getSequences(), f.getFirstRow(), f.getMicroBatchSequences()};
    }
    case which::BACKWARD: {
      auto b = from.getBackward();
      return backward_route{b.getStage(),    b.getRequest(),   b.getStep(),
                            b.getFirstRow(), b.getSequences(), b.getMicroBatchSequences()};
    }
    case which::COLLECTIVE: {
      auto c = from.getCollective();
      return collective_route{c.getGroup(),   c.getRank(), collective_op(c.getOp()), c.getTile(),
                              c.getRequest(), c.getStep(), c.getSequence(),           c.getRingStep(),
                              c.getPosition()};
    }
    case which::TO_SESSION: {
      auto s = from.getToSession();
      return session_route{s.getRequest(), s.getStep()};
    }
    case which::PROBE: {
      auto p = from.getProbe();
      return probe_route{p.getProbe(), p.getReplyPort()};
    }
    case which::BACKUP: {
      auto b = from.getBackup();
      return backup_route{b.getRun(), b.getRound(), std::string(b.getName().cStr()), b.getRestore(), b.getStage()};
    }
  }
  return unknown_route{static_cast<std::uint16_t>(from.which())};
}

}  // namespace

const char* to_string(tensor_role role) {
  switch (role) {
    case tensor_role::hidden:
      return "hidden";
    case tensor_role::tokens:
      return "tokens";
    case tensor_role::logits:
      return "logits";
    case tensor_role::gradient:
      return "gradient";
    case tensor_role::positions:
      return "positions";
    case tensor_role::targets:
      return "targets";
    case tensor_role::state:
      return "state";
  }
  return "unknown";
}

const char* route_kind(const frame_route& route) {
  static constexpr const char* names[] = {"forward", "backward", "collective", "to-session", "probe", "backup", "unknown"};
  return names[route.index()];
}

std::vector<std::uint64_t> tensor_offsets(const std::vector<tensor_layout>& tensors) {
  std::vector<std::uint64_t> offsets;
  std::uint64_t at = 0;
  for (const auto& t : tensors) {
    offsets.push_back(at);
    at = aligned(at + t.byte_length);
  }
  return offsets;
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

std::string payload_length(std::vector<tensor_layout>& tensors, std::uint64_t max_bytes, std::uint64_t& out) {
  if (tensors.size() > max_tensors)
    return std::to_string(tensors.size()) + " tensors exceed the limit of " + std::to_string(max_tensors);
  std::uint64_t end = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    auto& t = tensors[i];
    // Dividing the limit down in payload_length keeps every sum below 2^64.
    if (auto problem = payload_length(t.type, t.shape, max_bytes, t.byte_length); !problem.empty())
      return "tensor " + std::to_string(i) + " (" + to_string(t.role) + "): " + problem;
    const auto start = aligned(end);
    if (start > max_bytes || t.byte_length > max_bytes - start)
      return "tensors 0.." + std::to_string(i) + " exceed the limit of " + std::to_string(max_bytes) + " bytes";
    end = start + t.byte_length;
  }
  out = end;
  return {};
}

std::vector<std::byte> encode_descriptor(const frame_descriptor& d) {
  capnp::MallocMessageBuilder message(64);
  auto root = message.initRoot<wire::FrameDescriptor>();
  root.setSession(d.session);
  root.setDeployment(d.deployment);
  std::visit(route_encoder{root.initRoute()}, d.route);
  auto tensors = root.initTensors(static_cast<unsigned>(d.tensors.size()));
  for (unsigned i = 0; i < d.tensors.size(); ++i) {
    const auto& t = d.tensors[i];
    auto out = tensors[i];
    out.setRole(wire::TensorRole(t.role));
    out.setElementType(wire_element_type(t.type));
    auto shape = out.initShape(static_cast<unsigned>(t.shape.size()));
    for (unsigned k = 0; k < t.shape.size(); ++k) shape.set(k, t.shape[k]);
    out.setByteLength(t.byte_length);
  }
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
    auto tensors = root.getTensors();
    if (tensors.size() > max_tensors)
      return std::to_string(tensors.size()) + " tensors exceed the limit of " + std::to_string(max_tensors);
    frame_descriptor d;
    d.session = root.getSession();
    d.deployment = root.getDeployment();
    d.route = decode_route(root.getRoute());
    for (unsigned i = 0; i < tensors.size(); ++i) {
      auto t = tensors[i];
      const auto where = "tensor " + std::to_string(i) + ": ";
      auto role = static_cast<std::uint16_t>(t.getRole());
      if (role >= tensor_role_count) return where + "unknown role " + std::to_string(role);
      auto type = element_type_of(t.getElementType());
      if (!type)
        return where + "unknown element type " + std::to_string(static_cast<std::uint16_t>(t.getElementType()));
      auto shape = t.getShape();
      if (shape.size() > max_rank)
        return where + "rank " + std::to_string(shape.size()) + " exceeds the limit of " + std::to_string(max_rank);
      tensor_layout layout{tensor_role(role), *type, {}, t.getByteLength()};
      for (auto dim : shape) layout.shape.push_back(dim);
      d.tensors.push_back(std::move(layout));
    }
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
