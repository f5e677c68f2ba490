//! What a session tells its owner to do with a frame it accepted.

use crate::code::{ErrorCode, NodeRole, PeerKind};
use crate::frame::{ChunkHash, ModuleHash, NodeInfo, NodeRegistration, WorkerId};
use crate::token::MoveToken;

/// A frame a session accepted, and what it means for the node or client that owns the
/// session. Borrowed from the frame, so nothing is copied.
///
/// Each variant says what the owner is expected to do; the session checks only that the
/// frame is valid now, never the work itself (secrets, tokens, hashes, restores).
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'f> {
    /// The peer said Hello and speaks `version` (node). Answer with a Welcome carrying it.
    Hello {
        /// The version negotiated.
        version: u16,
        /// Client or node.
        peer: PeerKind,
        /// The peer's name, for logs.
        name: &'f str,
    },
    /// The node accepted this side's Hello (client). The connection is ready.
    Welcome {
        /// The version the connection speaks.
        version: u16,
        /// The node's name.
        node_id: &'f str,
        /// Edge or cloud.
        role: NodeRole,
    },
    /// Answer with a Pong carrying `nonce`.
    Ping {
        /// The nonce to echo.
        nonce: u64,
    },
    /// The peer answered a Ping.
    Pong {
        /// The echoed nonce.
        nonce: u64,
    },
    /// The peer refused something. Without a worker the session is now closed; with the
    /// worker of a transfer in progress, that transfer is abandoned.
    PeerError {
        /// Why.
        code: ErrorCode,
        /// The worker it is about.
        worker: Option<WorkerId>,
        /// The peer's message.
        message: &'f str,
    },
    /// The peer is leaving; the session is now closed.
    Goodbye {
        /// Why.
        reason: &'f str,
    },
    /// A state transfer begins. Check the token (node-to-node moves) and the manifest,
    /// then send StateNeed with what is missing, or an Error.
    StateBegin {
        /// The worker moving.
        worker: WorkerId,
        /// Its module.
        module_hash: &'f ModuleHash,
        /// The module's length.
        module_len: u32,
        /// Sha-256 of the worker's secret.
        owner: &'f [u8; 32],
        /// The move token, if the sender sent one.
        token: Option<&'f MoveToken>,
        /// The encoded snapshot manifest.
        manifest: &'f [u8],
    },
    /// A piece of the module, in order. When `complete`, hash the whole and compare it with
    /// `module_hash`.
    ModuleData {
        /// The worker moving.
        worker: WorkerId,
        /// The module.
        module_hash: &'f ModuleHash,
        /// Where the piece starts.
        offset: u32,
        /// The piece.
        bytes: &'f [u8],
        /// Whether this was the module's last piece.
        complete: bool,
    },
    /// Chunk bodies asked for.
    ChunkData {
        /// The worker moving.
        worker: WorkerId,
        /// Each a `roam_snapshot::ChunkBody` encoding.
        bodies: &'f [Vec<u8>],
    },
    /// A newer manifest of the worker moving (pre-copy): `bodies` chunk bodies follow,
    /// one per distinct chunk of it that no earlier manifest of the transfer held.
    StateRound {
        /// The worker moving.
        worker: WorkerId,
        /// Bodies that follow.
        bodies: u32,
        /// The manifest bytes.
        manifest: &'f [u8],
    },
    /// The sender's last manifest is final: this side may run the worker before the
    /// bodies still due arrive (post-copy), then send StateResumed.
    StateResumable {
        /// The worker moving.
        worker: WorkerId,
    },
    /// The receiver of this side's transfer runs the worker already: its client may use
    /// it there; keep the state and answer ChunkWant until StateAdopted.
    StateResumed {
        /// The worker moving.
        worker: WorkerId,
        /// The last message the state had handled.
        last_seq: u64,
    },
    /// The receiver's running worker waits for these bodies: send them next.
    ChunkWant {
        /// The worker moving.
        worker: WorkerId,
        /// The chunks wanted.
        chunks: &'f [ChunkHash],
    },
    /// Everything asked for arrived: restore the worker, then send StateAdopted (or an
    /// Error).
    TransferComplete {
        /// The worker moved.
        worker: WorkerId,
    },
    /// The receiver of this side's transfer lacks these: send them, then StateEnd.
    StateNeed {
        /// The worker moving.
        worker: WorkerId,
        /// Whether to send the module's bytes.
        module: bool,
        /// The chunk bodies to send.
        chunks: &'f [ChunkHash],
    },
    /// The receiver of this side's transfer runs the worker now: replay the messages after
    /// `last_seq` (client) or report the move (node).
    StateAdopted {
        /// The worker moved.
        worker: WorkerId,
        /// The last message it had handled.
        last_seq: u64,
    },
    /// A client claims a worker. Check the secret, then send Attached (or an Error).
    Attach {
        /// The worker.
        worker: WorkerId,
        /// The secret to check against the worker's owner hash.
        secret: &'f [u8; 32],
    },
    /// A client's worker is on its way here: answer Expecting with the bytes of its Posts
    /// this node will hold until it arrives (0: none), and hold them.
    Expect {
        /// The worker.
        worker: WorkerId,
        /// The secret, checked against the worker's owner hash when it arrives.
        secret: &'f [u8; 32],
    },
    /// The node holds Posts for the expected worker, up to `budget` bytes of payload.
    Expecting {
        /// The worker.
        worker: WorkerId,
        /// Payload bytes the node holds at most.
        budget: u64,
    },
    /// The node accepted this side's Attach: resend the messages after `last_seq`.
    Attached {
        /// The worker.
        worker: WorkerId,
        /// The last message it handled.
        last_seq: u64,
    },
    /// Deliver a message to an attached worker, unless `seq` was already handled.
    Post {
        /// The worker.
        worker: WorkerId,
        /// The message's sequence number.
        seq: u64,
        /// The message.
        payload: &'f [u8],
    },
    /// As Post, but send only Handled (with `replies` 0): the client has the replies.
    Replay {
        /// The worker.
        worker: WorkerId,
        /// The message's sequence number.
        seq: u64,
        /// The message.
        payload: &'f [u8],
    },
    /// A reply of message `seq`; drop it if that message was already delivered.
    Reply {
        /// The worker.
        worker: WorkerId,
        /// The message being handled.
        seq: u64,
        /// Which reply of that message.
        index: u32,
        /// The reply.
        payload: &'f [u8],
    },
    /// Message `seq` is handled: forget it.
    Handled {
        /// The worker.
        worker: WorkerId,
        /// The message.
        seq: u64,
        /// How many replies it posted.
        replies: u32,
    },
    /// Message `seq` made the worker fail.
    WorkerFailed {
        /// The worker.
        worker: WorkerId,
        /// The message.
        seq: u64,
        /// Why.
        reason: &'f str,
    },
    /// Hand the attached worker to `destination`, then send Moved.
    MoveOut {
        /// The worker.
        worker: WorkerId,
        /// The destination node's URL.
        destination: &'f str,
    },
    /// The worker runs at `destination` now; attach there and replay after `last_seq`.
    Moved {
        /// The worker.
        worker: WorkerId,
        /// Where it runs.
        destination: &'f str,
        /// The last message it had handled.
        last_seq: u64,
    },
    /// Fetch the worker from `source` (attach with `secret`, then Return), then host it or
    /// forward it to `destination`; send Moved when it runs there.
    Pull {
        /// The worker.
        worker: WorkerId,
        /// Its secret.
        secret: &'f [u8; 32],
        /// The node holding it.
        source: &'f str,
        /// Where it should run.
        destination: &'f str,
        /// The last message whose replies all reached the client (PullSince, version 6):
        /// the source's replies after it are sent to the client before Moved.
        delivered: Option<u64>,
    },
    /// Send the attached worker back on this connection: finish the message in progress,
    /// capture, then send StateBegin.
    Return {
        /// The worker.
        worker: WorkerId,
        /// From the cloud's ReturnSince (version 7): the last message whose replies all
        /// reached the client, so of the replies kept for a fallback only later ones go.
        delivered: Option<u64>,
    },
    /// Send a copy of the attached worker's state on this connection (version 3): capture
    /// it between two messages, send StateBegin, and keep running it after StateAdopted.
    Checkpoint {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker's state was adopted elsewhere: drop this copy.
    Release {
        /// The worker.
        worker: WorkerId,
        /// The last message the adopted state had handled.
        last_seq: u64,
    },
    /// A node joins the registry (cloud).
    Register(&'f NodeRegistration),
    /// A registered node's load (cloud).
    Heartbeat {
        /// Workers it hosts.
        workers: u32,
        /// Memory it can still give, in bytes.
        free_memory: u64,
    },
    /// Answer with Nodes (cloud).
    ListNodes,
    /// The cloud's registered nodes.
    Nodes(&'f [NodeInfo]),
}
