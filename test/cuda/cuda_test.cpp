// orrery on a GPU against orrery on the CPU: shards, KV caches, greedy
// sampling, CUDA graph replays, pinned data-plane transfers and a 2-stage
// pipeline of two node processes sharing one GPU. Tolerances (relative error
// ‖gpu − cpu‖ / ‖cpu‖ of the logits): fp32 ≤ 1e-4 with identical greedy
// tokens, bf16 ≤ 1e-2. Every case is skipped where libtorch sees no GPU;
// the GPU job sets ORRERY_REQUIRE_CUDA=1, which turns a missing GPU into a
// failure instead.

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>

#include "actors/tensor_frame.hpp"
#include "compute/generation.hpp"
#include "compute/model_dir.hpp"
#include "compute/model_init.hpp"
#include "compute/shard.hpp"
#include "compute/thread_pool.hpp"
#include "deploy/cluster/cluster.hpp"
#include "deploy/cluster/local_cluster.hpp"
#include "messages/data_plane.hpp"
#include "test/loopback_cluster.hpp"
#include "test/run_process.hpp"
#include "test/single_device.hpp"

using namespace orrery;
using namespace orrery::compute;
using orrery::test::temp_dir;

namespace {

bool gpu() { return at::hasCUDA(); }

at::Tensor ids(const std::vector<std::int64_t>& v) { return at::tensor(v, at::TensorOptions().dtype(at::kLong)); }

double relative_error(const at::Tensor& out, const at::Tensor& ref) {
  auto a = out.to(at::kCPU).to(at::kDouble), b = ref.to(at::kCPU).to(at::kDouble);
  return (a - b).norm().item<double>() / b.norm().item<double>();
}

// 48 token ids spread over the vocabulary, BOS first.
std::vector<std::int64_t> prompt_of(const llama_config& c) {
  std::vector<std::int64_t> v{c.bos_token_id};
  for (int i = 1; i < 48; ++i) v.push_back((i * 7919) % c.vocab_size);
  return v;
}

// The logits of every prompt position, then of `steps` greedy decode steps.
std::vector<at::Tensor> prefill_and_decode(shard& s, const std::vector<std::int64_t>& prompt, int steps) {
  auto cache = s.new_cache(static_cast<int>(prompt.size()) + steps);
  std::vector<at::Tensor> out{s.forward(ids(prompt), {{&cache, static_cast<int>(prompt.size())}}, logits_rows::all)};
  for (int i = 0; i < steps; ++i) {
    auto next = out.back()[-1].argmax().item<std::int64_t>();
    out.push_back(s.forward(ids({next}), {{&cache, 1}}).to(at::kCPU));
  }
  return out;
}

struct small_model {
  temp_dir dir;
  model_dir model;
  small_model() : model((init_model(dir / "small", llama_config::preset("small"), {5, 0, {}}), dir / "small")) {}
};

shard_options on(const std::string& device, at::ScalarType type, bool graphs = true) {
  shard_options o{device_from_name(device), type, std::make_shared<thread_pool>(2)};
  o.cuda_graphs = graphs;
  return o;
}

}  // namespace

TEST_CASE("the GPU job runs where libtorch sees a GPU") {
  if (std::getenv("ORRERY_REQUIRE_CUDA")) CHECK_MESSAGE(gpu(), "ORRERY_REQUIRE_CUDA is set but libtorch sees no GPU");
}

TEST_CASE("small on cuda:0: fp32 within 1e-4 of the CPU with the same greedy tokens, bf16 within 1e-2" *
          doctest::skip(!gpu())) {
  small_model m;
  const auto prompt = prompt_of(m.model.config());
  const int steps = 32;
  shard cpu(m.model, 0, m.model.config().num_layers, on("cpu", at::kFloat));
  auto reference = prefill_and_decode(cpu, prompt, steps);
  for (auto type : {at::kFloat, at::kBFloat16}) {
    CAPTURE(c10::toString(type));
    const double tolerance = type == at::kFloat ? 1e-4 : 1e-2;
    shard gpu_shard(m.model, 0, m.model.config().num_layers, on("cuda:0", type));
    CHECK(gpu_shard.embedding().is_cuda());
    CHECK((gpu_shard.layers()[0].qkv.scalar_type() == type));
    auto out = prefill_and_decode(gpu_shard, prompt, steps);
    CHECK(relative_error(out[0], reference[0]) <= tolerance);
    if (type != at::kFloat) continue;  // bf16 may pick another token and then leave the reference's path
    for (int i = 1; i <= steps; ++i) {
      CAPTURE(i);
      CHECK(out[i].argmax().item<std::int64_t>() == reference[i].argmax().item<std::int64_t>());
      CHECK(relative_error(out[i], reference[i]) <= tolerance);
    }
  }
}

TEST_CASE("generate on cuda:0 in fp32 (greedy on the device, decode replayed as CUDA graphs) gives the CPU's tokens" *
          doctest::skip(!gpu())) {
  small_model m;
  byte_tokenizer tok;
  generation_request request;
  request.prompt = "the GPU and the CPU agree";
  request.max_new_tokens = 40;  // crosses the 64-position window of the graphs
  request.stop_at_eos = false;
  shard cpu(m.model, 0, m.model.config().num_layers, on("cpu", at::kFloat));
  shard gpu_shard(m.model, 0, m.model.config().num_layers, on("cuda:0", at::kFloat));
  auto expected = generate(cpu, tok, request).tokens;
  auto got = generate(gpu_shard, tok, request).tokens;
  CHECK(got == expected);
  CHECK(got.size() == 40);
}

TEST_CASE("a decode step replayed as a CUDA graph gives the eager step's logits, across windows and caches" *
          doctest::skip(!gpu())) {
  small_model m;
  const auto prompt = prompt_of(m.model.config());
  shard eager(m.model, 0, m.model.config().num_layers, on("cuda:0", at::kFloat, false));
  shard graphed(m.model, 0, m.model.config().num_layers, on("cuda:0", at::kFloat, true));
  for (int round = 0; round < 2; ++round) {  // a second cache captures its own graphs
    CAPTURE(round);
    auto expected = prefill_and_decode(eager, prompt, 90);  // windows 64 and 128
    auto got = prefill_and_decode(graphed, prompt, 90);
    for (std::size_t i = 1; i < got.size(); ++i) {
      CAPTURE(i);
      CHECK(relative_error(got[i], expected[i]) <= 1e-5);
    }
  }
}

TEST_CASE("a GPU tensor and a CPU one cross the data plane in one frame bit for bit, into pinned memory" *
          doctest::skip(!gpu())) {
  std::mutex mutex;
  std::condition_variable arrived;
  std::vector<messages::received_frame> frames;
  messages::data_plane plane({}, actors::tensor_allocator(/*pinned=*/true),
                             [&](messages::received_frame f) {
                               std::lock_guard<std::mutex> guard(mutex);
                               frames.push_back(std::move(f));
                               arrived.notify_all();
                             },
                             [](const std::string&, const std::string&) {});
  auto link = plane.connect("127.0.0.1", plane.port(), std::chrono::seconds(5));
  // 5.5 MiB of bf16: several 1 MiB pieces and a partial one.
  auto sent = at::randn({1441, 2001}, at::TensorOptions().device(at::kCUDA)).to(at::kBFloat16);
  auto tokens = at::arange(1441, at::kLong);  // on the host: packed behind the device tensor's pieces
  std::string problem = "not done";
  std::mutex done_mutex;
  actors::send_tensors(*link, {}, {{messages::tensor_role::hidden, sent}, {messages::tensor_role::tokens, tokens}},
                       [&](const std::string& error) {
                         std::lock_guard<std::mutex> guard(done_mutex);
                         problem = error;
                       });
  std::unique_lock<std::mutex> lock(mutex);
  REQUIRE(arrived.wait_for(lock, std::chrono::seconds(10), [&] { return !frames.empty(); }));
  auto received = actors::tensor_frame_of(frames.front());
  const auto& hidden = received.tensor(messages::tensor_role::hidden);
  CHECK(hidden.is_pinned());
  CHECK((hidden.scalar_type() == at::kBFloat16));
  CHECK(at::equal(hidden, sent.to(at::kCPU)));
  CHECK(at::equal(received.tensor(messages::tensor_role::tokens), tokens));
  std::lock_guard<std::mutex> guard(done_mutex);
  CHECK(problem.empty());
}

TEST_CASE("a 2-stage pipeline of two node processes sharing cuda:0 matches the CPU: fp32 tokens and 1e-4, bf16 1e-2" *
          doctest::skip(!gpu())) {
  test::model_fixture f;
  const std::string prompt = "two stages, one GPU";
  auto reference = test::single_device(f.dir / "m", prompt, 33);
  auto prefill_reference = test::single_device(f.dir / "m", prompt, 1);
  for (std::string dtype : {"fp32", "bf16"}) {
    CAPTURE(dtype);
    auto t = deploy::load_topology(test::write_topology(f.dir, "gpu-" + dtype, {{0, 2}, {2, 4}}, 3000,
                                                        "    device: cuda:0\n    dtype: " + dtype + "\n"));
    REQUIRE(t.nodes[0].device == "cuda:0");
    deploy::local_cluster cluster(t, f.dir / ("logs-" + dtype), test::orrery_binary());
    cluster.wait_ready(std::chrono::seconds(60));
    deploy::pipeline_client client(t);
    if (dtype == "fp32") {
      auto run = client.generate({test::greedy_request(prompt, 33)});
      CHECK(run[0].tokens == reference.tokens);
      CHECK(test::relative_error(run[0].final_logits, reference.final_logits) <= 1e-4);
    } else {
      auto run = client.generate({test::greedy_request(prompt, 1)});
      CHECK(test::relative_error(run[0].final_logits, prefill_reference.final_logits) <= 1e-2);
    }
  }
}
