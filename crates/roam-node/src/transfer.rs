//! Sending and receiving a worker's state over a link: the exchange StateBegin →
//! StateNeed → ModuleData* → ChunkData* → StateEnd → StateAdopted, shared by every move
//! (offload and handoff received, handoff and return sent, the cloud's fallback both
//! ways). Everything received is checked here before it is used: the move token, the
//! manifest against the node's caps, the module bytes against their hash, every chunk
//! body against the manifest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use roam_proto::{
    ChunkHash, ErrorCode, Event, Frame, FrameLimits, ModuleHash, MoveToken, ProtocolError,
    TokenError, WorkerId,
};
use roam_runtime::{LoadError, Pager, PostCopyRestoreError, Runtime, WorkerModule};
use roam_snapshot::{ChunkBody, DecodeLimits, DecodeSnapshotError, Manifest, Snapshot};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::cache::ModuleCache;
use crate::chunks::ChunkStore;
use crate::hosting::Hosting;
use crate::link::{Link, LinkError, Machine, Wire};
use crate::metrics::Metrics;
use crate::precopy::{await_answer, send_bodies, send_module, Answer};

/// Module bytes travel in pieces of this size.
pub(crate) const MODULE_PIECE: usize = 1 << 20;

/// Chunk bodies are grouped into ChunkData frames of about this many bytes.
pub(crate) const CHUNK_BATCH: usize = 1 << 20;

/// How long this side waits for the peer's next frame during a transfer.
const PEER_TIMEOUT: Duration = Duration::from_secs(60);

/// Milliseconds since the Unix epoch, the clock of move tokens.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A worker's state ready to travel.
pub(crate) struct Package {
    /// The worker.
    pub worker: WorkerId,
    /// Sha-256 of its secret.
    pub owner: [u8; 32],
    /// Its module.
    pub module: Arc<WorkerModule>,
    /// Its state.
    pub snapshot: Snapshot,
}

/// Why this side's transfer did not end with StateAdopted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendStateError {
    /// the receiver refused worker {worker:032x} ({code}): {message}
    #[error("the receiver refused worker {worker:032x} ({code}): {message}")]
    Refused {
        /// The worker.
        worker: WorkerId,
        /// Its reason.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// the receiver asked for chunk {0:032x}, which the snapshot does not hold
    #[error("the receiver asked for chunk {0:032x}, which the snapshot does not hold")]
    UnknownChunk(ChunkHash),
    /// the transfer broke the protocol: {0}
    #[error("the transfer broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// the receiver left: {0}
    #[error("the receiver left: {0}")]
    Left(String),
    /// the receiver did not answer within {0:?}
    #[error("the receiver did not answer within {0:?}")]
    Timeout(Duration),
    /// {0}
    #[error("{0}")]
    Link(#[from] LinkError),
}

impl SendStateError {
    /// The code to report the failure with.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            SendStateError::Refused { code, .. } => *code,
            SendStateError::Protocol(e) => e.code(),
            _ => ErrorCode::Internal,
        }
    }
}

pub(crate) async fn next_frame<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
) -> Result<Frame, SendStateError> {
    tokio::time::timeout(PEER_TIMEOUT, link.next_frame())
        .await
        .map_err(|_| SendStateError::Timeout(PEER_TIMEOUT))?
        .map_err(SendStateError::from)
}

/// Sends `package` on a link whose state machine may send StateBegin now, and waits for
/// StateAdopted: the last message the receiver's restored worker had handled.
pub(crate) async fn send_state<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    package: &Package,
    token: Option<MoveToken>,
) -> Result<u64, SendStateError> {
    let worker = package.worker;
    let module_bytes = package.module.bytes();
    link.send(Frame::StateBegin {
        worker,
        module_hash: *package.module.hash(),
        module_len: module_bytes.len() as u32,
        owner: package.owner,
        token,
        manifest: package.snapshot.manifest.encode(),
    })
    .await?;
    let (module, chunks) = loop {
        match await_answer(link, worker).await? {
            Answer::Need { module, chunks } => break (module, chunks),
            Answer::Pong { .. } => {}
            other => return Err(other.unexpected("StateNeed")),
        }
    };
    send_needed(link, package, module, &chunks).await?;
    loop {
        match await_answer(link, worker).await? {
            Answer::Adopted { last_seq } => return Ok(last_seq),
            Answer::Pong { .. } => {}
            other => return Err(other.unexpected("StateAdopted")),
        }
    }
}

/// Sends what the receiver asked for, then StateEnd.
async fn send_needed<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    package: &Package,
    module: bool,
    chunks: &[ChunkHash],
) -> Result<(), SendStateError> {
    let worker = package.worker;
    if module {
        send_module(link, &package.module).await?;
    }
    let mut bodies = Vec::with_capacity(chunks.len());
    for &hash in chunks {
        let Some(body) = package.snapshot.body(hash) else {
            return Err(refuse_unknown_chunk(link, worker, hash).await);
        };
        bodies.push(body);
    }
    send_bodies(link, worker, bodies.into_iter()).await?;
    link.send(Frame::StateEnd { worker }).await?;
    Ok(())
}

/// Tells the receiver it asked for chunk `hash`, which this side never promised, and
/// returns the error that ends the transfer.
pub(crate) async fn refuse_unknown_chunk<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    hash: ChunkHash,
) -> SendStateError {
    let error = SendStateError::UnknownChunk(hash);
    let refusal = Frame::Error {
        code: ErrorCode::Malformed,
        worker: Some(worker),
        message: error.to_string(),
    };
    match link.send(refusal).await {
        Ok(()) => error,
        Err(e) => e.into(),
    }
}

/// A StateBegin, copied out of the frame so the link can go on receiving.
pub(crate) struct Begin {
    pub worker: WorkerId,
    pub module_hash: ModuleHash,
    pub module_len: u32,
    pub owner: [u8; 32],
    pub token: Option<MoveToken>,
    pub manifest: Vec<u8>,
}

impl Begin {
    /// Copies the fields of a StateBegin event.
    pub(crate) fn from_event(event: &Event<'_>) -> Option<Begin> {
        match event {
            Event::StateBegin {
                worker,
                module_hash,
                module_len,
                owner,
                token,
                manifest,
            } => Some(Begin {
                worker: *worker,
                module_hash: **module_hash,
                module_len: *module_len,
                owner: **owner,
                token: token.cloned(),
                manifest: manifest.to_vec(),
            }),
            _ => None,
        }
    }
}

/// What the receiving side checks and uses.
pub(crate) struct ReceiveContext<'a> {
    pub cache: &'a ModuleCache,
    /// Bodies this node holds: what a transfer need not ask for, and where the bodies
    /// received go for later transfers.
    pub chunks: &'a ChunkStore,
    /// Where reused chunks are counted.
    pub metrics: &'a Metrics,
    pub runtime: &'a Runtime,
    pub frame_limits: FrameLimits,
    /// The token check, for state sent by another node: the cluster key and this node's
    /// URL. `None` for state a client sends (offload) or a node returns to the cloud.
    pub token: Option<(&'a [u8], &'a str)>,
}

/// State received and checked, not yet restored.
pub(crate) struct Arrived {
    pub owner: [u8; 32],
    pub module: Arc<WorkerModule>,
    pub snapshot: Snapshot,
}

/// Why received state was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveStateError {
    /// state for worker {0:032x} came from a node without a move token
    #[error("state for worker {0:032x} came from a node without a move token")]
    MissingToken(WorkerId),
    /// {0}
    #[error("{0}")]
    BadToken(#[from] TokenError),
    /// the snapshot's manifest is over this node's cap: {0}
    #[error("the snapshot's manifest is over this node's cap: {0}")]
    OverCap(DecodeSnapshotError),
    /// the module is {len} bytes, over the {limit}-byte limit for a worker module
    #[error("the module is {len} bytes, over the {limit}-byte limit for a worker module")]
    ModuleTooLarge {
        /// The length StateBegin announced.
        len: u32,
        /// The limit.
        limit: usize,
    },
    /// the snapshot's manifest does not decode: {0}
    #[error("the snapshot's manifest does not decode: {0}")]
    Manifest(DecodeSnapshotError),
    /// the manifest names module {manifest}, but StateBegin names module {begin}
    #[error("the manifest names module {manifest}, but StateBegin names module {begin}")]
    ManifestModule {
        /// Hex of the manifest's module hash.
        manifest: String,
        /// Hex of StateBegin's.
        begin: String,
    },
    /// a StateRound announces {announced} chunk bodies, but its manifest has {found} new chunks
    #[error(
        "a StateRound announces {announced} chunk bodies, but its manifest has {found} new chunks"
    )]
    RoundCount {
        /// The count the StateRound gave.
        announced: u32,
        /// The chunks of its manifest no earlier manifest held.
        found: usize,
    },
    /// the module's bytes hash to {found}, not to {expected}
    #[error("the module's bytes hash to {found}, not to {expected}")]
    ModuleMismatch {
        /// The hash StateBegin named.
        expected: String,
        /// The hash of the bytes received.
        found: String,
    },
    /// the module cannot run here: {0}
    #[error("the module cannot run here: {0}")]
    Module(#[from] LoadError),
    /// a chunk body does not decode: {0}
    #[error("a chunk body does not decode: {0}")]
    Chunk(DecodeSnapshotError),
    /// the chunk bodies do not fit the manifest: {0}
    #[error("the chunk bodies do not fit the manifest: {0}")]
    Parts(DecodeSnapshotError),
    /// the module cache failed: {0}
    #[error("the module cache failed: {0}")]
    Cache(String),
    /// the post-copy restore failed: {0}
    #[error("the post-copy restore failed: {0}")]
    PostCopy(String),
    /// the worker could not be hosted: {0}
    #[error("the worker could not be hosted: {0}")]
    Host(crate::hosting::AdoptError),
    /// the sender broke the protocol: {0}
    #[error("the sender broke the protocol: {0}")]
    Protocol(ProtocolError),
    /// the sender gave up ({code}): {message}
    #[error("the sender gave up ({code}): {message}")]
    Abandoned {
        /// Its reason.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// the sender did not go on within {0:?}
    #[error("the sender did not go on within {0:?}")]
    Timeout(Duration),
    /// {0}
    #[error("{0}")]
    Link(#[from] LinkError),
}

impl ReceiveStateError {
    /// The code of the Error frame this side sends about it.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ReceiveStateError::MissingToken(_) | ReceiveStateError::BadToken(_) => {
                ErrorCode::BadToken
            }
            ReceiveStateError::OverCap(_) | ReceiveStateError::ModuleTooLarge { .. } => {
                ErrorCode::TooLarge
            }
            ReceiveStateError::Manifest(_)
            | ReceiveStateError::ManifestModule { .. }
            | ReceiveStateError::Chunk(_)
            | ReceiveStateError::RoundCount { .. } => ErrorCode::Malformed,
            ReceiveStateError::ModuleMismatch { .. } => ErrorCode::ModuleMismatch,
            ReceiveStateError::Module(_) | ReceiveStateError::Parts(_) => {
                ErrorCode::SnapshotRefused
            }
            ReceiveStateError::Protocol(e) => e.code(),
            ReceiveStateError::Abandoned { code, .. } => *code,
            ReceiveStateError::PostCopy(_) => ErrorCode::SnapshotRefused,
            ReceiveStateError::Host(crate::hosting::AdoptError::OtherOwner(_)) => {
                ErrorCode::Unauthorized
            }
            ReceiveStateError::Host(_) => ErrorCode::Internal,
            ReceiveStateError::Cache(_)
            | ReceiveStateError::Timeout(_)
            | ReceiveStateError::Link(_) => ErrorCode::Internal,
        }
    }

    /// Whether this side still has to tell the sender (the sender's own Error, a
    /// refusal already sent and a dead link need nothing more).
    fn needs_answer(&self) -> bool {
        !matches!(
            self,
            ReceiveStateError::Protocol(_)
                | ReceiveStateError::Abandoned { .. }
                | ReceiveStateError::Link(_)
        )
    }
}

/// The chunk bodies a receiver asks for: each distinct chunk of the manifest that it does
/// not already hold (`held` says whether it does, once per distinct chunk). Zero chunks
/// are not in a manifest, so they never travel.
pub(crate) fn chunks_to_ask(
    manifest: &Manifest,
    mut held: impl FnMut(ChunkHash) -> bool,
) -> Vec<ChunkHash> {
    let mut seen = HashSet::with_capacity(manifest.chunks.len());
    manifest
        .chunks
        .iter()
        .map(|c| c.hash)
        .filter(|&hash| seen.insert(hash) && !held(hash))
        .collect()
}

/// Receives the rest of the transfer that `begin` opened on `link` (the state machine has
/// accepted the StateBegin), checking everything on the way. On failure the sender has
/// been told with an Error frame naming the worker, and nothing was created.
pub(crate) async fn receive_state<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    begin: Begin,
    ctx: &ReceiveContext<'_>,
) -> Result<Arrived, ReceiveStateError> {
    match receive_any(link, begin, ctx, None).await? {
        Received::Arrived(arrived) => Ok(arrived),
        Received::Resumed { .. } => unreachable!("no worker resumes without a hosting"),
    }
}

/// What a transfer that may run post-copy ended with.
pub(crate) enum Received {
    /// Every body arrived before the worker ran: restore and host it.
    Arrived(Arrived),
    /// The worker was restored post-copy and hosted during the transfer (StateResumed
    /// sent); every body has arrived since. Send StateAdopted.
    Resumed {
        /// The last message its state had handled.
        last_seq: u64,
        /// The bodies of its state, for the chunk store.
        bodies: Vec<ChunkBody>,
    },
}

/// As [`receive_state`], but when the sender says the state is final (StateResumable,
/// version 4) and userfaultfd is available, the worker is restored post-copy and hosted in
/// `hosting` as soon as the module is in: StateResumed goes out, chunks its code touches
/// are asked for with ChunkWant, and the rest streams in behind. If the transfer fails
/// after that, the worker's state is lost: its next message fails with `StateLost`, which
/// tells its client to recover it.
pub(crate) async fn receive_resumable<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    begin: Begin,
    ctx: &ReceiveContext<'_>,
    hosting: &Arc<Hosting>,
) -> Result<Received, ReceiveStateError> {
    receive_any(link, begin, ctx, Some(hosting)).await
}

async fn receive_any<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    begin: Begin,
    ctx: &ReceiveContext<'_>,
    hosting: Option<&Arc<Hosting>>,
) -> Result<Received, ReceiveStateError> {
    let worker = begin.worker;
    let mut pager = None;
    let result = receive_inner(link, begin, ctx, hosting, &mut pager).await;
    if let (Err(e), Some(pager)) = (&result, &pager) {
        tracing::warn!("worker {worker:032x} ran post-copy and its state is lost: {e}");
        pager.abandon(&format!("its transfer failed: {e}"));
    }
    if let Err(e) = &result {
        tracing::info!("refusing the state of worker {worker:032x}: {e}");
        if e.needs_answer() {
            let _ = link
                .send(Frame::Error {
                    code: e.code(),
                    worker: Some(worker),
                    message: e.to_string(),
                })
                .await;
        }
    }
    result
}

/// The worker of a transfer that runs post-copy.
struct Running {
    pager: Pager,
    /// Chunks its code touched that have not arrived, from the runtime's fault thread.
    wants: mpsc::UnboundedReceiver<ChunkHash>,
    last_seq: u64,
    /// Installs the bodies that were here before it ran, behind it (see [`resume`]).
    filling: Option<tokio::task::JoinHandle<()>>,
}

/// At most this many bytes of memory are filled before a post-copy worker runs: the
/// chunks of the newest round (the ones it wrote last). The other bodies already here
/// are installed behind it, each one it touches first; filling hundreds of MiB takes a
/// second or more (a 256 MiB worker whose last round was empty paused 0.9 s for it).
const RESUME_FILL_BYTES: u64 = 4 << 20;

/// The chunk bodies a receiver holds, by hash: shared with the task that installs them
/// behind a post-copy worker.
type Bodies = HashMap<ChunkHash, Arc<ChunkBody>>;

/// Installs the body of `hash` in the running worker's memory at once if it is one held
/// here (one the worker touched before the task filling them in reached it).
fn supply_held(run: &Running, bodies: &Bodies, hash: &ChunkHash) -> Result<(), ReceiveStateError> {
    if let Some(body) = bodies.get(hash) {
        run.pager
            .supply(body)
            .map_err(|e| ReceiveStateError::PostCopy(e.to_string()))?;
    }
    Ok(())
}

/// The next chunk the running worker waits for; never, when none runs.
async fn next_want(running: &mut Option<Running>) -> Option<ChunkHash> {
    match running {
        Some(running) => running.wants.recv().await,
        None => std::future::pending().await,
    }
}

/// Loads module bytes (a compile, or the engine's cache) and checks the result names the
/// module StateBegin named.
async fn load_module(
    runtime: &Runtime,
    bytes: Vec<u8>,
    expected: &ModuleHash,
) -> Result<Arc<WorkerModule>, ReceiveStateError> {
    let runtime = runtime.clone();
    let module = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| ReceiveStateError::Cache(e.to_string()))??;
    if module.hash() != expected {
        // Only bytes that were not prepared hash differently once prepared.
        return Err(ReceiveStateError::ModuleMismatch {
            expected: hex::encode(expected),
            found: hex::encode(module.hash()),
        });
    }
    Ok(module)
}

/// Restores the worker post-copy from the bodies at hand and hosts it. `Ok(None)` when
/// post-copy is not available here: the transfer goes on and restores eagerly.
///
/// The bodies of `newest` (the chunks of the last manifest that the ones before it lacked)
/// go in first, up to [`RESUME_FILL_BYTES`]; the worker then runs, and a task installs the
/// other bodies at hand behind it.
async fn resume(
    hosting: &Arc<Hosting>,
    begin: &Begin,
    module: Arc<WorkerModule>,
    manifest: &Manifest,
    bodies: &Bodies,
    newest: &HashSet<ChunkHash>,
) -> Result<Option<Running>, ReceiveStateError> {
    if let Err(why) = roam_runtime::post_copy_available() {
        tracing::info!(
            "post-copy is not available here ({why}): the worker runs once every chunk is in"
        );
        return Ok(None);
    }
    let used: HashSet<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
    // The bodies installed behind the worker are shared with the transfer, not copied:
    // for a large worker that is most of its memory.
    let (mut hot, mut later): (Vec<ChunkBody>, Vec<Arc<ChunkBody>>) = (Vec::new(), Vec::new());
    let mut filled = 0u64;
    for body in bodies.values().filter(|b| used.contains(&b.hash())) {
        if newest.contains(&body.hash()) && filled < RESUME_FILL_BYTES {
            filled += u64::from(body.raw_len());
            hot.push(ChunkBody::clone(body));
        } else {
            later.push(Arc::clone(body));
        }
    }
    let (wanted, wants) = mpsc::unbounded_channel();
    let runtime = hosting.runtime().clone();
    let (restore_module, manifest) = (module.clone(), manifest.clone());
    let restored = tokio::task::spawn_blocking(move || {
        runtime.restore_post_copy(&restore_module, &manifest, &hot, move |hash| {
            let _ = wanted.send(hash);
        })
    })
    .await
    .map_err(|e| ReceiveStateError::Cache(e.to_string()))?;
    let (restored, pager) = match restored {
        Ok(pair) => pair,
        Err(PostCopyRestoreError::Unavailable(why)) => {
            tracing::info!(
                "post-copy is not available here ({why}): the worker runs once every chunk is in"
            );
            return Ok(None);
        }
        Err(e) => return Err(ReceiveStateError::PostCopy(e.to_string())),
    };
    let last_seq = hosting
        .adopt_running(begin.worker, begin.owner, module, restored)
        .map_err(ReceiveStateError::Host)?;
    let filler = pager.clone();
    let filling = (!later.is_empty()).then(|| {
        tokio::task::spawn_blocking(move || {
            for body in &later {
                if let Err(e) = filler.supply(body) {
                    filler.abandon(&format!("a chunk received earlier does not fit: {e}"));
                    return;
                }
            }
        })
    });
    Ok(Some(Running {
        pager,
        wants,
        last_seq,
        filling,
    }))
}

async fn receive_inner<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    begin: Begin,
    ctx: &ReceiveContext<'_>,
    hosting: Option<&Arc<Hosting>>,
    pager: &mut Option<Pager>,
) -> Result<Received, ReceiveStateError> {
    let worker = begin.worker;
    if let Some((key, own_url)) = ctx.token {
        let token = begin
            .token
            .as_ref()
            .ok_or(ReceiveStateError::MissingToken(worker))?;
        token.verify(key, worker, own_url, now_unix_ms())?;
    }
    let limits = DecodeLimits {
        max_encoded_len: u64::from(ctx.frame_limits.max_frame),
        max_memory_size: ctx.runtime.config().limits.max_memory,
        ..DecodeLimits::default()
    };
    let decode_manifest = |bytes: &[u8]| {
        let manifest = Manifest::decode(bytes, &limits).map_err(|e| match e {
            DecodeSnapshotError::MemoryTooLarge { .. } | DecodeSnapshotError::TooLarge { .. } => {
                ReceiveStateError::OverCap(e)
            }
            e => ReceiveStateError::Manifest(e),
        })?;
        if manifest.module_hash != begin.module_hash {
            return Err(ReceiveStateError::ManifestModule {
                manifest: hex::encode(manifest.module_hash),
                begin: hex::encode(begin.module_hash),
            });
        }
        Ok(manifest)
    };
    let mut manifest = decode_manifest(&begin.manifest)?;
    let mut module_bytes = ctx.cache.get(&begin.module_hash);
    let need_module = module_bytes.is_none();
    // Module bytes are gathered in memory before they are checked: refuse a length no
    // worker module may have before asking for any of them.
    if need_module && begin.module_len as usize > roam_prepare::DEFAULT_MAX_MODULE_SIZE {
        return Err(ReceiveStateError::ModuleTooLarge {
            len: begin.module_len,
            limit: roam_prepare::DEFAULT_MAX_MODULE_SIZE,
        });
    }
    if let Some(bytes) = &module_bytes {
        // The chunks of the module's data segments need not travel.
        ctx.chunks.put_module(&begin.module_hash, bytes);
    }
    // Bodies this node holds are taken out of the store now, so that evictions during the
    // transfer cannot lose them.
    let mut bodies: Bodies = HashMap::new();
    let chunks = chunks_to_ask(&manifest, |hash| match ctx.chunks.get(hash) {
        Some(body) => {
            bodies.insert(hash, Arc::new(body));
            true
        }
        None => false,
    });
    ctx.metrics.chunks_reused(bodies.len());
    link.send(Frame::StateNeed {
        worker,
        module: need_module,
        chunks,
    })
    .await?;
    // The chunks the newest manifest brought: what the worker wrote last.
    let mut newest: HashSet<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();

    let mut received_module = Vec::new();
    // Post-copy: whether the sender said the state is final, and the worker once it runs.
    let mut resumable = false;
    let mut running: Option<Running> = None;
    loop {
        if resumable && running.is_none() {
            if let (Some(hosting), Some(bytes)) = (hosting, &module_bytes) {
                if let Err(why) = roam_runtime::post_copy_available() {
                    tracing::info!("post-copy is not available here ({why}): the worker runs once every chunk is in");
                    resumable = false;
                    continue;
                }
                let module = load_module(ctx.runtime, bytes.clone(), &begin.module_hash).await?;
                running = resume(hosting, &begin, module, &manifest, &bodies, &newest).await?;
                resumable = false;
                if let Some(run) = &running {
                    *pager = Some(run.pager.clone());
                    tracing::info!(
                        last_seq = run.last_seq,
                        missing = run.pager.missing().len(),
                        "the worker runs post-copy"
                    );
                    link.send(Frame::StateResumed {
                        worker,
                        last_seq: run.last_seq,
                    })
                    .await?;
                }
            }
        }
        let frame = tokio::select! {
            biased;
            Some(first) = next_want(&mut running) => {
                let run = running.as_mut().expect("a want comes from a running worker");
                let mut chunks = vec![first];
                while let Ok(hash) = run.wants.try_recv() {
                    chunks.push(hash);
                }
                // One already here (installed behind the worker) goes in now.
                for hash in &chunks {
                    supply_held(run, &bodies, hash)?;
                }
                chunks.retain(|hash| !bodies.contains_key(hash));
                // Until StateEnd (which ends this loop) bodies are due: a want is valid.
                if !chunks.is_empty() {
                    link.send(Frame::ChunkWant { worker, chunks }).await?;
                }
                continue;
            }
            frame = tokio::time::timeout(PEER_TIMEOUT, link.next_frame()) => frame
                .map_err(|_| ReceiveStateError::Timeout(PEER_TIMEOUT))??,
        };
        match link.machine.on_frame(&frame) {
            Ok(Event::ModuleData {
                bytes, complete, ..
            }) => {
                received_module.extend_from_slice(bytes);
                if complete {
                    let found: ModuleHash = Sha256::digest(&received_module).into();
                    if found != begin.module_hash {
                        return Err(ReceiveStateError::ModuleMismatch {
                            expected: hex::encode(begin.module_hash),
                            found: hex::encode(found),
                        });
                    }
                    ctx.cache
                        .put(&found, &received_module)
                        .map_err(|e| ReceiveStateError::Cache(e.to_string()))?;
                    module_bytes = Some(std::mem::take(&mut received_module));
                }
            }
            Ok(Event::ChunkData { bodies: data, .. }) => {
                for encoded in data {
                    let body = ChunkBody::decode(encoded).map_err(ReceiveStateError::Chunk)?;
                    if let Some(run) = &running {
                        run.pager
                            .supply(&body)
                            .map_err(|e| ReceiveStateError::PostCopy(e.to_string()))?;
                    }
                    bodies.insert(body.hash(), Arc::new(body));
                }
            }
            Ok(Event::StateResumable { .. }) => resumable = true,
            Ok(Event::StateRound {
                bodies: announced,
                manifest: bytes,
                ..
            }) => {
                let next = decode_manifest(bytes)?;
                // The chunks whose bodies are not here. Up to version 7 a round follows
                // every body of the one before, so these are also the chunks no earlier
                // manifest held; from version 8 a round may end the one before early,
                // and the bodies it did not send are due again if still used.
                let fresh: HashSet<ChunkHash> = next
                    .chunks
                    .iter()
                    .map(|c| c.hash)
                    .filter(|h| !bodies.contains_key(h))
                    .collect();
                if fresh.len() != announced as usize {
                    return Err(ReceiveStateError::RoundCount {
                        announced,
                        found: fresh.len(),
                    });
                }
                newest = fresh;
                manifest = next;
            }
            Ok(Event::TransferComplete { .. }) => break,
            Ok(Event::Ping { nonce }) => link.send(Frame::Pong { nonce }).await?,
            Ok(Event::PeerError {
                code,
                message,
                worker: w,
            }) if w.is_none() || w == Some(worker) => {
                return Err(ReceiveStateError::Abandoned {
                    code,
                    message: message.to_owned(),
                })
            }
            Ok(Event::Goodbye { reason }) => {
                return Err(ReceiveStateError::Abandoned {
                    code: ErrorCode::ShuttingDown,
                    message: reason.to_owned(),
                })
            }
            Ok(_) => {}
            Err(refusal) => {
                link.refuse(&refusal).await?;
                if link.machine.is_ready() || link.machine.is_closed() {
                    return Err(ReceiveStateError::Protocol(refusal));
                }
            }
        }
    }
    // Every body was sent before StateEnd, so the memory is complete once the ones that
    // were here before the worker ran are in; meanwhile a chunk the worker touches goes
    // in at once.
    if let Some(run) = running.as_mut() {
        if let Some(filling) = run.filling.take() {
            tokio::pin!(filling);
            loop {
                tokio::select! {
                    done = &mut filling => {
                        done.map_err(|e| ReceiveStateError::Cache(e.to_string()))?;
                        break;
                    }
                    Some(hash) = run.wants.recv() => {
                        supply_held(run, &bodies, &hash)?;
                    }
                }
            }
        }
    }
    let used: HashSet<ChunkHash> = manifest.chunks.iter().map(|c| c.hash).collect();
    // The task filling the worker's memory has ended, and with it its share of the bodies.
    let bodies: Vec<ChunkBody> = bodies
        .into_values()
        .filter(|b| used.contains(&b.hash()))
        .map(|b| Arc::try_unwrap(b).unwrap_or_else(|shared| ChunkBody::clone(&shared)))
        .collect();
    if let Some(run) = running {
        let check = run.pager.clone();
        tokio::task::spawn_blocking(move || check.wait_complete(Duration::from_secs(5)))
            .await
            .map_err(|e| ReceiveStateError::Cache(e.to_string()))?
            .map_err(|e| ReceiveStateError::PostCopy(e.to_string()))?;
        let stats = run.pager.stats();
        tracing::info!(?stats, "the worker's memory is complete");
        ctx.metrics.observe_post_copy(stats.requests);
        return Ok(Received::Resumed {
            last_seq: run.last_seq,
            bodies,
        });
    }
    let module_bytes = match module_bytes {
        Some(bytes) => bytes,
        // The module was asked for and the state machine saw all of it; an empty module
        // (length 0) never completes a piece.
        None => received_module,
    };
    let snapshot = Snapshot::from_parts(manifest, bodies).map_err(ReceiveStateError::Parts)?;
    let module = load_module(ctx.runtime, module_bytes, &begin.module_hash).await?;
    Ok(Received::Arrived(Arrived {
        owner: begin.owner,
        module,
        snapshot,
    }))
}
