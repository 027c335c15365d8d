#pragma once
// What one data-plane frame is on the wire, and the checks a receiver applies
// before it trusts any of it. Layout (all integers little endian):
//
//   offset size  field
//   0      4     magic 0x4652524F (the bytes "ORRF")
//   4      1     version, 1
//   5      1     kind: 1 = tensor, 2 = credit
//   6      2     reserved, 0
//   8      4     descriptor length in bytes: tensor frames carry a Cap'n Proto
//                flat message of frame.capnp's FrameDescriptor (a multiple of
//                8, at most max_descriptor_bytes); credit frames carry none
//   12     4     reserved, 0
//   16     8     tensor: payload length in bytes; credit: bytes granted
//   24     ...   descriptor, then the payload (tensor frames only)
//
// Credits: once connected, each end sends one credit frame granting its window
// (data_plane_options::credit_bytes). It then returns the wire size (header +
// descriptor + payload) of every tensor frame it has handed to its frame
// handler, coalesced: with its next outgoing frame, or in a credit frame of
// its own before it waits for more input. A sender keeps (sent - returned) <=
// window, except that one frame larger than the whole window may go when
// nothing is in flight.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace orrery::messages {

/// Element type of a tensor crossing the data plane.
enum class element_type : std::uint8_t { f32, f16, bf16, i64, i32 };

/// Bytes per element of `type`.
std::size_t element_size(element_type type);

/// Name of `type` as torch spells it ("f32", "bf16", ...).
const char* to_string(element_type type);

/// What a frame's payload is: ids, dtype, shape, byte length and checksum.
struct frame_descriptor {
  std::uint64_t request_id = 0;
  /// The client session (driver) the frame belongs to (see frame.capnp).
  std::uint64_t session = 0;
  /// The pipeline layout this frame belongs to (see frame.capnp).
  std::uint64_t deployment = 0;
  std::uint32_t step = 0;
  std::uint16_t source_stage = 0;
  std::uint16_t destination_stage = 0;
  element_type type = element_type::f32;
  std::vector<std::int64_t> shape;
  /// For link probes: the data port the receiver answers on (see frame.capnp).
  std::uint16_t reply_port = 0;
  /// Filled by link::send from shape and type.
  std::uint64_t byte_length = 0;
  /// frame_checksum of the payload; filled by link::send, verified on receipt.
  std::uint32_t checksum = 0;
};

/// Kind of a frame (header byte 5).
enum class frame_kind : std::uint8_t { tensor = 1, credit = 2 };

/// The fixed header of a frame, decoded.
struct frame_header {
  frame_kind kind = frame_kind::tensor;
  std::uint32_t descriptor_length = 0;
  /// tensor: payload length; credit: bytes granted.
  std::uint64_t value = 0;
};

inline constexpr std::size_t frame_header_size = 24;
inline constexpr std::uint32_t frame_magic = 0x4652524F;
inline constexpr std::uint8_t frame_version = 1;
/// A descriptor is a few dozen words; 4 KiB leaves room for max_rank dims and
/// keeps a hostile length from costing more than a page.
inline constexpr std::uint32_t max_descriptor_bytes = 4096;
inline constexpr std::size_t max_rank = 16;

using header_bytes = std::array<std::byte, frame_header_size>;

/// The 24 header bytes of `header`.
header_bytes encode_header(const frame_header& header);

/// Decodes `bytes` into `out` and checks magic, version, kind, reserved bytes,
/// descriptor length and payload length (<= max_payload_bytes).
/// @returns the problem, empty when the header is valid.
std::string decode_header(const header_bytes& bytes, std::uint64_t max_payload_bytes, frame_header& out);

/// The payload size of a tensor of `type` and `shape` into `out`.
/// @returns the problem (rank, negative dim, overflow, over max_bytes), empty when valid.
std::string payload_length(element_type type, const std::vector<std::int64_t>& shape, std::uint64_t max_bytes,
                           std::uint64_t& out);

/// `descriptor` as a Cap'n Proto flat message (size a multiple of 8).
std::vector<std::byte> encode_descriptor(const frame_descriptor& descriptor);

/// Decodes a descriptor into `out` and checks it against itself and the
/// header: a well-formed message filling exactly `size` bytes, a known element
/// type, a shape within limits whose size equals its byte_length, which equals
/// the header's `payload_bytes`.
/// @returns the problem, empty when the descriptor is valid.
std::string decode_descriptor(const std::byte* data, std::size_t size, std::uint64_t payload_bytes,
                              std::uint64_t max_payload_bytes, frame_descriptor& out);

/// Bytes a frame occupies on the wire; the unit of credit.
inline std::uint64_t wire_size(std::uint64_t descriptor_length, std::uint64_t payload_length) {
  return frame_header_size + descriptor_length + payload_length;
}

}  // namespace orrery::messages
