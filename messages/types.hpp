#pragma once
// Every control message orrery's actors exchange, with its `inspect`, in the
// project's one CAF type-ID block. A host application speaks orrery after one
// call: orrery::register_types(cfg). Tensor bytes never travel in these
// messages (ARCHITECTURE.md: a 16 MiB CAF message costs ~70 ms and delays
// heartbeats); they carry descriptors, addresses and small results only.

#include <caf/actor.hpp>
#include <caf/atom.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/type_id.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "base/tensor_slice.hpp"
#include "messages/frame.hpp"

namespace caf {
class actor_system_config;
}

namespace orrery {

/// One file of a model directory as its content: name, size and
/// compute::content_hash. A node compares its own copy's files with the
/// client's before it loads a layer.
struct model_file {
  std::string name;
  std::uint64_t bytes = 0;
  std::uint64_t hash = 0;
};

/// A stage that trains (actors/training_stage.hpp) rather than serves: it
/// holds a private float32 copy of its layers and an AdamW optimizer.
struct training_settings {
  bool enabled = false;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  /// Target tokens in a step's global batch: each micro-batch's backward
  /// starts from its summed loss over this (compute/training/pass.hpp).
  std::uint64_t batch_tokens = 1;
  /// A step's micro-batches and their rows: a member that has run its last
  /// backward of a step adds up its group's gradients then, while earlier
  /// stages still run theirs (0: at the client's gradient norm request).
  std::uint32_t micro_batches = 0;
  std::uint32_t micro_batch_sequences = 0;
};

/// Asks a node to hold layers [first_layer, last_layer) of the model whose
/// files are `model_files` (the copy at `model_dir` on the node must hold the
/// same bytes) as pipeline stage `stage` of client session `session`, in that
/// session's deployment `deployment` (the pipeline layout, renumbered by
/// every recovery); answered with stage_ready. Every session has stages of
/// its own (and they share the node's weights where they hold the same
/// layers of the same model). Sent again for a stage that exists, it changes
/// the stage's layers, loading only those it does not hold.
struct stage_assignment {
  std::uint64_t session = 0;
  std::uint64_t deployment = 0;
  std::uint16_t stage = 0;
  std::int32_t first_layer = 0;
  std::int32_t last_layer = 0;
  std::string model_dir;
  std::vector<model_file> model_files;
  std::string device;
  std::int32_t threads = 1;
  /// A stage run by a tensor-parallel group: the members' node names in ring
  /// order (the first is the leader: it holds the head, samples and sends
  /// on), this member's rank among them and the heads and columns it holds
  /// (base/tensor_slice.hpp). Empty or one name: a stage alone, whole layers.
  std::vector<std::string> group{};
  std::int32_t rank = 0;
  tensor_slice slice{};
  /// Every member's share of a pass's tokens under sequence parallelism and
  /// of the LM head's rows, in ring order: their MLP column counts, which
  /// the topology split by speed.
  std::vector<std::int32_t> shares{};
  group_collectives collectives{};
  /// How long a member waits for each piece of its ring (the driver's
  /// request timeout). A member that died mid-pass holds the others only
  /// until the recovery assigns the next deployment.
  std::int64_t collective_deadline_ms = 10000;
  training_settings training{};
};

/// A loaded stage and where its data plane accepts frames.
struct stage_ready {
  caf::actor stage;
  std::uint16_t stage_index = 0;
  std::string node;
  std::string data_host;
  std::uint16_t data_port = 0;
  std::uint64_t weight_bytes = 0;
  /// Layers (and their bytes) this assignment loaded: what had to move.
  std::int32_t layers_loaded = 0;
  std::uint64_t bytes_loaded = 0;
};

/// Where a stage sends what it computes: the next stage (`stage`; one hop
/// per member when it is a group), or, from the stage that holds the
/// model's head, the session's driver (its sampled tokens; `stage` unused).
/// Also a group member's ring neighbour (`stage` unused).
struct next_hop {
  std::string host;
  std::uint16_t port = 0;
  std::uint16_t stage = 0;
};

/// What a node reports about itself.
struct node_info {
  std::string name;
  std::string device;
  /// The dtype the node holds weights in (`fp32`, `fp16`, `bf16`).
  std::string dtype;
  std::uint64_t memory_bytes = 0;  ///< 0: no budget set
  std::int32_t threads = 1;
  std::string data_host;
  std::uint16_t data_port = 0;
  /// Drawn afresh when the process starts and when it is fenced, so a
  /// restarted or resumed node is never mistaken for what it was. Each
  /// session has its own (a fence drops one session's stages only).
  std::uint64_t incarnation = 0;
};

/// A node's sign of life to each supervisor watching it.
struct heartbeat {
  std::string node;
  std::uint64_t incarnation = 0;
  std::uint64_t sequence = 0;
};

/// A supervisor's verdict on a member, sent to its subscriber: dead (with the
/// reason), or alive again under a new incarnation (with its handle).
struct node_verdict {
  std::string node;
  std::uint64_t incarnation = 0;
  bool alive = false;
  std::string reason;
  caf::actor handle;
  /// What the node reported when it was admitted (its memory and dtype).
  node_info info;
};

/// Milliseconds since the Unix epoch: the clock of recovery_event, which
/// other processes (a benchmark that killed a node) compare with their own.
inline std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// One recovery of a driver's pipeline.
struct recovery_event {
  std::string node;    ///< whose loss (or return) caused it
  std::string reason;  ///< the verdict
  std::int64_t verdict_unix_ms = 0;
  /// From the verdict to the first token of a replayed request (-1: none yet).
  double recover_ms = -1;
  std::int32_t layers_moved = 0;
  std::uint64_t bytes_moved = 0;
  std::int32_t requests_replayed = 0;
  std::uint64_t deployment = 0;
};

/// One stage's work so far.
struct stage_stats {
  std::uint16_t stage = 0;
  std::string node;
  std::int32_t first_layer = 0;
  std::int32_t last_layer = 0;
  std::uint64_t frames = 0;
  double compute_ms = 0;   ///< in the shard's forward passes
  double transfer_ms = 0;  ///< from handing a frame to the data plane until it was written
  std::uint64_t bytes_sent = 0;
  /// A group member's: tensor bytes it sent its ring's next member.
  std::uint64_t collective_bytes_sent = 0;
  /// A group member's frames whose pass ran in sequence parallelism.
  std::uint64_t sequence_parallel_frames = 0;
  /// A group member's time waiting for its ring's pieces (part of compute_ms).
  double collective_wait_ms = 0;
  /// Requests whose KV caches the stage holds now.
  std::uint64_t requests_held = 0;
  /// Frames that ran as part of a batch of several requests' decode steps
  /// (continuous batching), and those batches.
  std::uint64_t batched_frames = 0;
  std::uint64_t batches = 0;
};

/// A generation request to a driver; the reply is a generation_summary, and
/// every token is streamed to the requester as a token_event first.
struct generate_request {
  std::string prompt;
  std::int32_t max_new_tokens = 64;
  /// How the last stage samples; with return_logits, the last token's logits
  /// row comes back (generation_summary::final_logits) for checks against a
  /// single device, otherwise only token ids cross the network.
  messages::sampling_settings sampling;
  bool stop_at_eos = true;
  /// Echoed in this request's token_events and summary, so a client with
  /// several requests in flight knows which is which.
  std::uint64_t tag = 0;
  /// Pipelined prefill (Jupiter): the lengths of the chunks BOS + the prompt
  /// is sent in, one behind the other; they must add up to its tokens.
  /// Empty: one chunk.
  std::vector<std::int32_t> prefill_chunks;
  /// Speculative decoding: at most this many guesses (from prompt lookup)
  /// verified per trip through the pipeline; 0 decodes a token per trip.
  std::int32_t max_drafts = 0;
  /// With guesses: send the next window (guesses only, assuming every guess
  /// of the window before it is kept) while the one before it is verified,
  /// PipeInfer-style; the head drops it when that window kept fewer.
  bool overlap_windows = false;
  /// Outline-based parallel decoding (opt-in: it changes the text): first an
  /// outline of at most `outline_tokens` tokens from compute::outline_prompt,
  /// then each of its points (at most this many) as a sequence of its own
  /// sharing the outline's KV, max_new_tokens each, side by side; the answer
  /// is the outline, then each point's header and text in order. 0: off.
  std::int32_t outline_points = 0;
  std::int32_t outline_tokens = 32;
};

struct token_event {
  std::uint64_t tag = 0;
  std::int32_t token = 0;
  std::string text;
};

struct generation_summary {
  std::uint64_t tag = 0;
  std::vector<std::int32_t> prompt_tokens;
  std::vector<std::int32_t> tokens;
  double prefill_ms = 0;
  double decode_ms = 0;
  bool stopped_at_eos = false;
  /// The logits the last token was sampled from (for checks against a
  /// single-device run); only when the request asked for them.
  std::vector<float> final_logits;
  /// Trips through the pipeline after the first token, the guesses they
  /// carried and how many of those were kept (speculative decoding).
  std::int32_t decode_trips = 0;
  std::int32_t drafted = 0;
  std::int32_t accepted = 0;
  /// Windows sent ahead that the window before them invalidated (counted in
  /// decode_trips; their guesses in drafted). Generated tokens after the
  /// first = decode_trips - cancelled_trips + accepted.
  std::int32_t cancelled_trips = 0;
  /// Outline points decoded side by side (0 without --outline; 1 when the
  /// outline had fewer than two points and the answer went on as one).
  std::int32_t outline_points = 0;
};

/// What a router (actors/router.hpp) did with the frames it was given.
struct route_counts {
  std::uint64_t delivered = 0;
  /// Routes of a kind this build does not know.
  std::uint64_t unknown_route = 0;
  /// Routes whose handler is not there (a dropped stage, a group never formed).
  std::uint64_t no_handler = 0;
  std::string last_rejection;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, route_counts& x) {
  return f(caf::meta::type_name("route_counts"), x.delivered, x.unknown_route, x.no_handler, x.last_rejection);
}

/// A stage could not serve a request; sent to the deployment's driver. A
/// transient failure (a link to a neighbour broke) is left to the supervisor's
/// verdict and the recovery it starts; any other (the context is full) fails
/// the request. Request 0: a link of the driver's own data plane broke.
struct request_failure {
  std::uint64_t request = 0;
  std::string problem;
  bool transient = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, request_failure& x) {
  return f(caf::meta::type_name("request_failure"), x.request, x.problem, x.transient);
}

/// How a training stage is wired. Each pipeline stage is a data-parallel
/// group of one or more members holding the same layers; each micro-batch is
/// split by rows across every stage's members, training_rows(k, rows,
/// shares) (actors/training_stage.hpp), so each member knows which rows it
/// runs, where each of them goes on and where their gradients go back:
/// - shares: its own group's (empty: a stage of one);
/// - next: the next stage's members and shares (none from the stage with
///   the head); previous: the previous stage's (none from the first stage);
/// - ring: the next member of its own group, which all-reduces the
///   gradients before each step (port 0: a group of one);
/// - tied: the next member of the ring of every holder of a tied embedding
///   (the first stage's members, then the last stage's), which adds their
///   parts of its gradient (port 0: none);
/// - client: who hears of each micro-batch.
struct training_links {
  std::vector<std::int32_t> shares;
  std::vector<next_hop> next;
  std::vector<std::int32_t> next_shares;
  std::vector<next_hop> previous;
  std::vector<std::int32_t> previous_shares;
  next_hop ring;
  next_hop tied;
  std::vector<std::string> tied_members;
  std::int32_t tied_rank = 0;
  caf::actor client;
  std::int64_t timeout_ms = 3000;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, training_links& x) {
  return f(caf::meta::type_name("training_links"), x.shares, x.next, x.next_shares, x.previous, x.previous_shares, x.ring, x.tied,
           x.tied_members, x.tied_rank, x.client, x.timeout_ms);
}

/// From the stage with the head: a micro-batch's summed loss (training or
/// evaluation).
struct micro_batch_loss {
  std::uint64_t request = 0;
  double loss_sum = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, micro_batch_loss& x) {
  return f(caf::meta::type_name("micro_batch_loss"), x.request, x.loss_sum);
}

/// From the stage with the embedding: a micro-batch's backward is through
/// the whole pipeline (another may be admitted).
struct micro_batch_done {
  std::uint64_t request = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, micro_batch_done& x) {
  return f(caf::meta::type_name("micro_batch_done"), x.request);
}

/// What a training stage wrote of a checkpoint: its weights' file, the HF
/// names in it and their bytes (for the index).
struct checkpoint_part {
  std::string file;
  std::vector<std::string> tensors;
  std::uint64_t bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, checkpoint_part& x) {
  return f(caf::meta::type_name("checkpoint_part"), x.file, x.tensors, x.bytes);
}

/// What a training stage backed up (actors/backup_store.hpp): the round (its
/// optimizer steps), the names of its parameters and their bytes (weights
/// and moments).
struct backup_made {
  std::int64_t round = 0;
  std::vector<std::string> names;
  std::uint64_t bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, backup_made& x) {
  return f(caf::meta::type_name("backup_made"), x.round, x.names, x.bytes);
}

/// A node sends parameters of a backup it holds to a stage that restores
/// them: stage `to.stage` of `session` (deployment `deployment`) at
/// to.host:to.port.
struct backup_transfer {
  std::uint64_t run = 0;
  std::int64_t round = 0;
  std::vector<std::string> names;
  next_hop to;
  std::uint64_t session = 0;
  std::uint64_t deployment = 0;
  std::int64_t timeout_ms = 0;  // to connect
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, backup_transfer& x) {
  return f(caf::meta::type_name("backup_transfer"), x.run, x.round, x.names, x.to, x.session, x.deployment,
           x.timeout_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, heartbeat& x) {
  return f(caf::meta::type_name("heartbeat"), x.node, x.incarnation, x.sequence);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_verdict& x) {
  return f(caf::meta::type_name("node_verdict"), x.node, x.incarnation, x.alive, x.reason, x.handle, x.info);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, recovery_event& x) {
  return f(caf::meta::type_name("recovery_event"), x.node, x.reason, x.verdict_unix_ms, x.recover_ms, x.layers_moved,
           x.bytes_moved, x.requests_replayed, x.deployment);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_file& x) {
  return f(caf::meta::type_name("model_file"), x.name, x.bytes, x.hash);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, group_collectives& x) {
  return f(caf::meta::type_name("group_collectives"), x.sequence_parallel, x.tiles);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_slice& x) {
  return f(caf::meta::type_name("tensor_slice"), x.head_begin, x.head_end, x.kv_head_begin, x.kv_head_end,
           x.column_begin, x.column_end, x.vocab_begin, x.vocab_end);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stage_assignment& x) {
  return f(caf::meta::type_name("stage_assignment"), x.session, x.deployment, x.stage, x.first_layer, x.last_layer,
           x.model_dir, x.model_files, x.device, x.threads, x.group, x.rank, x.slice, x.shares, x.collectives,
           x.collective_deadline_ms, x.training);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, training_settings& x) {
  return f(caf::meta::type_name("training_settings"), x.enabled, x.beta1, x.beta2, x.eps, x.weight_decay,
           x.batch_tokens, x.micro_batches, x.micro_batch_sequences);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stage_ready& x) {
  return f(caf::meta::type_name("stage_ready"), x.stage, x.stage_index, x.node, x.data_host, x.data_port,
           x.weight_bytes, x.layers_loaded, x.bytes_loaded);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, next_hop& x) {
  return f(caf::meta::type_name("next_hop"), x.host, x.port, x.stage);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_info& x) {
  return f(caf::meta::type_name("node_info"), x.name, x.device, x.dtype, x.memory_bytes, x.threads, x.data_host,
           x.data_port, x.incarnation);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stage_stats& x) {
  return f(caf::meta::type_name("stage_stats"), x.stage, x.node, x.first_layer, x.last_layer, x.frames, x.compute_ms,
           x.transfer_ms, x.bytes_sent, x.collective_bytes_sent, x.sequence_parallel_frames,
           x.collective_wait_ms, x.requests_held, x.batched_frames, x.batches);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generate_request& x) {
  auto& s = x.sampling;
  return f(caf::meta::type_name("generate_request"), x.prompt, x.max_new_tokens, s.temperature, s.top_k, s.top_p,
           s.repetition_penalty, s.seed, s.return_logits, x.stop_at_eos, x.tag, x.prefill_chunks, x.max_drafts, x.overlap_windows,
           x.outline_points, x.outline_tokens);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, token_event& x) {
  return f(caf::meta::type_name("token_event"), x.tag, x.token, x.text);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generation_summary& x) {
  return f(caf::meta::type_name("generation_summary"), x.tag, x.prompt_tokens, x.tokens, x.prefill_ms,
           x.decode_ms, x.stopped_at_eos, x.final_logits, x.decode_trips, x.drafted, x.accepted, x.cancelled_trips, x.outline_points);
}

// -- profiling (`orrery profile`) ----------------------------------------------

/// Asks a node to time the model's first, a middle and its last layer on its
/// own device (compute/layer_timing.hpp); answered with layer_timing_report.
/// Empty lengths and contexts time no prefill or decode; train_tokens > 0
/// times training passes of micro-batches of train_sequences samples.
struct layer_timing_request {
  std::string model_dir;
  std::vector<std::int32_t> prefill_lengths;
  std::vector<std::int32_t> decode_contexts;
  /// Wall time each measured point's repeats add up to.
  double min_seconds = 0.3;
  std::int32_t train_tokens = 0;
  std::int32_t train_sequences = 1;
};

/// Seconds per token of one layer kind in one phase, at each length.
struct measured_curve {
  std::string layer;  ///< "first", "middle" or "last"
  std::string phase;  ///< "prefill", "decode" (seconds per token), "train_forward", "train_backward" (per sample), "train_update" (per step) or, for layer "node", "train_reduce" (seconds per byte of an all-reduce's own work)
  std::vector<std::int32_t> lengths;
  std::vector<double> seconds;
};

/// A node's measured layer times and the memory it can give a model.
struct layer_timing_report {
  std::string node;
  std::vector<measured_curve> curves;
  std::uint64_t usable_memory_bytes = 0;
  /// What set usable_memory_bytes: "memory budget", "cgroup limit" or "available memory".
  std::string memory_limited_by;
  /// compute/layer_timing.hpp's decode_burst: the context, and the wall
  /// seconds after each back-to-back middle-layer step from idle.
  std::int32_t burst_context = 0;
  std::vector<double> burst_wall_seconds;
};

/// Asks a node to measure its data-plane link to the node whose data plane
/// is at host:data_port; answered with link_measurement.
struct link_probe {
  std::string host;
  std::uint16_t data_port = 0;
};

/// One direction of a link, measured over the data plane.
struct link_measurement {
  double bandwidth_bytes_per_s = 0;
  double latency_s = 0;
  std::uint64_t bytes_sent = 0;
};

/// Link probes travel in session 0, which no client session draws. A node
/// answers a probe frame that carries a reply port with a 4-byte frame to
/// that port; the prober counts those.
inline constexpr std::uint64_t probe_session = 0;

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, layer_timing_request& x) {
  return f(caf::meta::type_name("layer_timing_request"), x.model_dir, x.prefill_lengths, x.decode_contexts,
           x.min_seconds, x.train_tokens, x.train_sequences);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, measured_curve& x) {
  return f(caf::meta::type_name("measured_curve"), x.layer, x.phase, x.lengths, x.seconds);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, layer_timing_report& x) {
  return f(caf::meta::type_name("layer_timing_report"), x.node, x.curves, x.usable_memory_bytes, x.memory_limited_by,
           x.burst_context, x.burst_wall_seconds);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, link_probe& x) {
  return f(caf::meta::type_name("link_probe"), x.host, x.data_port);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, link_measurement& x) {
  return f(caf::meta::type_name("link_measurement"), x.bandwidth_bytes_per_s, x.latency_s, x.bytes_sent);
}

/// Registers every type of the block below with `cfg` (and loads nothing
/// else: the host decides whether to load the middleman).
void register_types(caf::actor_system_config& cfg);

}  // namespace orrery

CAF_BEGIN_TYPE_ID_BLOCK(orrery, caf::first_custom_type_id)
  CAF_ADD_TYPE_ID(orrery, (orrery::model_file))
  CAF_ADD_TYPE_ID(orrery, (std::vector<orrery::model_file>))
  CAF_ADD_TYPE_ID(orrery, (orrery::stage_assignment))
  CAF_ADD_TYPE_ID(orrery, (orrery::stage_ready))
  CAF_ADD_TYPE_ID(orrery, (orrery::next_hop))
  CAF_ADD_TYPE_ID(orrery, (orrery::node_info))
  CAF_ADD_TYPE_ID(orrery, (orrery::stage_stats))
  CAF_ADD_TYPE_ID(orrery, (std::vector<orrery::stage_stats>))
  CAF_ADD_TYPE_ID(orrery, (orrery::generate_request))
  CAF_ADD_TYPE_ID(orrery, (orrery::token_event))
  CAF_ADD_TYPE_ID(orrery, (orrery::generation_summary))
  CAF_ADD_TYPE_ID(orrery, (orrery::request_failure))
  CAF_ADD_TYPE_ID(orrery, (orrery::heartbeat))
  CAF_ADD_TYPE_ID(orrery, (orrery::node_verdict))
  CAF_ADD_TYPE_ID(orrery, (orrery::recovery_event))
  CAF_ADD_TYPE_ID(orrery, (std::vector<orrery::recovery_event>))
  CAF_ADD_TYPE_ID(orrery, (orrery::layer_timing_request))
  CAF_ADD_TYPE_ID(orrery, (orrery::measured_curve))
  CAF_ADD_TYPE_ID(orrery, (std::vector<orrery::measured_curve>))
  CAF_ADD_TYPE_ID(orrery, (orrery::layer_timing_report))
  CAF_ADD_TYPE_ID(orrery, (orrery::link_probe))
  CAF_ADD_TYPE_ID(orrery, (orrery::link_measurement))
  CAF_ADD_TYPE_ID(orrery, (orrery::route_counts))
  CAF_ADD_TYPE_ID(orrery, (std::vector<orrery::next_hop>))
  CAF_ADD_TYPE_ID(orrery, (orrery::training_settings))
  CAF_ADD_TYPE_ID(orrery, (orrery::training_links))
  CAF_ADD_TYPE_ID(orrery, (orrery::micro_batch_loss))
  CAF_ADD_TYPE_ID(orrery, (orrery::micro_batch_done))
  CAF_ADD_TYPE_ID(orrery, (orrery::checkpoint_part))
  CAF_ADD_TYPE_ID(orrery, (orrery::backup_made))
  CAF_ADD_TYPE_ID(orrery, (orrery::backup_transfer))
CAF_END_TYPE_ID_BLOCK(orrery)

// Atoms (at most 10 characters in CAF 0.17), all prefixed "orrery".
CAF_ADD_ATOM(orrery, orrery, load_stage_atom, "ld_stage")
CAF_ADD_ATOM(orrery, orrery, connect_next_atom, "conn_next")
CAF_ADD_ATOM(orrery, orrery, end_request_atom, "end_req")
CAF_ADD_ATOM(orrery, orrery, stats_atom, "stats")
CAF_ADD_ATOM(orrery, orrery, info_atom, "info")
CAF_ADD_ATOM(orrery, orrery, deploy_atom, "deploy")
CAF_ADD_ATOM(orrery, orrery, request_timeout_atom, "req_tmo")
CAF_ADD_ATOM(orrery, orrery, watch_atom, "watch")
CAF_ADD_ATOM(orrery, orrery, fence_atom, "fence")
CAF_ADD_ATOM(orrery, orrery, tick_atom, "tick")
CAF_ADD_ATOM(orrery, orrery, recoveries_atom, "recoveries")
CAF_ADD_ATOM(orrery, orrery, retry_atom, "retry")
CAF_ADD_ATOM(orrery, orrery, probe_expect_atom, "probe_exp")
CAF_ADD_ATOM(orrery, orrery, probe_frame_atom, "probe_frm")
CAF_ADD_ATOM(orrery, orrery, gradient_norm_atom, "grad_norm")
CAF_ADD_ATOM(orrery, orrery, optimizer_step_atom, "opt_step")
CAF_ADD_ATOM(orrery, orrery, save_atom, "save")
CAF_ADD_ATOM(orrery, orrery, restore_atom, "restore")
CAF_ADD_ATOM(orrery, orrery, backup_atom, "backup")
CAF_ADD_ATOM(orrery, orrery, backup_missing_atom, "bk_missing")
CAF_ADD_ATOM(orrery, orrery, restore_backup_atom, "bk_restore")
CAF_ADD_ATOM(orrery, orrery, forget_backup_atom, "bk_forget")
CAF_ADD_ATOM(orrery, orrery, cancel_atom, "cancel")
CAF_ADD_ATOM(orrery, orrery, run_batch_atom, "run_batch")
