//! The worker handle: one worker, wherever it runs, with every message handled exactly once.
//!
//! Every message the application posts gets the next sequence number and stays in the
//! handle's log until the worker reports it handled (`Handled`, or a `last_seq` after a
//! move). After a move the handle resends every logged message above the destination's
//! `last_seq`, and drops any reply for a sequence number it has already delivered. So a
//! message is handled once by the worker's state, wherever that state went, and each reply
//! reaches the application once, in order.
//!
//! When the worker runs on a node, the handle also keeps a *recovery point*: the last
//! snapshot of the worker it holds itself (taken when it offloaded the worker) and every
//! message posted since. If the node dies — its connection breaks, or the cloud cannot
//! reach it — the handle restores that snapshot locally and handles those messages again
//! (one at a time as the application asks for replies: the *backlog*, which a return's
//! held messages form too), delivering only the replies the application has not had yet,
//! then carries on with what it was doing (a move continues from here). For a worker whose
//! replies and state depend only on its messages, the application cannot tell.
//! `docs/protocol.md` states the guarantee.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_proto::{ChunkHash, Frame, WorkerId};
use roam_runtime::{Delta, Runtime, RuntimeConfig, Worker, WorkerModule};
use roam_snapshot::{ChunkBody, DecodeLimits, Manifest, Snapshot};
use sha2::{Digest, Sha256};

use crate::connection::Connection;
use crate::error::ClientError;

/// Where a worker runs, or is to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// In this process.
    Local,
    /// On the node at this WebSocket URL.
    Node(String),
    /// On the node at `to`, the state fetched from the current node by the cloud at
    /// `cloud`: the path when the client can no longer reach the node that holds the worker.
    Relay {
        /// The cloud that fetches the state.
        cloud: String,
        /// Where the worker goes (may be the cloud itself).
        to: String,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local => f.write_str("local"),
            Place::Node(url) => f.write_str(url),
            Place::Relay { cloud, to } => write!(f, "{to} (relayed by {cloud})"),
        }
    }
}

/// The kind of a move, named from where the worker is and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveKind {
    /// Local to a node.
    Offload,
    /// Node to node, directly.
    Handoff,
    /// Node to node through the cloud, which fetches the state.
    Fallback,
    /// Node to local.
    Return,
    /// The node holding the worker died: the client restored its own last snapshot,
    /// replayed the messages since, and then made the move from here.
    Recovery,
}

impl std::fmt::Display for MoveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MoveKind::Offload => "offload",
            MoveKind::Handoff => "handoff",
            MoveKind::Fallback => "fallback",
            MoveKind::Return => "return",
            MoveKind::Recovery => "recovery",
        })
    }
}

/// What a move cost, as the client saw it.
#[derive(Clone, Debug)]
pub struct MoveReport {
    /// The kind of move.
    pub kind: MoveKind,
    /// Where the worker was.
    pub from: String,
    /// Where it is now.
    pub to: String,
    /// From the request to the worker running at the destination with all of its state.
    /// Resending the messages the source did not handle comes after and is not counted:
    /// those are the application's messages, which reach the worker in the replies'
    /// latency (the gaps the application sees).
    pub duration: Duration,
    /// Frame bytes the client sent and received for the move (state that moves node to
    /// node does not pass through the client and is not counted here).
    pub client_bytes: u64,
    /// Messages resent to the destination after the move.
    pub replayed: u64,
}

/// One reply of the worker, with the sequence number of the message that caused it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The message's sequence number (the first message is 1).
    pub seq: u64,
    /// The reply's bytes.
    pub payload: Vec<u8>,
}

/// How an offload (or a return) sends the worker's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MoveMode {
    /// In rounds while the worker keeps running here, as [`WorkerOptions::precopy_rounds`]
    /// and [`WorkerOptions::downtime_target`] allow; the worker pauses for the last one.
    /// Pays when each round is smaller than the one before: a worker that rewrites little
    /// of its memory between messages.
    #[default]
    PreCopy,
    /// Once, with the worker paused from the start. The shorter move when the worker
    /// rewrites its state faster than the link carries it (every round would be as large
    /// as the first, and the last one pauses the worker anyway), or when this device
    /// cannot keep up with the messages and is better relieved of them at once.
    ///
    /// For a return the node still sends its rounds, but the handle holds back every
    /// message posted from the start (they run here once the state is in): the worker
    /// idles at the node once the messages in flight are handled, so the rounds after
    /// the first carry only what those changed.
    StopAndCopy,
    /// Once, with the worker running on here; the node then catches up by handling the
    /// messages handled here since, and the handle switches over once it has (see
    /// `docs/protocol.md`, "Catching up instead of pausing"). The worker never pauses;
    /// each message handled meanwhile crosses the link a second time, so this pays for a
    /// worker that rewrites its state fast and takes light messages.
    CatchUp,
}

/// Settings of a worker handle.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// Most messages in flight to a node at once.
    pub window: usize,
    /// The name the client gives in its Hello.
    pub client_name: String,
    /// The local runtime's settings.
    pub runtime: RuntimeConfig,
    /// Most bytes of messages kept to recover the worker should its node die. Past this,
    /// the recovery point is given up (with a warning) until the worker's state next
    /// passes through the client.
    pub recovery_bytes: usize,
    /// An offload's pre-copy stops when the chunks changed since the last round would
    /// cross the link within this time at the bandwidth measured. Default 20 ms.
    pub downtime_target: Duration,
    /// Most pre-copy rounds of an offload after the first; 0 sends the state once with
    /// the worker paused. Default 8.
    pub precopy_rounds: u32,
    /// Dial routes: a node's URL → the URL to connect to instead (a proxy, a tunnel, an
    /// emulated link). The node is still named by its own URL ([`WorkerHandle::place`],
    /// moves, `Pull`); only where the socket connects changes.
    pub routes: BTreeMap<String, String>,
    /// While the worker runs on a node, take a copy of its state this often (a
    /// checkpoint, on a connection of its own, sending only the chunks that changed), so
    /// that recovering it should the node die replays only the messages since. `None`
    /// takes none: the recovery point stays the state the client last held. Default 10 s.
    pub checkpoint_every: Option<Duration>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            window: 8,
            client_name: "roam-client".into(),
            runtime: RuntimeConfig::default(),
            recovery_bytes: 256 << 20,
            downtime_target: Duration::from_millis(20),
            precopy_rounds: 8,
            routes: BTreeMap::new(),
            checkpoint_every: Some(Duration::from_secs(10)),
        }
    }
}

enum Placement {
    Local(Box<Worker>),
    Remote(Box<Connection>),
    /// Between two places (only while a move is under way or after it failed).
    Nowhere,
}

/// Chunk bodies per ChunkData frame are capped at this many bytes (well under the 32 MiB
/// frame cap).
const CHUNK_FRAME_BYTES: usize = 4 << 20;
/// Module bytes per ModuleData frame.
const MODULE_PIECE: usize = 1 << 20;

/// A worker owned by this client, running locally or on a node.
pub struct WorkerHandle {
    id: WorkerId,
    secret: [u8; 32],
    owner: [u8; 32],
    runtime: Runtime,
    module: Arc<WorkerModule>,
    placement: Placement,
    options: WorkerOptions,
    next_seq: u64,
    /// Posted and not yet known to be handled.
    log: VecDeque<(u64, Vec<u8>)>,
    /// Messages sent on the current connection and not yet handled.
    in_flight: usize,
    /// Highest sequence number sent on the current connection (or known handled there).
    sent_through: u64,
    /// During a switch to a handoff's destination: the messages (first, last) sent to it
    /// ahead of the worker, which the replay skips.
    sent_ahead: Option<(u64, u64)>,
    /// When a move's destination last took the worker with all of its state, before the
    /// replay there: where [`MoveReport::duration`] ends.
    resumed_at: Option<Instant>,
    /// Highest sequence number whose replies have all been delivered.
    delivered: u64,
    /// While the worker runs here: messages it has still to handle, in order, ahead of any
    /// posted later. A return or a recovery leaves here the messages its state had not
    /// handled; they run one per [`pump`](Self::pump), so each reply reaches the
    /// application as soon as it is made rather than with the last one, and a message
    /// posted meanwhile joins them.
    backlog: VecDeque<(u64, Vec<u8>)>,
    /// Replies already delivered of the message after `delivered` (its Handled not seen).
    partial: u32,
    replies: VecDeque<Reply>,
    /// What to restore locally if the node holding the worker dies.
    recovery: Option<Recovery>,
    /// A handoff under way: the worker still runs at the source and takes messages.
    handoff: Option<PendingHandoff>,
    /// A return under way: the state comes home on a connection of its own while the
    /// worker keeps handling messages on the node.
    returning: Option<PendingReturn>,
    /// An offload under way: the worker keeps running here while its state goes out in
    /// pre-copy rounds.
    offloading: Option<PendingOffload>,
    /// An offload whose node is catching up with the worker running here.
    catching_up: Option<CatchingUp>,
    /// The outcome of the last move that ran in the background, until taken.
    finished: Option<Result<MoveReport, ClientError>>,
    /// When each message still in the log was posted, and its size.
    posted: VecDeque<(u64, Instant, u64)>,
    /// The sizes of the last [`RECENT_MESSAGES`] messages posted.
    recent_sizes: VecDeque<u64>,
    /// Reply bytes of the message after `delivered`, so far.
    reply_bytes: u64,
    /// What was seen of each message handled, for a placement policy; the oldest are
    /// dropped past [`MAX_OBSERVATIONS`].
    observations: VecDeque<Observation>,
    /// While set, waiting for the node stops at this instant (see
    /// [`WorkerHandle::next_reply_within`]): only the waits themselves are cut short,
    /// never a step that changes the handle's state.
    deadline: Option<tokio::time::Instant>,
    /// A checkpoint under way: a copy of the worker's state coming from its node.
    checkpointing: Option<tokio::task::JoinHandle<Result<(Snapshot, Transfer), ClientError>>>,
    /// A checkpoint that arrived ahead of the replies: it becomes the recovery point once
    /// every reply of the messages it handled has been delivered (a recovery from it could
    /// not give them again).
    checkpoint_ready: Option<Snapshot>,
    /// State transfers timed since the last [`take_transfers`](Self::take_transfers).
    transfers: Vec<Transfer>,
    /// When the recovery point was last renewed (or the worker last arrived on a node).
    recovery_at: Instant,
    /// The last scan of the worker's memory here: when, and a hash of each piece.
    scanned: Option<(Instant, Vec<u64>)>,
    /// Times the worker was taken back from a node that was lost.
    recoveries: u64,
}

/// What a scan of the worker's memory found (see [`WorkerHandle::scan_local_state`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct StateScan {
    /// Bytes of memory that are not zero, counted in 4 KiB pages.
    pub nonzero: u64,
    /// Bytes of the pieces that changed since the previous scan (memory that grew
    /// included), and the time between the two scans; `None` on a first scan.
    pub changed: Option<(u64, Duration)>,
}

/// The pieces a scan hashes to find what changed.
const SCAN_PIECE: usize = 64 << 10;

/// Observations kept when nobody takes them.
const MAX_OBSERVATIONS: usize = 4096;

/// Bytes from which a message posted while the worker leaves its node (a handoff or a
/// return) waits for the destination instead of going to the node. On a device's uplink
/// (10 Mbit/s) such a message takes 0.4 s or more to upload, longer than the pause of a
/// warm move: it would most likely reach the source after the source stopped taking
/// messages, and then cross the uplink a second time to the destination (a return
/// handles it here without any upload).
const WAITS_FOR_DESTINATION: usize = 512 << 10;

/// Bytes of state that crossed the link to a node, timed: the traffic a placement policy
/// measures bandwidth from without probing.
#[derive(Clone, Debug)]
pub(crate) struct Transfer {
    /// The node at the other end.
    pub node: String,
    /// From the device to the node (otherwise back).
    pub up: bool,
    /// How many bytes.
    pub bytes: u64,
    /// How long they took, one round trip included.
    pub seconds: f64,
}

/// What the handle saw of one message.
#[derive(Clone, Debug)]
pub(crate) struct Observation {
    /// Where it was handled: `None` here, or the node's URL.
    pub node: Option<String>,
    /// When it was posted.
    pub posted_at: Instant,
    /// Its size.
    pub request_bytes: u64,
    /// From the post to its last reply (here, the handler's time).
    pub response: Duration,
    /// All of its replies' bytes.
    pub reply_bytes: u64,
}

/// A return: a task attaches on a second connection, asks for the worker and receives its
/// state (pre-copy rounds, then StateEnd) while the main connection carries messages.
struct PendingReturn {
    from: String,
    started: Instant,
    task: tokio::task::JoinHandle<Result<Returned, ClientError>>,
    /// The state as its first pre-copy round left it, once every body of that round is
    /// in: a copy as good as a checkpoint, should the node be lost before the return ends.
    first_round: FirstRound,
    /// Whether messages posted meanwhile wait here for the state ([`MoveMode::StopAndCopy`])
    /// rather than go on to the node.
    hold: bool,
}

/// Where a transfer leaves the state of its first round (see [`PendingReturn`]).
type FirstRound = Arc<std::sync::Mutex<Option<Snapshot>>>;

/// An offload in pre-copy rounds. A task owns the connection and sends each round it is
/// given; the handle captures the next round, between two of the application's messages,
/// whenever the task reports the last one delivered.
struct PendingOffload {
    to: String,
    started: Instant,
    /// Rounds for the task to send.
    rounds: tokio::sync::mpsc::UnboundedSender<OffloadRound>,
    /// The bandwidth the task measured for each round delivered, bytes per second.
    delivered: tokio::sync::mpsc::UnboundedReceiver<f64>,
    /// A bandwidth taken from `delivered` by a wait and not yet acted on.
    latest: Option<f64>,
    task: tokio::task::JoinHandle<Result<Offloaded, ClientError>>,
    /// Every chunk of every manifest sent: the node holds them all.
    known: HashSet<ChunkHash>,
    /// Chunk-body bytes of the last round sent.
    previous: u64,
    /// Rounds sent, the first included.
    sent: u32,
    /// A round is on its way and not yet delivered.
    awaiting: bool,
    /// The last round is out: the worker takes no message until the node adopts it.
    paused: bool,
    /// The last manifest sent.
    manifest: Option<Manifest>,
    /// Most rounds after the first.
    max_rounds: u32,
    /// The last round went out without pausing the worker, with its state as of this
    /// message: the worker runs on here, and the node catches up by handling the messages
    /// since (see [`CatchingUp`]).
    catch_up: Option<u64>,
}

/// An offload whose node adopted the worker's state as of an earlier message while the
/// worker went on running here: the node now handles every message handled here since,
/// and every new one, until it has caught up; then the handle switches over to it.
///
/// The worker is deterministic, so the node's copy reaches the same state by handling
/// the same messages (as a recovery does); its replies repeat ones already delivered and
/// are dropped. Nothing pauses the worker: the move's stall is the node's lag at the
/// switch, which is none when the node is faster than the device.
struct CatchingUp {
    to: String,
    started: Instant,
    conn: Connection,
    /// The state the node adopted: the recovery point once switched.
    snapshot: Snapshot,
    /// Highest message sent to the node.
    sent_through: u64,
    /// Highest message the node has handled.
    node_handled: u64,
    /// When the node adopted the state.
    since: Instant,
    /// Frame bytes through the connection when the node adopted the state.
    bytes: u64,
    /// The smallest lag seen (messages handled here and not yet there), and when.
    least_lag: (u64, Instant),
}

/// The longest the node may take to catch up before the handle switches over anyway
/// (the messages it has not handled yet then wait for it).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// How long the node may go without gaining on the device before the handle switches
/// over: a device that handles messages as fast as the node (or faster, or an application
/// that posts faster than either) is never caught up, and waiting only adds to the lag.
const CATCH_UP_STALLED: Duration = Duration::from_millis(250);

/// Messages the worker handles here past the state sent in the last round; later ones
/// wait for the node, as in a pause. Each one handled here is handled again by the node
/// (without its replies, on a version 4 node: a Replay), and an application that posts as
/// fast as the device answers would otherwise leave the node ever further behind.
const CATCH_UP_MAX_AHEAD: u64 = 8192;

/// Bytes of messages the worker handles here past the state sent, at most: past them
/// later messages wait for the node.
const CATCH_UP_MAX_AHEAD_BYTES: u64 = 16 << 20;

/// The mean message size up to which an offload catches up by default.
pub const LIGHT_MESSAGE: u64 = 4096;

/// Messages whose sizes [`WorkerHandle::light_messages`] averages.
const RECENT_MESSAGES: usize = 64;

/// Messages the node may still have to handle when the handle switches over to it. The
/// node's replies take a round trip to come back, so a node exactly as fast as the device
/// never shows itself level; a few messages behind it is caught up.
const CATCH_UP_LAG: u64 = 4;

/// A round of an offload: a newer manifest and the bodies of its new chunks; the last one
/// ends the transfer.
struct OffloadRound {
    manifest: Manifest,
    bodies: Vec<ChunkBody>,
    last: bool,
}

/// An offload's transfer, done: the connection, the message the node's state had
/// handled, every body sent, and the bytes.
struct Offloaded {
    conn: Connection,
    last_seq: u64,
    bodies: Vec<ChunkBody>,
}

/// The state a return brought home, not yet restored.
struct Returned {
    conn: Connection,
    manifest: Manifest,
    bodies: Vec<ChunkBody>,
}

/// What one turn of [`WorkerHandle::pump_raw`] brought.
enum Pumped {
    /// A frame from the node (or nothing, locally).
    Frame(Option<Frame>),
    /// The state of a return under way arrived (or failed to).
    Returned(Result<Box<Returned>, ClientError>),
}

/// A handoff the source node runs (in pre-copy rounds) while the worker keeps handling
/// messages there; it ends with Moved, or with an Error that leaves the worker where it is.
struct PendingHandoff {
    from: String,
    to: String,
    started: Instant,
    /// Frame bytes on the source connection when the move began.
    bytes_before: u64,
    /// The connection to the destination, opened while the state travels.
    next: Destination,
}

/// A handoff's connection to its destination.
enum Destination {
    /// Opening; with a version 5 node it also asks the node to hold the worker's
    /// messages until the worker arrives (Expect), and gives the budget the node
    /// granted.
    Opening(tokio::task::JoinHandle<Result<(Connection, u64), ClientError>>),
    /// Open. The messages that wait for the destination go to it at once, ahead of the
    /// worker, while `sent` (the first and last of them, `bytes` of payload) stays within
    /// the node's `budget`; later ones wait here for the move's end as before. A task of
    /// its own writes them (`frames`), so that a picture's upload does not hold up this
    /// handle, which reads the source meanwhile; it gives the connection back once
    /// `frames` closes.
    Open {
        frames: tokio::sync::mpsc::UnboundedSender<Frame>,
        writer: tokio::task::JoinHandle<Result<Connection, ClientError>>,
        version: Option<u16>,
        budget: u64,
        sent: Option<(u64, u64)>,
        bytes: u64,
    },
    /// Opening failed: the switch tries once more.
    Failed,
}

impl Destination {
    /// What the destination's opening task gave.
    fn opened(
        url: &str,
        opened: Result<Result<(Connection, u64), ClientError>, tokio::task::JoinError>,
    ) -> Destination {
        match opened {
            Ok(Ok((conn, budget))) => {
                tracing::debug!(
                    to = url,
                    budget,
                    "the destination holds messages for the worker until it arrives"
                );
                let version = conn.version();
                let (frames, mut queue) = tokio::sync::mpsc::unbounded_channel::<Frame>();
                let writer = tokio::spawn(async move {
                    let mut conn = conn;
                    while let Some(frame) = queue.recv().await {
                        conn.send(&frame).await?;
                    }
                    Ok(conn)
                });
                Destination::Open {
                    frames,
                    writer,
                    version,
                    budget,
                    sent: None,
                    bytes: 0,
                }
            }
            Ok(Err(e)) => {
                tracing::debug!("opening {url} during the handoff failed: {e}");
                Destination::Failed
            }
            Err(_) => Destination::Failed,
        }
    }
}

impl PendingHandoff {
    /// Gives the handoff up: the destination's connection closes, and with it whatever
    /// the node held for the worker.
    fn abandon(self) {
        match self.next {
            Destination::Opening(opening) => opening.abort(),
            Destination::Open { writer, .. } => writer.abort(),
            Destination::Failed => {}
        }
    }

    /// Messages sent to the destination ahead of the worker.
    fn sent_ahead(&self) -> Option<(u64, u64)> {
        match &self.next {
            Destination::Open { sent, .. } => *sent,
            _ => None,
        }
    }
}

/// Opens the connection to a handoff's destination and, when it speaks version 5, asks it
/// to hold the worker's messages until the worker arrives: returns the connection and
/// how many bytes of messages the node holds (0: none).
async fn open_destination(
    url: String,
    options: WorkerOptions,
    worker: WorkerId,
    secret: [u8; 32],
) -> Result<(Connection, u64), ClientError> {
    let mut conn = Connection::open(&url, &options).await?;
    if conn.version().is_none_or(|v| v < 5) {
        return Ok((conn, 0));
    }
    conn.send(&Frame::Expect { worker, secret }).await?;
    let budget = match conn.recv().await {
        Ok(Frame::Expecting { budget, .. }) => budget,
        Ok(other) => return Err(conn.unexpected(&other, "Expecting")),
        // Refused: the messages wait for the move's end.
        Err(ClientError::Refused { .. }) => 0,
        Err(e) => return Err(e),
    };
    Ok((conn, budget))
}

/// A fallback's connection for the messages that go to the cloud ahead of the worker.
enum Ahead {
    /// Opening, and asking the cloud to hold the worker's messages (Expect).
    Opening(AbortOnDrop<Result<(Connection, u64), ClientError>>),
    /// Writing the messages (the first and last sent); gives the connection back once done.
    Sending {
        writer: AbortOnDrop<Result<Connection, ClientError>>,
        sent: (u64, u64),
    },
}

/// A task that stops when its handle is dropped: a move that fails leaves none behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The last snapshot of the worker this client holds, and every message posted since.
struct Recovery {
    snapshot: Snapshot,
    messages: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

impl WorkerHandle {
    /// Starts a new worker locally from its module's bytes, with a fresh identity and secret.
    pub fn start(wasm: &[u8], options: WorkerOptions) -> Result<WorkerHandle, ClientError> {
        let runtime =
            Runtime::new(options.runtime.clone()).map_err(|e| ClientError::Local(e.to_string()))?;
        let module = runtime
            .load(wasm)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let worker = runtime
            .start(&module)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| ClientError::Local(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(WorkerHandle {
            id: u128::from_le_bytes(id),
            owner: Sha256::digest(secret).into(),
            secret,
            runtime,
            module,
            placement: Placement::Local(Box::new(worker)),
            options,
            next_seq: 1,
            log: VecDeque::new(),
            in_flight: 0,
            sent_through: 0,
            sent_ahead: None,
            resumed_at: None,
            catching_up: None,
            delivered: 0,
            backlog: VecDeque::new(),
            partial: 0,
            replies: VecDeque::new(),
            recovery: None,
            handoff: None,
            returning: None,
            offloading: None,
            finished: None,
            posted: VecDeque::new(),
            recent_sizes: VecDeque::new(),
            reply_bytes: 0,
            observations: VecDeque::new(),
            deadline: None,
            checkpointing: None,
            checkpoint_ready: None,
            transfers: Vec::new(),
            recovery_at: Instant::now(),
            scanned: None,
            recoveries: 0,
        })
    }

    /// The worker's identity.
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// Where the worker runs now.
    pub fn place(&self) -> Place {
        match &self.placement {
            Placement::Local(_) | Placement::Nowhere => Place::Local,
            Placement::Remote(conn) => Place::Node(conn.url().to_string()),
        }
    }

    /// How often a copy of the worker's state is taken while it runs on a node
    /// ([`WorkerOptions::checkpoint_every`]).
    pub fn checkpoint_every(&self) -> Option<Duration> {
        self.options.checkpoint_every
    }

    /// Takes copies of the worker's state this often from now on (`None`: none); the next
    /// is due `every` after the last.
    pub fn set_checkpoint_every(&mut self, every: Option<Duration>) {
        self.options.checkpoint_every = every;
    }

    /// How many times the worker was taken back from a node that was lost (restored
    /// from its recovery point here): a move under way then did not happen as begun.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// Messages posted and not yet handled.
    pub fn pending(&self) -> usize {
        self.log.len()
    }

    /// Posts a message; returns its sequence number. Waits while the window of messages in
    /// flight to a node is full, collecting replies meanwhile.
    pub async fn post(&mut self, payload: Vec<u8>) -> Result<u64, ClientError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(recovery) = &mut self.recovery {
            recovery.bytes += payload.len();
            recovery.messages.push_back((seq, payload.clone()));
            if recovery.bytes > self.options.recovery_bytes {
                tracing::warn!(
                    "more than {} bytes of messages since the last snapshot: the worker can no longer be recovered if its node dies",
                    self.options.recovery_bytes
                );
                self.recovery = None;
            }
        }
        self.posted
            .push_back((seq, Instant::now(), payload.len() as u64));
        if self.recent_sizes.len() == RECENT_MESSAGES {
            self.recent_sizes.pop_front();
        }
        self.recent_sizes.push_back(payload.len() as u64);
        if !self.backlog.is_empty()
            && matches!(self.placement, Placement::Local(_))
            && !self.moving()
        {
            // Its turn comes after the messages waiting to be handled here.
            self.backlog.push_back((seq, payload.clone()));
            self.log.push_back((seq, payload));
            self.drive_checkpoint();
            return Ok(seq);
        }
        self.log.push_back((seq, payload));
        self.send_logged(seq).await?;
        self.drive_checkpoint();
        if self.offloading.is_some() || self.catching_up.is_some() {
            self.drive_offload()?;
            // The task sending the rounds shares the runtime (maybe its only thread) with
            // an application that handles messages here without waiting on anything.
            tokio::task::yield_now().await;
            // Catching up needs no pause: the adoption is taken as soon as it comes.
            if self
                .offloading
                .as_ref()
                .is_some_and(|o| o.catch_up.is_some() && o.task.is_finished())
            {
                Box::pin(self.pump_offload()).await?;
            }
        }
        Ok(seq)
    }

    /// Sends (or, locally, handles) the logged message `seq`.
    async fn send_logged(&mut self, seq: u64) -> Result<(), ClientError> {
        if self.catching_up.is_some() {
            // Maybe the node has caught up, and this message is its first.
            Box::pin(self.drive_catch_up(false)).await?;
        }
        if matches!(self.placement, Placement::Remote(_)) {
            while self.in_flight >= self.options.window {
                self.pump().await?;
            }
        }
        // Waiting for room may have recovered the worker from a dead node, which queues
        // every logged message to run here, this one included.
        if matches!(self.placement, Placement::Local(_)) && !self.backlog.is_empty() {
            let queued = self.backlog.iter().any(|(s, _)| *s == seq);
            Box::pin(self.drain_backlog()).await?;
            if queued {
                return Ok(());
            }
        }
        let Some((_, payload)) = self.log.iter().find(|(s, _)| *s == seq) else {
            return Ok(());
        };
        if self.offloading.as_ref().is_some_and(|o| o.paused)
            || self.kept_after().is_some_and(|kept| {
                seq > kept + CATCH_UP_MAX_AHEAD
                    || self
                        .log
                        .iter()
                        .filter(|(s, _)| *s > kept && *s <= seq)
                        .map(|(_, m)| m.len() as u64)
                        .sum::<u64>()
                        > CATCH_UP_MAX_AHEAD_BYTES
            })
        {
            // The last round is out (or the node has enough to catch up on): the message
            // waits in the log and goes to the node once it adopts the worker (or runs
            // here if it does not).
            return Ok(());
        }
        if (self.handoff.is_some() || self.returning.is_some())
            && (payload.len() >= WAITS_FOR_DESTINATION
                || seq > self.sent_through + 1
                || self.returning.as_ref().is_some_and(|r| r.hold))
        {
            // It waits in the log for the move's end (and so does every message after it:
            // a node takes them in order): the replay at the destination sends it, or, if
            // the move fails, `send_held_back` sends it to the node after all. A handoff's
            // destination that holds messages for the worker gets it at once instead.
            if self.handoff.is_some() {
                self.send_ahead().await?;
            }
            return Ok(());
        }
        match &mut self.placement {
            Placement::Local(worker) => {
                let started = Instant::now();
                let replies = run_here(worker, seq, payload)?;
                self.handled_here(seq, replies, started.elapsed()).await?;
            }
            // Waiting for room may have ended a handoff, whose replay sent this one too.
            Placement::Remote(_)
                if seq <= self.sent_through
                    || self
                        .sent_ahead
                        .is_some_and(|(first, last)| (first..=last).contains(&seq)) => {}
            Placement::Remote(conn) => {
                let frame = if seq <= self.delivered {
                    handled_here(conn.version(), self.id, seq, payload.clone())
                } else {
                    Frame::Post {
                        worker: self.id,
                        seq,
                        payload: payload.clone(),
                    }
                };
                match conn.send(&frame).await {
                    Ok(()) => {
                        self.in_flight += 1;
                        self.sent_through = seq;
                    }
                    // The recovery replays this message too.
                    Err(e) if is_lost(&e) => self.recover(e)?,
                    Err(e) => return Err(e),
                }
            }
            Placement::Nowhere => {
                return Err(ClientError::Usage(
                    "the worker is nowhere: an earlier move failed".into(),
                ))
            }
        }
        Ok(())
    }

    /// Takes in the replies of message `seq`, just handled here in `handler`.
    async fn handled_here(
        &mut self,
        seq: u64,
        replies: Vec<Vec<u8>>,
        handler: Duration,
    ) -> Result<(), ClientError> {
        // A message whose replies were delivered before, replayed into a state that came
        // back without it (a node that caught up on it returned the worker before handling
        // it, or a recovery point older than the replies): they are not delivered again,
        // nor the first ones of a message whose Handled never came.
        if seq > self.delivered {
            let skip = if seq == self.delivered + 1 {
                self.partial as usize
            } else {
                0
            };
            let reply_bytes = replies.iter().map(|r| r.len() as u64).sum();
            for payload in replies.into_iter().skip(skip) {
                self.replies.push_back(Reply { seq, payload });
            }
            self.observe(seq, None, Some(handler), reply_bytes);
        }
        self.handled_through(seq);
        if self.catching_up.is_some() {
            Box::pin(self.forward_to_catch_up(seq)).await?;
        }
        Ok(())
    }

    /// Handles the first message of the [backlog](Self::backlog) here; false when there is
    /// none.
    async fn handle_backlog_one(&mut self) -> Result<bool, ClientError> {
        let Placement::Local(worker) = &mut self.placement else {
            return Ok(false);
        };
        let Some((seq, payload)) = self.backlog.pop_front() else {
            return Ok(false);
        };
        let started = Instant::now();
        let replies = run_here(worker, seq, &payload)?;
        self.handled_here(seq, replies, started.elapsed()).await?;
        Ok(true)
    }

    /// Handles every message of the backlog here.
    async fn drain_backlog(&mut self) -> Result<(), ClientError> {
        while self.handle_backlog_one().await? {}
        Ok(())
    }

    /// How many messages wait to be handled here, after a return or a recovery brought the
    /// worker back with messages its state had not handled. They run one per call of
    /// [`next_reply`](Self::next_reply), [`next_reply_within`](Self::next_reply_within) or
    /// [`drain`](Self::drain); while any wait, [`post`](Self::post) queues its message
    /// behind them instead of handling it at once.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// While an offload may end by catching up (and until it has), the message after which
    /// the log keeps the messages handled here: the node handles them too.
    fn kept_after(&self) -> Option<u64> {
        match (&self.offloading, &self.catching_up) {
            (Some(offload), _) => offload.catch_up,
            (None, Some(catching_up)) => Some(catching_up.snapshot.manifest.last_seq),
            (None, None) => None,
        }
    }

    /// The settle time of a move started at `started`: until its destination took the
    /// worker, or until now if it has not replayed anything since.
    fn settled_since(&self, started: Instant) -> Duration {
        match self.resumed_at {
            Some(at) if at >= started => at - started,
            _ => started.elapsed(),
        }
    }

    /// Sends message `seq`, just handled here, to the node catching up.
    async fn forward_to_catch_up(&mut self, seq: u64) -> Result<(), ClientError> {
        let id = self.id;
        let Some(payload) = self
            .log
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, p)| p.clone())
        else {
            return Ok(());
        };
        let Some(catching_up) = &mut self.catching_up else {
            return Ok(());
        };
        let frame = handled_here(catching_up.conn.version(), id, seq, payload);
        match catching_up.conn.send(&frame).await {
            Ok(()) => {
                catching_up.sent_through = seq;
                Ok(())
            }
            Err(e) => self.abandon_catch_up(e).await,
        }
    }

    /// Takes what the node catching up has sent — waiting for one frame if `wait`, else
    /// only what has arrived — and switches over once it has handled every message
    /// handled here, or once it has taken [`CATCH_UP_LIMIT`].
    async fn drive_catch_up(&mut self, wait: bool) -> Result<(), ClientError> {
        use futures_util::FutureExt;
        let mut must_wait = wait;
        loop {
            let deadline = self.deadline;
            let Some(catching_up) = &mut self.catching_up else {
                return Ok(());
            };
            let lag = self.delivered.saturating_sub(catching_up.node_handled);
            if lag < catching_up.least_lag.0 {
                catching_up.least_lag = (lag, Instant::now());
            }
            if lag <= CATCH_UP_LAG.min(self.options.window as u64 - 1)
                || catching_up.least_lag.1.elapsed() >= CATCH_UP_STALLED
                || catching_up.since.elapsed() >= CATCH_UP_LIMIT
            {
                return self.switch_to_caught_up().await;
            }
            let received = if must_wait {
                must_wait = false;
                match Self::until_deadline(deadline, catching_up.conn.recv()).await {
                    Some(received) => received,
                    None => return Ok(()),
                }
            } else {
                // Connection::recv only awaits the socket between frames: a frame half
                // read stays buffered in the stream for the next call.
                match catching_up.conn.recv().now_or_never() {
                    Some(received) => received,
                    None => return Ok(()),
                }
            };
            match received {
                Ok(Frame::Handled { seq, .. }) => {
                    catching_up.node_handled = catching_up.node_handled.max(seq)
                }
                // Replies of messages whose replies were delivered from here.
                Ok(Frame::Reply { .. } | Frame::Attached { .. }) => {}
                Ok(Frame::Ping { nonce }) => {
                    if let Err(e) = catching_up.conn.send(&Frame::Pong { nonce }).await {
                        self.abandon_catch_up(e).await?;
                    }
                }
                Ok(Frame::WorkerFailed { seq, reason, .. }) => {
                    let e = ClientError::State(format!(
                        "the node's copy failed at message {seq}, which ran here: {reason}"
                    ));
                    self.abandon_catch_up(e).await?;
                }
                Ok(other) => {
                    tracing::debug!("ignoring {} while the node catches up", other.name())
                }
                Err(e) => self.abandon_catch_up(e).await?,
            }
        }
    }

    /// The node has caught up (or had its time): the worker runs there from now on. The
    /// state it adopted is the recovery point, with every message since.
    async fn switch_to_caught_up(&mut self) -> Result<(), ClientError> {
        let Some(caught_up) = self.catching_up.take() else {
            return Ok(());
        };
        let kept_after = caught_up.snapshot.manifest.last_seq;
        let since: VecDeque<(u64, Vec<u8>)> = self
            .log
            .iter()
            .filter(|(s, _)| *s > kept_after)
            .cloned()
            .collect();
        let lag = self.delivered.saturating_sub(caught_up.node_handled);
        tracing::debug!(
            resent = caught_up.sent_through - kept_after,
            lag,
            took = ?caught_up.since.elapsed(),
            "the node caught up with the worker; switching over"
        );
        self.recovery_at = Instant::now();
        self.recovery = Some(Recovery {
            snapshot: caught_up.snapshot,
            bytes: since.iter().map(|(_, m)| m.len()).sum(),
            messages: since,
        });
        let conn = caught_up.conn;
        let bytes = conn.bytes_in + conn.bytes_out - caught_up.bytes;
        self.placement = Placement::Remote(Box::new(conn));
        // Sent and not yet handled there: their Handled frames are still to come.
        self.in_flight = caught_up
            .sent_through
            .saturating_sub(caught_up.node_handled) as usize;
        self.sent_through = caught_up.sent_through;
        // Messages sent to the node and not handled there yet stay in the log although
        // their replies were delivered from here: a move that takes the worker from the
        // node before it handles them replays them at the destination.
        self.handled_through(caught_up.node_handled.min(self.delivered));
        self.resumed_at = Some(Instant::now());
        // Messages that waited in the log follow.
        self.send_logged_after(self.sent_through).await?;
        self.finished = Some(Ok(MoveReport {
            kind: MoveKind::Offload,
            from: Place::Local.to_string(),
            to: caught_up.to,
            duration: caught_up.started.elapsed(),
            client_bytes: bytes,
            // Every message after the state's, sent to the node: the ones it caught up on
            // and the ones that waited for the switch.
            replayed: self.sent_through.saturating_sub(kept_after),
        }));
        Ok(())
    }

    /// The node catching up is gone or failed: the worker stays here, where it never
    /// stopped running (the messages that waited for the node run here now), and the move
    /// fails.
    async fn abandon_catch_up(&mut self, cause: ClientError) -> Result<(), ClientError> {
        let Some(abandoned) = self.catching_up.take() else {
            return Ok(());
        };
        tracing::warn!(
            "the offload to {} is abandoned while the node caught up ({cause}); the worker stays here",
            abandoned.to
        );
        abandoned.conn.close().await;
        let delivered = self.delivered;
        self.handled_through(delivered);
        self.finished = Some(Err(ClientError::Lost {
            url: abandoned.to,
            reason: format!("the node failed while it caught up with the worker: {cause}"),
        }));
        self.send_logged_after(delivered).await
    }

    /// During a handoff: once the destination's connection is open and its node holds
    /// messages for the worker, sends it every logged message that waits for the move,
    /// in order, within the node's budget. Posts to a node take sequence numbers in
    /// order, so the first goes right after the last one sent to the source, and each
    /// next one right after the one before.
    async fn send_ahead(&mut self) -> Result<(), ClientError> {
        let Some(pending) = &mut self.handoff else {
            return Ok(());
        };
        if let Destination::Opening(opening) = &mut pending.next {
            if !opening.is_finished() {
                return Ok(());
            }
            let opened = opening.await;
            pending.next = Destination::opened(&pending.to, opened);
        }
        let Destination::Open {
            frames,
            version,
            budget,
            sent,
            bytes,
            ..
        } = &mut pending.next
        else {
            return Ok(());
        };
        let mut next = sent.map_or(self.sent_through, |(_, last)| last) + 1;
        while let Some((_, payload)) = self.log.iter().find(|(s, _)| *s == next) {
            if *bytes + payload.len() as u64 > *budget || self.in_flight >= self.options.window {
                break;
            }
            let frame = if next <= self.delivered {
                handled_here(*version, self.id, next, payload.clone())
            } else {
                Frame::Post {
                    worker: self.id,
                    seq: next,
                    payload: payload.clone(),
                }
            };
            if frames.send(frame).is_err() {
                // The writer failed: these messages go at the switch, which finds out.
                break;
            }
            *bytes += payload.len() as u64;
            *sent = Some((sent.map_or(next, |(first, _)| first), next));
            self.in_flight += 1;
            next += 1;
        }
        Ok(())
    }

    /// Sends the logged messages that waited for a move that failed: the worker stayed on
    /// its node.
    async fn send_held_back(&mut self) -> Result<(), ClientError> {
        if !matches!(self.placement, Placement::Remote(_)) {
            return Ok(());
        }
        self.send_logged_after(self.sent_through).await
    }

    /// Sends (or, locally, handles) every logged message after `after`, in order.
    async fn send_logged_after(&mut self, after: u64) -> Result<(), ClientError> {
        let waiting: Vec<u64> = self
            .log
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s > after)
            .collect();
        for seq in waiting {
            Box::pin(self.send_logged(seq)).await?;
        }
        Ok(())
    }

    /// The next reply, waiting for one if a message is in flight; `None` when every posted
    /// message has been handled and every reply taken.
    pub async fn next_reply(&mut self) -> Result<Option<Reply>, ClientError> {
        loop {
            if let Some(reply) = self.replies.pop_front() {
                return Ok(Some(reply));
            }
            if self.log.is_empty() {
                return Ok(None);
            }
            self.pump().await?;
        }
    }

    /// The next reply, waiting at most `wait` for one; `None` when none came in time (or
    /// none is due). Unlike wrapping [`next_reply`](Self::next_reply) in a timeout, which
    /// may cut a move's switch-over in half, this stops only while waiting: an
    /// application that must go on at a steady pace (posting every frame, say) can call
    /// it freely.
    pub async fn next_reply_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<Reply>, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        self.deadline = Some(deadline);
        let result = async {
            loop {
                if let Some(reply) = self.replies.pop_front() {
                    return Ok(Some(reply));
                }
                if self.log.is_empty() && !self.moving() {
                    return Ok(None);
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(None);
                }
                if matches!(self.placement, Placement::Local(_))
                    && !self.moving()
                    && self.backlog.is_empty()
                {
                    // Everything posted here was handled when posted.
                    return Ok(None);
                }
                self.pump().await?;
            }
        }
        .await;
        self.deadline = None;
        result
    }

    /// Waits for `future` until the deadline of
    /// [`next_reply_within`](Self::next_reply_within), if one is set: `None` when it passed.
    async fn until_deadline<T>(
        deadline: Option<tokio::time::Instant>,
        future: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
            None => Some(future.await),
        }
    }

    /// Takes the replies that have arrived, without waiting.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        self.replies.drain(..).collect()
    }

    /// Waits until every posted message has been handled.
    pub async fn drain(&mut self) -> Result<(), ClientError> {
        while !self.log.is_empty() {
            self.pump().await?;
        }
        Ok(())
    }

    /// Marks every logged message up to `seq` handled.
    fn handled_through(&mut self, seq: u64) {
        let forget = self.kept_after().map_or(seq, |kept| kept.min(seq));
        while self.log.front().is_some_and(|(s, _)| *s <= forget) {
            self.log.pop_front();
        }
        while self.posted.front().is_some_and(|(s, _, _)| *s <= seq) {
            self.posted.pop_front();
        }
        if seq > self.delivered {
            self.delivered = seq;
            self.partial = 0;
            self.reply_bytes = 0;
        }
    }

    /// Records what was seen of message `seq`, just handled at `node` (`None`: here, in
    /// `handler`).
    fn observe(
        &mut self,
        seq: u64,
        node: Option<String>,
        handler: Option<Duration>,
        reply_bytes: u64,
    ) {
        let Some(&(_, posted_at, request_bytes)) = self.posted.iter().find(|(s, _, _)| *s == seq)
        else {
            return;
        };
        let response = match handler {
            Some(handler) => handler,
            None => posted_at.elapsed(),
        };
        if self.observations.len() == MAX_OBSERVATIONS {
            self.observations.pop_front();
        }
        self.observations.push_back(Observation {
            node,
            posted_at,
            request_bytes,
            response,
            reply_bytes,
        });
    }

    /// What was seen of the messages handled since the last call.
    pub(crate) fn take_observations(&mut self) -> Vec<Observation> {
        self.observations.drain(..).collect()
    }

    fn record_transfer(&mut self, transfer: Transfer) {
        if self.transfers.len() < MAX_OBSERVATIONS {
            self.transfers.push(transfer);
        }
    }

    /// The sha-256 of the worker's module (as prepared).
    pub(crate) fn module_hash(&self) -> [u8; 32] {
        *self.module.hash()
    }

    /// The size of the worker's module (as prepared).
    pub(crate) fn module_bytes(&self) -> u64 {
        self.module.bytes().len() as u64
    }

    /// The state transfers timed since the last call.
    pub(crate) fn take_transfers(&mut self) -> Vec<Transfer> {
        std::mem::take(&mut self.transfers)
    }

    /// When the worker runs here, scans its memory: the bytes that are not zero (what its
    /// state weighs before compression) and, against the previous scan, how much of it
    /// changed meanwhile (how fast the worker rewrites its state). Costs one pass over the
    /// memory: a hash of every 64 KiB piece.
    pub(crate) fn scan_local_state(&mut self) -> Option<StateScan> {
        let Placement::Local(worker) = &self.placement else {
            self.scanned = None;
            return None;
        };
        // One pass: each piece is hashed and its non-zero pages counted.
        let mut nonzero = 0u64;
        let hashes: Vec<u64> = worker
            .memory()
            .chunks(SCAN_PIECE)
            .map(|piece| {
                nonzero += piece
                    .chunks(4096)
                    .filter(|page| page.iter().any(|b| *b != 0))
                    .map(|page| page.len() as u64)
                    .sum::<u64>();
                xxhash_rust::xxh3::xxh3_64(piece)
            })
            .collect();
        let now = Instant::now();
        let changed = self.scanned.as_ref().map(|(at, before)| {
            // Memory that grew since counts as written.
            let pieces = before.iter().zip(&hashes).filter(|(a, b)| a != b).count()
                + hashes.len().saturating_sub(before.len());
            ((pieces * SCAN_PIECE) as u64, now.duration_since(*at))
        });
        self.scanned = Some((now, hashes));
        Some(StateScan { nonzero, changed })
    }

    /// The node holding the worker is gone: restore the recovery point locally and handle
    /// every message since, delivering only replies the application has not had.
    fn recover(&mut self, cause: ClientError) -> Result<(), ClientError> {
        if let Some(task) = self.checkpointing.take() {
            task.abort();
        }
        // The newest copy at hand is the one to start from, if its replies are delivered.
        self.take_first_round();
        if let Some(snapshot) = self
            .checkpoint_ready
            .take()
            .filter(|c| c.manifest.last_seq <= self.delivered)
        {
            self.renew_recovery(snapshot);
        }
        // A move under way ends with its source (and the messages sent ahead to its
        // destination with the connection).
        if let Some(pending) = self.handoff.take() {
            pending.abandon();
        }
        if let Some(pending) = self.returning.take() {
            pending.task.abort();
        }
        let Some(recovery) = self.recovery.take() else {
            return Err(ClientError::Unrecoverable {
                cause: cause.to_string(),
            });
        };
        tracing::warn!(
            "{cause}; recovering the worker locally from message {} and replaying {} messages",
            recovery.snapshot.manifest.last_seq,
            recovery.messages.len()
        );
        let worker = self
            .runtime
            .restore(&self.module, &recovery.snapshot)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        // Every message since the recovery point runs again here, one by one as the
        // application asks for replies; only the replies it has not had reach it.
        self.backlog = recovery.messages;
        self.placement = Placement::Local(Box::new(worker));
        self.in_flight = 0;
        self.sent_through = self.delivered;
        self.recoveries += 1;
        Ok(())
    }

    /// Reads one frame from the node and takes in what it says about messages; if the node
    /// is gone, recovers the worker locally.
    async fn pump(&mut self) -> Result<Option<Frame>, ClientError> {
        if self.offloading.is_none()
            && self.catching_up.is_none()
            && Box::pin(self.handle_backlog_one()).await?
        {
            return Ok(None);
        }
        if self.offloading.is_some() {
            Box::pin(self.pump_offload()).await?;
            return Ok(None);
        }
        if self.catching_up.is_some() {
            Box::pin(self.drive_catch_up(true)).await?;
            return Ok(None);
        }
        match self.pump_raw().await {
            Err(e) if is_lost(&e) => {
                let source = self
                    .handoff
                    .as_ref()
                    .map(|p| (p.from.clone(), format!("the handoff to {}", p.to)))
                    .or_else(|| {
                        self.returning
                            .as_ref()
                            .map(|p| (p.from.clone(), "the return".to_string()))
                    });
                if let Some((url, what)) = source {
                    self.finished = Some(Err(ClientError::Lost {
                        url,
                        reason: format!(
                            "the node died during {what}; the worker was recovered here"
                        ),
                    }));
                }
                self.recover(e)?;
                Ok(None)
            }
            Err(e) if self.handoff.is_some() => {
                // The source refused the handoff: the worker stays there.
                tracing::debug!("the handoff failed: {e}");
                if let Some(pending) = self.handoff.take() {
                    // The messages sent ahead go to the source with the ones held here.
                    let ahead = pending
                        .sent_ahead()
                        .map_or(0, |(first, last)| last - first + 1);
                    self.in_flight = self.in_flight.saturating_sub(ahead as usize);
                    pending.abandon();
                }
                self.finished = Some(Err(e));
                self.send_held_back().await?;
                Ok(None)
            }
            Err(e) => Err(e),
            Ok(Pumped::Frame(Some(frame))) if self.handoff.is_some() => {
                // Boxed: ending a handoff replays messages, which may pump again.
                match Box::pin(self.on_handoff_frame(frame)).await {
                    Ok(Some(report)) => self.finished = Some(Ok(report)),
                    Ok(None) => {}
                    Err(e) => self.finished = Some(Err(e)),
                }
                Ok(None)
            }
            Ok(Pumped::Frame(frame)) => Ok(frame),
            Ok(Pumped::Returned(returned)) => {
                let pending = self.returning.take().expect("a return is under way");
                let outcome = match returned {
                    Ok(returned) => Box::pin(self.end_return(pending, *returned)).await,
                    Err(e) => Err(e),
                };
                // A failed return leaves the worker on the node, still in use.
                let failed = outcome.is_err();
                self.finished = Some(outcome);
                if failed {
                    self.send_held_back().await?;
                }
                Ok(None)
            }
        }
    }

    /// [`pump`](Self::pump) without recovery, for moves: their caller recovers.
    async fn pump_raw(&mut self) -> Result<Pumped, ClientError> {
        let Placement::Remote(conn) = &mut self.placement else {
            return Ok(Pumped::Frame(None));
        };
        let deadline = self.deadline;
        let frame = match &mut self.returning {
            Some(pending) => {
                let waited = Self::until_deadline(deadline, async {
                    tokio::select! {
                        frame = conn.recv() => Ok(frame),
                        returned = &mut pending.task => Err(returned),
                    }
                })
                .await;
                match waited {
                    None => return Ok(Pumped::Frame(None)),
                    Some(Ok(frame)) => frame?,
                    Some(Err(returned)) => {
                        let returned = returned.unwrap_or_else(|e| {
                            Err(ClientError::State(format!("the return stopped: {e}")))
                        });
                        return Ok(Pumped::Returned(returned.map(Box::new)));
                    }
                }
            }
            None => {
                // A handoff whose destination is still opening: once it is open, the
                // messages waiting for it go ahead at once, not at the next post.
                let opening = self.handoff.as_mut().and_then(|h| match &mut h.next {
                    Destination::Opening(opening) => Some(opening),
                    _ => None,
                });
                let Some(opening) = opening else {
                    return match Self::until_deadline(deadline, conn.recv()).await {
                        None => Ok(Pumped::Frame(None)),
                        Some(frame) => self.on_message_frame(frame?).map(Pumped::Frame),
                    };
                };
                let waited = Self::until_deadline(deadline, async {
                    tokio::select! {
                        frame = conn.recv() => Ok(frame),
                        opened = opening => Err(opened),
                    }
                })
                .await;
                match waited {
                    None => return Ok(Pumped::Frame(None)),
                    Some(Ok(frame)) => frame?,
                    Some(Err(opened)) => {
                        let pending = self.handoff.as_mut().expect("a handoff is under way");
                        pending.next = Destination::opened(&pending.to, opened);
                        self.send_ahead().await?;
                        return Ok(Pumped::Frame(None));
                    }
                }
            }
        };
        self.on_message_frame(frame).map(Pumped::Frame)
    }

    /// Whether `frame` (a Reply or Handled) is the next one this handle lacks: a reply of
    /// the message after the last one delivered, past those of it already here, or that
    /// message's Handled. Replies passed on by the cloud in a fallback may repeat some
    /// delivered, or begin after a gap (the source kept only its last messages' replies):
    /// only the ones that follow on are taken, and a gap is left to the recovery point.
    fn follows_delivered(&self, frame: &Frame) -> bool {
        match frame {
            Frame::Reply { seq, index, .. } => *seq == self.delivered + 1 && *index >= self.partial,
            Frame::Handled { seq, .. } => *seq == self.delivered + 1,
            _ => false,
        }
    }

    /// Handles Reply, Handled and WorkerFailed; returns any other frame to the caller.
    fn on_message_frame(&mut self, frame: Frame) -> Result<Option<Frame>, ClientError> {
        Ok(match frame {
            // The answer to an Attach whose replay went out without waiting for it.
            Frame::Attached { last_seq, .. } => {
                if last_seq > self.delivered {
                    tracing::debug!(
                        last_seq,
                        delivered = self.delivered,
                        "the node had handled more than the move reported"
                    );
                }
                None
            }
            Frame::Reply { seq, payload, .. } => {
                // A message replayed after a move may repeat replies already delivered.
                if seq > self.delivered {
                    self.partial += 1;
                    self.reply_bytes += payload.len() as u64;
                    self.replies.push_back(Reply { seq, payload });
                }
                None
            }
            Frame::Handled { seq, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                if seq > self.delivered {
                    let node = match &self.placement {
                        Placement::Remote(conn) => Some(conn.url().to_string()),
                        _ => None,
                    };
                    let reply_bytes = self.reply_bytes;
                    self.observe(seq, node, None, reply_bytes);
                }
                self.handled_through(seq);
                None
            }
            // The worker failed on the node, as it would have here: the message is not
            // handled and the worker takes no more (restore a snapshot to go on).
            Frame::WorkerFailed { seq, reason, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                return Err(ClientError::WorkerFailed { seq, reason });
            }
            other => Some(other),
        })
    }

    /// Starts moving the worker and returns as soon as the move runs on its own. A
    /// handoff (node to node) and a return (node to here) run in the background: the
    /// worker keeps handling the messages the application goes on posting at the node
    /// while its state travels in pre-copy rounds, and the handle switches over when the
    /// state has arrived; the outcome is then in
    /// [`take_move_result`](Self::take_move_result). Every other move completes before
    /// this returns, and its outcome waits there too.
    ///
    /// An offload of a worker whose messages are light ([`Self::light_messages`]) catches
    /// up ([`MoveMode::CatchUp`]): the worker never pauses, and the node handles again the
    /// few bytes of messages handled here meanwhile. Any other offload sends the state in
    /// pre-copy rounds.
    pub async fn begin_move(&mut self, to: Place) -> Result<(), ClientError> {
        let mode = if self.light_messages() {
            MoveMode::CatchUp
        } else {
            MoveMode::PreCopy
        };
        self.begin_move_with(to, mode).await
    }

    /// Whether the messages posted lately are light enough for an offload to catch up
    /// rather than pause the worker: on average at most [`LIGHT_MESSAGE`] bytes (a
    /// physics step, an input event), so that handling again at the node the messages
    /// handled here during the transfer costs little on the uplink. False before any
    /// message.
    pub fn light_messages(&self) -> bool {
        let count = self.recent_sizes.len() as u64;
        count > 0 && self.recent_sizes.iter().sum::<u64>() / count <= LIGHT_MESSAGE
    }

    /// As [`begin_move`](Self::begin_move), with an offload's state sent as `mode` says.
    /// A handoff and a return are sent by the node, which paces its own rounds; a return
    /// in [`MoveMode::StopAndCopy`] holds back the messages posted meanwhile, and any
    /// other mode lets them run at the node until the state is in.
    pub async fn begin_move_with(&mut self, to: Place, mode: MoveMode) -> Result<(), ClientError> {
        if self.moving() {
            return Err(ClientError::Usage(
                "a move is under way: finish it before starting another".into(),
            ));
        }
        match (&self.placement, &to) {
            (Placement::Remote(conn), Place::Node(url)) if conn.url() != url => {
                self.begin_handoff(url).await
            }
            (Placement::Remote(_), Place::Local) => {
                self.begin_return(mode == MoveMode::StopAndCopy).await
            }
            (Placement::Local(_), Place::Node(url)) => {
                let rounds = match mode {
                    MoveMode::PreCopy => self.options.precopy_rounds,
                    MoveMode::StopAndCopy | MoveMode::CatchUp => 0,
                };
                let url = url.clone();
                self.begin_offload_settled(&url, rounds, mode == MoveMode::CatchUp)
                    .await
            }
            _ => {
                let result = self.move_to(to).await;
                self.finished = match result {
                    Ok(Some(report)) => Some(Ok(report)),
                    Ok(None) => None,
                    Err(e) => Some(Err(e)),
                };
                Ok(())
            }
        }
    }

    /// Whether a move started by [`begin_move`](Self::begin_move) is still under way.
    pub fn moving(&self) -> bool {
        self.handoff.is_some()
            || self.returning.is_some()
            || self.offloading.is_some()
            || self.catching_up.is_some()
    }

    /// The outcome of the last move started by [`begin_move`](Self::begin_move), once it
    /// has ended; `None` while it runs or when there is none to report.
    pub fn take_move_result(&mut self) -> Option<Result<MoveReport, ClientError>> {
        self.finished.take()
    }

    /// Waits for the move under way to end and returns its outcome (`None` when no move
    /// was started).
    pub async fn finish_move(&mut self) -> Result<Option<MoveReport>, ClientError> {
        while self.moving() {
            self.pump().await?;
        }
        self.finished.take().transpose()
    }

    /// Moves the worker. The application may keep posting afterwards; messages in flight
    /// when the move starts are handled where the worker was, or replayed at the
    /// destination.
    pub async fn move_to(&mut self, to: Place) -> Result<Option<MoveReport>, ClientError> {
        let started = Instant::now();
        let from = self.place();
        match self.move_once(&from, &to).await {
            Ok(None) => Ok(None),
            Ok(Some((kind, client_bytes, replayed))) => Ok(Some(MoveReport {
                kind,
                from: from.to_string(),
                to: self.place().to_string(),
                duration: self.settled_since(started),
                client_bytes,
                replayed,
            })),
            // The node holding the worker died (or the cloud cannot reach it): take the
            // worker back from the recovery point and make the move from here.
            Err(e) if from != Place::Local && is_lost(&e) => {
                self.recover(e)?;
                let destination = match &to {
                    Place::Relay { to, .. } => Place::Node(to.clone()),
                    other => other.clone(),
                };
                let done = Box::pin(self.move_once(&Place::Local, &destination)).await?;
                let (_, client_bytes, replayed) = done.unwrap_or((MoveKind::Return, 0, 0));
                Ok(Some(MoveReport {
                    kind: MoveKind::Recovery,
                    from: from.to_string(),
                    to: self.place().to_string(),
                    duration: started.elapsed(),
                    client_bytes,
                    replayed,
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// One move from `from` to `to`: its kind, the bytes through the client, and the
    /// messages replayed; `None` when there is nothing to move.
    async fn move_once(
        &mut self,
        from: &Place,
        to: &Place,
    ) -> Result<Option<(MoveKind, u64, u64)>, ClientError> {
        let moved = match (from, to) {
            (Place::Local, Place::Local) => return Ok(None),
            (Place::Node(a), Place::Node(b)) if a == b => return Ok(None),
            (Place::Local, Place::Node(url)) => {
                let (bytes, replayed) = self.offload(url).await?;
                (MoveKind::Offload, bytes, replayed)
            }
            (Place::Node(_), Place::Node(url)) => {
                let (bytes, replayed) = self.handoff(url).await?;
                (MoveKind::Handoff, bytes, replayed)
            }
            (Place::Node(a), Place::Relay { to, .. }) if a == to => {
                return Err(ClientError::Usage(format!(
                    "the worker already runs on {to}: a relayed move must go elsewhere"
                )))
            }
            (Place::Node(_), Place::Relay { cloud, to }) => {
                let (bytes, replayed) = self.fallback(cloud, to).await?;
                (MoveKind::Fallback, bytes, replayed)
            }
            (Place::Node(_), Place::Local) => {
                let (bytes, replayed) = self.return_home().await?;
                (MoveKind::Return, bytes, replayed)
            }
            (Place::Local, Place::Relay { .. }) => {
                return Err(ClientError::Usage(
                    "a relayed move starts from a node; the worker is local".into(),
                ))
            }
            (Place::Relay { .. }, _) => unreachable!("place() never reports a relay"),
        };
        Ok(Some(moved))
    }

    /// Local → node: the state goes out in pre-copy rounds (module only if the node lacks
    /// it); returns the bytes through the client and the messages replayed at the node.
    async fn offload(&mut self, url: &str) -> Result<(u64, u64), ClientError> {
        self.begin_offload_settled(url, self.options.precopy_rounds, false)
            .await?;
        while self.offloading.is_some() || self.catching_up.is_some() {
            self.pump().await?;
        }
        let report = self
            .finished
            .take()
            .expect("an offload reports its outcome")?;
        Ok((report.client_bytes, report.replayed))
    }

    /// [`begin_offload`](Self::begin_offload) once the [backlog](Self::backlog) is settled.
    /// Its messages whose replies were delivered (a recovery's, which only bring the state
    /// up to date) run here first. The others go to the node behind the state, as every
    /// message posted while the worker is paused does: the offload then pauses the worker
    /// from the start, so that no message runs here before them.
    async fn begin_offload_settled(
        &mut self,
        url: &str,
        max_rounds: u32,
        catch_up: bool,
    ) -> Result<(), ClientError> {
        while self
            .backlog
            .front()
            .is_some_and(|(seq, _)| *seq <= self.delivered)
        {
            self.handle_backlog_one().await?;
        }
        if self.backlog.is_empty() {
            return self.begin_offload(url, max_rounds, catch_up);
        }
        tracing::debug!(
            waiting = self.backlog.len(),
            "the messages waiting to run here go to the node behind the state"
        );
        // They stay in the log, after the state's last message.
        self.backlog.clear();
        self.begin_offload(url, 0, false)
    }

    /// Captures the whole worker (round 0) and starts the task that sends it to `url`;
    /// the worker goes on handling messages here, unless `max_rounds` (the most rounds
    /// after the first) is 0: then it is paused from the start, or, with `catch_up`, runs
    /// on while the node adopts round 0 and catches up.
    fn begin_offload(
        &mut self,
        url: &str,
        max_rounds: u32,
        catch_up: bool,
    ) -> Result<(), ClientError> {
        let Placement::Local(worker) = &mut self.placement else {
            unreachable!("offload starts local");
        };
        let first = worker
            .capture_delta(&|_| false)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let (rounds, rounds_rx) = tokio::sync::mpsc::unbounded_channel();
        let (delivered_tx, delivered) = tokio::sync::mpsc::unbounded_channel();
        let last = max_rounds == 0;
        let previous = first.bodies.iter().map(|b| b.encoded_len() as u64).sum();
        tracing::debug!(round = 0, bytes = previous, "offload round");
        let manifest = first.manifest.clone();
        let task = tokio::spawn(send_rounds(
            url.to_string(),
            self.options.clone(),
            self.id,
            self.owner,
            self.module.clone(),
            first,
            last,
            rounds_rx,
            delivered_tx,
        ));
        self.offloading = Some(PendingOffload {
            to: url.to_string(),
            started: Instant::now(),
            rounds,
            delivered,
            latest: None,
            task,
            known: manifest.chunks.iter().map(|c| c.hash).collect(),
            previous,
            sent: 1,
            awaiting: true,
            paused: last && !catch_up,
            catch_up: (last && catch_up).then_some(manifest.last_seq),
            manifest: Some(manifest),
            max_rounds,
        });
        Ok(())
    }

    /// Between two messages: if the last round has arrived, captures the chunks changed
    /// since and sends them, as the last round when they would cross within the downtime
    /// target, when they stop shrinking, or when the rounds run out.
    fn drive_offload(&mut self) -> Result<(), ClientError> {
        let Some(offload) = &mut self.offloading else {
            return Ok(());
        };
        let mut bandwidth = offload.latest.take();
        while let Ok(measured) = offload.delivered.try_recv() {
            bandwidth = Some(measured);
        }
        if let Some(bandwidth) = bandwidth {
            let transfer = Transfer {
                node: offload.to.clone(),
                up: true,
                bytes: offload.previous,
                seconds: offload.previous as f64 / bandwidth.max(1.0),
            };
            if self.transfers.len() < MAX_OBSERVATIONS {
                self.transfers.push(transfer);
            }
            let Some(offload) = &mut self.offloading else {
                return Ok(());
            };
            offload.awaiting = false;
            if offload.paused || offload.catch_up.is_some() {
                // The last round is out.
                return Ok(());
            }
            let Placement::Local(worker) = &mut self.placement else {
                unreachable!("offload starts local");
            };
            let known = &offload.known;
            let delta = worker
                .capture_delta(&|hash| known.contains(&hash))
                .map_err(|e| ClientError::Local(e.to_string()))?;
            let bytes: u64 = delta.bodies.iter().map(|b| b.encoded_len() as u64).sum();
            let estimate = Duration::from_secs_f64(bytes as f64 / bandwidth.max(1.0));
            let last = estimate <= self.options.downtime_target
                || bytes >= offload.previous - offload.previous / 10
                || offload.sent > offload.max_rounds;
            tracing::debug!(
                round = offload.sent,
                bytes,
                ?estimate,
                last,
                "offload round"
            );
            offload
                .known
                .extend(delta.manifest.chunks.iter().map(|c| c.hash));
            offload.previous = bytes;
            offload.sent += 1;
            offload.awaiting = true;
            offload.paused = last;
            offload.manifest = Some(delta.manifest.clone());
            // A closed channel means the task ended; its outcome says why.
            let _ = offload.rounds.send(OffloadRound {
                manifest: delta.manifest,
                bodies: delta.bodies,
                last,
            });
        }
        Ok(())
    }

    /// Waits for the offload's next step: a round delivered (then the next one goes out),
    /// or, once paused, the node's adoption.
    async fn pump_offload(&mut self) -> Result<(), ClientError> {
        let deadline = self.deadline;
        let offload = self.offloading.as_mut().expect("an offload is under way");
        if !offload.paused || offload.awaiting {
            let Some(received) = Self::until_deadline(deadline, offload.delivered.recv()).await
            else {
                return Ok(());
            };
            if let Some(bandwidth) = received {
                // For drive_offload, which takes the latest. (The channel stays: the task
                // sends on it after every round.)
                offload.latest = Some(bandwidth);
                return self.drive_offload();
            }
        }
        // The task ends: adopted, or failed.
        let offload = self.offloading.as_mut().expect("an offload is under way");
        let Some(ended) = Self::until_deadline(deadline, &mut offload.task).await else {
            return Ok(());
        };
        let offload = self.offloading.take().expect("an offload is under way");
        let (to, started, manifest, catch_up) = (
            offload.to.clone(),
            offload.started,
            offload.manifest.clone(),
            offload.catch_up,
        );
        let result = match ended {
            Ok(result) => result,
            Err(e) => Err(ClientError::State(format!("the offload stopped: {e}"))),
        };
        let outcome = match result {
            Ok(done) => {
                self.end_offload(to, started, manifest, catch_up, done)
                    .await
            }
            Err(e) => {
                // The worker never left: what waited for the node runs here.
                let delivered = self.delivered;
                self.replay_after(delivered).await?;
                Err(e)
            }
        };
        match outcome {
            // The node catches up: the outcome comes at the switch.
            Ok(None) => {}
            Ok(Some(report)) => self.finished = Some(Ok(report)),
            Err(e) => self.finished = Some(Err(e)),
        }
        Ok(())
    }

    /// The node adopted the worker: the state it adopted becomes the recovery point, and
    /// the messages posted during the last round go to the node. If the last round went
    /// out without a pause, the node first catches up (`None`: the move goes on).
    async fn end_offload(
        &mut self,
        to: String,
        started: Instant,
        manifest: Option<Manifest>,
        catch_up: Option<u64>,
        done: Offloaded,
    ) -> Result<Option<MoveReport>, ClientError> {
        let Offloaded {
            mut conn,
            last_seq,
            bodies,
        } = done;
        if catch_up == Some(last_seq) {
            let manifest = manifest.expect("an offload sends a manifest");
            let snapshot = adopted_snapshot(manifest, bodies)?;
            // Every message handled here since goes to the node, in order.
            let behind: Vec<(u64, Vec<u8>)> = self
                .log
                .iter()
                .filter(|(s, _)| *s > last_seq && *s <= self.delivered)
                .cloned()
                .collect();
            let bytes = conn.bytes_in + conn.bytes_out;
            let mut sent_through = last_seq;
            for (seq, payload) in behind {
                conn.send(&handled_here(conn.version(), self.id, seq, payload))
                    .await?;
                sent_through = seq;
            }
            self.catching_up = Some(CatchingUp {
                to,
                started,
                conn,
                snapshot,
                sent_through,
                node_handled: last_seq,
                since: Instant::now(),
                bytes,
                least_lag: (sent_through - last_seq, Instant::now()),
            });
            return Ok(None);
        }
        if last_seq != self.delivered {
            return Err(ClientError::State(format!(
                "the node adopted the worker at message {last_seq}, the client had {}",
                self.delivered
            )));
        }
        let manifest = manifest.expect("an offload sends a manifest");
        let snapshot = adopted_snapshot(manifest, bodies)?;
        let waiting: VecDeque<(u64, Vec<u8>)> = self.log.iter().cloned().collect();
        self.recovery_at = Instant::now();
        self.recovery = Some(Recovery {
            snapshot,
            bytes: waiting.iter().map(|(_, m)| m.len()).sum(),
            messages: waiting,
        });
        let bytes = conn.bytes_in + conn.bytes_out;
        self.placement = Placement::Remote(Box::new(conn));
        self.in_flight = 0;
        self.sent_through = self.delivered;
        let replayed = self.replay_after(last_seq).await?;
        Ok(Some(MoveReport {
            kind: MoveKind::Offload,
            from: Place::Local.to_string(),
            to,
            duration: self.settled_since(started),
            client_bytes: bytes,
            replayed,
        }))
    }

    /// Node A → node B directly: A sends the state; the client then attaches at B.
    async fn handoff(&mut self, url: &str) -> Result<(u64, u64), ClientError> {
        self.begin_handoff(url).await?;
        loop {
            if let Pumped::Frame(Some(frame)) = self.pump_raw().await? {
                if let Some(report) = self.on_handoff_frame(frame).await? {
                    return Ok((report.client_bytes, report.replayed));
                }
            }
        }
    }

    /// Asks the source to hand the worker to `url`, and opens the connection to `url`
    /// meanwhile. Messages go on flowing to the source.
    async fn begin_handoff(&mut self, url: &str) -> Result<(), ClientError> {
        let Placement::Remote(conn) = &mut self.placement else {
            unreachable!("handoff starts remote");
        };
        let bytes_before = conn.bytes_in + conn.bytes_out;
        let from = conn.url().to_string();
        conn.send(&Frame::MoveOut {
            worker: self.id,
            destination: url.to_string(),
        })
        .await?;
        tracing::debug!(
            from,
            to = url,
            sent_through = self.sent_through,
            "handoff asked for"
        );
        let (next_url, options) = (url.to_string(), self.options.clone());
        self.handoff = Some(PendingHandoff {
            from,
            to: url.to_string(),
            started: Instant::now(),
            bytes_before,
            next: Destination::Opening(tokio::spawn(open_destination(
                next_url,
                options,
                self.id,
                self.secret,
            ))),
        });
        Ok(())
    }

    /// Takes a frame that arrived during a handoff: Moved ends it (the handle attaches at
    /// the destination and replays what the source did not handle). Other frames are not
    /// the move's and are dropped.
    async fn on_handoff_frame(&mut self, frame: Frame) -> Result<Option<MoveReport>, ClientError> {
        let Frame::Moved { last_seq, .. } = frame else {
            tracing::debug!("ignoring {} during a handoff", frame.name());
            return Ok(None);
        };
        let mut last_seq = last_seq;
        let pending = self.handoff.take().expect("a handoff is under way");
        // The worker runs at the destination now: the switch that follows (the messages
        // sent ahead finishing their upload, the Attach, the replay) is the application's
        // traffic, not the move's.
        let settled = pending.started.elapsed();
        tracing::debug!(
            from = pending.from,
            to = pending.to,
            last_seq,
            sent_through = self.sent_through,
            "handoff: the worker runs at the destination"
        );
        let Placement::Remote(old) = std::mem::replace(&mut self.placement, Placement::Nowhere)
        else {
            unreachable!("handoff starts remote")
        };
        let spent = old.bytes_in + old.bytes_out - pending.bytes_before;
        old.close().await;
        let mut sent_ahead = pending.sent_ahead();
        let conn = match pending.next {
            Destination::Open { frames, writer, .. } => {
                // The writer ends once it has sent what it was given.
                drop(frames);
                match writer.await {
                    Ok(Ok(conn)) => conn,
                    // The connection broke: what went ahead and was still held is lost
                    // with it, and goes again on a new one; but the node may have run
                    // some of it already, its replies lost with the connection.
                    _ => {
                        sent_ahead = None;
                        let (conn, handled) = self.attach_again(&pending.to).await?;
                        if handled > last_seq {
                            tracing::debug!(
                                last_seq,
                                handled,
                                "the connection that sent messages ahead broke after the node ran some"
                            );
                            if handled > self.delivered {
                                self.remake_lost_replies(handled);
                            }
                            last_seq = handled;
                        }
                        conn
                    }
                }
            }
            Destination::Opening(opening) => match opening.await {
                Ok(Ok((conn, _))) => conn,
                _ => Connection::open(&pending.to, &self.options).await?,
            },
            // Opening it early failed (or was not possible): once more, now.
            Destination::Failed => Connection::open(&pending.to, &self.options).await?,
        };
        let (bytes, replayed) = self.attach_on(conn, last_seq, sent_ahead).await?;
        Ok(Some(MoveReport {
            kind: MoveKind::Handoff,
            from: pending.from,
            to: pending.to,
            duration: settled,
            client_bytes: spent + bytes,
            replayed,
        }))
    }

    /// Node A → node B through the cloud: the cloud fetches the state from A.
    async fn fallback(&mut self, cloud: &str, to: &str) -> Result<(u64, u64), ClientError> {
        // A worker that falls back to the cloud gets there the messages A did not answer
        // while the cloud fetches it, on a connection of their own: a picture's upload
        // then overlaps the move instead of following it.
        let unanswered = self.log.iter().any(|(seq, _)| *seq > self.delivered);
        let mut ahead = (to == cloud && unanswered).then(|| {
            Ahead::Opening(AbortOnDrop(tokio::spawn(open_destination(
                cloud.to_string(),
                self.options.clone(),
                self.id,
                self.secret,
            ))))
        });
        // The client gives up on A: what A handled, the state the cloud fetches includes;
        // what it did not, is replayed at the destination. Wait for the replies in flight
        // while A still answers, so none is lost with the connection.
        let spent = match std::mem::replace(&mut self.placement, Placement::Nowhere) {
            Placement::Remote(mut old) => {
                let source = old.url().to_string();
                let before = old.bytes_in + old.bytes_out;
                let drained = drain_connection(&mut old, self).await;
                if let Err(e) = drained {
                    tracing::warn!("the source node stopped answering ({e}); its unanswered messages will be replayed");
                }
                let spent = old.bytes_in + old.bytes_out - before;
                old.close().await;
                (source, spent)
            }
            other => {
                self.placement = other;
                unreachable!("fallback starts remote")
            }
        };
        let (source, spent) = spent;
        let mut relay = Connection::open(cloud, &self.options).await?;
        // From version 6 the cloud also brings the replies the source kept of the messages
        // after the last one delivered here.
        let pull = if relay.version().is_some_and(|v| v >= 6) {
            Frame::PullSince {
                worker: self.id,
                secret: self.secret,
                source,
                destination: to.to_string(),
                delivered: self.delivered,
            }
        } else {
            Frame::Pull {
                worker: self.id,
                secret: self.secret,
                source,
                destination: to.to_string(),
            }
        };
        relay.send(&pull).await?;
        let last_seq = loop {
            let received = match &mut ahead {
                Some(Ahead::Opening(opening)) => tokio::select! {
                    received = relay.recv() => received,
                    opened = &mut opening.0 => {
                        ahead = self.send_ahead_of_fallback(opened);
                        continue;
                    }
                },
                _ => relay.recv().await,
            };
            match received {
                Ok(Frame::Moved { last_seq, .. }) => break last_seq,
                // The replies the source kept of the messages after the last one delivered
                // here (PullSince), in order: those that follow on are delivered now.
                Ok(frame @ (Frame::Reply { .. } | Frame::Handled { .. })) => {
                    if self.follows_delivered(&frame) {
                        self.on_message_frame(frame)?;
                    }
                }
                Ok(other) => return Err(relay.unexpected(&other, "Moved")),
                // The cloud could not take the worker from the source either: it is lost.
                Err(ClientError::Refused { url, code, message }) => {
                    return Err(ClientError::Lost {
                        url,
                        reason: format!("the cloud could not fetch the worker ({code}): {message}"),
                    })
                }
                Err(e) => return Err(e),
            }
        };
        // A worker that stays in the cloud is attached on the connection that carried the
        // messages ahead of it, else on the one that asked for it: a new one would cost the
        // device ↔ cloud round trips of its set-up again.
        // The messages sent ahead that A had handled after all are dropped by the cloud:
        // when A handled them all, their upload stops, and the worker stays on the
        // connection that asked for it.
        let ahead = ahead.filter(|a| match a {
            Ahead::Sending { sent, .. } => sent.1 > last_seq,
            Ahead::Opening(_) => false,
        });
        if let Some(Ahead::Sending { mut writer, sent }) = ahead {
            let moved_at = Instant::now();
            let relay_bytes = relay.bytes_in + relay.bytes_out;
            relay.close().await;
            // Once the messages are written (their upload is the application's traffic,
            // not the move's).
            let conn = match (&mut writer.0).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => return Err(e),
                Err(e) => return Err(ClientError::State(format!("the upload ahead stopped: {e}"))),
            };
            let (bytes, replayed) = self.attach_on(conn, last_seq, Some(sent)).await?;
            self.resumed_at = Some(moved_at);
            return Ok((spent + relay_bytes + bytes, replayed));
        }
        if to == cloud {
            let (bytes, replayed) = self.attach_on(relay, last_seq, None).await?;
            return Ok((spent + bytes, replayed));
        }
        let relay_bytes = relay.bytes_in + relay.bytes_out;
        relay.close().await;
        let (bytes, replayed) = self.attach(to, last_seq).await?;
        Ok((spent + relay_bytes + bytes, replayed))
    }

    /// During a fallback to the cloud, once the connection for the messages ahead is open:
    /// sends it every logged message A did not answer, in order, within the budget the
    /// cloud granted, from a task of its own. `None` when there is nothing to send (or the
    /// connection failed): the replay sends them after the move, as before.
    fn send_ahead_of_fallback(
        &mut self,
        opened: Result<Result<(Connection, u64), ClientError>, tokio::task::JoinError>,
    ) -> Option<Ahead> {
        let (conn, budget) = match opened {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                tracing::debug!("no messages ahead of the fallback: {e}");
                return None;
            }
            Err(_) => return None,
        };
        let mut frames = Vec::new();
        let mut bytes = 0u64;
        for (seq, payload) in self.log.iter().filter(|(s, _)| *s > self.delivered) {
            if bytes + payload.len() as u64 > budget {
                break;
            }
            bytes += payload.len() as u64;
            frames.push((
                *seq,
                Frame::Post {
                    worker: self.id,
                    seq: *seq,
                    payload: payload.clone(),
                },
            ));
        }
        let (Some((first, _)), Some((last, _))) = (frames.first(), frames.last()) else {
            return None;
        };
        let sent = (*first, *last);
        tracing::debug!(
            first = sent.0,
            last = sent.1,
            bytes,
            "the cloud holds the messages A did not answer until the worker arrives"
        );
        let writer = tokio::spawn(async move {
            let mut conn = conn;
            for (_, frame) in &frames {
                conn.send(frame).await?;
            }
            Ok(conn)
        });
        Some(Ahead::Sending {
            writer: AbortOnDrop(writer),
            sent,
        })
    }

    /// Node → local: the node sends the state back; the worker resumes here.
    async fn return_home(&mut self) -> Result<(u64, u64), ClientError> {
        self.begin_return(false).await?;
        while self.returning.is_some() {
            match self.pump_raw().await? {
                Pumped::Returned(returned) => {
                    let pending = self.returning.take().expect("a return is under way");
                    let report = self.end_return(pending, *returned?).await?;
                    return Ok((report.client_bytes, report.replayed));
                }
                Pumped::Frame(Some(other)) => {
                    tracing::debug!("ignoring {} during a return", other.name());
                }
                Pumped::Frame(None) => {}
            }
        }
        unreachable!("a return ends with its state")
    }

    /// Asks the node for the worker back on a connection of its own, so the main one goes
    /// on carrying messages while the state travels (in pre-copy rounds), unless `hold`:
    /// then messages posted meanwhile wait here for the state.
    async fn begin_return(&mut self, hold: bool) -> Result<(), ClientError> {
        let Placement::Remote(conn) = &self.placement else {
            unreachable!("return starts remote");
        };
        let from = self.state_source(conn);
        let worker = self.id;
        // A checkpoint on its way would share the link with the state: the return
        // supersedes it.
        if let Some(task) = self.checkpointing.take() {
            task.abort();
        }
        // The chunks of the newest copy this client holds (a checkpoint, or the snapshot
        // it offloaded) that did not change need not travel back.
        let held = match &self.checkpoint_ready {
            Some(newer) => Some(newer.clone()),
            None => self.recovery.as_ref().map(|r| r.snapshot.clone()),
        };
        tracing::debug!(
            in_flight = self.in_flight,
            sent_through = self.sent_through,
            delivered = self.delivered,
            logged = self.log.len(),
            "return asked for"
        );
        let first_round = FirstRound::default();
        let left = first_round.clone();
        let task = tokio::spawn(async move {
            let request = Frame::Return { worker };
            let (conn, manifest, bodies) = fetch_state(&from, held, request, Some(left)).await?;
            Ok(Returned {
                conn,
                manifest,
                bodies,
            })
        });
        self.returning = Some(PendingReturn {
            from: self.place().to_string(),
            started: Instant::now(),
            task,
            first_round,
            hold,
        });
        Ok(())
    }

    /// Where copies of the worker's state come from while it runs on `conn`'s node.
    fn state_source(&self, conn: &Connection) -> StateSource {
        StateSource {
            url: conn.url().to_string(),
            options: self.options.clone(),
            worker: self.id,
            secret: self.secret,
            module_hash: *self.module.hash(),
        }
    }

    /// A return's first round, once in, is kept like a checkpoint that arrived: it
    /// becomes the recovery point when its replies are delivered.
    fn take_first_round(&mut self) {
        let Some(pending) = &self.returning else {
            return;
        };
        let Some(snapshot) = pending.first_round.lock().expect("first round").take() else {
            return;
        };
        let newer = |held: Option<u64>| held.is_none_or(|seq| snapshot.manifest.last_seq > seq);
        if newer(self.recovery_point())
            && newer(self.checkpoint_ready.as_ref().map(|c| c.manifest.last_seq))
        {
            tracing::debug!(
                last_seq = snapshot.manifest.last_seq,
                "the return's first round is in: a copy to recover from"
            );
            self.checkpoint_ready = Some(snapshot);
        }
    }

    /// Between two messages: takes in a checkpoint that arrived, and starts the next one
    /// when it is due.
    fn drive_checkpoint(&mut self) {
        if matches!(self.placement, Placement::Local(_)) {
            // Home: the worker itself is the recovery point.
            if let Some(task) = self.checkpointing.take() {
                task.abort();
            }
            self.checkpoint_ready = None;
            return;
        }
        self.take_first_round();
        if let Some(task) = &mut self.checkpointing {
            let Some(done) = futures_util::FutureExt::now_or_never(task) else {
                return;
            };
            self.checkpointing = None;
            match done {
                Ok(Ok((snapshot, transfer))) => {
                    self.record_transfer(transfer);
                    self.checkpoint_ready = Some(snapshot);
                }
                Ok(Err(e)) => tracing::debug!("no checkpoint this time: {e}"),
                Err(e) => tracing::debug!("the checkpoint stopped: {e}"),
            }
        }
        if self
            .checkpoint_ready
            .as_ref()
            .is_some_and(|c| c.manifest.last_seq <= self.delivered)
        {
            if let Some(snapshot) = self.checkpoint_ready.take() {
                self.renew_recovery(snapshot);
            }
        }
        let Some(every) = self.options.checkpoint_every else {
            return;
        };
        let Placement::Remote(conn) = &self.placement else {
            return;
        };
        if self.moving()
            || self.checkpoint_ready.is_some()
            || self.recovery_at.elapsed() < every
            || conn.version().is_none_or(|v| v < 3)
        {
            return;
        }
        let from = self.state_source(conn);
        let worker = self.id;
        let held = self.recovery.as_ref().map(|r| r.snapshot.clone());
        self.recovery_at = Instant::now();
        self.checkpointing = Some(tokio::spawn(async move {
            let started = Instant::now();
            let request = Frame::Checkpoint { worker };
            let (mut conn, manifest, bodies) = fetch_state(&from, held, request, None).await?;
            let transfer = Transfer {
                node: from.url,
                up: false,
                bytes: conn.bytes_in,
                seconds: started.elapsed().as_secs_f64(),
            };
            let last_seq = manifest.last_seq;
            let snapshot = Snapshot::from_parts(manifest, bodies)
                .map_err(|e| ClientError::State(e.to_string()))?;
            conn.send(&Frame::StateAdopted { worker, last_seq }).await?;
            conn.close().await;
            Ok((snapshot, transfer))
        }));
    }

    /// A copy of the worker's state after message `snapshot.manifest.last_seq` arrived:
    /// it becomes the recovery point if the messages since are still at hand.
    fn renew_recovery(&mut self, snapshot: Snapshot) {
        let last_seq = snapshot.manifest.last_seq;
        let since: Option<VecDeque<(u64, Vec<u8>)>> = match &self.recovery {
            Some(recovery) if recovery.snapshot.manifest.last_seq > last_seq => None,
            Some(recovery) => Some(
                recovery
                    .messages
                    .iter()
                    .filter(|(seq, _)| *seq > last_seq)
                    .cloned()
                    .collect(),
            ),
            // Without a recovery point, the log holds every message not yet handled: enough
            // if none was handled after the copy was taken.
            None if self.delivered <= last_seq => Some(
                self.log
                    .iter()
                    .filter(|(seq, _)| *seq > last_seq)
                    .cloned()
                    .collect(),
            ),
            None => None,
        };
        let Some(messages) = since else {
            tracing::debug!(last_seq, "a checkpoint too old to use");
            return;
        };
        tracing::debug!(
            last_seq,
            replay = messages.len(),
            "the recovery point moved up"
        );
        self.recovery = Some(Recovery {
            bytes: messages.iter().map(|(_, m)| m.len()).sum(),
            messages,
            snapshot,
        });
    }

    /// The message the recovery point had handled last, if the client holds one.
    pub fn recovery_point(&self) -> Option<u64> {
        self.recovery.as_ref().map(|r| r.snapshot.manifest.last_seq)
    }

    /// The state came home: take in the replies of every message it handled, restore it,
    /// tell the node, and handle here what it had not.
    async fn end_return(
        &mut self,
        pending: PendingReturn,
        returned: Returned,
    ) -> Result<MoveReport, ClientError> {
        let Returned {
            mut conn,
            manifest,
            bodies,
        } = returned;
        let last_seq = manifest.last_seq;
        // The node sent the replies of every message up to last_seq on the main connection
        // before it captured the state; messages after it wait there and are dropped.
        while self.delivered < last_seq {
            let Placement::Remote(main) = &mut self.placement else {
                unreachable!("return starts remote")
            };
            let frame = main.recv().await?;
            if let Some(other) = self.on_message_frame(frame)? {
                tracing::debug!("ignoring {} during a return", other.name());
            }
        }
        let snapshot = Snapshot::from_parts(manifest, bodies)
            .map_err(|e| ClientError::State(e.to_string()))?;
        let worker = self
            .runtime
            .restore(&self.module, &snapshot)
            .map_err(|e| ClientError::State(e.to_string()))?;
        conn.send(&Frame::StateAdopted {
            worker: self.id,
            last_seq,
        })
        .await?;
        let Placement::Remote(main) =
            std::mem::replace(&mut self.placement, Placement::Local(Box::new(worker)))
        else {
            unreachable!()
        };
        let bytes = conn.bytes_in + conn.bytes_out;
        conn.close().await;
        main.close().await;
        self.in_flight = 0;
        self.sent_through = self.delivered;
        self.recovery = None;
        let replayed = self.replay_after(last_seq).await?;
        Ok(MoveReport {
            kind: MoveKind::Return,
            from: pending.from,
            to: Place::Local.to_string(),
            duration: self.settled_since(pending.started),
            client_bytes: bytes,
            replayed,
        })
    }

    /// Opens a connection to `url` and attaches the worker there, waiting for the node's
    /// answer: the connection and the last message the worker there has handled.
    async fn attach_again(&mut self, url: &str) -> Result<(Connection, u64), ClientError> {
        let mut conn = Connection::open(url, &self.options).await?;
        conn.send(&Frame::Attach {
            worker: self.id,
            secret: self.secret,
        })
        .await?;
        match conn.recv().await? {
            Frame::Attached { last_seq, .. } => Ok((conn, last_seq)),
            other => Err(conn.unexpected(&other, "Attached")),
        }
    }

    /// Attaches at the node that now holds the worker and replays what it has not handled.
    async fn attach(&mut self, url: &str, last_seq: u64) -> Result<(u64, u64), ClientError> {
        let conn = Connection::open(url, &self.options).await?;
        self.attach_on(conn, last_seq, None).await
    }

    /// [`attach`](Self::attach) on a connection already open, on which the messages
    /// `sent_ahead` (first and last) went ahead of the worker: they are not sent again.
    async fn attach_on(
        &mut self,
        mut conn: Connection,
        last_seq: u64,
        sent_ahead: Option<(u64, u64)>,
    ) -> Result<(u64, u64), ClientError> {
        // The move's own report (Moved, from the destination's StateAdopted) says which
        // message the state handled last: the replay follows the Attach at once, without
        // waiting a round trip for Attached, which the node answers first all the same.
        conn.send(&Frame::Attach {
            worker: self.id,
            secret: self.secret,
        })
        .await?;
        let bytes = conn.bytes_in + conn.bytes_out;
        self.placement = Placement::Remote(Box::new(conn));
        // Every logged message after the state's goes to the destination, also those whose
        // replies were delivered already (a node that caught up on them was handed off
        // before it handled them): those go as Replays. Those sent ahead are there.
        // They count as in flight only after the replay: the node holds them until the
        // messages before them arrive, which must not wait for them.
        let ahead = sent_ahead.filter(|&(_, last)| last > last_seq);
        self.in_flight = 0;
        self.sent_ahead = ahead;
        self.sent_through = last_seq.min(self.delivered);
        let replayed = self.replay_after(last_seq).await;
        if let Some((_, last)) = self.sent_ahead.take() {
            self.sent_through = self.sent_through.max(last);
            // In flight: every message sent to the node and not yet handled, whichever
            // way it went (Handled frames of messages sent ahead may have come already).
            let (delivered, sent_through) = (self.delivered, self.sent_through);
            self.in_flight = self
                .log
                .iter()
                .filter(|(s, _)| *s > delivered && *s <= sent_through)
                .count();
        }
        Ok((bytes, replayed?))
    }

    /// Resends every logged message above `last_seq` where the worker now runs.
    async fn replay_after(&mut self, last_seq: u64) -> Result<u64, ClientError> {
        self.resumed_at = Some(Instant::now());
        if last_seq > self.delivered {
            self.remake_lost_replies(last_seq);
        }
        self.handled_through(last_seq);
        if matches!(self.placement, Placement::Local(_)) {
            // They run here one by one as the application asks for replies.
            self.backlog = self
                .log
                .iter()
                .filter(|(s, _)| *s > last_seq)
                .cloned()
                .collect();
            return Ok(self.backlog.len() as u64);
        }
        let seqs: Vec<u64> = self.log.iter().map(|(s, _)| *s).collect();
        for &seq in &seqs {
            self.send_logged(seq).await?;
        }
        Ok(seqs.len() as u64)
    }
}

impl WorkerHandle {
    /// The state that moved had handled messages up to `through` whose replies never
    /// arrived: the node that handled them lost its connection to this client before it
    /// could send them (a fallback, taken from a node the device could no longer reach).
    /// Makes those replies again from the recovery point, as a recovery would, and
    /// delivers the ones the application has not had. Without a recovery point they are
    /// lost, and a warning says so.
    fn remake_lost_replies(&mut self, through: u64) {
        let delivered = self.delivered;
        let Some(recovery) = self
            .recovery
            .as_ref()
            .filter(|r| r.snapshot.manifest.last_seq <= delivered)
        else {
            tracing::warn!(
                "the replies of messages {} to {through} never arrived and this client holds no copy of the worker to make them again: they are lost",
                delivered + 1
            );
            return;
        };
        tracing::debug!(
            from = recovery.snapshot.manifest.last_seq,
            through,
            "making again the replies that never arrived, from the recovery point"
        );
        let remade = (|| -> Result<Vec<Reply>, String> {
            let mut worker = self
                .runtime
                .restore(&self.module, &recovery.snapshot)
                .map_err(|e| e.to_string())?;
            let mut remade = Vec::new();
            for (seq, payload) in recovery.messages.iter().filter(|(s, _)| *s <= through) {
                let replies = worker.deliver(payload).map_err(|e| e.to_string())?;
                if *seq > delivered {
                    // Of the message partly answered, the replies already delivered.
                    let skip = if *seq == delivered + 1 {
                        self.partial as usize
                    } else {
                        0
                    };
                    remade.extend(replies.skip(skip).map(|payload| Reply {
                        seq: *seq,
                        payload: payload.to_vec(),
                    }));
                }
            }
            Ok(remade)
        })();
        match remade {
            Ok(replies) => self.replies.extend(replies),
            Err(e) => tracing::warn!(
                "the replies of messages {} to {through} never arrived and could not be made again ({e}): they are lost",
                delivered + 1
            ),
        }
    }
}

/// The snapshot a node adopted: `manifest` with the bodies sent that it uses.
fn adopted_snapshot(manifest: Manifest, bodies: Vec<ChunkBody>) -> Result<Snapshot, ClientError> {
    let used: HashSet<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
    let mut kept: HashMap<ChunkHash, ChunkBody> = HashMap::new();
    for body in bodies {
        if used.contains(&body.hash()) {
            kept.insert(body.hash(), body);
        }
    }
    Snapshot::from_parts(manifest, kept.into_values().collect())
        .map_err(|e| ClientError::State(e.to_string()))
}

/// Message `seq`, handled here already, for a node catching up on a connection that
/// speaks `version`: its replies were delivered from here, and a version 4 node leaves
/// them out (Replay).
fn handled_here(version: Option<u16>, worker: WorkerId, seq: u64, payload: Vec<u8>) -> Frame {
    if version.is_some_and(|v| v >= 4) {
        Frame::Replay {
            worker,
            seq,
            payload,
        }
    } else {
        Frame::Post {
            worker,
            seq,
            payload,
        }
    }
}

/// Whether an error means the node holding the worker is gone (rather than refusing).
fn is_lost(e: &ClientError) -> bool {
    // A node that ran the worker post-copy and lost its source says StateLost: the worker
    // is gone as if the node had died.
    matches!(e, ClientError::Lost { .. } | ClientError::Connect { .. })
        || matches!(e, ClientError::Refused { code, .. } if code == "StateLost")
}

/// Reads frames from a connection being given up until nothing is in flight.
async fn drain_connection(
    conn: &mut Connection,
    handle: &mut WorkerHandle,
) -> Result<(), ClientError> {
    while handle.in_flight > 0 {
        let frame = conn.recv().await?;
        if let Some(other) = handle.on_message_frame(frame)? {
            return Err(conn.unexpected(&other, "Reply or Handled"));
        }
    }
    Ok(())
}

/// An offload's transfer: opens the connection, sends round 0 (StateBegin, then what the
/// node asks for), and then each round the handle captures, timing the delivery of each
/// with a Ping; after the last, StateEnd and the node's StateAdopted.
#[allow(clippy::too_many_arguments)]
async fn send_rounds(
    url: String,
    options: WorkerOptions,
    worker: WorkerId,
    owner: [u8; 32],
    module: Arc<WorkerModule>,
    first: Delta,
    first_is_last: bool,
    mut rounds: tokio::sync::mpsc::UnboundedReceiver<OffloadRound>,
    delivered: tokio::sync::mpsc::UnboundedSender<f64>,
) -> Result<Offloaded, ClientError> {
    let mut conn = Connection::open(&url, &options).await?;
    let started = Instant::now();
    let module_bytes = module.bytes();
    conn.send(&Frame::StateBegin {
        worker,
        module_hash: *module.hash(),
        module_len: module_bytes.len() as u32,
        owner,
        token: None,
        manifest: first.manifest.encode(),
    })
    .await?;
    let (need_module, need_chunks) = match conn.recv().await? {
        Frame::StateNeed { module, chunks, .. } => (module, chunks),
        other => return Err(conn.unexpected(&other, "StateNeed")),
    };
    let mut bytes = 0u64;
    if need_module {
        for (i, piece) in module_bytes.chunks(MODULE_PIECE).enumerate() {
            conn.send(&Frame::ModuleData {
                module_hash: *module.hash(),
                offset: (i * MODULE_PIECE) as u32,
                bytes: piece.to_vec(),
            })
            .await?;
        }
        bytes += module_bytes.len() as u64;
    }
    let by_hash: HashMap<ChunkHash, &ChunkBody> =
        first.bodies.iter().map(|b| (b.hash(), b)).collect();
    let mut asked = Vec::with_capacity(need_chunks.len());
    for hash in need_chunks {
        asked.push(*by_hash.get(&hash).ok_or_else(|| {
            ClientError::State(format!("the node asked for unknown chunk {hash:032x}"))
        })?);
    }
    bytes += send_bodies(&mut conn, worker, asked.into_iter()).await?;
    let mut sent = first.bodies;
    let mut last = first_is_last;
    let mut round_started = started;
    loop {
        if last {
            conn.send(&Frame::StateEnd { worker }).await?;
            return match conn.recv().await? {
                Frame::StateAdopted { last_seq, .. } => Ok(Offloaded {
                    conn,
                    last_seq,
                    bodies: sent,
                }),
                other => Err(conn.unexpected(&other, "StateAdopted")),
            };
        }
        let nonce = u64::from(sent.len() as u32) << 32 | u64::from(worker as u32);
        conn.send(&Frame::Ping { nonce }).await?;
        loop {
            match conn.recv().await? {
                Frame::Pong { nonce: n } if n == nonce => break,
                Frame::Pong { .. } => {}
                Frame::Ping { nonce } => conn.send(&Frame::Pong { nonce }).await?,
                other => return Err(conn.unexpected(&other, "Pong")),
            }
        }
        let elapsed = round_started.elapsed().as_secs_f64().max(1e-6);
        if delivered.send(bytes as f64 / elapsed).is_err() {
            return Err(ClientError::Usage("the offload was abandoned".into()));
        }
        let Some(round) = rounds.recv().await else {
            return Err(ClientError::Usage("the offload was abandoned".into()));
        };
        round_started = Instant::now();
        conn.send(&Frame::StateRound {
            worker,
            bodies: round.bodies.len() as u32,
            manifest: round.manifest.encode(),
        })
        .await?;
        bytes = send_bodies(&mut conn, worker, round.bodies.iter()).await?;
        sent.extend(round.bodies);
        last = round.last;
    }
}

/// Sends chunk bodies in ChunkData frames of at most [`CHUNK_FRAME_BYTES`]; returns their
/// encoded bytes.
async fn send_bodies<'b>(
    conn: &mut Connection,
    worker: WorkerId,
    bodies: impl Iterator<Item = &'b ChunkBody>,
) -> Result<u64, ClientError> {
    let mut total = 0u64;
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for body in bodies {
        let encoded = body.encode();
        batch_bytes += encoded.len();
        total += encoded.len() as u64;
        batch.push(encoded);
        if batch_bytes >= CHUNK_FRAME_BYTES {
            conn.send(&Frame::ChunkData {
                worker,
                bodies: std::mem::take(&mut batch),
            })
            .await?;
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        conn.send(&Frame::ChunkData {
            worker,
            bodies: batch,
        })
        .await?;
    }
    Ok(total)
}

/// Where a copy of the worker's state comes from: its node, and what attaching there and
/// checking the state take.
struct StateSource {
    url: String,
    options: WorkerOptions,
    worker: WorkerId,
    secret: [u8; 32],
    module_hash: [u8; 32],
}

/// Runs message `seq` in `worker`; its replies.
fn run_here(worker: &mut Worker, seq: u64, payload: &[u8]) -> Result<Vec<Vec<u8>>, ClientError> {
    Ok(worker
        .deliver(payload)
        .map_err(|e| ClientError::WorkerFailed {
            seq,
            reason: e.to_string(),
        })?
        .map(<[u8]>::to_vec)
        .collect())
}

/// Asks the node of `from`, on a connection of its own, for the worker's state
/// (`request`: Return or Checkpoint) and receives it, asking only for the chunks `held`
/// lacks; the state of its first pre-copy round goes to `first_round` (see
/// [`receive_state`]).
async fn fetch_state(
    from: &StateSource,
    held: Option<Snapshot>,
    request: Frame,
    first_round: Option<FirstRound>,
) -> Result<(Connection, Manifest, Vec<ChunkBody>), ClientError> {
    let StateSource {
        url,
        options,
        worker,
        secret,
        module_hash,
    } = from;
    let (worker, secret, module_hash) = (*worker, *secret, *module_hash);
    let mut conn = Connection::open(url, options).await?;
    conn.send(&Frame::Attach { worker, secret }).await?;
    match conn.recv().await? {
        Frame::Attached { .. } => {}
        other => return Err(conn.unexpected(&other, "Attached")),
    }
    conn.send(&request).await?;
    let manifest = loop {
        match conn.recv().await? {
            Frame::StateBegin {
                manifest,
                module_hash: found,
                ..
            } => {
                if found != module_hash {
                    return Err(ClientError::State(
                        "the node sent the state of another module".into(),
                    ));
                }
                break manifest;
            }
            Frame::Ping { nonce } => conn.send(&Frame::Pong { nonce }).await?,
            other => return Err(conn.unexpected(&other, "StateBegin")),
        }
    };
    let manifest = Manifest::decode(&manifest, &DecodeLimits::default())
        .map_err(|e| ClientError::State(e.to_string()))?;
    let (manifest, bodies) =
        receive_state(&mut conn, worker, manifest, held.as_ref(), first_round).await?;
    Ok((conn, manifest, bodies))
}

/// Receives a worker's state as the receiver of a transfer (after StateBegin with
/// `manifest`): asks for every chunk body `held` does not have, takes pre-copy rounds
/// (each a newer manifest and the bodies of its new chunks) until StateEnd, and returns the
/// last manifest with the bodies it uses. When there are rounds, the state of the first
/// goes into `first_round` as soon as the second begins, if every body of the first is
/// in (from version 8 a node may begin the second round before it sent them all: the
/// chunks the worker kept rewriting).
async fn receive_state(
    conn: &mut Connection,
    worker: WorkerId,
    mut manifest: Manifest,
    held: Option<&Snapshot>,
    mut first_round: Option<FirstRound>,
) -> Result<(Manifest, Vec<ChunkBody>), ClientError> {
    let mut bodies: HashMap<ChunkHash, ChunkBody> = HashMap::new();
    let mut wanted: Vec<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
    wanted.sort_unstable();
    wanted.dedup();
    if let Some(held) = held {
        wanted.retain(|&hash| match held.body(hash) {
            Some(body) => {
                bodies.insert(hash, body.clone());
                false
            }
            None => true,
        });
    }
    conn.send(&Frame::StateNeed {
        worker,
        module: false,
        chunks: wanted,
    })
    .await?;
    loop {
        match conn.recv().await? {
            Frame::ChunkData {
                bodies: encoded, ..
            } => {
                for b in encoded {
                    let body =
                        ChunkBody::decode(&b).map_err(|e| ClientError::State(e.to_string()))?;
                    bodies.insert(body.hash(), body);
                }
            }
            Frame::StateRound {
                bodies: announced,
                manifest: bytes,
                ..
            } => {
                let next = Manifest::decode(&bytes, &DecodeLimits::default())
                    .map_err(|e| ClientError::State(e.to_string()))?;
                // The chunks whose bodies are not here: up to version 7, the chunks no
                // earlier manifest held; from version 8 a round may end the one before
                // early, and the bodies it did not send are due again if still used.
                let fresh: HashSet<ChunkHash> = next
                    .chunks
                    .iter()
                    .map(|c| c.hash)
                    .filter(|h| !bodies.contains_key(h))
                    .collect();
                if fresh.len() != announced as usize || next.module_hash != manifest.module_hash {
                    return Err(conn.unexpected(
                        &Frame::StateRound {
                            worker,
                            bodies: announced,
                            manifest: Vec::new(),
                        },
                        "a StateRound announcing its new chunks",
                    ));
                }
                if let Some(slot) = first_round.take() {
                    let hashes: HashSet<ChunkHash> =
                        manifest.chunks.iter().map(|c| c.hash).collect();
                    let used: Vec<ChunkBody> = hashes
                        .iter()
                        .filter_map(|h| bodies.get(h).cloned())
                        .collect();
                    match Snapshot::from_parts(manifest.clone(), used) {
                        Ok(snapshot) => *slot.lock().expect("first round") = Some(snapshot),
                        Err(e) => tracing::debug!("the first round is no snapshot: {e}"),
                    }
                }
                manifest = next;
            }
            Frame::StateEnd { .. } => {
                let used: HashSet<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
                let bodies = bodies
                    .into_values()
                    .filter(|b| used.contains(&b.hash()))
                    .collect();
                return Ok((manifest, bodies));
            }
            Frame::Ping { nonce } => conn.send(&Frame::Pong { nonce }).await?,
            other => return Err(conn.unexpected(&other, "ChunkData, StateRound or StateEnd")),
        }
    }
}
