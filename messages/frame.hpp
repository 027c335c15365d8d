#pragma once
// What one data-plane frame is on the wire, and the checks a receiver applies
// before it trusts any of it. Layout (all integers little endian):
//
//   offset size  field
//   0      4     magic 0x4652524F (the bytes "ORRF")
//   4      1     version, 2
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
// its own before it waits for more input once it owes a sixteenth of its
// window or more (a stream of small frames, such as a tensor-parallel ring's,
// is not answered frame by frame: each answer wakes the sender's io thread).
// A sender keeps (sent - returned) <= window, except that any frame may go
// while at most a sixteenth of the window is in flight: the receiver may be
// holding that much credit back, and a frame that needs it must not wait.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "base/element_type.hpp"

namespace orrery::messages {

/// What one tensor of a frame is to its receiver (see frame.capnp).
enum class tensor_role : std::uint8_t { hidden, tokens, logits, gradient, positions, targets, state };

/// Name of `role` ("hidden", "tokens", ...).
const char* to_string(tensor_role role);

/// One tensor of a frame's payload: its role, element type, shape and byte length.
struct tensor_layout {
  tensor_role role = tensor_role::hidden;
  element_type type = element_type::f32;
  std::vector<std::int64_t> shape;
  /// Filled by link::send from shape and type.
  std::uint64_t byte_length = 0;
};

/// How the last stage samples a token (compute/sampler.hpp's parameters).
struct sampling_settings {
  float temperature = 0.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  std::uint64_t seed = 0;
  /// Send the logits row back with the token.
  bool return_logits = false;
};

// Where a frame goes (frame.capnp explains each field).

/// What a forward pass is for (frame.capnp's PassKind).
enum class pass_kind : std::uint8_t { inference, training, evaluation };

/// A forward activation, or a prompt's tokens, for a pipeline stage.
struct forward_route {
  std::uint16_t stage = 0;
  std::uint64_t request = 0;
  std::uint32_t step = 0;
  std::uint32_t position = 0;
  sampling_settings sampling;
  /// False for a prompt's leading chunks (pipelined prefill): the stage with
  /// the head only extends its caches.
  bool sample = true;
  /// The frame's last `drafts` tokens are guesses to verify (speculative
  /// decoding): the stage with the head samples drafts + 1 tokens and keeps
  /// the guesses up to the first it did not sample. The caches hold the
  /// guesses until the next frame's position drops the rejected ones.
  std::uint16_t drafts = 0;
  /// Non-zero: the request starts from a copy of the first `position`
  /// tokens of this request's caches (outline points share their prefix).
  std::uint64_t fork_from = 0;
  /// The request has ended: free it and pass this on (after its frames in
  /// flight, on the same links).
  bool end = false;
  /// Training and evaluation: `sequences` fresh sequences of equal length
  /// side by side (no KV cache), each token with its target.
  pass_kind pass = pass_kind::inference;
  std::uint32_t sequences = 0;
  /// A piece of a micro-batch split across a data-parallel stage: rows
  /// [first_row, first_row + sequences) of micro_batch_sequences (0: the whole).
  std::uint32_t first_row = 0;
  std::uint32_t micro_batch_sequences = 0;
};

/// A backward pass's gradient for a pipeline stage.
struct backward_route {
  std::uint16_t stage = 0;
  std::uint64_t request = 0;
  std::uint32_t step = 0;
  /// The gradient's rows, as forward_route's (sequences 0: the whole).
  std::uint32_t first_row = 0;
  std::uint32_t sequences = 0;
  std::uint32_t micro_batch_sequences = 0;
};

enum class collective_op : std::uint8_t { all_reduce, all_gather, reduce_scatter, broadcast };

/// A piece of a collective among a device group's ranks.
struct collective_route {
  std::uint32_t group = 0;
  std::uint16_t rank = 0;
  collective_op op = collective_op::all_reduce;
  std::uint32_t tile = 0;
  std::uint64_t request = 0;
  std::uint32_t step = 0;
  /// Which collective of the step's forward pass, and which ring step of it.
  std::uint32_t sequence = 0;
  std::uint16_t ring_step = 0;
  /// The forward pass's position: a prompt's chunks share a step.
  std::uint32_t position = 0;
};

/// Sampled tokens (and logits where asked) back to a client session.
struct session_route {
  std::uint64_t request = 0;
  std::uint32_t step = 0;
};

/// A link probe; answered on reply_port unless it is 0.
struct probe_route {
  std::uint64_t probe = 0;
  std::uint16_t reply_port = 0;
};

/// One parameter of a training stage, with its optimizer moments, in a
/// weight backup: to a node's backup store, or (restore) to a stage.
struct backup_route {
  std::uint64_t run = 0;
  /// The optimizer steps the parameter has taken.
  std::int64_t round = 0;
  std::string name;
  bool restore = false;
  std::uint16_t stage = 0;
};

/// A route this build does not know (a newer peer's): decoded so that the
/// receiver's router can count and reject it by name.
struct unknown_route {
  std::uint16_t which = 0;
};

using frame_route =
    std::variant<forward_route, backward_route, collective_route, session_route, probe_route, backup_route,
                 unknown_route>;

/// Name of the route's kind ("forward", "to-session", ...).
const char* route_kind(const frame_route& route);

/// Bytes between the starts of consecutive tensors of a payload: each
/// starts at a multiple of 8, so every element type can be read in place.
inline constexpr std::uint64_t tensor_alignment = 8;
/// A frame carries at most this many tensors.
inline constexpr std::size_t max_tensors = 8;

/// Where each tensor of `tensors` starts in the payload.
std::vector<std::uint64_t> tensor_offsets(const std::vector<tensor_layout>& tensors);

/// What a frame is: session and deployment, its route, and its tensors.
struct frame_descriptor {
  /// The client session the frame belongs to (see frame.capnp).
  std::uint64_t session = 0;
  /// The pipeline layout this frame belongs to (see frame.capnp).
  std::uint64_t deployment = 0;
  frame_route route;
  std::vector<tensor_layout> tensors;
  /// The end of the last tensor; filled by link::send.
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
/// 2: the descriptor carries a route and a list of tensors.
inline constexpr std::uint8_t frame_version = 2;
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

/// Fills each tensor's byte_length and puts the payload size (the end of the
/// last tensor) into `out`.
/// @returns the problem (too many tensors, or the first tensor whose shape is
/// invalid, by index), empty when valid.
std::string payload_length(std::vector<tensor_layout>& tensors, std::uint64_t max_bytes, std::uint64_t& out);

/// `descriptor` as a Cap'n Proto flat message (size a multiple of 8).
std::vector<std::byte> encode_descriptor(const frame_descriptor& descriptor);

/// Decodes a descriptor into `out` and checks it against itself and the
/// header: a well-formed message filling exactly `size` bytes; at most
/// max_tensors tensors, each of a known role and element type with a shape
/// within limits whose size equals its byte_length; their end equals the
/// descriptor's byte_length, which equals the header's `payload_bytes`. A
/// route of a kind this build does not know decodes as unknown_route.
/// @returns the problem, empty when the descriptor is valid.
std::string decode_descriptor(const std::byte* data, std::size_t size, std::uint64_t payload_bytes,
                              std::uint64_t max_payload_bytes, frame_descriptor& out);

/// Bytes a frame occupies on the wire; the unit of credit.
inline std::uint64_t wire_size(std::uint64_t descriptor_length, std::uint64_t payload_length) {
  return frame_header_size + descriptor_length + payload_length;
}

}  // namespace orrery::messages
