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
// stage's layers, each micro-batch is split by rows (sequences) across the
// members in proportion to their shares (training_rows), each member runs its
// rows, and where neighbouring stages split differently a member sends each
// of the next stage's members the rows they share and gathers its own rows'
// pieces before it runs them (and back, for gradients). Before the norm
// the members add up their gradients over the group's ring
// (actors/group_ring.hpp), the same bits on each, so they take the same step
// and stay replicas. A tied embedding lives on the first stage and, as the
// head, on the last: their members add their parts of its gradient over one
// more ring, of all of them.
//
// Checkpoints: each stage writes its weights (HF names, float32) and its
// moments into the directory the client names, on the node's filesystem;
// the client writes the index, tokenizer and config beside them.
//
// Backups (actors/backup_store.hpp): a stage copies its weights and moments
// into its node's store and sends a copy to the store of the node the client
// names; a stage of a recovered layout restores a round from its node's
// store and from backup frames that other nodes send it.

#include <caf/actor_system.hpp>

#include "actors/interfaces.hpp"
#include "actors/stage.hpp"

namespace orrery::actors {

/// The ring id under which a tied embedding's two holders add their parts
/// (past every stage id, which is 16 bits).
inline constexpr std::uint32_t tied_embedding_group = 0x10000;

/// Consecutive rows of one micro-batch.
struct row_range {
  std::uint32_t first = 0;
  std::uint32_t count = 0;
};

/// How many of the `rows` sequences of micro-batch `index` of a step each
/// member of a data-parallel stage with `shares` runs, in member order (each
/// takes the next consecutive range). The step's rows are dealt one by one by
/// a smooth weighted round robin over the shares, so over a step each member's
/// rows follow its share even when a micro-batch has fewer rows than the
/// group has members. A stage of one (no shares) runs all.
std::vector<std::uint32_t> training_rows(std::uint32_t index, std::uint32_t rows, const std::vector<std::int32_t>& shares);

/// Member `member`'s range of those rows.
row_range member_rows(std::uint32_t index, std::uint32_t rows, const std::vector<std::int32_t>& shares, std::size_t member);

/// Spawns an empty training stage; it loads on (load_stage_atom, assignment).
training_stage_actor spawn_training_stage(caf::actor_system& system, stage_context context);

}  // namespace orrery::actors
