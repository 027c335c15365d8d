#include "compute/decode_graph.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <stdexcept>

#include "compute/kv_cache.hpp"

#ifdef ORRERY_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <memory>
#endif

namespace orrery::compute {

int graph_window(int position, int capacity) {
  int window = 64;
  while (window < position + 1) window *= 2;
  return std::min(window, capacity);
}

#ifdef ORRERY_WITH_CUDA

bool cuda_graphs_built() { return true; }

struct captured_step {
  at::cuda::CUDAGraph graph;
  at::Tensor input;     // copied into before each replay
  at::Tensor position;  // int64 [1], filled before each replay
  at::Tensor output;    // overwritten by each replay
};

class decode_graphs {
 public:
  explicit decode_graphs(const void* owner) : owner(owner) {}
  const void* owner;
  std::map<int, std::unique_ptr<captured_step>> by_window;
};

namespace {

// Captures `step` on a side stream (CUDA graphs cannot capture the default
// stream). The run before the capture computes this very step and lets
// cuBLAS set up its handles and workspaces, which a capture must not do; the
// replay after it writes the same KV row again.
std::unique_ptr<captured_step> capture(const at::Tensor& input, int position, int window, const graphable_step& step) {
  auto captured = std::make_unique<captured_step>();
  const auto device = input.device();
  captured->input = input.clone();
  captured->position = at::full({1}, position, at::TensorOptions().dtype(at::kLong).device(device));
  c10::cuda::CUDAGuard device_guard(device);
  auto caller = c10::cuda::getCurrentCUDAStream(device.index());
  auto side = c10::cuda::getStreamFromPool(false, device.index());
  at::cuda::CUDAEvent ready;
  ready.record(caller);
  ready.block(side);
  {
    c10::cuda::CUDAStreamGuard stream_guard(side);
    step(captured->input, captured->position, window);
    // Thread-local capture: other stages of this process may use the GPU
    // from their own threads meanwhile.
    captured->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
    captured->output = step(captured->input, captured->position, window);
    captured->graph.capture_end();
  }
  at::cuda::CUDAEvent done;
  done.record(side);
  done.block(caller);
  return captured;
}

}  // namespace

at::Tensor replay_decode_step(kv_cache& cache, const void* owner, const at::Tensor& input, const graphable_step& step) {
  auto& graphs = cache.graphs();
  if (!graphs || graphs->owner != owner) graphs = std::make_shared<decode_graphs>(owner);
  const int position = cache.length();
  const int window = graph_window(position, cache.capacity());
  auto& slot = graphs->by_window[window];
  if (!slot) {
    slot = capture(input, position, window, step);
  } else {
    slot->input.copy_(input, /*non_blocking=*/true);
    slot->position.fill_(position);
  }
  slot->graph.replay();
  return slot->output.clone();
}

#else

bool cuda_graphs_built() { return false; }

class decode_graphs {};

at::Tensor replay_decode_step(kv_cache&, const void*, const at::Tensor&, const graphable_step&) {
  throw std::logic_error("this build of orrery has no CUDA: decode steps cannot be replayed as CUDA graphs");
}

#endif

}  // namespace orrery::compute
