#include "actors/tensor_frame.hpp"

#include <ATen/ATen.h>

#include <stdexcept>

#ifdef ORRERY_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <vector>
#endif

namespace orrery::actors {

namespace {

at::ScalarType scalar_type_of(messages::element_type t) {
  switch (t) {
    case messages::element_type::f32: return at::kFloat;
    case messages::element_type::f16: return at::kHalf;
    case messages::element_type::bf16: return at::kBFloat16;
    case messages::element_type::i64: return at::kLong;
    case messages::element_type::i32: return at::kInt;
  }
  throw std::invalid_argument("unknown element type");
}

messages::element_type element_type_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return messages::element_type::f32;
    case at::kHalf: return messages::element_type::f16;
    case at::kBFloat16: return messages::element_type::bf16;
    case at::kLong: return messages::element_type::i64;
    case at::kInt: return messages::element_type::i32;
    default: throw std::invalid_argument(std::string("the data plane cannot carry ") + c10::toString(t) + " tensors");
  }
}

#ifdef ORRERY_WITH_CUDA
// Pieces of a device tensor's trip to the host: small enough that
// checksumming the first overlaps most of the copy, large enough that each
// copy runs near bus speed.
constexpr std::size_t device_piece_bytes = std::size_t{1} << 20;

void send_from_device(messages::link& link, messages::frame_descriptor descriptor, const at::Tensor& tensor,
                      std::function<void(const std::string&)> done) {
  struct staged {
    at::Tensor source;  // on the device, contiguous: kept until the copies finish
    at::Tensor host;    // pinned
    std::vector<at::cuda::CUDAEvent> landed;
  };
  auto s = std::make_shared<staged>();
  s->source = tensor.contiguous();
  s->host = at::empty(s->source.sizes(), s->source.options().device(at::kCPU).pinned_memory(true));
  const std::size_t bytes = s->source.nbytes();
  c10::cuda::CUDAGuard guard(s->source.device());
  auto stream = c10::cuda::getCurrentCUDAStream(s->source.device().index());
  auto* to = static_cast<std::byte*>(s->host.data_ptr());
  const auto* from = static_cast<const std::byte*>(s->source.data_ptr());
  s->landed.resize((bytes + device_piece_bytes - 1) / device_piece_bytes);
  for (std::size_t piece = 0; piece < s->landed.size(); ++piece) {
    const std::size_t at = piece * device_piece_bytes, n = std::min(device_piece_bytes, bytes - at);
    auto status = cudaMemcpyAsync(to + at, from + at, n, cudaMemcpyDeviceToHost, stream.stream());
    if (status != cudaSuccess)
      throw std::runtime_error(std::string("copying a tensor from the GPU failed: ") + cudaGetErrorString(status));
    s->landed[piece].record(stream);
  }
  descriptor.type = element_type_of(s->host.scalar_type());
  descriptor.shape = s->host.sizes().vec();
  // The copies run in order on one stream, so the event of the piece that
  // holds byte end - 1 covers every piece before it.
  messages::link::arriving_payload arriving{device_piece_bytes, [s](std::size_t end) {
                                              s->landed[(end - 1) / device_piece_bytes].synchronize();
                                            }};
  link.send(std::move(descriptor), to, s, std::move(done), arriving);
}
#endif

}  // namespace

messages::frame_allocator tensor_allocator(bool pinned) {
#ifndef ORRERY_WITH_CUDA
  pinned = false;
#endif
  return [pinned](const messages::frame_descriptor& d) {
    auto tensor = std::make_shared<at::Tensor>(
        at::empty(d.shape, at::TensorOptions().dtype(scalar_type_of(d.type)).pinned_memory(pinned)));
    auto* data = static_cast<std::byte*>(tensor->data_ptr());
    return std::make_pair(std::shared_ptr<void>(tensor), data);
  };
}

at::Tensor tensor_of(const messages::received_frame& frame) {
  return *static_cast<at::Tensor*>(frame.storage.get());
}

void send_tensor(messages::link& link, messages::frame_descriptor descriptor, const at::Tensor& tensor,
                 std::function<void(const std::string&)> done) {
#ifdef ORRERY_WITH_CUDA
  if (tensor.is_cuda()) return send_from_device(link, std::move(descriptor), tensor, std::move(done));
#endif
  auto held = std::make_shared<at::Tensor>(tensor.contiguous());
  descriptor.type = element_type_of(held->scalar_type());
  descriptor.shape = held->sizes().vec();
  const auto* data = static_cast<const std::byte*>(held->data_ptr());
  link.send(std::move(descriptor), data, held, std::move(done));
}

}  // namespace orrery::actors
