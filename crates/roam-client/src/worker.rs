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
//! reach it — the handle restores that snapshot locally and handles those messages again,
//! delivering only the replies the application has not had yet, then carries on with what
//! it was doing (a move continues from here). For a worker whose replies and state depend
//! only on its messages, the application cannot tell. `docs/protocol.md` states the
//! guarantee.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_proto::{ChunkHash, Frame, WorkerId};
use roam_runtime::{Runtime, RuntimeConfig, Worker, WorkerModule};
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
    /// Dial routes: a node's URL → the URL to connect to instead (a proxy, a tunnel, an
    /// emulated link). The node is still named by its own URL ([`WorkerHandle::place`],
    /// moves, `Pull`); only where the socket connects changes.
    pub routes: BTreeMap<String, String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            window: 8,
            client_name: "roam-client".into(),
            runtime: RuntimeConfig::default(),
            recovery_bytes: 256 << 20,
            routes: BTreeMap::new(),
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
    /// Highest sequence number whose replies have all been delivered.
    delivered: u64,
    /// Replies already delivered of the message after `delivered` (its Handled not seen).
    partial: u32,
    replies: VecDeque<Reply>,
    /// What to restore locally if the node holding the worker dies.
    recovery: Option<Recovery>,
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
            delivered: 0,
            partial: 0,
            replies: VecDeque::new(),
            recovery: None,
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
        self.log.push_back((seq, payload));
        self.send_logged(seq).await?;
        Ok(seq)
    }

    /// Sends (or, locally, handles) the logged message `seq`.
    async fn send_logged(&mut self, seq: u64) -> Result<(), ClientError> {
        if matches!(self.placement, Placement::Remote(_)) {
            while self.in_flight >= self.options.window {
                self.pump().await?;
            }
        }
        // Waiting for room may have recovered the worker from a dead node, which handles
        // every logged message, this one included.
        let Some((_, payload)) = self.log.iter().find(|(s, _)| *s == seq) else {
            return Ok(());
        };
        match &mut self.placement {
            Placement::Local(worker) => {
                let replies: Vec<Vec<u8>> = worker
                    .deliver(payload)
                    .map_err(|e| ClientError::WorkerFailed {
                        seq,
                        reason: e.to_string(),
                    })?
                    .map(<[u8]>::to_vec)
                    .collect();
                for payload in replies {
                    self.replies.push_back(Reply { seq, payload });
                }
                self.handled_through(seq);
            }
            Placement::Remote(conn) => {
                let frame = Frame::Post {
                    worker: self.id,
                    seq,
                    payload: payload.clone(),
                };
                match conn.send(&frame).await {
                    Ok(()) => self.in_flight += 1,
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
        while self.log.front().is_some_and(|(s, _)| *s <= seq) {
            self.log.pop_front();
        }
        if seq > self.delivered {
            self.delivered = seq;
            self.partial = 0;
        }
    }

    /// The node holding the worker is gone: restore the recovery point locally and handle
    /// every message since, delivering only replies the application has not had.
    fn recover(&mut self, cause: ClientError) -> Result<(), ClientError> {
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
        let mut worker = self
            .runtime
            .restore(&self.module, &recovery.snapshot)
            .map_err(|e| ClientError::Local(e.to_string()))?;
        for (seq, payload) in &recovery.messages {
            let replies: Vec<Vec<u8>> = worker
                .deliver(payload)
                .map_err(|e| ClientError::WorkerFailed {
                    seq: *seq,
                    reason: e.to_string(),
                })?
                .map(<[u8]>::to_vec)
                .collect();
            let skip = if *seq == self.delivered + 1 {
                self.partial as usize
            } else {
                0
            };
            if *seq > self.delivered {
                for payload in replies.into_iter().skip(skip) {
                    self.replies.push_back(Reply { seq: *seq, payload });
                }
            }
            self.handled_through(*seq);
        }
        self.placement = Placement::Local(Box::new(worker));
        self.in_flight = 0;
        Ok(())
    }

    /// Reads one frame from the node and takes in what it says about messages; if the node
    /// is gone, recovers the worker locally.
    async fn pump(&mut self) -> Result<Option<Frame>, ClientError> {
        match self.pump_raw().await {
            Err(e) if is_lost(&e) => {
                self.recover(e)?;
                Ok(None)
            }
            other => other,
        }
    }

    /// [`pump`](Self::pump) without recovery, for moves: their caller recovers.
    async fn pump_raw(&mut self) -> Result<Option<Frame>, ClientError> {
        let Placement::Remote(conn) = &mut self.placement else {
            return Ok(None);
        };
        let frame = conn.recv().await?;
        self.on_message_frame(frame)
    }

    /// Handles Reply, Handled and WorkerFailed; returns any other frame to the caller.
    fn on_message_frame(&mut self, frame: Frame) -> Result<Option<Frame>, ClientError> {
        Ok(match frame {
            Frame::Reply { seq, payload, .. } => {
                // A message replayed after a move may repeat replies already delivered.
                if seq > self.delivered {
                    self.partial += 1;
                    self.replies.push_back(Reply { seq, payload });
                }
                None
            }
            Frame::Handled { seq, .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
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
                duration: started.elapsed(),
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
                let bytes = self.offload(url).await?;
                (MoveKind::Offload, bytes, 0)
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

    /// Local → node: capture here, send module (only if the node lacks it) and state.
    async fn offload(&mut self, url: &str) -> Result<u64, ClientError> {
        let Placement::Local(worker) = &mut self.placement else {
            unreachable!("offload starts local");
        };
        let snapshot = worker
            .capture()
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let mut conn = Connection::open(url, &self.options).await?;
        let last_seq = send_state(&mut conn, self.id, &self.owner, &self.module, &snapshot).await?;
        self.recovery = Some(Recovery {
            snapshot,
            messages: VecDeque::new(),
            bytes: 0,
        });
        if last_seq != self.delivered {
            return Err(ClientError::State(format!(
                "the node adopted the worker at message {last_seq}, the client had {}",
                self.delivered
            )));
        }
        let bytes = conn.bytes_in + conn.bytes_out;
        self.placement = Placement::Remote(Box::new(conn));
        self.in_flight = 0;
        Ok(bytes)
    }

    /// Node A → node B directly: A sends the state; the client then attaches at B.
    async fn handoff(&mut self, url: &str) -> Result<(u64, u64), ClientError> {
        let Placement::Remote(conn) = &mut self.placement else {
            unreachable!("handoff starts remote");
        };
        let before = conn.bytes_in + conn.bytes_out;
        conn.send(&Frame::MoveOut {
            worker: self.id,
            destination: url.to_string(),
        })
        .await?;
        let last_seq = loop {
            match self.pump_raw().await? {
                Some(Frame::Moved { last_seq, .. }) => break last_seq,
                Some(other) => return Err(self.unexpected_here(&other, "Moved")),
                None => {}
            }
        };
        let Placement::Remote(old) = std::mem::replace(&mut self.placement, Placement::Nowhere)
        else {
            unreachable!()
        };
        let spent = old.bytes_in + old.bytes_out - before;
        old.close().await;
        let (bytes, replayed) = self.attach(url, last_seq).await?;
        Ok((spent + bytes, replayed))
    }

    /// Node A → node B through the cloud: the cloud fetches the state from A.
    async fn fallback(&mut self, cloud: &str, to: &str) -> Result<(u64, u64), ClientError> {
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
        relay
            .send(&Frame::Pull {
                worker: self.id,
                secret: self.secret,
                source,
                destination: to.to_string(),
            })
            .await?;
        let last_seq = match relay.recv().await {
            Ok(Frame::Moved { last_seq, .. }) => last_seq,
            Ok(other) => return Err(relay.unexpected(&other, "Moved")),
            // The cloud could not take the worker from the source either: it is lost.
            Err(ClientError::Refused { url, code, message }) => {
                return Err(ClientError::Lost {
                    url,
                    reason: format!("the cloud could not fetch the worker ({code}): {message}"),
                })
            }
            Err(e) => return Err(e),
        };
        let relay_bytes = relay.bytes_in + relay.bytes_out;
        relay.close().await;
        let (bytes, replayed) = self.attach(to, last_seq).await?;
        Ok((spent + relay_bytes + bytes, replayed))
    }

    /// Node → local: the node sends the state back; the worker resumes here.
    async fn return_home(&mut self) -> Result<(u64, u64), ClientError> {
        let Placement::Remote(conn) = &mut self.placement else {
            unreachable!("return starts remote");
        };
        let before = conn.bytes_in + conn.bytes_out;
        conn.send(&Frame::Return { worker: self.id }).await?;
        // Replies to messages in flight come first, then the state.
        let (manifest_bytes, module_hash) = loop {
            match self.pump_raw().await? {
                Some(Frame::StateBegin {
                    manifest,
                    module_hash,
                    ..
                }) => break (manifest, module_hash),
                Some(other) => return Err(self.unexpected_here(&other, "StateBegin")),
                None => {}
            }
        };
        if &module_hash != self.module.hash() {
            return Err(ClientError::State(
                "the node returned the state of another module".into(),
            ));
        }
        let Placement::Remote(conn) = &mut self.placement else {
            unreachable!()
        };
        let manifest = Manifest::decode(&manifest_bytes, &DecodeLimits::default())
            .map_err(|e| ClientError::State(e.to_string()))?;
        let bodies = receive_state(conn, self.id, &manifest).await?;
        let snapshot = Snapshot::from_parts(manifest, bodies)
            .map_err(|e| ClientError::State(e.to_string()))?;
        let worker = self
            .runtime
            .restore(&self.module, &snapshot)
            .map_err(|e| ClientError::State(e.to_string()))?;
        let last_seq = worker.last_seq();
        conn.send(&Frame::StateAdopted {
            worker: self.id,
            last_seq,
        })
        .await?;
        let Placement::Remote(old) =
            std::mem::replace(&mut self.placement, Placement::Local(Box::new(worker)))
        else {
            unreachable!()
        };
        let spent = old.bytes_in + old.bytes_out - before;
        old.close().await;
        self.in_flight = 0;
        self.recovery = None;
        let replayed = self.replay_after(last_seq).await?;
        Ok((spent, replayed))
    }

    /// Attaches at the node that now holds the worker and replays what it has not handled.
    async fn attach(&mut self, url: &str, last_seq: u64) -> Result<(u64, u64), ClientError> {
        let mut conn = Connection::open(url, &self.options).await?;
        conn.send(&Frame::Attach {
            worker: self.id,
            secret: self.secret,
        })
        .await?;
        let attached = match conn.recv().await? {
            Frame::Attached { last_seq, .. } => last_seq,
            other => return Err(conn.unexpected(&other, "Attached")),
        };
        if attached != last_seq {
            tracing::debug!(
                "the node reports message {attached} handled; the move said {last_seq}"
            );
        }
        let bytes = conn.bytes_in + conn.bytes_out;
        self.placement = Placement::Remote(Box::new(conn));
        self.in_flight = 0;
        let replayed = self.replay_after(attached).await?;
        Ok((bytes, replayed))
    }

    /// Resends every logged message above `last_seq` where the worker now runs.
    async fn replay_after(&mut self, last_seq: u64) -> Result<u64, ClientError> {
        self.handled_through(last_seq);
        let seqs: Vec<u64> = self.log.iter().map(|(s, _)| *s).collect();
        for &seq in &seqs {
            self.send_logged(seq).await?;
        }
        Ok(seqs.len() as u64)
    }

    fn unexpected_here(&self, frame: &Frame, wanted: &str) -> ClientError {
        ClientError::Protocol {
            url: self.place().to_string(),
            reason: format!("expected {wanted}, got {}", frame.name()),
        }
    }
}

/// Whether an error means the node holding the worker is gone (rather than refusing).
fn is_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Lost { .. } | ClientError::Connect { .. })
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

/// Sends a worker's state on `conn` as the sender of a transfer; returns the receiver's
/// `last_seq` once it has adopted the worker.
async fn send_state(
    conn: &mut Connection,
    worker: WorkerId,
    owner: &[u8; 32],
    module: &WorkerModule,
    snapshot: &Snapshot,
) -> Result<u64, ClientError> {
    let module_bytes = module.bytes();
    conn.send(&Frame::StateBegin {
        worker,
        module_hash: *module.hash(),
        module_len: module_bytes.len() as u32,
        owner: *owner,
        token: None,
        manifest: snapshot.manifest.encode(),
    })
    .await?;
    let (need_module, need_chunks) = match conn.recv().await? {
        Frame::StateNeed { module, chunks, .. } => (module, chunks),
        other => return Err(conn.unexpected(&other, "StateNeed")),
    };
    if need_module {
        for (i, piece) in module_bytes.chunks(MODULE_PIECE).enumerate() {
            conn.send(&Frame::ModuleData {
                module_hash: *module.hash(),
                offset: (i * MODULE_PIECE) as u32,
                bytes: piece.to_vec(),
            })
            .await?;
        }
    }
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for hash in need_chunks {
        let body = snapshot.body(hash).ok_or_else(|| {
            ClientError::State(format!("the node asked for unknown chunk {hash:032x}"))
        })?;
        let encoded = body.encode();
        batch_bytes += encoded.len();
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
    conn.send(&Frame::StateEnd { worker }).await?;
    match conn.recv().await? {
        Frame::StateAdopted { last_seq, .. } => Ok(last_seq),
        other => Err(conn.unexpected(&other, "StateAdopted")),
    }
}

/// Receives a worker's state as the receiver of a transfer (after StateBegin): asks for
/// every chunk body, collects them until StateEnd.
async fn receive_state(
    conn: &mut Connection,
    worker: WorkerId,
    manifest: &Manifest,
) -> Result<Vec<ChunkBody>, ClientError> {
    let mut wanted: Vec<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
    wanted.sort_unstable();
    wanted.dedup();
    conn.send(&Frame::StateNeed {
        worker,
        module: false,
        chunks: wanted,
    })
    .await?;
    let mut bodies = Vec::new();
    loop {
        match conn.recv().await? {
            Frame::ChunkData {
                bodies: encoded, ..
            } => {
                for b in encoded {
                    bodies.push(
                        ChunkBody::decode(&b).map_err(|e| ClientError::State(e.to_string()))?,
                    );
                }
            }
            Frame::StateEnd { .. } => return Ok(bodies),
            other => return Err(conn.unexpected(&other, "ChunkData or StateEnd")),
        }
    }
}
