//! Pre-copy: sending a worker that keeps running while its state travels.
//!
//! Round 0 is an ordinary transfer (StateBegin → StateNeed → the module and chunks asked
//! for) while the worker goes on handling messages. With a version 8 receiver, a probe
//! comes first (a chunk map, then a few of the worker's messages): the chunks those
//! messages rewrote are left out of round 0, which would only send them to be superseded,
//! and go in a later round. Each later round captures the worker
//! between two messages, hashing every chunk but compressing only the ones the receiver
//! does not hold yet, and pushes them behind a StateRound (protocol version 2); a Ping
//! after each round times its delivery, which gives the link's bandwidth. The rounds stop
//! when the chunks changed since the last one would cross the link within the downtime
//! target, when they stop shrinking, or after `max_rounds`. Then the worker stops taking
//! messages (Posts wait, and the client replays them at the destination), the last delta
//! goes out with StateEnd, and the destination restores and answers StateAdopted. The
//! worker is unavailable only during that last round. Every capture goes ahead of the
//! messages the worker's thread has queued, so no round waits for a backlog; messages
//! queued and not begun when it paused wait with the later ones (the client replays them
//! all at the destination).
//!
//! ```mermaid
//! sequenceDiagram
//!     participant S as source (worker runs)
//!     participant D as destination
//!     S->>D: StateBegin(manifest 0)
//!     D->>S: StateNeed(chunks it lacks)
//!     S->>D: ModuleData*, ChunkData*, Ping
//!     D->>S: Pong
//!     loop while the delta shrinks and is over the downtime target
//!         S->>D: StateRound(manifest k, n), ChunkData(n bodies), Ping
//!         D->>S: Pong
//!     end
//!     Note over S: worker paused
//!     S->>D: StateRound(final manifest, n), ChunkData, StateEnd
//!     D->>S: StateAdopted(last_seq)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roam_proto::{ChunkHash, ErrorCode, Event, Frame, MoveToken, WorkerId};
use roam_runtime::{Delta, WorkerModule};
use roam_snapshot::ChunkBody;

use crate::chunks::ChunkStore;
use crate::hosting::{BeginMoveError, Compress, Hosted, Hosting};
use crate::link::{Link, Machine, Wire};
use crate::transfer::{
    next_frame, refuse_unknown_chunk, SendStateError, CHUNK_BATCH, MODULE_PIECE,
};

/// How pre-copy decides when to stop.
#[derive(Debug, Clone, Copy)]
pub struct PrecopySettings {
    /// The longest the worker should be paused: the last round's bytes over the
    /// bandwidth measured must fit in it. Default 20 ms.
    pub downtime_target: Duration,
    /// Most rounds after the first; 0 sends the state once with the worker paused
    /// (stop-and-copy). Default 8.
    pub max_rounds: u32,
    /// Whether the paused part of a move may go post-copy. Default [`PostCopyUse::Auto`].
    pub post_copy: PostCopyUse,
    /// Whether round 0 may leave out the chunks the worker keeps rewriting (with a
    /// version 8 receiver, after a probe). Default true. Its first round is then no whole
    /// state: a return to a client, which keeps that round as a copy to recover from,
    /// sends it whole.
    pub hold_back: bool,
}

impl Default for PrecopySettings {
    fn default() -> Self {
        PrecopySettings {
            downtime_target: Duration::from_millis(20),
            max_rounds: 8,
            post_copy: PostCopyUse::Auto,
            hold_back: true,
        }
    }
}

/// When a move sends the part of the state that changed while the worker was paused
/// *post-copy*: the destination runs the worker at once and fetches what it touches.
/// Only with a destination that speaks version 4; one without userfaultfd waits for every
/// body anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostCopyUse {
    /// When the paused part would take longer than the downtime target to cross, or the
    /// worker's memory longer to fill at the receiver.
    #[default]
    Auto,
    /// Never: the destination runs the worker once every body is in.
    Never,
    /// Always, whatever the sizes.
    Always,
}

/// The paused part of a move goes post-copy: `paused` bytes still to send, over a link
/// that carried `bandwidth` bytes per second in the rounds before (0 when none was timed:
/// the state went in one paused round), for a worker of `memory` bytes in non-zero chunks,
/// which a receiver restoring eagerly fills before it runs the worker.
///
/// Measured (`bench paper`, physics, one run each): a warm handoff A → B in one paused
/// round stalled the application 298 ms post-copy against 371–396 ms without, although
/// each step of that worker rewrites a third of its pages; the 1 GiB handoff of the memory
/// sweep stalled 4.9 s against 9.1–9.7 s. Hence no further condition on the size.
pub(crate) fn choose_post_copy(
    settings: &PrecopySettings,
    paused: u64,
    bandwidth: f64,
    memory: u64,
) -> bool {
    match settings.post_copy {
        PostCopyUse::Never => false,
        PostCopyUse::Always => true,
        PostCopyUse::Auto => {
            // Without a timed round, a slow device link (10 Mbit/s) is assumed.
            let bandwidth = if bandwidth > 0.0 { bandwidth } else { 1.25e6 };
            let sending = Duration::from_secs_f64(paused as f64 / bandwidth);
            let filling = Duration::from_secs_f64(memory as f64 / FILL_BYTES_PER_SECOND);
            sending.max(filling) > settings.downtime_target
        }
    }
}

/// The bytes of memory a receiver fills for `manifest`: its non-zero chunks.
fn filled(manifest: &roam_snapshot::Manifest) -> u64 {
    manifest.chunks.len() as u64 * u64::from(manifest.chunk_size)
}

/// How fast a receiver fills a worker's memory from the bodies it holds (decompress, copy
/// in), about: `bench paper`'s sweep filled 256 MiB in 0.9 s and 1 GiB in 5.3 s here.
/// A post-copy receiver runs the worker first and fills behind it.
const FILL_BYTES_PER_SECOND: f64 = 256e6;

/// What a pre-copy did, for logs and metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrecopyReport {
    /// Rounds sent while the worker ran (the first included).
    pub rounds: u32,
    /// Chunk-body bytes sent while the worker ran.
    pub live_bytes: u64,
    /// Chunk-body bytes sent while it was paused.
    pub paused_bytes: u64,
    /// From the pause to StateAdopted.
    pub paused: Duration,
    /// The bandwidth measured, bytes per second (0 when no round was timed).
    pub bandwidth: f64,
    /// Whether the paused part went post-copy.
    pub post_copy: bool,
    /// Chunks left out of round 0 because the worker rewrote them while the probe watched.
    pub held_back: usize,
}

/// Why a pre-copy failed. The worker resumes here in every case.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrecopyError {
    /// {0}
    #[error("{0}")]
    Capture(#[from] BeginMoveError),
    /// {0}
    #[error("{0}")]
    Send(#[from] SendStateError),
}

impl PrecopyError {
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            PrecopyError::Capture(BeginMoveError::AlreadyMoving(_)) => ErrorCode::Busy,
            PrecopyError::Capture(BeginMoveError::UnknownWorker(_)) => ErrorCode::UnknownWorker,
            PrecopyError::Capture(BeginMoveError::Capture(..)) => ErrorCode::WorkerFailed,
            PrecopyError::Send(e) => e.code(),
        }
    }
}

/// The worker a pre-copy sends, and where its state goes once sent.
pub(crate) struct Live<'a> {
    pub hosting: &'a Hosting,
    pub worker: WorkerId,
    /// Where the bodies sent are kept, for later deltas (a worker that comes back).
    pub chunks: &'a ChunkStore,
}

/// Sends a hosted, running worker on `link` (whose state machine may send StateBegin
/// now) in pre-copy rounds and waits for StateAdopted: returns the receiver's `last_seq`.
/// On success the worker is paused and its state adopted; the caller drops it
/// (`end_move(worker, true)`). On failure the caller resumes it (`end_move(worker, false)`).
pub(crate) async fn send_live<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    live: &Live<'_>,
    token: Option<MoveToken>,
    settings: &PrecopySettings,
    on_resumed: &mut (dyn FnMut(u64) + Send),
) -> Result<(u64, PrecopyReport), PrecopyError> {
    let worker = live.worker;
    let hosted = live.hosting.begin_precopy(worker).await?;
    let module = hosted.module.clone();
    // Version 1 peers know no StateRound: they get the state in one paused round.
    let max_rounds = if link.machine.version().is_some_and(|v| v >= 2) {
        settings.max_rounds
    } else {
        0
    };
    if max_rounds == 0 && settings.max_rounds > 0 {
        tracing::debug!("the worker is sent in one paused round: the peer speaks version 1");
    }
    let mut report = PrecopyReport::default();
    let mut known: HashSet<ChunkHash> = HashSet::new();

    // Round 0: the state, the worker running unless no round is allowed. With a receiver
    // that lets a round end the one before early (version 8), the chunks the worker
    // rewrites while the probe watches are not compressed, and not sent if the receiver
    // lacks them: they would change again while round 0 crosses, and go in a later round.
    let stable =
        if settings.hold_back && max_rounds > 0 && link.machine.version().is_some_and(|v| v >= 8) {
            probe(live, &hosted).await?
        } else {
            None
        };
    let compress = match &stable {
        Some(stable) => Compress::Stable(stable.clone()),
        None => Compress::Unknown(Arc::new(HashSet::new())),
    };
    let first = live
        .hosting
        .capture_round(worker, &hosted, compress, max_rounds == 0)
        .await?;
    let paused_at = (max_rounds == 0).then(Instant::now);
    link.send(Frame::StateBegin {
        worker,
        module_hash: *module.hash(),
        module_len: module.bytes().len() as u32,
        owner: hosted.owner,
        token,
        manifest: first.manifest.encode(),
    })
    .await
    .map_err(SendStateError::from)?;
    let (need_module, need) = match await_answer(link, worker).await? {
        Answer::Need { module, chunks } => (module, chunks),
        other => return Err(other.unexpected("StateNeed").into()),
    };
    let started = Instant::now();
    let mut module_bytes = 0;
    if need_module {
        send_module(link, &module).await?;
        module_bytes = module.bytes().len() as u64;
    }
    let bodies: HashMap<ChunkHash, &ChunkBody> =
        first.bodies.iter().map(|b| (b.hash(), b)).collect();
    let mut wanted = Vec::with_capacity(need.len());
    // The chunks the receiver lacks and does not get in round 0.
    let mut held_back: HashSet<ChunkHash> = HashSet::new();
    for hash in &need {
        match bodies.get(hash) {
            Some(body) => wanted.push(*body),
            None if stable.is_some() => {
                held_back.insert(*hash);
            }
            None => return Err(SendStateError::UnknownChunk(*hash).into()),
        }
    }
    report.held_back = held_back.len();
    if stable.is_some() {
        tracing::debug!(
            held_back = held_back.len(),
            sent = wanted.len(),
            "round 0 leaves out the chunks the worker keeps rewriting"
        );
    }
    if let Some(paused_at) = paused_at {
        let wanted_bytes: u64 = wanted.iter().map(|b| b.encoded_len() as u64).sum();
        let post_copy = peer_post_copy(link)
            && choose_post_copy(settings, wanted_bytes, 0.0, filled(&first.manifest));
        report.paused_bytes = if post_copy {
            report.post_copy = true;
            send_resumable(link, worker, wanted, on_resumed).await?
        } else {
            send_bodies(link, worker, wanted.iter().copied()).await?
        };
        live.chunks.put(&first.bodies);
        let last_seq = finish(link, worker, on_resumed).await?;
        report.paused = paused_at.elapsed();
        return Ok((last_seq, report));
    }
    let bytes = send_bodies(link, worker, wanted.iter().copied()).await?;
    live.chunks.put(&first.bodies);
    // What the receiver holds: it had or was sent every chunk of manifest 0 but those.
    known.extend(
        first
            .manifest
            .chunks
            .iter()
            .map(|c| c.hash)
            .filter(|h| !held_back.contains(h)),
    );
    let cold_chunks = wanted.len();
    let mut manifest_len = first.manifest.encoded_len() as u64;
    drop(first);
    report.rounds = 1;
    report.live_bytes = bytes;
    let mut bandwidth =
        timed_delivery(link, worker, module_bytes + bytes + manifest_len, started).await?;
    let mut previous = bytes;
    // The last delta captured, when the rounds stop before sending it.
    let mut unsent: Option<Delta> = None;
    // A worker that rewrites more of its memory than it leaves alone cannot send less in
    // a later round than what it rewrites: the rounds would not shrink, and each would
    // capture (and compress) it all again. It pauses now.
    let rounds = if report.held_back > 0 && report.held_back >= cold_chunks {
        tracing::debug!(
            held_back = report.held_back,
            cold_chunks,
            "no more rounds: the worker rewrites more chunks than it leaves alone"
        );
        0
    } else {
        max_rounds
    };

    for round in 1..=rounds {
        let delta = live
            .hosting
            .capture_round(
                worker,
                &hosted,
                Compress::Unknown(Arc::new(known.clone())),
                false,
            )
            .await?;
        let delta_bytes: u64 = delta.bodies.iter().map(|b| b.encoded_len() as u64).sum();
        let estimate = Duration::from_secs_f64(delta_bytes as f64 / bandwidth.max(1.0));
        let fits = estimate <= settings.downtime_target;
        // The first delta holds the chunks round 0 left out, which it did not send: it
        // shrinks only if it is smaller than those too.
        let held_back = if round == 1 { report.held_back } else { 0 };
        let shrinking = delta_bytes < previous - previous / 10
            && (held_back == 0 || delta.bodies.len() < held_back - held_back / 10);
        tracing::debug!(
            round,
            delta_bytes,
            ?estimate,
            bandwidth,
            "pre-copy round captured"
        );
        if fits || !shrinking || round == rounds {
            // The paused capture below supersedes this delta, and takes its bodies.
            unsent = Some(delta);
            break;
        }
        manifest_len = delta.manifest.encoded_len() as u64;
        let started = Instant::now();
        let sent = send_round(link, worker, &delta).await?;
        live.chunks.put(&delta.bodies);
        known.extend(delta.manifest.chunks.iter().map(|c| c.hash));
        bandwidth = timed_delivery(link, worker, sent + manifest_len, started).await?;
        report.rounds += 1;
        report.live_bytes += sent;
        previous = sent;
    }
    // The last round: the worker stops taking messages, and what changed since the last
    // round sent goes out with StateEnd.
    let paused_at = Instant::now();
    let delta = paused_round(live, &hosted, known, unsent).await?;
    let delta_bytes: u64 = delta.bodies.iter().map(|b| b.encoded_len() as u64).sum();
    let post_copy = peer_post_copy(link)
        && choose_post_copy(settings, delta_bytes, bandwidth, filled(&delta.manifest));
    report.paused_bytes = if post_copy {
        report.post_copy = true;
        link.send(Frame::StateRound {
            worker,
            bodies: delta.bodies.len() as u32,
            manifest: delta.manifest.encode(),
        })
        .await
        .map_err(SendStateError::from)?;
        send_resumable(link, worker, delta.bodies.iter().collect(), on_resumed).await?
    } else {
        send_round(link, worker, &delta).await?
    };
    live.chunks.put(&delta.bodies);
    let last_seq = finish(link, worker, on_resumed).await?;
    report.paused = paused_at.elapsed();
    report.bandwidth = bandwidth;
    Ok((last_seq, report))
}

/// Watching a worker before round 0: a chunk map (hashes only, nothing compressed), then
/// the messages of a short while. Returns the hashes of that map, to keep only the chunks
/// still holding them in round 0 (see [`Compress::Stable`]); `None` when the worker is
/// idle (it rewrites nothing), or its messages are long (the capture after the probe would
/// wait a whole message more).
async fn probe(
    live: &Live<'_>,
    hosted: &Hosted,
) -> Result<Option<Arc<HashSet<ChunkHash>>>, PrecopyError> {
    let pace = hosted.pace();
    let idle = pace.queued == 0 && pace.since_last.is_none_or(|s| s > PROBE_IDLE);
    if idle || pace.last_took > PROBE_LONGEST_MESSAGE {
        return Ok(None);
    }
    let map = live
        .hosting
        .capture_round(live.worker, hosted, Compress::Nothing, false)
        .await?;
    let start = hosted.pace().handled;
    let window = (pace.last_took * 2).max(PROBE_WINDOW);
    let began = Instant::now();
    loop {
        let now = hosted.pace();
        let waited = began.elapsed();
        let seen = now.handled - start;
        if seen >= PROBE_MESSAGES || (seen > 0 && waited >= window) || waited >= PROBE_LONGEST {
            tracing::debug!(
                messages = seen,
                ?waited,
                "probe: the worker's chunk map, and its messages for a while"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(Some(Arc::new(
        map.manifest.chunks.iter().map(|c| c.hash).collect(),
    )))
}

/// A worker with no message queued whose last one ended longer ago than this is idle.
/// Its client may be about to post again: a handoff's first messages reach the source a
/// few milliseconds after it began.
const PROBE_IDLE: Duration = Duration::from_millis(500);
/// A worker whose messages take longer than this is not probed.
const PROBE_LONGEST_MESSAGE: Duration = Duration::from_millis(100);
/// The probe watches [`PROBE_MESSAGES`] messages, or at least one for [`PROBE_WINDOW`]
/// (or two of the worker's messages, if longer), or [`PROBE_LONGEST`] for a worker that
/// handles none: whichever comes first. One message of the physics worker rewrites a
/// quarter of its memory, four about half, the whole of a pre-copy round (30 and more)
/// about four fifths (`examples/dirty_profile.rs`).
const PROBE_MESSAGES: u64 = 4;
const PROBE_LONGEST: Duration = Duration::from_millis(100);
const PROBE_WINDOW: Duration = Duration::from_millis(40);

/// The paused capture that ends the rounds: the chunks the receiver lacks of the state
/// as it stands, the receiver holding `known`. The bodies of `unsent` (the delta captured
/// last, which did not go out) stand for every chunk that has not changed since, so only
/// what changed after it is compressed while the worker waits: a worker that rewrites its
/// memory faster than the link carries it stops its rounds with a delta nearly as large
/// as its state, and compressing that twice would pause it twice as long.
async fn paused_round(
    live: &Live<'_>,
    hosted: &Hosted,
    known: HashSet<ChunkHash>,
    unsent: Option<Delta>,
) -> Result<Delta, PrecopyError> {
    let Some(unsent) = unsent else {
        return Ok(live
            .hosting
            .capture_round(
                live.worker,
                hosted,
                Compress::Unknown(Arc::new(known)),
                true,
            )
            .await?);
    };
    let mut skip = known.clone();
    skip.extend(unsent.bodies.iter().map(ChunkBody::hash));
    let mut delta = live
        .hosting
        .capture_round(live.worker, hosted, Compress::Unknown(Arc::new(skip)), true)
        .await?;
    let captured: HashSet<ChunkHash> = delta.bodies.iter().map(ChunkBody::hash).collect();
    let lacking: HashSet<ChunkHash> = delta
        .manifest
        .chunks
        .iter()
        .map(|c| c.hash)
        .filter(|h| !known.contains(h) && !captured.contains(h))
        .collect();
    delta.bodies.extend(
        unsent
            .bodies
            .into_iter()
            .filter(|b| lacking.contains(&b.hash())),
    );
    delta.bodies.sort_unstable_by_key(ChunkBody::hash);
    delta.bodies.dedup_by_key(|b| b.hash());
    Ok(delta)
}

/// Sends a StateRound and the bodies it announces; returns the bodies' bytes.
async fn send_round<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    delta: &Delta,
) -> Result<u64, SendStateError> {
    link.send(Frame::StateRound {
        worker,
        bodies: delta.bodies.len() as u32,
        manifest: delta.manifest.encode(),
    })
    .await?;
    send_bodies(link, worker, delta.bodies.iter()).await
}

/// Sends StateEnd and waits for StateAdopted. A StateResumed on the way is passed to
/// `on_resumed`; ChunkWants are late (every body has been sent) and ignored.
async fn finish<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    on_resumed: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, SendStateError> {
    link.send(Frame::StateEnd { worker }).await?;
    loop {
        match await_answer(link, worker).await? {
            Answer::Adopted { last_seq } => return Ok(last_seq),
            Answer::Resumed { last_seq } => on_resumed(last_seq),
            Answer::Want => {}
            other => return Err(other.unexpected("StateAdopted")),
        }
    }
}

/// Whether the receiver speaks post-copy (version 4).
fn peer_post_copy<W: Wire, M: Machine>(link: &Link<W, M>) -> bool {
    link.machine.version().is_some_and(|v| v >= 4)
}

/// Chunk bodies go out in frames this small while the receiver runs the worker, so that a
/// body it wants waits behind at most one frame here.
const POST_COPY_BATCH: usize = 64 << 10;

/// Post-copy: sends StateResumable, then `bodies` (the ones the receiver still lacks, the
/// order of the manifest or the last round), each body the receiver asks for with ChunkWant ahead of
/// the rest. A StateResumed goes to `on_resumed`. Returns the bodies' encoded bytes.
async fn send_resumable<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    bodies: Vec<&ChunkBody>,
    on_resumed: &mut (dyn FnMut(u64) + Send),
) -> Result<u64, SendStateError> {
    use futures_util::FutureExt;
    link.send(Frame::StateResumable { worker }).await?;
    let by_hash: HashMap<ChunkHash, &ChunkBody> = bodies.iter().map(|b| (b.hash(), *b)).collect();
    let mut queue: std::collections::VecDeque<&ChunkBody> = bodies.into_iter().collect();
    let mut urgent: std::collections::VecDeque<&ChunkBody> = Default::default();
    let mut sent: HashSet<ChunkHash> = HashSet::with_capacity(by_hash.len());
    let (mut total, mut wanted) = (0u64, 0usize);
    loop {
        // Whatever the receiver said meanwhile, without waiting for it.
        while let Some(frame) = link.next_frame().now_or_never() {
            let frame = frame?;
            match link.machine.on_frame(&frame) {
                Ok(Event::ChunkWant { chunks, .. }) => {
                    for hash in chunks {
                        match by_hash.get(hash) {
                            Some(body) if !sent.contains(hash) => urgent.push_back(body),
                            Some(_) => {}
                            None => return Err(refuse_unknown_chunk(link, worker, *hash).await),
                        }
                    }
                }
                Ok(Event::StateResumed { last_seq, .. }) => on_resumed(last_seq),
                Ok(Event::Ping { nonce }) => link.send(Frame::Pong { nonce }).await?,
                Ok(Event::PeerError { code, message, .. }) => {
                    return Err(SendStateError::Refused {
                        worker,
                        code,
                        message: message.to_owned(),
                    })
                }
                Ok(Event::Goodbye { reason }) => {
                    return Err(SendStateError::Left(reason.to_owned()))
                }
                Ok(_) => {}
                Err(refusal) => {
                    link.refuse(&refusal).await?;
                    return Err(refusal.into());
                }
            }
        }
        let mut batch = Vec::new();
        let mut batch_len = 0;
        while batch_len < POST_COPY_BATCH {
            let (body, asked) = match urgent.pop_front() {
                Some(body) => (body, true),
                None => match queue.pop_front() {
                    Some(body) => (body, false),
                    None => break,
                },
            };
            if !sent.insert(body.hash()) {
                continue;
            }
            wanted += usize::from(asked);
            batch_len += body.encoded_len();
            batch.push(body.encode());
        }
        if batch.is_empty() {
            break;
        }
        total += batch_len as u64;
        link.send(Frame::ChunkData {
            worker,
            bodies: batch,
        })
        .await?;
    }
    tracing::debug!(bytes = total, wanted, "post-copy bodies sent");
    Ok(total)
}

/// Pings the receiver after a round and waits for its Pong: everything sent before has
/// arrived. Returns the bandwidth this shows, bytes per second.
async fn timed_delivery<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    bytes: u64,
    started: Instant,
) -> Result<f64, SendStateError> {
    let nonce = started.elapsed().as_nanos() as u64 ^ worker as u64;
    link.send(Frame::Ping { nonce }).await?;
    loop {
        match await_answer(link, worker).await? {
            Answer::Pong { nonce: n } if n == nonce => break,
            Answer::Pong { .. } => {}
            other => return Err(other.unexpected("Pong")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64().max(1e-6);
    Ok(bytes as f64 / elapsed)
}

/// What the receiver of a pre-copy said.
pub(crate) enum Answer {
    Need {
        module: bool,
        chunks: Vec<ChunkHash>,
    },
    Pong {
        nonce: u64,
    },
    Adopted {
        last_seq: u64,
    },
    Resumed {
        last_seq: u64,
    },
    Want,
}

impl Answer {
    pub(crate) fn unexpected(&self, wanted: &str) -> SendStateError {
        let got = match self {
            Answer::Need { .. } => "StateNeed",
            Answer::Pong { .. } => "Pong",
            Answer::Adopted { .. } => "StateAdopted",
            Answer::Resumed { .. } => "StateResumed",
            Answer::Want => "ChunkWant",
        };
        SendStateError::Left(format!("expected {wanted}, the receiver sent {got}"))
    }
}

/// The receiver's next answer; Pings are answered, refusals end the transfer.
pub(crate) async fn await_answer<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
) -> Result<Answer, SendStateError> {
    loop {
        let frame = next_frame(link).await?;
        match link.machine.on_frame(&frame) {
            Ok(Event::StateNeed { module, chunks, .. }) => {
                return Ok(Answer::Need {
                    module,
                    chunks: chunks.to_vec(),
                })
            }
            Ok(Event::StateAdopted { last_seq, .. }) => return Ok(Answer::Adopted { last_seq }),
            Ok(Event::StateResumed { last_seq, .. }) => return Ok(Answer::Resumed { last_seq }),
            Ok(Event::ChunkWant { .. }) => return Ok(Answer::Want),
            Ok(Event::Pong { nonce }) => return Ok(Answer::Pong { nonce }),
            Ok(Event::PeerError {
                worker: Some(w),
                code,
                message,
            }) if w == worker => {
                return Err(SendStateError::Refused {
                    worker,
                    code,
                    message: message.to_owned(),
                })
            }
            Ok(Event::PeerError {
                worker: None,
                code,
                message,
            }) => return Err(SendStateError::Left(format!("{code}: {message}"))),
            Ok(Event::Goodbye { reason }) => return Err(SendStateError::Left(reason.to_owned())),
            Ok(Event::Ping { nonce }) => link.send(Frame::Pong { nonce }).await?,
            Ok(_) => {}
            Err(refusal) => {
                link.refuse(&refusal).await?;
                if link.machine.is_ready() || link.machine.is_closed() {
                    return Err(refusal.into());
                }
            }
        }
    }
}

/// Sends the module's bytes in pieces.
pub(crate) async fn send_module<W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    module: &WorkerModule,
) -> Result<(), SendStateError> {
    for (i, piece) in module.bytes().chunks(MODULE_PIECE).enumerate() {
        link.send(Frame::ModuleData {
            module_hash: *module.hash(),
            offset: (i * MODULE_PIECE) as u32,
            bytes: piece.to_vec(),
        })
        .await?;
    }
    Ok(())
}

/// Sends chunk bodies in ChunkData frames of about [`CHUNK_BATCH`] bytes; returns the
/// bodies' encoded bytes.
pub(crate) async fn send_bodies<'b, W: Wire, M: Machine>(
    link: &mut Link<W, M>,
    worker: WorkerId,
    bodies: impl Iterator<Item = &'b ChunkBody>,
) -> Result<u64, SendStateError> {
    let mut total = 0u64;
    let mut batch = Vec::new();
    let mut batch_len = 0;
    for body in bodies {
        batch_len += body.encoded_len();
        total += body.encoded_len() as u64;
        batch.push(body.encode());
        if batch_len >= CHUNK_BATCH {
            batch_len = 0;
            link.send(Frame::ChunkData {
                worker,
                bodies: std::mem::take(&mut batch),
            })
            .await?;
        }
    }
    if !batch.is_empty() {
        link.send(Frame::ChunkData {
            worker,
            bodies: batch,
        })
        .await?;
    }
    Ok(total)
}
