#pragma once
// The training stage: one shard of a training session on a node (Asteroid's
// pipeline). Detached, like the inference stage, so autograd never blocks
// CAF's shared workers. It holds a private float32 copy of its layers (the
// node's shared inference weights are never written) and an AdamW optimizer
// over them.
//
// A micro-batch's forward frame carries its tokens and targets along the
// pipeline; each stage keeps the pass (its activations) until the gradient
// of its output comes back. The stage with the head starts the backward from
// the loss and reports that loss to the client; each stage sends the
// gradient of its input to the previous one; the stage with the embedding
// tells the client the micro-batch is through. The client admits at most one
// micro-batch per stage at a time (1F1B: a stage holds at most that many
// passes), then asks every stage for its gradient norm and for the step.
//
// A stage may be a data-parallel group (Asteroid): every member holds the
// stage's layers, each micro-batch runs on one member of each stage (dealt in
// proportion to the members' shares, training_member), and before the norm
// the members add up their gradients over the group's ring
// (actors/group_ring.hpp), the same bits on each, so they take the same step
// and stay replicas. A tied embedding lives on the first stage and, as the
// head, on the last: their members add their parts of its gradient over one
// more ring, of all of them.
//
// Checkpoints: each stage writes its weights (HF names, float32) and its
// moments into the directory the client names, on the node's filesystem;
// the client writes the index, tokenizer and config beside them.

#include <caf/actor_system.hpp>

#include "actors/interfaces.hpp"
#include "actors/stage.hpp"

namespace orrery::actors {

/// The ring id under which a tied embedding's two holders add their parts
/// (past every stage id, which is 16 bits).
inline constexpr std::uint32_t tied_embedding_group = 0x10000;

/// The member of a data-parallel stage with `shares` that runs micro-batch
/// `index` of a step: a smooth weighted round robin, so each member gets
/// micro-batches in proportion to its share, spread over the step.
int training_member(std::uint32_t index, const std::vector<std::int32_t>& shares);

/// Spawns an empty training stage; it loads on (load_stage_atom, assignment).
training_stage_actor spawn_training_stage(caf::actor_system& system, stage_context context);

}  // namespace orrery::actors
