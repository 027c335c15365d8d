#pragma once
// The seam between the data plane (bytes + descriptor, no libtorch) and the
// actors (tensors): received frames are read straight into a freshly
// allocated at::Tensor and handed to the owning actor as a local message.

#include <ATen/core/Tensor.h>
#include <caf/allowed_unsafe_message_type.hpp>

#include <functional>
#include <string>

#include "messages/data_plane.hpp"

namespace orrery::actors {

/// A received tensor and its descriptor. In-process only: never serialised.
struct tensor_frame {
  messages::frame_descriptor descriptor;
  at::Tensor tensor;
};

/// Allocates a CPU tensor of the descriptor's dtype and shape for the data
/// plane to read the payload into: in pinned (page-locked) memory for a node
/// computing on a GPU, so the upload runs at full bus speed and
/// asynchronously; pinned only where libtorch has CUDA.
messages::frame_allocator tensor_allocator(bool pinned = false);

/// The tensor a frame's storage holds (after tensor_allocator filled it).
at::Tensor tensor_of(const messages::received_frame& frame);

/// Sends `tensor` over `link`; `done` receives an empty string on success or
/// the problem. A GPU tensor goes through pinned host memory in pieces whose
/// device-to-host copies are all queued at once, so the link checksums one
/// piece while the next is still crossing the bus; a CPU tensor is sent from
/// where it lies (made contiguous first).
void send_tensor(messages::link& link, messages::frame_descriptor descriptor, const at::Tensor& tensor,
                 std::function<void(const std::string&)> done);

}  // namespace orrery::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(orrery::actors::tensor_frame)
