#pragma once
// Inside the driver (actors/driver.hpp): the state of one client session and
// what its two halves share. actors/driver.cpp serves requests (prompts in,
// sampled tokens back, deadlines) and is the actor; actors/driver_layout.cpp
// loads and wires layouts and recovers from node failures. Only those two
// files include this.

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <deque>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/driver.hpp"
#include "actors/router.hpp"
#include "compute/generation.hpp"
#include "compute/llama_config.hpp"
#include "compute/prompt_lookup.hpp"
#include "compute/text/tokenizer.hpp"
#include "messages/data_plane.hpp"
#include "messages/errors.hpp"
#include "messages/frame.hpp"
#include "messages/log.hpp"
#include "messages/types.hpp"
#include "planning/migration.hpp"

namespace orrery::actors::driver_detail {

using clock_type = std::chrono::steady_clock;

/// A failed layout change is retried this many times (after two heartbeat
/// deadlines, by when a node that failed it has a verdict) before the driver
/// gives up.
constexpr int layout_retries = 3;

/// A pass through the pipeline whose tokens the last stage samples.
struct trip {
  std::uint32_t step = 0;
  std::uint32_t position = 0;
  std::vector<compute::token_id> tokens;
  /// Its last `drafts` tokens are guesses; all of them: a window sent ahead.
  std::uint16_t drafts = 0;
  /// The rows the last stage samples (at most this many tokens come back).
  int rows() const { return std::min<int>(static_cast<int>(tokens.size()), drafts + 1); }
};

/// What an outline's request keeps while its points decode.
struct outline_request {
  int max_points = 0;  ///< > 0: this request writes an outline
  int point_tokens = 0;
  int max_drafts = 0;
  bool stop_at_eos = true;
  bool expanding = false;  ///< the outline is written; its points decode
  clock_type::time_point expanded{};
  std::vector<std::uint64_t> points;  ///< their requests, in order
  std::vector<std::vector<compute::token_id>> headers, texts;
  std::vector<bool> done;
  std::size_t shown = 0;  ///< the point streaming now; those before it are shown
  std::size_t left = 0;
};

struct active_request {
  /// Its tokens so far, its step and when it ends: as local generation keeps them.
  compute::generation_progress progress;
  /// Travels with every frame: the last stage samples.
  messages::sampling_settings sampling;
  caf::typed_response_promise<generation_summary> promise;
  token_listener sink;  // whoever asked
  clock_type::time_point deadline;  // the current step fails if no answer arrives by then
  std::uint64_t tag = 0;
  /// Index into recoveries of the replay this request waits on, or -1.
  int replayed_by = -1;
  /// Pipelined prefill: the prompt's chunk lengths (one chunk when empty).
  std::vector<std::int32_t> prefill_chunks;
  /// Speculative decoding: where guesses come from, the trips in flight
  /// (oldest first; a second only with overlap_windows), and the counts for
  /// the summary.
  compute::draft_window drafts{0};
  bool overlap_windows = false;
  std::deque<trip> trips;
  std::int32_t decode_trips = 0, drafted = 0, accepted = 0, cancelled_trips = 0;
  /// Outline-based decoding: the outline's request writes the outline, then
  /// waits for its points, which are requests of their own (no promise, no
  /// listener) that continue its sequence.
  outline_request outline{};
  std::uint64_t parent = 0;  ///< a point: its outline's request
  std::size_t point = 0;     ///< a point: its index in the outline
};

/// A node of the cluster, in the order the placement lists them; its index
/// is also the id of the one stage it runs.
struct cluster_node {
  placement_stage spec;
  bool alive = true;
  std::uint64_t memory_bytes = 0;
  /// The dtype it holds weights in, as it reported (fp32 until it has).
  std::string dtype = "fp32";
};

struct driver_state {
  driver_config config;
  /// This client session's id on every node: its stages, frames and
  /// incarnations are its own. Drawn at random, never 0 (link probes).
  std::uint64_t session = 0;
  /// The content of the model as this client holds it; every node checks its
  /// own copy against it before loading a layer.
  std::vector<model_file> model_files;
  compute::llama_config model;
  std::shared_ptr<compute::tokenizer> tok;
  /// Takes the session's sampled tokens off the driver's data plane.
  std::shared_ptr<router> routes;
  std::shared_ptr<messages::data_plane> plane;
  std::vector<cluster_node> nodes;
  /// The layout serving now (device = node index), and its loaded stages.
  std::vector<planning::stage> layout;
  std::vector<stage_ready> ready;
  /// To the first stage's members (one, unless it is a group).
  std::vector<std::shared_ptr<messages::link>> first_links;
  /// Every layout change takes the next number; answers to an older change
  /// and frames of an older layout are ignored.
  std::uint64_t deployment = 0;
  bool deployed = false;
  bool switching = false;  // a layout change is under way: hold requests
  int retries_left = layout_retries;
  std::string broken;  // why the pipeline cannot serve any more, while it cannot
  bool awaiting_nodes = false;  // too few nodes: requests are held for a grace period
  std::vector<recovery_event> recoveries;
  std::uint64_t next_request = 1;
  std::map<std::uint64_t, active_request> requests;
  bool watching_deadlines = false;
  static inline const char* name = "orrery.driver";
};

using driver_ptr = driver_actor::stateful_pointer<driver_state>;

/// The driver's logger; every line names the session (session_of).
inline const logger& log(driver_ptr) {
  static const logger driver_log("driver");
  return driver_log;
}

inline std::string session_of(driver_ptr self) { return "session " + std::to_string(self->state.session) + ": "; }

// -- serving requests (actors/driver.cpp) -------------------------------------

/// Ends request `id` with its summary or its error, and frees its KV caches.
void finish(driver_ptr self, std::uint64_t id, caf::expected<generation_summary> outcome);
/// Ends every request in flight with `why`.
void fail_all(driver_ptr self, const std::string& why);
/// Sends request `id`'s whole sequence so far (prompt and generated tokens)
/// into the pipeline from position 0, in its prefill chunks, and arms its
/// deadline: how a request starts, and how a replay rebuilds its caches.
void send_sequence(driver_ptr self, std::uint64_t id);

// -- layout control and recovery (actors/driver_layout.cpp) -------------------

/// Surveys the nodes, then loads and wires the first layout; delivers to
/// `promise` once serving, or the error.
void deploy(driver_ptr self, caf::response_promise promise);
/// A death verdict (or the end of a grace period): move the lost layers and replay.
void recover(driver_ptr self, bool grace_over);
void on_verdict(driver_ptr self, node_verdict& verdict);
/// The pipeline positions of `layout`: indices of its entries, in pipeline
/// order, a group's members together (its leader first).
std::vector<std::vector<std::size_t>> positions_of(driver_ptr self, const std::vector<planning::stage>& layout);


}  // namespace orrery::actors::driver_detail
