#include "actors/tensor_frame.hpp"

#include <ATen/ATen.h>

#include <stdexcept>

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

}  // namespace

messages::frame_allocator tensor_allocator() {
  return [](const messages::frame_descriptor& d) {
    auto tensor = std::make_shared<at::Tensor>(
        at::empty(d.shape, at::TensorOptions().dtype(scalar_type_of(d.type))));
    auto* data = static_cast<std::byte*>(tensor->data_ptr());
    return std::make_pair(std::shared_ptr<void>(tensor), data);
  };
}

at::Tensor tensor_of(const messages::received_frame& frame) {
  return *static_cast<at::Tensor*>(frame.storage.get());
}

void send_tensor(messages::link& link, messages::frame_descriptor descriptor, const at::Tensor& tensor,
                 std::function<void(const std::string&)> done) {
  auto held = std::make_shared<at::Tensor>(tensor.to(at::kCPU).contiguous());
  descriptor.type = element_type_of(held->scalar_type());
  descriptor.shape = held->sizes().vec();
  const auto* data = static_cast<const std::byte*>(held->data_ptr());
  link.send(std::move(descriptor), data, held, std::move(done));
}

}  // namespace orrery::actors
