//! The frames: one Rust value per message the protocol knows, with its byte layout, and
//! the decoder that checks the cap, the header and then every field before it allocates.

use crate::code::{ErrorCode, NodeRole, PeerKind};
use crate::token::MoveToken;
use crate::wire::{PutLe, Reader};
use crate::DecodeFrameError;

/// The identity of a worker, chosen by the client that owns it.
pub type WorkerId = u128;

/// Sha-256 of a prepared module's bytes: the identity of a worker's code.
pub type ModuleHash = [u8; 32];

/// Xxh3-128 of a memory chunk's raw bytes: the name of a chunk's content.
pub type ChunkHash = u128;

/// Bytes of the fixed header that opens every frame.
pub const HEADER_LEN: usize = 8;

/// Default cap on a whole frame, header included (32 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 32 << 20;

/// Default cap on one Post or Reply payload (16 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 << 20;

/// Default cap on the items of one list (2^20: the chunk hashes of a 4 GiB memory in
/// 4 KiB chunks).
pub const DEFAULT_MAX_ITEMS: u32 = 1 << 20;

/// Caps a decoder enforces before it allocates anything a frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameLimits {
    /// Largest frame, header included. Default: [`DEFAULT_MAX_FRAME`].
    pub max_frame: u32,
    /// Largest Post or Reply payload: the cap on one application message.
    /// Default: [`DEFAULT_MAX_PAYLOAD`].
    pub max_payload: u32,
    /// Most items in one list: chunk hashes in a StateNeed, bodies in a ChunkData, nodes
    /// in a Nodes. Bounds the memory a list of tiny items costs. Default:
    /// [`DEFAULT_MAX_ITEMS`].
    pub max_items: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_frame: DEFAULT_MAX_FRAME,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_items: DEFAULT_MAX_ITEMS,
        }
    }
}

/// What a node says about itself when it registers with the cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRegistration {
    /// The node's name, unique in the cluster.
    pub node_id: String,
    /// Where clients and nodes reach it (`ws://host:port`).
    pub url: String,
    /// Edge or cloud.
    pub role: NodeRole,
    /// CPU cores it gives to workers.
    pub cores: u16,
    /// Speed of one core relative to a reference core (1.0); finite and not negative.
    pub speed: f32,
    /// Memory it can still give to workers, in bytes.
    pub free_memory: u64,
    /// Workers it hosts now.
    pub workers: u32,
    /// Where it is, free text a placement policy may match (a region, a cell).
    pub location: String,
}

/// A registered node as the cloud lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    /// What the node said in its last Register, updated by its heartbeats.
    pub node: NodeRegistration,
    /// When the cloud last heard from it, in milliseconds since the Unix epoch.
    pub last_seen_ms: u64,
}

macro_rules! frame_types {
    ($($(#[$doc:meta])* $name:ident = $value:literal,)*) => {
        /// The type byte of a frame's header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $($(#[$doc])* $name = $value,)*
        }

        impl FrameType {
            /// Every frame type, in type-byte order.
            pub const ALL: &'static [FrameType] = &[$(FrameType::$name,)*];

            /// The frame type with this type byte, if there is one.
            pub fn from_u8(value: u8) -> Option<FrameType> {
                match value {
                    $($value => Some(FrameType::$name),)*
                    _ => None,
                }
            }

            /// The frame's name, as error messages and the protocol document spell it.
            pub fn name(self) -> &'static str {
                match self {
                    $(FrameType::$name => stringify!($name),)*
                }
            }
        }
    };
}

frame_types! {
    /// Opens a connection: the versions the peer speaks.
    Hello = 0x01,
    /// The node's answer to Hello: the version chosen.
    Welcome = 0x02,
    /// A refusal, with a code and a message.
    Error = 0x03,
    /// Asks for a Pong.
    Ping = 0x04,
    /// Answers a Ping.
    Pong = 0x05,
    /// The sender is going away.
    Goodbye = 0x06,
    /// Opens a state transfer.
    StateBegin = 0x10,
    /// The receiver of a transfer says what it lacks.
    StateNeed = 0x11,
    /// A piece of a module's bytes.
    ModuleData = 0x12,
    /// Chunk bodies of a worker's memory.
    ChunkData = 0x13,
    /// Closes a state transfer.
    StateEnd = 0x14,
    /// The receiver of a transfer runs the worker now.
    StateAdopted = 0x15,
    /// A newer manifest of the worker moving, during pre-copy (version 2).
    StateRound = 0x16,
    /// The last manifest of the transfer is final: the receiver may run the worker before
    /// the bodies still due arrive (post-copy, version 4).
    StateResumable = 0x17,
    /// The receiver runs the worker while bodies still arrive (post-copy, version 4).
    StateResumed = 0x18,
    /// The receiver's worker touched these chunks: send their bodies first (version 4).
    ChunkWant = 0x19,
    /// A client proves it owns a worker.
    Attach = 0x20,
    /// The node accepted an Attach.
    Attached = 0x21,
    /// An application message to a worker.
    Post = 0x22,
    /// A message the worker posted while it handled a message.
    Reply = 0x23,
    /// A message has been handled.
    Handled = 0x24,
    /// A message made the worker fail.
    WorkerFailed = 0x25,
    /// A message to handle without sending its replies (version 4).
    Replay = 0x26,
    /// The client's worker is on its way here: hold its Posts until it arrives (version 5).
    Expect = 0x27,
    /// The node holds Posts for a worker on its way, up to a budget (version 5).
    Expecting = 0x28,
    /// Asks the node to hand the worker to another node.
    MoveOut = 0x30,
    /// The worker now runs elsewhere.
    Moved = 0x31,
    /// Asks the cloud to fetch a worker from a node the client cannot reach.
    Pull = 0x32,
    /// Asks the node to send the worker's state back to the client.
    Return = 0x33,
    /// The state was adopted elsewhere: drop it.
    Release = 0x34,
    /// Asks the node for a copy of the worker's state; the worker stays (version 3).
    Checkpoint = 0x35,
    /// A Pull from a client that has every reply through a message: the cloud passes on
    /// the source's replies after it (version 6).
    PullSince = 0x36,
    /// A Return from the cloud fetching a worker for a client that has every reply through
    /// a message: the source sends only the later replies it kept (version 7).
    ReturnSince = 0x37,
    /// A node joins the cloud's registry.
    Register = 0x40,
    /// A registered node's current load.
    Heartbeat = 0x41,
    /// Asks the cloud for the registered nodes.
    ListNodes = 0x42,
    /// The registered nodes.
    Nodes = 0x43,
}

/// One protocol message. Every frame travels alone in one WebSocket binary message.
///
/// The layouts are in `docs/protocol.md`; [`Frame::encode`] and [`Frame::decode`] are
/// the only code that knows them.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Opens a connection (client or node → node): the range of versions the peer speaks.
    Hello {
        /// Oldest version the peer speaks.
        min_version: u16,
        /// Newest version the peer speaks.
        max_version: u16,
        /// Client or node.
        peer: PeerKind,
        /// A name for logs (an SDK and its version, a node id).
        name: String,
    },
    /// The node's answer to Hello: the highest version both speak.
    Welcome {
        /// The version the connection speaks from now on.
        version: u16,
        /// The node's name.
        node_id: String,
        /// Edge or cloud.
        role: NodeRole,
    },
    /// A refusal. Without a worker it is about the connection, which then closes.
    Error {
        /// Why.
        code: ErrorCode,
        /// The worker it is about, if any.
        worker: Option<WorkerId>,
        /// A sentence for people.
        message: String,
    },
    /// Asks for a Pong with the same nonce.
    Ping {
        /// Echoed by the Pong.
        nonce: u64,
    },
    /// Answers a Ping.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// The sender closes the connection (a node shutting down, a client leaving).
    Goodbye {
        /// Why, for people.
        reason: String,
    },
    /// Opens the transfer of a worker's state (sender → receiver).
    StateBegin {
        /// The worker moving.
        worker: WorkerId,
        /// Its module.
        module_hash: ModuleHash,
        /// Length of the module's bytes, should the receiver ask for them.
        module_len: u32,
        /// Sha-256 of the worker's secret: whoever attaches later must know the secret.
        owner: [u8; 32],
        /// The move token a node-to-node move carries; a client's own offload has none.
        token: Option<MoveToken>,
        /// The snapshot manifest (`roam_snapshot::Manifest::encode`), opaque here.
        manifest: Vec<u8>,
    },
    /// What the receiver of a transfer lacks (receiver → sender).
    StateNeed {
        /// The worker moving.
        worker: WorkerId,
        /// Whether it needs the module's bytes.
        module: bool,
        /// The chunk bodies it needs, each hash once.
        chunks: Vec<ChunkHash>,
    },
    /// A piece of the module's bytes; pieces come in order, without gaps.
    ModuleData {
        /// The module the bytes belong to.
        module_hash: ModuleHash,
        /// Where the piece starts in the module.
        offset: u32,
        /// The piece.
        bytes: Vec<u8>,
    },
    /// Chunk bodies the receiver asked for.
    ChunkData {
        /// The worker moving.
        worker: WorkerId,
        /// Each a `roam_snapshot::ChunkBody::encode`, opaque here.
        bodies: Vec<Vec<u8>>,
    },
    /// Everything the receiver asked for has been sent.
    StateEnd {
        /// The worker moving.
        worker: WorkerId,
    },
    /// A newer manifest of the worker moving (sender → receiver, version 2): pre-copy
    /// sends the state in rounds while the worker keeps running, each round the chunks
    /// that changed. `bodies` ChunkData bodies follow: one per distinct chunk of this
    /// manifest that no earlier manifest of this transfer held. The last manifest before
    /// StateEnd is the one the receiver restores.
    StateRound {
        /// The worker moving.
        worker: WorkerId,
        /// Chunk bodies that follow before the next StateRound or StateEnd.
        bodies: u32,
        /// The manifest (`roam_snapshot::Manifest::encode`), opaque here.
        manifest: Vec<u8>,
    },
    /// The last manifest sent is final: no StateRound follows, and the receiver may run
    /// the worker before the bodies still due arrive, asking for the ones it touches with
    /// ChunkWant (sender → receiver, version 4: post-copy).
    StateResumable {
        /// The worker moving.
        worker: WorkerId,
    },
    /// The receiver runs the worker although bodies are still due; it asks for the ones
    /// the worker touches with ChunkWant, and sends StateAdopted once it holds them all.
    /// The sender keeps the state until then (receiver → sender, version 4).
    StateResumed {
        /// The worker moving.
        worker: WorkerId,
        /// The last message the state had handled: messages after it go to the receiver.
        last_seq: u64,
    },
    /// Bodies the receiver's running worker waits for: the sender sends them ahead of the
    /// others still due (receiver → sender, after StateResumed, version 4).
    ChunkWant {
        /// The worker moving.
        worker: WorkerId,
        /// Chunk hashes, each one the receiver was promised and has not received.
        chunks: Vec<ChunkHash>,
    },
    /// The receiver restored the worker and runs it now (receiver → sender).
    StateAdopted {
        /// The worker moved.
        worker: WorkerId,
        /// The last message it had handled: the sender replays the ones after it.
        last_seq: u64,
    },
    /// A client proves it owns a worker on this node, to use it on this connection.
    Attach {
        /// The worker.
        worker: WorkerId,
        /// Its secret; the node compares its sha-256 with the worker's owner.
        secret: [u8; 32],
    },
    /// The node accepted an Attach.
    Attached {
        /// The worker.
        worker: WorkerId,
        /// The last message it handled: the client resends the ones after it.
        last_seq: u64,
    },
    /// An application message (client → node).
    Post {
        /// The worker.
        worker: WorkerId,
        /// The message's sequence number, one more than the previous message's.
        seq: u64,
        /// The message.
        payload: Vec<u8>,
    },
    /// A message for an attached worker whose replies the client already has (client →
    /// node, version 4): the node handles it as a Post and answers only Handled, with
    /// `replies` 0, sending none of them. A client whose node catches up on messages
    /// handled on the device sends these.
    Replay {
        /// The worker.
        worker: WorkerId,
        /// The message's sequence number, one more than the previous message's.
        seq: u64,
        /// The message.
        payload: Vec<u8>,
    },
    /// The client's worker is on its way to this node (a handoff the client asked for):
    /// the node holds the Posts this connection sends for it until it arrives, then hands
    /// them to it in order (client → node, version 5). Sent while the state still
    /// travels, it lets the application's messages cross the device's link during the
    /// move instead of after it.
    Expect {
        /// The worker.
        worker: WorkerId,
        /// Its secret; checked against the worker's owner when it arrives.
        secret: [u8; 32],
    },
    /// The node's answer to Expect: it holds up to `budget` bytes of payload of the
    /// worker's Posts until the worker arrives (node → client, version 5). A budget of 0
    /// says it holds none: the client keeps its messages for after the move.
    Expecting {
        /// The worker.
        worker: WorkerId,
        /// Payload bytes the node holds for it at most.
        budget: u64,
    },
    /// A message the worker posted while it handled message `seq` (node → client).
    Reply {
        /// The worker.
        worker: WorkerId,
        /// The message being handled.
        seq: u64,
        /// Which of that message's replies, from 0.
        index: u32,
        /// The reply.
        payload: Vec<u8>,
    },
    /// Message `seq` has been handled and posted `replies` replies (node → client).
    Handled {
        /// The worker.
        worker: WorkerId,
        /// The message handled.
        seq: u64,
        /// How many replies it posted.
        replies: u32,
    },
    /// Message `seq` made the worker fail (node → client).
    WorkerFailed {
        /// The worker.
        worker: WorkerId,
        /// The message it failed on.
        seq: u64,
        /// Why, for people.
        reason: String,
    },
    /// Hand the worker to `destination` directly (client → source node).
    MoveOut {
        /// The worker.
        worker: WorkerId,
        /// The destination node's URL.
        destination: String,
    },
    /// The worker runs at `destination` now (source node or cloud → client).
    Moved {
        /// The worker.
        worker: WorkerId,
        /// Where it runs.
        destination: String,
        /// The last message it had handled when it moved.
        last_seq: u64,
    },
    /// Fetch the worker from `source`, which the client cannot reach, and host it or
    /// forward it to `destination` (client → cloud).
    Pull {
        /// The worker.
        worker: WorkerId,
        /// Its secret, which the cloud uses to attach at the source.
        secret: [u8; 32],
        /// The node holding it.
        source: String,
        /// Where it should run: the cloud's own URL, or another node's.
        destination: String,
    },
    /// As Pull, from a client that has every reply through message `delivered`: the cloud
    /// sends it the replies the source kept of the messages after that one, then Moved
    /// (client → cloud, version 6).
    PullSince {
        /// The worker.
        worker: WorkerId,
        /// Its secret, which the cloud uses to attach at the source.
        secret: [u8; 32],
        /// The node holding it.
        source: String,
        /// Where it should run: the cloud's own URL, or another node's.
        destination: String,
        /// The last message whose replies have all reached the client.
        delivered: u64,
    },
    /// Send the worker's state back to me, on this connection (client → node).
    Return {
        /// The worker.
        worker: WorkerId,
    },
    /// As Return, from the cloud fetching the worker for a client whose PullSince said it
    /// has every reply through message `delivered`: of the replies the node kept, it sends
    /// only those of later messages (node → node, version 7).
    ReturnSince {
        /// The worker.
        worker: WorkerId,
        /// The last message whose replies have all reached the client.
        delivered: u64,
    },
    /// Send me a copy of the worker's state on this connection, and keep running it
    /// (client → node, version 3): the client's recovery point moves up, so fewer messages
    /// need replaying should the node die.
    Checkpoint {
        /// The worker.
        worker: WorkerId,
    },
    /// The state was adopted elsewhere: drop it (client or node → node).
    Release {
        /// The worker.
        worker: WorkerId,
        /// The last message the adopted state had handled.
        last_seq: u64,
    },
    /// A node joins the cloud's registry (edge → cloud).
    Register(NodeRegistration),
    /// A registered node's current load (edge → cloud).
    Heartbeat {
        /// Workers it hosts now.
        workers: u32,
        /// Memory it can still give to workers, in bytes.
        free_memory: u64,
    },
    /// Asks the cloud for the registered nodes.
    ListNodes,
    /// The registered nodes (cloud → asker).
    Nodes {
        /// One entry per node.
        nodes: Vec<NodeInfo>,
    },
}

/// Smallest encoding of a [`NodeRegistration`]: three empty strings and the numbers.
const REGISTRATION_MIN_LEN: u64 = 2 + 2 + 1 + 2 + 4 + 8 + 4 + 2;

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Error { .. } => FrameType::Error,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Goodbye { .. } => FrameType::Goodbye,
            Frame::StateBegin { .. } => FrameType::StateBegin,
            Frame::StateNeed { .. } => FrameType::StateNeed,
            Frame::ModuleData { .. } => FrameType::ModuleData,
            Frame::ChunkData { .. } => FrameType::ChunkData,
            Frame::StateEnd { .. } => FrameType::StateEnd,
            Frame::StateAdopted { .. } => FrameType::StateAdopted,
            Frame::StateRound { .. } => FrameType::StateRound,
            Frame::StateResumable { .. } => FrameType::StateResumable,
            Frame::StateResumed { .. } => FrameType::StateResumed,
            Frame::ChunkWant { .. } => FrameType::ChunkWant,
            Frame::Attach { .. } => FrameType::Attach,
            Frame::Attached { .. } => FrameType::Attached,
            Frame::Post { .. } => FrameType::Post,
            Frame::Replay { .. } => FrameType::Replay,
            Frame::Expect { .. } => FrameType::Expect,
            Frame::Expecting { .. } => FrameType::Expecting,
            Frame::Reply { .. } => FrameType::Reply,
            Frame::Handled { .. } => FrameType::Handled,
            Frame::WorkerFailed { .. } => FrameType::WorkerFailed,
            Frame::MoveOut { .. } => FrameType::MoveOut,
            Frame::Moved { .. } => FrameType::Moved,
            Frame::Pull { .. } => FrameType::Pull,
            Frame::PullSince { .. } => FrameType::PullSince,
            Frame::Return { .. } => FrameType::Return,
            Frame::ReturnSince { .. } => FrameType::ReturnSince,
            Frame::Checkpoint { .. } => FrameType::Checkpoint,
            Frame::Release { .. } => FrameType::Release,
            Frame::Register(_) => FrameType::Register,
            Frame::Heartbeat { .. } => FrameType::Heartbeat,
            Frame::ListNodes => FrameType::ListNodes,
            Frame::Nodes { .. } => FrameType::Nodes,
        }
    }

    /// The frame's name, as error messages spell it.
    pub fn name(&self) -> &'static str {
        self.frame_type().name()
    }

    /// The worker the frame is about, if it names one. ModuleData names a module, not a
    /// worker, and gives `None`.
    pub fn worker(&self) -> Option<WorkerId> {
        match self {
            Frame::Error { worker, .. } => *worker,
            Frame::StateBegin { worker, .. }
            | Frame::StateNeed { worker, .. }
            | Frame::ChunkData { worker, .. }
            | Frame::StateEnd { worker }
            | Frame::StateRound { worker, .. }
            | Frame::StateResumable { worker }
            | Frame::StateResumed { worker, .. }
            | Frame::ChunkWant { worker, .. }
            | Frame::StateAdopted { worker, .. }
            | Frame::Attach { worker, .. }
            | Frame::Attached { worker, .. }
            | Frame::Post { worker, .. }
            | Frame::Replay { worker, .. }
            | Frame::Expect { worker, .. }
            | Frame::Expecting { worker, .. }
            | Frame::Reply { worker, .. }
            | Frame::Handled { worker, .. }
            | Frame::WorkerFailed { worker, .. }
            | Frame::MoveOut { worker, .. }
            | Frame::Moved { worker, .. }
            | Frame::Pull { worker, .. }
            | Frame::PullSince { worker, .. }
            | Frame::Return { worker }
            | Frame::ReturnSince { worker, .. }
            | Frame::Checkpoint { worker }
            | Frame::Release { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// Encodes the frame, header included, ready to send as one WebSocket binary message.
    ///
    /// Strings longer than [`MAX_STRING_LEN`](crate::MAX_STRING_LEN) bytes are cut at a
    /// character boundary, so that every encoded frame decodes. A frame larger than the
    /// receiver's [`FrameLimits::max_frame`] is refused there: split module bytes and chunk
    /// bodies over several frames.
    ///
    /// # Panics
    ///
    /// If a blob or a list holds 2^32 bytes or items or more, which no receiver accepts.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.put_u8(self.frame_type() as u8);
        out.put_u8(0); // flags
        out.put_u16(0); // reserved
        out.put_u32(0); // body length, patched below
        self.encode_body(&mut out);
        let body_len = u32::try_from(out.len() - HEADER_LEN)
            .expect("a frame body holds fewer than 2^32 bytes");
        out[4..8].copy_from_slice(&body_len.to_le_bytes());
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Hello {
                min_version,
                max_version,
                peer,
                name,
            } => {
                out.put_u16(*min_version);
                out.put_u16(*max_version);
                out.put_u8(peer.to_u8());
                out.put_str(name);
            }
            Frame::Welcome {
                version,
                node_id,
                role,
            } => {
                out.put_u16(*version);
                out.put_str(node_id);
                out.put_u8(role.to_u8());
            }
            Frame::Error {
                code,
                worker,
                message,
            } => {
                out.put_u16(code.to_u16());
                match worker {
                    Some(worker) => {
                        out.put_u8(1);
                        out.put_u128(*worker);
                    }
                    None => out.put_u8(0),
                }
                out.put_str(message);
            }
            Frame::Ping { nonce } | Frame::Pong { nonce } => out.put_u64(*nonce),
            Frame::Goodbye { reason } => out.put_str(reason),
            Frame::StateBegin {
                worker,
                module_hash,
                module_len,
                owner,
                token,
                manifest,
            } => {
                out.put_u128(*worker);
                out.extend_from_slice(module_hash);
                out.put_u32(*module_len);
                out.extend_from_slice(owner);
                match token {
                    Some(token) => {
                        out.put_u8(1);
                        token.encode_into(out);
                    }
                    None => out.put_u8(0),
                }
                out.put_blob(manifest);
            }
            Frame::StateNeed {
                worker,
                module,
                chunks,
            } => {
                out.put_u128(*worker);
                out.put_bool(*module);
                out.put_count(chunks.len());
                for chunk in chunks {
                    out.put_u128(*chunk);
                }
            }
            Frame::ChunkWant { worker, chunks } => {
                out.put_u128(*worker);
                out.put_count(chunks.len());
                for chunk in chunks {
                    out.put_u128(*chunk);
                }
            }
            Frame::ModuleData {
                module_hash,
                offset,
                bytes,
            } => {
                out.extend_from_slice(module_hash);
                out.put_u32(*offset);
                out.put_blob(bytes);
            }
            Frame::ChunkData { worker, bodies } => {
                out.put_u128(*worker);
                out.put_count(bodies.len());
                for body in bodies {
                    out.put_blob(body);
                }
            }
            Frame::StateEnd { worker }
            | Frame::StateResumable { worker }
            | Frame::Return { worker }
            | Frame::Checkpoint { worker } => out.put_u128(*worker),
            Frame::ReturnSince { worker, delivered } => {
                out.put_u128(*worker);
                out.put_u64(*delivered);
            }
            Frame::StateRound {
                worker,
                bodies,
                manifest,
            } => {
                out.put_u128(*worker);
                out.put_u32(*bodies);
                out.put_blob(manifest);
            }
            Frame::StateAdopted { worker, last_seq }
            | Frame::StateResumed { worker, last_seq }
            | Frame::Attached { worker, last_seq }
            | Frame::Release { worker, last_seq } => {
                out.put_u128(*worker);
                out.put_u64(*last_seq);
            }
            Frame::Attach { worker, secret } | Frame::Expect { worker, secret } => {
                out.put_u128(*worker);
                out.extend_from_slice(secret);
            }
            Frame::Expecting { worker, budget } => {
                out.put_u128(*worker);
                out.put_u64(*budget);
            }
            Frame::Post {
                worker,
                seq,
                payload,
            }
            | Frame::Replay {
                worker,
                seq,
                payload,
            } => {
                out.put_u128(*worker);
                out.put_u64(*seq);
                out.put_blob(payload);
            }
            Frame::Reply {
                worker,
                seq,
                index,
                payload,
            } => {
                out.put_u128(*worker);
                out.put_u64(*seq);
                out.put_u32(*index);
                out.put_blob(payload);
            }
            Frame::Handled {
                worker,
                seq,
                replies,
            } => {
                out.put_u128(*worker);
                out.put_u64(*seq);
                out.put_u32(*replies);
            }
            Frame::WorkerFailed {
                worker,
                seq,
                reason,
            } => {
                out.put_u128(*worker);
                out.put_u64(*seq);
                out.put_str(reason);
            }
            Frame::MoveOut {
                worker,
                destination,
            } => {
                out.put_u128(*worker);
                out.put_str(destination);
            }
            Frame::Moved {
                worker,
                destination,
                last_seq,
            } => {
                out.put_u128(*worker);
                out.put_str(destination);
                out.put_u64(*last_seq);
            }
            Frame::Pull {
                worker,
                secret,
                source,
                destination,
            } => {
                out.put_u128(*worker);
                out.extend_from_slice(secret);
                out.put_str(source);
                out.put_str(destination);
            }
            Frame::PullSince {
                worker,
                secret,
                source,
                destination,
                delivered,
            } => {
                out.put_u128(*worker);
                out.extend_from_slice(secret);
                out.put_str(source);
                out.put_str(destination);
                out.put_u64(*delivered);
            }
            Frame::Register(node) => encode_registration(out, node),
            Frame::Heartbeat {
                workers,
                free_memory,
            } => {
                out.put_u32(*workers);
                out.put_u64(*free_memory);
            }
            Frame::ListNodes => {}
            Frame::Nodes { nodes } => {
                out.put_count(nodes.len());
                for info in nodes {
                    encode_registration(out, &info.node);
                    out.put_u64(info.last_seen_ms);
                }
            }
        }
    }

    /// Decodes one frame: a whole WebSocket binary message.
    ///
    /// Checks, in order: the input's length against `limits.max_frame`; the header's
    /// length field against the same cap; the type, the flags (none are defined in v1)
    /// and the reserved field; that the length field matches the bytes that follow; then
    /// every field of the body, each length against what remains and against the caps
    /// before anything is allocated. Bytes after the last field are refused.
    pub fn decode(bytes: &[u8], limits: &FrameLimits) -> Result<Frame, DecodeFrameError> {
        let max = limits.max_frame;
        if bytes.len() as u64 > u64::from(max) {
            return Err(DecodeFrameError::TooLarge {
                len: bytes.len() as u64,
                max,
            });
        }
        if bytes.len() < HEADER_LEN {
            return Err(DecodeFrameError::Truncated { frame: "header" });
        }
        let (header, body) = bytes.split_at(HEADER_LEN);
        let claimed = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let claimed_total = u64::from(claimed) + HEADER_LEN as u64;
        if claimed_total > u64::from(max) {
            return Err(DecodeFrameError::TooLarge {
                len: claimed_total,
                max,
            });
        }
        let frame_type = FrameType::from_u8(header[0]).ok_or(DecodeFrameError::UnknownType {
            frame_type: header[0],
        })?;
        if header[1] != 0 {
            return Err(DecodeFrameError::UnknownFlags {
                frame: frame_type.name(),
                flags: header[1],
            });
        }
        let reserved = u16::from_le_bytes([header[2], header[3]]);
        if reserved != 0 {
            return Err(DecodeFrameError::ReservedNotZero {
                frame: frame_type.name(),
                reserved,
            });
        }
        if claimed as usize != body.len() {
            return Err(DecodeFrameError::LengthMismatch {
                frame: frame_type.name(),
                claimed,
                actual: body.len() as u64,
            });
        }
        let mut r = Reader::new(body, frame_type.name());
        let frame = decode_body(frame_type, &mut r, limits)?;
        r.finish()?;
        Ok(frame)
    }
}

fn encode_registration(out: &mut Vec<u8>, node: &NodeRegistration) {
    out.put_str(&node.node_id);
    out.put_str(&node.url);
    out.put_u8(node.role.to_u8());
    out.put_u16(node.cores);
    out.put_u32(node.speed.to_bits());
    out.put_u64(node.free_memory);
    out.put_u32(node.workers);
    out.put_str(&node.location);
}

fn decode_registration(r: &mut Reader<'_>) -> Result<NodeRegistration, DecodeFrameError> {
    let node_id = r.string("node_id")?;
    let url = r.string("url")?;
    let role = NodeRole::from_tag(r.tag("role", 2)?);
    let cores = r.u16()?;
    let speed_bits = r.u32()?;
    let speed = f32::from_bits(speed_bits);
    // A NaN would make a registration unequal to itself and poison placement arithmetic.
    if !speed.is_finite() || speed.is_sign_negative() {
        return Err(DecodeFrameError::InvalidSpeed { bits: speed_bits });
    }
    Ok(NodeRegistration {
        node_id,
        url,
        role,
        cores,
        speed,
        free_memory: r.u64()?,
        workers: r.u32()?,
        location: r.string("location")?,
    })
}

/// A list of chunk hashes (StateNeed, ChunkWant), its count checked against the cap.
fn chunk_hashes(
    r: &mut Reader<'_>,
    limits: &FrameLimits,
) -> Result<Vec<ChunkHash>, DecodeFrameError> {
    let count = r.count(16, limits.max_items)?;
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        chunks.push(r.u128()?);
    }
    Ok(chunks)
}

/// A Post or Reply payload, checked against the message cap.
fn payload(r: &mut Reader<'_>, limits: &FrameLimits) -> Result<Vec<u8>, DecodeFrameError> {
    let payload = r.blob()?;
    if payload.len() as u64 > u64::from(limits.max_payload) {
        return Err(DecodeFrameError::PayloadTooLarge {
            len: payload.len() as u64,
            max: limits.max_payload,
        });
    }
    Ok(payload)
}

fn decode_body(
    frame_type: FrameType,
    r: &mut Reader<'_>,
    limits: &FrameLimits,
) -> Result<Frame, DecodeFrameError> {
    Ok(match frame_type {
        FrameType::Hello => Frame::Hello {
            min_version: r.u16()?,
            max_version: r.u16()?,
            peer: PeerKind::from_tag(r.tag("peer", 2)?),
            name: r.string("name")?,
        },
        FrameType::Welcome => Frame::Welcome {
            version: r.u16()?,
            node_id: r.string("node_id")?,
            role: NodeRole::from_tag(r.tag("role", 2)?),
        },
        FrameType::Error => Frame::Error {
            code: ErrorCode::from_u16(r.u16()?),
            worker: match r.tag("worker", 2)? {
                0 => None,
                _ => Some(r.u128()?),
            },
            message: r.string("message")?,
        },
        FrameType::Ping => Frame::Ping { nonce: r.u64()? },
        FrameType::Pong => Frame::Pong { nonce: r.u64()? },
        FrameType::Goodbye => Frame::Goodbye {
            reason: r.string("reason")?,
        },
        FrameType::StateBegin => Frame::StateBegin {
            worker: r.u128()?,
            module_hash: r.bytes32()?,
            module_len: r.u32()?,
            owner: r.bytes32()?,
            token: match r.tag("token", 2)? {
                0 => None,
                _ => Some(MoveToken::decode_from(r)?),
            },
            manifest: r.blob()?,
        },
        FrameType::StateNeed => {
            let worker = r.u128()?;
            let module = r.bool("module")?;
            let chunks = chunk_hashes(r, limits)?;
            Frame::StateNeed {
                worker,
                module,
                chunks,
            }
        }
        FrameType::ModuleData => Frame::ModuleData {
            module_hash: r.bytes32()?,
            offset: r.u32()?,
            bytes: r.blob()?,
        },
        FrameType::ChunkData => {
            let worker = r.u128()?;
            let count = r.count(4, limits.max_items)?;
            let mut bodies = Vec::with_capacity(count);
            for _ in 0..count {
                bodies.push(r.blob()?);
            }
            Frame::ChunkData { worker, bodies }
        }
        FrameType::StateEnd => Frame::StateEnd { worker: r.u128()? },
        FrameType::StateRound => Frame::StateRound {
            worker: r.u128()?,
            bodies: r.u32()?,
            manifest: r.blob()?,
        },
        FrameType::StateAdopted => Frame::StateAdopted {
            worker: r.u128()?,
            last_seq: r.u64()?,
        },
        FrameType::StateResumable => Frame::StateResumable { worker: r.u128()? },
        FrameType::StateResumed => Frame::StateResumed {
            worker: r.u128()?,
            last_seq: r.u64()?,
        },
        FrameType::ChunkWant => Frame::ChunkWant {
            worker: r.u128()?,
            chunks: chunk_hashes(r, limits)?,
        },
        FrameType::Attach => Frame::Attach {
            worker: r.u128()?,
            secret: r.bytes32()?,
        },
        FrameType::Attached => Frame::Attached {
            worker: r.u128()?,
            last_seq: r.u64()?,
        },
        FrameType::Post => Frame::Post {
            worker: r.u128()?,
            seq: r.u64()?,
            payload: payload(r, limits)?,
        },
        FrameType::Replay => Frame::Replay {
            worker: r.u128()?,
            seq: r.u64()?,
            payload: payload(r, limits)?,
        },
        FrameType::Expect => Frame::Expect {
            worker: r.u128()?,
            secret: r.bytes32()?,
        },
        FrameType::Expecting => Frame::Expecting {
            worker: r.u128()?,
            budget: r.u64()?,
        },
        FrameType::Reply => Frame::Reply {
            worker: r.u128()?,
            seq: r.u64()?,
            index: r.u32()?,
            payload: payload(r, limits)?,
        },
        FrameType::Handled => Frame::Handled {
            worker: r.u128()?,
            seq: r.u64()?,
            replies: r.u32()?,
        },
        FrameType::WorkerFailed => Frame::WorkerFailed {
            worker: r.u128()?,
            seq: r.u64()?,
            reason: r.string("reason")?,
        },
        FrameType::MoveOut => Frame::MoveOut {
            worker: r.u128()?,
            destination: r.string("destination")?,
        },
        FrameType::Moved => Frame::Moved {
            worker: r.u128()?,
            destination: r.string("destination")?,
            last_seq: r.u64()?,
        },
        FrameType::Pull => Frame::Pull {
            worker: r.u128()?,
            secret: r.bytes32()?,
            source: r.string("source")?,
            destination: r.string("destination")?,
        },
        FrameType::PullSince => Frame::PullSince {
            worker: r.u128()?,
            secret: r.bytes32()?,
            source: r.string("source")?,
            destination: r.string("destination")?,
            delivered: r.u64()?,
        },
        FrameType::Return => Frame::Return { worker: r.u128()? },
        FrameType::ReturnSince => Frame::ReturnSince {
            worker: r.u128()?,
            delivered: r.u64()?,
        },
        FrameType::Checkpoint => Frame::Checkpoint { worker: r.u128()? },
        FrameType::Release => Frame::Release {
            worker: r.u128()?,
            last_seq: r.u64()?,
        },
        FrameType::Register => Frame::Register(decode_registration(r)?),
        FrameType::Heartbeat => Frame::Heartbeat {
            workers: r.u32()?,
            free_memory: r.u64()?,
        },
        FrameType::ListNodes => Frame::ListNodes,
        FrameType::Nodes => {
            let count = r.count(REGISTRATION_MIN_LEN + 8, limits.max_items)?;
            let mut nodes = Vec::with_capacity(count);
            for _ in 0..count {
                nodes.push(NodeInfo {
                    node: decode_registration(r)?,
                    last_seen_ms: r.u64()?,
                });
            }
            Frame::Nodes { nodes }
        }
    })
}
