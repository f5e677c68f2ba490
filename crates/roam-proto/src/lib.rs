//! Roam's wire protocol: the frames that nodes and clients exchange to run workers and to
//! move them between a device, edge servers and the cloud.
//!
//! Every frame travels alone in one WebSocket binary message: an 8-byte header (type,
//! flags, reserved, body length, little-endian) and a body. This crate encodes, decodes
//! and checks frames; it does no I/O, so the same code runs in the nodes, in the native
//! client and, compiled to wasm32, in the browser.
//!
//! # Frames on the wire
//!
//! [`Frame::encode`] gives the bytes of one message, [`Frame::decode`] takes them back
//! within the caps of [`FrameLimits`]:
//!
//! ```
//! use roam_proto::{Frame, FrameLimits, PeerKind, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
//!
//! let hello = Frame::Hello {
//!     min_version: MIN_PROTOCOL_VERSION,
//!     max_version: PROTOCOL_VERSION,
//!     peer: PeerKind::Client,
//!     name: "roam-client/0.1".to_owned(),
//! };
//! let bytes = hello.encode();
//! assert_eq!(bytes[0], 0x01); // the type byte of Hello
//! assert_eq!(Frame::decode(&bytes, &FrameLimits::default())?, hello);
//!
//! // Anything malformed is refused with an error, never a panic.
//! assert!(Frame::decode(&bytes[..bytes.len() - 1], &FrameLimits::default()).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Sessions
//!
//! A node keeps one [`NodeSession`] per connection; a client (or a node that connects to
//! another node) keeps a [`ClientSession`]. A session refuses every frame that is not
//! valid in its state, with a [`ProtocolError`] that carries the [`ErrorCode`] and the
//! message to send back, and turns every other frame into an [`Event`] telling its owner
//! what to do. The owner reports what it sends with `on_send`, so the session follows
//! the transfers in both directions.
//!
//! ```
//! use roam_proto::{
//!     ClientSession, ErrorCode, Event, Frame, FrameLimits, NodeRole, NodeSession, NodeState,
//!     PeerKind, PROTOCOL_VERSION,
//! };
//!
//! let limits = FrameLimits::default();
//! let mut client = ClientSession::new();
//! let mut node = NodeSession::new(NodeRole::Edge);
//!
//! // The client opens with a Hello; the node sees it arrive as bytes.
//! let hello = ClientSession::hello(PeerKind::Client, "demo");
//! client.on_send(&hello)?;
//! let received = Frame::decode(&hello.encode(), &limits)?;
//! let version = match node.on_frame(&received)? {
//!     Event::Hello { version, .. } => version,
//!     other => panic!("unexpected {other:?}"),
//! };
//! assert_eq!(version, PROTOCOL_VERSION);
//! assert_eq!(node.state(), &NodeState::Ready);
//!
//! // The node answers with a Welcome.
//! let welcome = Frame::Welcome { version, node_id: "edge-a".into(), role: NodeRole::Edge };
//! node.on_send(&welcome)?;
//! client.on_frame(&welcome)?;
//!
//! // Posting to a worker this connection has not attached is refused; the refusal
//! // becomes the Error frame the node sends back.
//! let post = Frame::Post { worker: 7, seq: 1, payload: b"hi".to_vec() };
//! let refusal = node.on_frame(&post).unwrap_err();
//! assert_eq!(refusal.code(), ErrorCode::Unauthorized);
//! let Frame::Error { message, .. } = refusal.to_frame() else { unreachable!() };
//! assert!(message.contains("has not attached"));
//!
//! // Once the node has sent Attached (it checked the secret), posts are accepted.
//! node.on_send(&Frame::Attached { worker: 7, last_seq: 0 })?;
//! assert!(matches!(node.on_frame(&post)?, Event::Post { worker: 7, seq: 1, .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Moving a worker
//!
//! The sender opens with StateBegin (worker, module hash and length, owner, move token,
//! snapshot manifest); the receiver answers StateNeed with what it lacks; the sender
//! sends the module's bytes in order (ModuleData), the chunk bodies (ChunkData) and
//! StateEnd; the receiver restores the worker and answers StateAdopted with the last
//! message it had handled, after which the client replays the rest. Between nodes, a
//! [`MoveToken`] signed with the cluster key lets the destination accept the state.
//!
//! The whole protocol, with the layout of every frame and a sequence diagram per kind of
//! move, is in `docs/protocol.md`.
//!
//! # Trust
//!
//! [`Frame::decode`] checks the length against [`FrameLimits::max_frame`] before it reads
//! the header, and every length in a body against what remains and the caps before it
//! allocates. The sessions check order, not content: the owner verifies secrets, tokens,
//! module hashes and snapshots.

#![deny(missing_docs)]

mod code;
mod error;
mod frame;
mod session;
mod token;
mod version;
mod wire;

pub use code::{ErrorCode, NodeRole, PeerKind};
pub use error::{
    DecodeFrameError, NegotiateVersionError, ProtocolError, SendFrameError, TokenError,
};
pub use frame::{
    ChunkHash, Frame, FrameLimits, FrameType, ModuleHash, NodeInfo, NodeRegistration, WorkerId,
    DEFAULT_MAX_FRAME, DEFAULT_MAX_ITEMS, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};
pub use session::{
    ClientSession, ClientState, Event, Incoming, NodeSession, NodeState, ReceiveStage, SendStage,
};
pub use token::MoveToken;
pub use version::{negotiate, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
pub use wire::MAX_STRING_LEN;
