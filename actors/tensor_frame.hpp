#pragma once
// The seam between the data plane (bytes + descriptor, no libtorch) and the
// actors (tensors, the sampler): a received frame's payload is read straight into one
// freshly allocated byte tensor, and each of the frame's tensors is a view
// of it, handed to the owning actor as a local message.

#include <ATen/core/Tensor.h>
#include <caf/allowed_unsafe_message_type.hpp>

#include <functional>
#include <string>
#include <vector>

#include "compute/sampler.hpp"
#include "messages/data_plane.hpp"

namespace orrery::actors {

/// A received frame: its descriptor and its tensors (in the descriptor's
/// order). In-process only: never serialised.
struct tensor_frame {
  messages::frame_descriptor descriptor;
  std::vector<at::Tensor> tensors;

  /// The first tensor of `role`; throws std::invalid_argument naming the
  /// route and the roles the frame has when there is none.
  const at::Tensor& tensor(messages::tensor_role role) const;
};

/// A tensor to send and what it is to the receiver.
struct outgoing_tensor {
  messages::tensor_role role;
  at::Tensor tensor;
};

/// The sampler's parameters as a frame's route carries them.
inline compute::sampling_params sampling_params_of(const messages::sampling_settings& s) {
  return {s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.seed};
}

/// Allocates the payload of a frame for the data plane to read into: in
/// pinned (page-locked) memory for a node computing on a GPU, so uploads run
/// at full bus speed and asynchronously; pinned only where libtorch has CUDA.
messages::frame_allocator tensor_allocator(bool pinned = false);

/// The frame's tensors (views of the payload tensor_allocator filled).
tensor_frame tensor_frame_of(const messages::received_frame& frame);

/// Sends `tensors` in one frame over `link` (the descriptor's tensor list is
/// filled here); `done` receives an empty string on success or the problem.
/// One CPU tensor is sent from where it lies (made contiguous first); several
/// are packed into one buffer. A GPU tensor goes through pinned host memory in
/// pieces whose device-to-host copies are all queued at once, so the link
/// checksums one piece while the next is still crossing the bus.
void send_tensors(messages::link& link, messages::frame_descriptor descriptor, std::vector<outgoing_tensor> tensors,
                  std::function<void(const std::string&)> done);

}  // namespace orrery::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(orrery::actors::tensor_frame)
