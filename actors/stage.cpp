#include "actors/stage.hpp"

#include <ATen/ATen.h>
#include <caf/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <map>
#include <vector>

#include "actors/model_identity.hpp"
#include "actors/shard_cache.hpp"
#include "actors/tensor_frame.hpp"
#include "compute/cpu_threads.hpp"
#include "compute/error_text.hpp"
#include "compute/model_dir.hpp"
#include "compute/shard.hpp"
#include "messages/data_plane.hpp"
#include "messages/types.hpp"

namespace orrery::actors {

namespace {

using clock_type = std::chrono::steady_clock;

// Written by the data plane's io thread when a send completes.
struct transfer_counters {
  std::atomic<std::uint64_t> nanoseconds{0};
  std::atomic<std::uint64_t> bytes{0};
};

struct stage_state {
  stage_context context;
  stage_assignment assignment;
  /// The stage's layers in order, as contiguous shards: a recovery extends a
  /// stage by loading only the layers it lacks, beside those it has.
  std::vector<std::shared_ptr<shared_shard>> shards;
  /// model_fingerprint of the model the shards belong to.
  std::string fingerprint;
  /// Per request, one KV cache per shard.
  std::map<std::uint64_t, std::vector<compute::kv_cache>> caches;
  std::shared_ptr<messages::link> next;
  next_hop hop;
  /// Frames of any other deployment are from a pipeline layout that no
  /// longer exists (a resumed node's late output, say) and are dropped.
  std::uint64_t deployment = 0;
  std::uint64_t stale_frames = 0;
  caf::actor driver;
  std::uint64_t frames = 0;
  double compute_ms = 0;
  std::shared_ptr<transfer_counters> transfers = std::make_shared<transfer_counters>();
  static inline const char* name = "orrery.stage";

  std::string where() const {
    return "node '" + context.node + "' stage " + std::to_string(assignment.stage) + " (layers [" +
           std::to_string(assignment.first_layer) + ", " + std::to_string(assignment.last_layer) + "))";
  }
};

using stage_actor_ptr = caf::stateful_actor<stage_state>*;

caf::error stage_error(const std::string& text) {
  return caf::make_error(caf::sec::runtime_error, text);
}

// Throws when the node's copy of the model is not the client's: a truncated,
// corrupt or other-version copy would compute other text with exit code 0.
void check_model_copy(const stage_assignment& assignment) {
  if (assignment.model_files.empty()) throw std::runtime_error("the assignment names no model files to check the copy against");
  const auto problem = model_difference(assignment.model_files, identify_model(assignment.model_dir));
  if (!problem.empty())
    throw std::runtime_error("its copy of the model at " + assignment.model_dir + " differs from the client's: " + problem);
}

// Gives the stage exactly the layers of `assignment`: its shards of the same
// model that lie inside the new range stay, the rest go, and the gaps between
// them come from the node's shard cache (shared with other sessions, or
// loaded from the model directory; a shard that only overlaps the new range
// is dropped and its part of the range loaded again). A failed load leaves
// the stage refusing frames until a load succeeds.
caf::result<stage_ready> load(stage_actor_ptr self, stage_assignment& assignment) {
  auto& s = self->state;
  const int first = assignment.first_layer, last = assignment.last_layer;
  const auto fingerprint = model_fingerprint(assignment.model_files);
  auto kept = [&](const std::shared_ptr<shared_shard>& held) {
    return s.fingerprint == fingerprint && held->shard().first_layer() >= first && held->shard().last_layer() <= last;
  };
  // What goes is released first: its bytes count against the node's budget.
  s.shards.erase(std::remove_if(s.shards.begin(), s.shards.end(), [&](const auto& held) { return !kept(held); }),
                 s.shards.end());
  s.fingerprint = fingerprint;
  // From here on frames of the old layout (say, the late output of a stage
  // that died) meet layers they were not computed for: drop them.
  s.deployment = assignment.deployment;
  s.caches.clear();  // requests are replayed into the new layout
  s.assignment = assignment;
  int loaded_layers = 0;
  std::uint64_t loaded_bytes = 0;
  try {
    check_model_copy(assignment);
    compute::model_dir model(assignment.model_dir);
    compute::shard_options options{compute::device_from_name(s.context.device),
                                   compute::scalar_type_from_name(s.context.dtype),
                                   compute::configure_cpu_threads(std::max(1, assignment.threads))};
    std::vector<std::pair<int, int>> held;
    for (const auto& shard : s.shards) held.emplace_back(shard->shard().first_layer(), shard->shard().last_layer());
    std::sort(held.begin(), held.end());
    held.emplace_back(last, last);
    int at = first;
    for (const auto& [begin, end] : held) {
      if (at < begin) {
        bool loaded = false;
        s.shards.push_back(s.context.weights->acquire(fingerprint, model, at, begin, options, loaded));
        if (loaded) {  // what another session holds already did not have to move
          loaded_layers += begin - at;
          loaded_bytes += s.shards.back()->shard().weight_bytes();
        }
      }
      at = end;
    }
  } catch (const std::exception& e) {
    s.shards.clear();
    s.next.reset();
    const auto problem = "cannot load layers [" + std::to_string(first) + ", " + std::to_string(last) +
                         "): " + compute::without_backtrace(e.what());
    std::cerr << "node '" << s.context.node << "': " << problem << std::endl;
    return stage_error(problem);
  }
  std::sort(s.shards.begin(), s.shards.end(),
            [](const auto& a, const auto& b) { return a->shard().first_layer() < b->shard().first_layer(); });
  std::uint64_t weight_bytes = 0;
  for (const auto& shard : s.shards) weight_bytes += shard->shard().weight_bytes();
  return stage_ready{caf::actor_cast<caf::actor>(self), assignment.stage, s.context.node, s.context.data_host,
                     s.context.data_port, weight_bytes, loaded_layers, loaded_bytes};
}

void fail_request(stage_actor_ptr self, std::uint64_t request, const std::string& problem) {
  self->state.caches.erase(request);
  if (self->state.driver) self->send(self->state.driver, request_failure{request, self->state.where() + ": " + problem, false});
}

at::Tensor forward(stage_state& s, std::uint64_t request, const at::Tensor& input) {
  auto cache = s.caches.find(request);
  if (cache == s.caches.end()) {
    std::vector<compute::kv_cache> fresh;
    for (const auto& shard : s.shards) fresh.push_back(shard->shard().new_cache(shard->shard().config().max_position_embeddings));
    cache = s.caches.emplace(request, std::move(fresh)).first;
  }
  const int tokens = static_cast<int>(input.size(0));
  at::Tensor x = input;
  for (std::size_t i = 0; i < s.shards.size(); ++i) x = s.shards[i]->forward(x, {{&cache->second[i], tokens}});
  return x;
}

void process(stage_actor_ptr self, tensor_frame& frame) {
  auto& s = self->state;
  const auto& d = frame.descriptor;
  if (d.deployment != s.deployment) {
    if (s.stale_frames++ == 0)
      std::cerr << s.where() << ": dropping frames of deployment " << d.deployment << " (now " << s.deployment << ")\n";
    return;
  }
  if (s.shards.empty() || !s.next) return fail_request(self, d.request_id, "received a frame before it was deployed");
  at::Tensor out;
  auto start = clock_type::now();
  try {
    out = forward(s, d.request_id, frame.tensor);
  } catch (const std::exception& e) {
    return fail_request(self, d.request_id, e.what());
  }
  s.compute_ms += std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
  ++s.frames;
  messages::frame_descriptor out_d;
  out_d.request_id = d.request_id;
  out_d.session = d.session;
  out_d.deployment = d.deployment;
  out_d.step = d.step;
  out_d.source_stage = s.assignment.stage;
  out_d.destination_stage = s.hop.stage;
  auto sent = clock_type::now();
  auto bytes = static_cast<std::uint64_t>(out.nbytes());
  send_tensor(*s.next, out_d, out,
              // Weak: a frame stuck in a dead link must not keep the driver alive.
              [transfers = s.transfers, sent, bytes, weak = caf::actor_cast<caf::actor_addr>(s.driver),
               request = d.request_id, where = s.where()](const std::string& error) {
                transfers->nanoseconds += static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - sent).count());
                transfers->bytes += bytes;
                if (auto driver = caf::actor_cast<caf::actor>(weak); driver && !error.empty())
                  caf::anon_send(driver, request_failure{request, where + ": " + error, true});
              });
}

caf::behavior stage_actor(stage_actor_ptr self, stage_context context) {
  self->state.context = std::move(context);
  return {
      [self](load_stage_atom, stage_assignment& assignment) { return load(self, assignment); },
      [self](connect_next_atom, std::uint64_t deployment, next_hop& hop, caf::actor& driver,
             std::int64_t timeout_ms) -> caf::result<void> {
        auto& s = self->state;
        if (deployment != s.deployment) return stage_error(s.where() + ": told to wire deployment " + std::to_string(deployment) +
                                                           " but loaded for " + std::to_string(s.deployment));
        s.driver = driver;
        const bool same_hop = s.next && s.next->is_open() && hop.host == s.hop.host && hop.port == s.hop.port;
        s.hop = hop;
        if (same_hop) return caf::unit;
        try {
          s.next = s.context.data_plane->connect(hop.host, hop.port, std::chrono::milliseconds(timeout_ms));
        } catch (const std::exception& e) {
          s.next.reset();
          return stage_error(s.where() + ": cannot reach its next hop: " + e.what());
        }
        return caf::unit;
      },
      [self](tensor_frame& frame) { process(self, frame); },
      [self](end_request_atom, std::uint64_t request) { self->state.caches.erase(request); },
      [self](stats_atom) {
        const auto& s = self->state;
        return stage_stats{s.assignment.stage,
                           s.context.node,
                           s.assignment.first_layer,
                           s.assignment.last_layer,
                           s.frames,
                           s.compute_ms,
                           static_cast<double>(s.transfers->nanoseconds.load()) / 1e6,
                           s.transfers->bytes.load()};
      },
  };
}

}  // namespace

caf::actor spawn_stage(caf::actor_system& system, stage_context context) {
  return system.spawn<caf::detached>(stage_actor, std::move(context));
}

}  // namespace orrery::actors
