#pragma once
// Who answers what: the message set of every orrery actor as a typed handle.
// CAF checks every send and every reply handler against these at compile
// time, and a remote node's interface when a client connects to it.
//
// Read each line as "message -> answer". Messages an actor sends itself
// (timers) are part of its interface too: CAF delivers only what the
// interface lists.
//
// Handles inside control messages (stage_ready::stage, node_verdict::handle,
// the driver in connect_next, the supervisor in watch) stay untyped
// caf::actor: messages/ is the torch-free wire layer, and a handle crossing
// the network needs a registered type, which these interfaces (one of them
// naming the in-process tensor_frame) cannot have there. Each is cast to its
// interface here, where it is received.

#include <caf/actor.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "messages/types.hpp"

namespace orrery::actors {

struct tensor_frame;  // actors/tensor_frame.hpp: in-process only

/// A pipeline stage (actors/stage.hpp): one shard of one session on a node.
using stage_actor = caf::typed_actor<
    // Load (or change to) these layers -> the stage loaded and its data address.
    caf::replies_to<load_stage_atom, stage_assignment>::with<stage_ready>,
    // (deployment, next hops (none from a group's other members), the next
    // member of its group (port 0: none), the session's driver, connect
    // timeout ms): wire the stage.
    caf::reacts_to<connect_next_atom, std::uint64_t, std::vector<next_hop>, next_hop, caf::actor, std::int64_t>,
    // A frame the node's router delivered.
    caf::reacts_to<tensor_frame>,
    // Its own: run the decode steps collected since the last batch as one.
    caf::reacts_to<run_batch_atom>,
    // Forget a request's KV caches.
    caf::reacts_to<end_request_atom, std::uint64_t>,
    caf::replies_to<stats_atom>::with<stage_stats>>;

/// A training stage (actors/training_stage.hpp): one shard of a training
/// session on a node, holding its micro-batches' passes until their backward.
using training_stage_actor = caf::typed_actor<
    caf::replies_to<load_stage_atom, stage_assignment>::with<stage_ready>,
    // (deployment, links): wire the stage to its neighbours and its client.
    caf::replies_to<connect_next_atom, std::uint64_t, training_links>::with<void>,
    // A micro-batch's forward (training or evaluation) or its gradient.
    caf::reacts_to<tensor_frame>,
    // The sum of squares of its gradients (a tied embedding's parts added
    // first, and counted at the first stage only).
    caf::replies_to<gradient_norm_atom>::with<double>,
    // (learning rate, gradient scale): one AdamW update -> the updates so far.
    caf::replies_to<optimizer_step_atom, double, double>::with<std::int64_t>,
    // (directory, part k, of n): write its weights and optimizer moments there.
    caf::replies_to<save_atom, std::string, std::int32_t, std::int32_t>::with<checkpoint_part>,
    // (directory): restore its moments from the optimizer files there.
    caf::replies_to<restore_atom, std::string>::with<std::int64_t>,
    // (run, holder's data host, port): back its parameters and moments up
    // in its node's store and in the holder's (actors/backup_store.hpp).
    caf::replies_to<backup_atom, std::uint64_t, std::string, std::uint16_t>::with<backup_made>,
    // (run, round): restore every parameter from the backup frames sent to
    // it (answered once they are all there) -> the round.
    caf::replies_to<restore_backup_atom, std::uint64_t, std::int64_t>::with<std::int64_t>>;

/// A node (actors/node.hpp): one per process, published on its control port.
using node_actor = caf::typed_actor<
    // Resources, outside any session.
    caf::replies_to<info_atom>::with<node_info>,
    // What its router did with the frames it received.
    caf::replies_to<stats_atom>::with<route_counts>,
    // (supervisor, heartbeat interval ms, session): start heartbeats -> its state in that session.
    caf::replies_to<watch_atom, caf::actor, std::int64_t, std::uint64_t>::with<node_info>,
    // (session, incarnation): drop that session's stages if it is still that incarnation.
    caf::replies_to<fence_atom, std::uint64_t, std::uint64_t>::with<node_info>,
    // Hold layers for a session (delegated to the session's stage).
    caf::replies_to<load_stage_atom, stage_assignment>::with<stage_ready>,
    // `orrery profile`: time its layers, measure a link.
    caf::replies_to<layer_timing_request>::with<layer_timing_report>,
    caf::replies_to<link_probe>::with<link_measurement>,
    // (probe, answers): completes once that many answers to a probe of its own arrived.
    caf::replies_to<probe_expect_atom, std::uint64_t, std::uint64_t>::with<std::uint64_t>,
    // (probe, reply port, sender's host): a probe frame its router delivered.
    caf::reacts_to<probe_frame_atom, std::uint64_t, std::uint16_t, std::string>,
    // Its own heartbeat timer.
    caf::reacts_to<tick_atom>,
    // Weight backups it holds (actors/backup_store.hpp): (run, round,
    // names) -> those it lacks; send some to a stage that restores them ->
    // their bytes; forget a run.
    caf::replies_to<backup_missing_atom, std::uint64_t, std::int64_t, std::vector<std::string>>::with<
        std::vector<std::string>>,
    caf::replies_to<backup_transfer>::with<std::uint64_t>,
    caf::reacts_to<forget_backup_atom, std::uint64_t>>;

/// A node's worker for one `orrery profile` request (actors/profiling.hpp).
using layer_timer_actor = caf::typed_actor<caf::replies_to<layer_timing_request>::with<layer_timing_report>>;
using link_prober_actor = caf::typed_actor<caf::replies_to<link_probe>::with<link_measurement>>;

/// Whoever hears a supervisor's verdicts (the driver, or an embedding service).
using verdict_listener = caf::typed_actor<caf::reacts_to<node_verdict>>;

/// A supervisor (actors/supervisor.hpp): membership of one session's nodes.
using supervisor_actor = caf::typed_actor<
    caf::reacts_to<heartbeat>,
    // Its own timer: deadlines and redials.
    caf::reacts_to<tick_atom>>;

/// Whoever asked a driver to generate: hears each token as it comes.
using token_listener = caf::typed_actor<caf::reacts_to<token_event>>;

/// A driver (actors/driver.hpp): one client session.
using driver_actor = caf::typed_actor<
    // Load and wire the placement.
    caf::reacts_to<deploy_atom>,
    // Generate -> the summary; every token goes to the sender as a token_event first.
    caf::replies_to<generate_request>::with<generation_summary>,
    // (tag): the sender's request of that tag is cancelled (its client went
    // away): every stage forgets it and its reply is a `cancelled` error.
    caf::reacts_to<cancel_atom, std::uint64_t>,
    caf::replies_to<stats_atom>::with<std::vector<stage_stats>>,
    caf::replies_to<recoveries_atom>::with<std::vector<recovery_event>>,
    // From the last stage, through the driver's router: a sampled token.
    caf::reacts_to<tensor_frame>,
    // From a stage or the data plane: a request cannot be served.
    caf::reacts_to<request_failure>,
    // From its supervisor.
    caf::reacts_to<node_verdict>,
    // Its own timers: a layout change to retry (deployment, grace over), request deadlines.
    caf::reacts_to<retry_atom, std::uint64_t, bool>,
    caf::reacts_to<request_timeout_atom>>;

}  // namespace orrery::actors
