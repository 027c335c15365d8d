@0xf742afcf707da004;
# The descriptor of one data-plane frame: what the raw bytes after it are.
# Layout of the whole frame (fixed header, this descriptor, payload) is
# documented in messages/frame.hpp.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("orrery::messages::wire");

# Values match orrery::messages::element_type; a receiver rejects any other.
enum ElementType {
  f32 @0;
  f16 @1;
  bf16 @2;
  i64 @3;
  i32 @4;
}

struct FrameDescriptor {
  requestId @0 :UInt64;
  step @1 :UInt32;
  sourceStage @2 :UInt16;
  destinationStage @3 :UInt16;
  elementType @4 :ElementType;
  shape @5 :List(Int64);
  # Payload bytes; must equal the product of shape times the element size.
  byteLength @6 :UInt64;
  # frame_checksum (messages/checksum.hpp) of the payload.
  checksum @7 :UInt32;
  # The pipeline layout the frame belongs to: after a recovery rewires the
  # pipeline, frames of the old layout (from a node that was frozen, say) are
  # recognised and dropped.
  deployment @8 :UInt64;
  # Where the receiver answers a link probe (`orrery profile`): the sender's
  # data port, on the address the frame came from; 0 asks for no answer.
  replyPort @9 :UInt16;
  # The client session the frame belongs to: each session has stages of its
  # own on every node, and a node routes a frame to (session, stage).
  session @10 :UInt64;
}
