@0xf742afcf707da004;
# The descriptor of one data-plane frame: where it goes and what the raw bytes
# after it are. Layout of the whole frame (fixed header, this descriptor,
# payload) is documented in messages/frame.hpp.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("orrery::messages::wire");

# orrery::element_type (base/element_type.hpp) on the wire, converted in
# messages/frame.cpp alone; a receiver rejects any other value.
enum ElementType {
  f32 @0;
  f16 @1;
  bf16 @2;
  i64 @3;
  i32 @4;
}

# What one tensor of a frame is to its receiver; values match
# orrery::messages::tensor_role.
enum TensorRole {
  hidden @0;     # hidden states [tokens, hidden]
  tokens @1;     # token ids [tokens]: a stage's input, or what was sampled
  logits @2;     # [rows, vocab], where a caller asked for them
  gradient @3;   # a backward pass's gradient w.r.t. hidden states
  positions @4;  # token positions, where they are not implied by the cache
  targets @5;    # training: the next token of each input token [tokens]
  state @6;      # training: a parameter, or one of its optimizer moments (BackupRoute)
}

# One tensor of the payload. Tensors lie back to back, each starting at a
# multiple of 8 bytes (zero padding between them).
struct TensorLayout {
  role @0 :TensorRole;
  elementType @1 :ElementType;
  shape @2 :List(Int64);
  # Must equal the product of shape times the element size.
  byteLength @3 :UInt64;
}

# How the sampler at the last stage picks a token (compute/sampler.hpp).
struct Sampling {
  temperature @0 :Float32;
  topK @1 :Int32;
  topP @2 :Float32 = 1.0;
  repetitionPenalty @3 :Float32 = 1.0;
  seed @4 :UInt64;
  # Send the logits row back with the token (tests, scoring).
  returnLogits @5 :Bool;
}

# What a forward pass is for; values match orrery::messages::pass_kind.
enum PassKind {
  inference @0;   # generation: KV caches, sampling at the head
  training @1;    # a micro-batch of a training step: kept for its backward
  evaluation @2;  # a held-out micro-batch: forward only, its loss reported
}

# A forward activation (or a prompt's tokens) for a pipeline stage.
struct ForwardRoute {
  stage @0 :UInt16;
  request @1 :UInt64;
  # How many tokens the request has generated so far.
  step @2 :UInt32;
  # The sequence length before this frame's tokens: 0 starts (or replays) a
  # sequence; otherwise the stage's KV cache must hold exactly this many.
  position @3 :UInt32;
  sampling @4 :Sampling;
  # False for a prompt's leading chunks (pipelined prefill): the stage with
  # the head extends its caches and sends nothing back.
  sample @5 :Bool = true;
  # The last `drafts` tokens are unverified guesses (speculative decoding):
  # the stage with the head samples one token per guess and one more, keeps
  # the guesses up to the first it did not sample, and every stage may be
  # told by the next frame's position to drop the rest from its caches.
  drafts @6 :UInt16;
  # Non-zero: the request starts from the first `position` tokens of this
  # request's caches, copied (a shared prefix: outline-based decoding).
  forkFrom @7 :UInt64;
  # The request has ended: every stage frees what it holds of it and passes
  # this on. It follows the request's frames on the same links, so it comes
  # after any of them still in flight (a window of guesses sent ahead).
  end @8 :Bool;
  # Training and evaluation frames hold `sequences` fresh sequences of equal
  # length side by side, with their targets; they use no KV cache. Their
  # `request` names the micro-batch and `step` is its index in its
  # training step (which member of a data-parallel stage runs it).
  pass @9 :PassKind;
  sequences @10 :UInt32;
  # A piece of a training or evaluation micro-batch split across a
  # data-parallel stage: its `sequences` are rows [firstRow, firstRow +
  # sequences) of the micro-batch's microBatchSequences (0: the whole).
  firstRow @11 :UInt32;
  microBatchSequences @12 :UInt32;
}

# A backward pass's gradient for a pipeline stage (the micro-batch is
# `request`, its index in its training step `step`).
struct BackwardRoute {
  stage @0 :UInt16;
  request @1 :UInt64;
  step @2 :UInt32;
  # The gradient's rows, as ForwardRoute's (sequences 0: the whole).
  firstRow @3 :UInt32;
  sequences @4 :UInt32;
  microBatchSequences @5 :UInt32;
}

enum CollectiveOp {
  allReduce @0;
  allGather @1;
  reduceScatter @2;
  broadcast @3;
}

# A piece of a collective among the ranks of a device group (one layer's
# tensor- or sequence-parallel group).
struct CollectiveRoute {
  group @0 :UInt32;
  rank @1 :UInt16;
  op @2 :CollectiveOp;
  tile @3 :UInt32;
  request @4 :UInt64;
  step @5 :UInt32;
  # Which collective of the step's forward pass (two per decoder layer).
  sequence @6 :UInt32;
  # Which ring step of it: an all-reduce over n ranks takes 2 (n - 1).
  ringStep @7 :UInt16;
  # The forward pass's position: a prompt's chunks share a step.
  position @8 :UInt32;
}

# Sampled tokens (and logits where asked) back to a client session.
struct SessionRoute {
  request @0 :UInt64;
  step @1 :UInt32;
}

# A link probe (`orrery profile`); the receiver answers on replyPort (the
# sender's data port, on the address the frame came from) unless it is 0.
struct ProbeRoute {
  probe @0 :UInt64;
  replyPort @1 :UInt16;
}

# One parameter of a training stage in a weight backup (Asteroid): its
# weights and AdamW moments (three `state` tensors, in that order) after
# `round` optimizer steps of training run `run`. To a node's backup store
# (restore false: the copy a neighbour holds), or to stage `stage` of the
# frame's session, which restores it (restore true).
struct BackupRoute {
  run @0 :UInt64;
  round @1 :Int64;
  name @2 :Text;
  restore @3 :Bool;
  stage @4 :UInt16;
}

struct FrameDescriptor {
  # The client session the frame belongs to (0: link probes): each session
  # has handlers of its own on every node.
  session @0 :UInt64;
  # The pipeline layout the frame belongs to: after a recovery rewires the
  # pipeline, frames of the old layout (from a node that was frozen, say) are
  # recognised and dropped.
  deployment @1 :UInt64;
  route :union {
    forward @2 :ForwardRoute;
    backward @3 :BackwardRoute;
    collective @4 :CollectiveRoute;
    toSession @5 :SessionRoute;
    probe @6 :ProbeRoute;
    backup @10 :BackupRoute;
  }
  tensors @7 :List(TensorLayout);
  # Payload bytes: the end of the last tensor.
  byteLength @8 :UInt64;
  # frame_checksum (messages/checksum.hpp) of the payload.
  checksum @9 :UInt32;
}
