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
// A tied embedding lives on the first stage and, as the head, on the last:
// before the norm the two add their parts of its gradient over a ring of two
// (actors/group_ring.hpp), so both take the same step.
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

/// Spawns an empty training stage; it loads on (load_stage_atom, assignment).
training_stage_actor spawn_training_stage(caf::actor_system& system, stage_context context);

}  // namespace orrery::actors
