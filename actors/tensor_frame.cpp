#include "actors/tensor_frame.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "compute/scalar_type.hpp"

#ifdef ORRERY_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace orrery::actors {

namespace {

/// The descriptor's tensor list for `tensors`, byte lengths included.
void describe(messages::frame_descriptor& descriptor, const std::vector<outgoing_tensor>& tensors) {
  descriptor.tensors.clear();
  for (const auto& t : tensors)
    descriptor.tensors.push_back({t.role, compute::element_type_of(t.tensor.scalar_type()), t.tensor.sizes().vec(),
                                  static_cast<std::uint64_t>(t.tensor.nbytes())});
}

// The buffer several tensors are packed into, laid out as `offsets` says:
// only the padding between them is zeroed, the tensors' bytes are copied
// over the rest.
at::Tensor payload_buffer(const messages::frame_descriptor& descriptor, const std::vector<std::uint64_t>& offsets,
                          bool pinned) {
  const auto& layouts = descriptor.tensors;
  const std::uint64_t end = layouts.empty() ? 0 : offsets.back() + layouts.back().byte_length;
  auto buffer = at::empty({static_cast<std::int64_t>(end)}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
  auto* bytes = static_cast<std::byte*>(buffer.data_ptr());
  for (std::size_t i = 0; i + 1 < layouts.size(); ++i)
    std::memset(bytes + offsets[i] + layouts[i].byte_length, 0, offsets[i + 1] - offsets[i] - layouts[i].byte_length);
  return buffer;
}

#ifdef ORRERY_WITH_CUDA
// Pieces of a device tensor's trip to the host: small enough that
// checksumming the first overlaps most of the copy, large enough that each
// copy runs near bus speed.
constexpr std::size_t device_piece_bytes = std::size_t{1} << 20;

// The frame's payload in pinned host memory: device tensors' bytes arrive
// there by queued copies, host tensors' are copied in at once.
void send_from_device(messages::link& link, messages::frame_descriptor descriptor, std::vector<outgoing_tensor> tensors,
                      std::function<void(const std::string&)> done) {
  struct staged {
    std::vector<at::Tensor> sources;  // contiguous: kept until the copies finish
    at::Tensor host;                  // pinned
    /// Where each queued copy ends in the payload, and its event.
    std::vector<std::pair<std::size_t, at::cuda::CUDAEvent>> landed;
  };
  auto s = std::make_shared<staged>();
  describe(descriptor, tensors);
  const auto offsets = messages::tensor_offsets(descriptor.tensors);
  s->host = payload_buffer(descriptor, offsets, /*pinned=*/true);
  auto* to = static_cast<std::byte*>(s->host.data_ptr());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    auto source = tensors[i].tensor.contiguous();
    const std::size_t bytes = source.nbytes();
    const auto* from = static_cast<const std::byte*>(source.data_ptr());
    if (!source.is_cuda()) {
      if (bytes > 0) std::memcpy(to + offsets[i], from, bytes);
      continue;
    }
    c10::cuda::CUDAGuard guard(source.device());
    auto stream = c10::cuda::getCurrentCUDAStream(source.device().index());
    for (std::size_t at = 0; at < bytes; at += device_piece_bytes) {
      const std::size_t n = std::min(device_piece_bytes, bytes - at);
      auto status = cudaMemcpyAsync(to + offsets[i] + at, from + at, n, cudaMemcpyDeviceToHost, stream.stream());
      if (status != cudaSuccess)
        throw std::runtime_error(std::string("copying a tensor from the GPU failed: ") + cudaGetErrorString(status));
      s->landed.emplace_back(offsets[i] + at + n, at::cuda::CUDAEvent());
      s->landed.back().second.record(stream);
    }
    s->sources.push_back(std::move(source));
  }
  // The copies run in order on one stream, so the event of the last copy
  // that starts before `end` covers every byte before it.
  messages::link::arriving_payload arriving{device_piece_bytes, [s](std::size_t end) {
                                              for (auto it = s->landed.rbegin(); it != s->landed.rend(); ++it)
                                                if (it->first - std::min(it->first, device_piece_bytes) < end) {
                                                  it->second.synchronize();
                                                  return;
                                                }
                                            }};
  link.send(std::move(descriptor), to, s, std::move(done), arriving);
}
#endif

}  // namespace

const at::Tensor& tensor_frame::tensor(messages::tensor_role role) const {
  for (std::size_t i = 0; i < descriptor.tensors.size() && i < tensors.size(); ++i)
    if (descriptor.tensors[i].role == role) return tensors[i];
  std::string roles;
  for (const auto& t : descriptor.tensors) roles += std::string(roles.empty() ? "" : ", ") + messages::to_string(t.role);
  throw std::invalid_argument(std::string("a ") + messages::route_kind(descriptor.route) + " frame without a " +
                              messages::to_string(role) + " tensor (it has: " + (roles.empty() ? "none" : roles) + ")");
}

messages::frame_allocator tensor_allocator(bool pinned) {
#ifndef ORRERY_WITH_CUDA
  pinned = false;
#endif
  return [pinned](const messages::frame_descriptor& d) {
    auto bytes = std::make_shared<at::Tensor>(at::empty(
        {static_cast<std::int64_t>(d.byte_length)}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned)));
    auto* data = static_cast<std::byte*>(bytes->data_ptr());
    return std::make_pair(std::shared_ptr<void>(bytes), data);
  };
}

tensor_frame tensor_frame_of(const messages::received_frame& frame) {
  const auto& bytes = *static_cast<at::Tensor*>(frame.storage.get());
  const auto& layouts = frame.descriptor.tensors;
  const auto offsets = messages::tensor_offsets(layouts);
  tensor_frame out{frame.descriptor, {}};
  // Offsets are multiples of 8, so every view starts aligned for its type.
  for (std::size_t i = 0; i < layouts.size(); ++i)
    out.tensors.push_back(bytes.narrow(0, static_cast<std::int64_t>(offsets[i]), static_cast<std::int64_t>(layouts[i].byte_length))
                              .view(compute::scalar_type_of(layouts[i].type))
                              .view(layouts[i].shape));
  return out;
}

void send_tensors(messages::link& link, messages::frame_descriptor descriptor, std::vector<outgoing_tensor> tensors,
                  std::function<void(const std::string&)> done) {
#ifdef ORRERY_WITH_CUDA
  if (std::any_of(tensors.begin(), tensors.end(), [](const auto& t) { return t.tensor.is_cuda(); }))
    return send_from_device(link, std::move(descriptor), std::move(tensors), std::move(done));
#endif
  for (auto& t : tensors) t.tensor = t.tensor.contiguous();
  describe(descriptor, tensors);
  if (tensors.size() == 1) {
    auto held = std::make_shared<at::Tensor>(tensors.front().tensor);
    const auto* data = static_cast<const std::byte*>(held->data_ptr());
    return link.send(std::move(descriptor), data, held, std::move(done));
  }
  const auto offsets = messages::tensor_offsets(descriptor.tensors);
  auto packed = std::make_shared<at::Tensor>(payload_buffer(descriptor, offsets, /*pinned=*/false));
  auto* to = static_cast<std::byte*>(packed->data_ptr());
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (const auto bytes = tensors[i].tensor.nbytes(); bytes > 0) std::memcpy(to + offsets[i], tensors[i].tensor.data_ptr(), bytes);
  link.send(std::move(descriptor), to, packed, std::move(done));
}

}  // namespace orrery::actors
