//! The workers this node hosts: a table keyed by worker id, and one thread per worker.
//!
//! Wasm never runs on the async executor. Each hosted worker lives on its own thread,
//! fed by a channel, so its messages run in order and a long message blocks nobody
//! else. The table is the single place that decides which Posts a worker takes: the next
//! sequence number, never one already taken (a replay) and never one after a gap.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roam_proto::{ChunkHash, ErrorCode, Frame, WorkerId};
use roam_runtime::{
    CaptureError, Delta, Failure, RestoreError, Runtime, Snapshot, Worker, WorkerModule,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::metrics::Metrics;

/// Where a worker's replies go: the outgoing queue of the connection that uses it.
pub(crate) type Sink = mpsc::UnboundedSender<Frame>;

/// The replies a node keeps of the last messages each worker handled: at most this many
/// messages' worth…
const RECENT_MESSAGES: usize = 64;
/// …and at most this many bytes of reply payload (the newest message's are kept even
/// when they alone are more).
const RECENT_BYTES: usize = 8 << 20;

/// The message a Reply or Handled frame answers.
pub(crate) fn reply_seq(frame: &Frame) -> Option<u64> {
    match frame {
        Frame::Reply { seq, .. } | Frame::Handled { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// The replies (Reply frames, then Handled) of the last messages a worker handled, newest
/// last. A client that lost its link to this node may have missed them: a cloud fetching
/// the worker for it (a fallback) takes them along (see [`Hosting::recent_replies`]).
#[derive(Default)]
struct Recent {
    messages: std::collections::VecDeque<(Vec<Frame>, usize)>,
    bytes: usize,
}

impl Recent {
    fn keep(&mut self, frames: &[Frame]) {
        let bytes = frames
            .iter()
            .map(|f| match f {
                Frame::Reply { payload, .. } => payload.len(),
                _ => 0,
            })
            .sum::<usize>();
        self.messages.push_back((frames.to_vec(), bytes));
        self.bytes += bytes;
        while self.messages.len() > RECENT_MESSAGES
            || (self.bytes > RECENT_BYTES && self.messages.len() > 1)
        {
            let (_, gone) = self.messages.pop_front().expect("more than one kept");
            self.bytes -= gone;
        }
    }
}

/// What a worker's thread is asked to do, in order.
enum Command {
    /// Handle one message.
    Deliver {
        seq: u64,
        payload: Vec<u8>,
        /// Send only Handled: the client has the replies (a Replay).
        quiet: bool,
    },
    /// Capture the worker between two messages.
    Capture {
        reply: oneshot::Sender<Result<Snapshot, CaptureError>>,
    },
    /// Capture the worker between two messages, compressing the chunks `compress` picks.
    CaptureDelta {
        compress: Compress,
        reply: oneshot::Sender<Result<Delta, CaptureError>>,
    },
    /// Nothing: wakes the thread to look at its capture lane.
    Wake,
}

/// Which chunks a capture compresses (every chunk is hashed, so its manifest is whole).
#[derive(Clone)]
pub(crate) enum Compress {
    /// Those whose content is not in the set: what changed since the bodies it names.
    Unknown(Arc<HashSet<ChunkHash>>),
    /// Only those whose content is in the set: what has not changed since a capture that
    /// found these hashes.
    Stable(Arc<HashSet<ChunkHash>>),
    /// None: a chunk map only.
    Nothing,
}

impl Compress {
    /// Whether a chunk of content `hash` is left uncompressed.
    fn skips(&self, hash: ChunkHash) -> bool {
        match self {
            Compress::Unknown(known) => known.contains(&hash),
            Compress::Stable(stable) => !stable.contains(&hash),
            Compress::Nothing => true,
        }
    }
}

/// How a worker has been handling its messages lately, for a move deciding how to send it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    /// The last message it handled.
    pub handled: u64,
    /// How long the last message took.
    pub last_took: Duration,
    /// Messages taken and not yet handled (the one running included).
    pub queued: u64,
    /// How long ago the last message ended (`None`: no message yet).
    pub since_last: Option<Duration>,
}

/// One hosted worker.
pub(crate) struct Hosted {
    /// Sha-256 of the worker's secret.
    pub owner: [u8; 32],
    /// The module it runs.
    pub module: Arc<WorkerModule>,
    commands: std_mpsc::Sender<Command>,
    /// Captures, which the thread takes before its next queued message: a pre-copy round
    /// or a checkpoint of a worker with a backlog does not wait for the backlog (the
    /// capture says which message it follows).
    captures: std_mpsc::Sender<Command>,
    sink: Arc<Mutex<Option<Sink>>>,
    /// Kept by the worker's thread, under the sink's lock.
    recent: Arc<Mutex<Recent>>,
    flow: Arc<Mutex<Flow>>,
    /// Told when a move or a checkpoint ends (see [`Hosting::end_move`]).
    freed: Notify,
}

/// Which messages the worker took, and whether it is leaving.
struct Flow {
    /// The last sequence number handed to the worker's thread.
    accepted: u64,
    /// The last message the worker's thread handled.
    handled: u64,
    /// How long it took, and when it ended.
    last_took: Duration,
    last_end: Option<Instant>,
    /// A move is capturing or sending the worker: Posts wait in `held`.
    moving: bool,
    /// A pre-copy runs: the worker still takes messages, but no other move may start.
    precopying: bool,
    /// The pre-copy is a checkpoint's capture (a copy for the client, the worker stays):
    /// a move that begins meanwhile waits for it rather than being refused.
    copying: bool,
    /// Posts taken during a move: delivered if the move fails, dropped if it succeeds
    /// (the client replays them at the destination). In order of sequence number: it
    /// also takes the messages the worker's thread had queued and not yet begun when the
    /// move paused it, so that the capture need not wait for a backlog.
    held: Vec<(u64, Vec<u8>)>,
    /// Posts that arrived here before the worker (Expect) and come after a gap: each
    /// goes to the worker once the client's replay of the messages before it arrives.
    /// With `true`, a Replay.
    early: BTreeMap<u64, (Vec<u8>, bool)>,
}

/// Payload bytes of early Posts one Expect may hold at most, and all Expects waiting on
/// this node together: a client's next few messages, bounded so that connections that
/// expect workers which never come cannot fill the node's memory.
const EXPECT_BUDGET: u64 = 64 << 20;
const EXPECT_TOTAL: u64 = 512 << 20;

/// Expects one connection may have waiting at once: a client moves one worker at a
/// time, and a connection cannot hold the whole of [`EXPECT_TOTAL`] for itself.
const EXPECTS_PER_CONNECTION: usize = 2;

/// A connection's Expect: a worker on its way here, and the Posts it sent for it.
struct Expected {
    worker: WorkerId,
    /// Sha-256 of the secret the Expect gave, compared with the worker's owner.
    owner: [u8; 32],
    /// The connection that expects it.
    sink: Sink,
    /// Payload bytes it may send ahead.
    budget: u64,
    /// Payload bytes it sent ahead so far, held or handed over.
    bytes: u64,
    stage: ExpectStage,
}

enum ExpectStage {
    /// The worker has not arrived: its Posts wait, by sequence number (with `true`, a
    /// Replay).
    Waiting(BTreeMap<u64, (Vec<u8>, bool)>),
    /// It arrived and its owner is the Expect's: the Posts went to it, and so do later
    /// ones, until the connection attaches.
    Bound(Arc<Hosted>),
    /// It arrived for another owner: the connection's Posts for it are refused.
    Refused,
}

/// Why a Post was not delivered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// this node does not host worker {0:032x}
    #[error("this node does not host worker {0:032x}")]
    UnknownWorker(WorkerId),
    /// message {found} of worker {worker:032x} skips ahead: the next message is {expected}
    #[error("message {found} of worker {worker:032x} skips ahead: the next message is {expected}")]
    Gap {
        /// The worker.
        worker: WorkerId,
        /// The sequence number the worker takes next.
        expected: u64,
        /// The one the Post carried.
        found: u64,
    },
    /// message {seq} of worker {worker:032x} is over the {budget} bytes this node holds for a worker on its way here
    #[error("message {seq} of worker {worker:032x} is over the {budget} bytes this node holds for a worker on its way here")]
    OverBudget {
        /// The worker.
        worker: WorkerId,
        /// The message.
        seq: u64,
        /// The Expect's budget.
        budget: u64,
    },
    /// worker {0:032x} arrived for another owner than the one this connection expected
    #[error("worker {0:032x} arrived for another owner than the one this connection expected")]
    NotOwner(WorkerId),
}

/// Why an Attach was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    /// this node does not host worker {0:032x}
    #[error("this node does not host worker {0:032x}")]
    UnknownWorker(WorkerId),
    /// the secret does not match the owner of worker {0:032x}
    #[error("the secret does not match the owner of worker {0:032x}")]
    WrongSecret(WorkerId),
}

/// Why a worker could not be captured to move it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BeginMoveError {
    /// this node does not host worker {0:032x}
    #[error("this node does not host worker {0:032x}")]
    UnknownWorker(WorkerId),
    /// worker {0:032x} is already moving
    #[error("worker {0:032x} is already moving")]
    AlreadyMoving(WorkerId),
    /// worker {0:032x} cannot be captured: {1}
    #[error("worker {0:032x} cannot be captured: {1}")]
    Capture(WorkerId, String),
}

/// Why received state could not be made a hosted worker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdoptError {
    /// the snapshot does not restore: {0}
    #[error("the snapshot does not restore: {0}")]
    Restore(#[from] RestoreError),
    /// worker {0:032x} already runs here for another owner
    #[error("worker {0:032x} already runs here for another owner")]
    OtherOwner(WorkerId),
    /// the worker's thread could not start: {0}
    #[error("the worker's thread could not start: {0}")]
    Thread(String),
}

/// A captured worker, ready to travel or to be saved.
pub(crate) struct Captured {
    /// Sha-256 of the worker's secret.
    pub owner: [u8; 32],
    /// The module it runs (its prepared bytes travel on a cache miss).
    pub module: Arc<WorkerModule>,
    /// Its state.
    pub snapshot: Snapshot,
}

/// The table of hosted workers.
pub(crate) struct Hosting {
    runtime: Runtime,
    workers: Mutex<HashMap<WorkerId, Arc<Hosted>>>,
    /// Workers on their way here that a connection sent Posts for ahead of them. Locked
    /// before a worker's flow, never while holding `workers`.
    expected: Mutex<Vec<Expected>>,
    metrics: Arc<Metrics>,
}

/// The owner hash of a secret.
pub(crate) fn owner_of(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl Hosting {
    pub(crate) fn new(runtime: Runtime, metrics: Arc<Metrics>) -> Hosting {
        Hosting {
            runtime,
            workers: Mutex::new(HashMap::new()),
            expected: Mutex::new(Vec::new()),
            metrics,
        }
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn get(&self, worker: WorkerId) -> Option<Arc<Hosted>> {
        self.workers
            .lock()
            .expect("worker table")
            .get(&worker)
            .cloned()
    }

    /// How many workers run here.
    pub(crate) fn count(&self) -> usize {
        self.workers.lock().expect("worker table").len()
    }

    /// The ids of every hosted worker.
    pub(crate) fn ids(&self) -> Vec<WorkerId> {
        self.workers
            .lock()
            .expect("worker table")
            .keys()
            .copied()
            .collect()
    }

    /// Restores `snapshot` and hosts it as `worker`, owned by `owner`; its replies go to
    /// `sink` until someone else attaches. Returns the last message the state handled,
    /// and the snapshot (for the chunk store, once the sender has its answer).
    pub(crate) async fn adopt(
        self: &Arc<Self>,
        worker: WorkerId,
        owner: [u8; 32],
        module: Arc<WorkerModule>,
        snapshot: Snapshot,
        sink: Option<Sink>,
    ) -> Result<(u64, Snapshot), AdoptError> {
        if let Some(existing) = self.get(worker) {
            if existing.owner != owner {
                return Err(AdoptError::OtherOwner(worker));
            }
        }
        let runtime = self.runtime.clone();
        let restore_module = module.clone();
        let (restored, snapshot) = tokio::task::spawn_blocking(move || {
            let restored = runtime.restore(&restore_module, &snapshot);
            restored.map(|worker| (worker, snapshot))
        })
        .await
        .map_err(|e| AdoptError::Thread(e.to_string()))??;
        let last_seq = restored.last_seq();
        self.host(worker, owner, module, restored, sink)?;
        Ok((last_seq, snapshot))
    }

    /// Hosts a worker restored post-copy during its transfer (its memory still arriving);
    /// its client attaches later. Refused, like [`Hosting::adopt`], when a worker of this
    /// id has another owner.
    pub(crate) fn adopt_running(
        self: &Arc<Self>,
        worker: WorkerId,
        owner: [u8; 32],
        module: Arc<WorkerModule>,
        restored: Worker,
    ) -> Result<u64, AdoptError> {
        let last_seq = restored.last_seq();
        self.host(worker, owner, module, restored, None)?;
        Ok(last_seq)
    }

    /// Puts a restored worker on its own thread and in the table. A worker of the same id
    /// and owner that was still here (a worker coming back) is replaced.
    fn host(
        self: &Arc<Self>,
        worker: WorkerId,
        owner: [u8; 32],
        module: Arc<WorkerModule>,
        restored: Worker,
        sink: Option<Sink>,
    ) -> Result<(), AdoptError> {
        // Checked again here, under the table's lock: two transfers of the same new id by
        // different owners may both have passed the check in `adopt` while they restored.
        let mut workers = self.workers.lock().expect("worker table");
        if workers.get(&worker).is_some_and(|w| w.owner != owner) {
            return Err(AdoptError::OtherOwner(worker));
        }
        let (commands, receiver) = std_mpsc::channel();
        let (captures, capture_receiver) = std_mpsc::channel();
        let sink = Arc::new(Mutex::new(sink));
        let accepted = restored.last_seq();
        let thread_sink = sink.clone();
        let recent = Arc::new(Mutex::new(Recent::default()));
        let thread_recent = recent.clone();
        let metrics = self.metrics.clone();
        let flow = Arc::new(Mutex::new(Flow {
            accepted,
            handled: accepted,
            last_took: Duration::ZERO,
            last_end: None,
            moving: false,
            precopying: false,
            copying: false,
            held: Vec::new(),
            early: BTreeMap::new(),
        }));
        let thread_flow = flow.clone();
        let table = Arc::downgrade(self);
        std::thread::Builder::new()
            .name(format!("roam-worker-{:08x}", worker as u32))
            .spawn(move || {
                run_worker(
                    worker,
                    restored,
                    Lanes {
                        commands: receiver,
                        captures: capture_receiver,
                    },
                    thread_sink,
                    thread_recent,
                    thread_flow,
                    metrics,
                    table,
                )
            })
            .map_err(|e| AdoptError::Thread(e.to_string()))?;
        let hosted = Arc::new(Hosted {
            owner,
            module,
            commands,
            captures,
            sink,
            recent,
            flow,
            freed: Notify::new(),
        });
        workers.insert(worker, hosted.clone());
        self.metrics.set_workers(workers.len());
        drop(workers);
        // The Posts sent here ahead of it go to it now.
        self.bind_expected(worker, &hosted, None);
        Ok(())
    }

    /// Checks the secret against the worker's owner; on success the worker's replies go to
    /// `sink` from now on, unless another connection that is still open takes them (a
    /// client's second connection, for a return, must not steal the replies of the
    /// messages its first one posted: each Post points the replies at its own
    /// connection). Returns the last message the worker took.
    pub(crate) fn attach(
        &self,
        worker: WorkerId,
        secret: &[u8; 32],
        sink: &Sink,
    ) -> Result<u64, AttachError> {
        let hosted = self.get(worker).ok_or(AttachError::UnknownWorker(worker))?;
        if owner_of(secret) != hosted.owner {
            return Err(AttachError::WrongSecret(worker));
        }
        let mut current = hosted.sink.lock().expect("worker sink");
        if current.as_ref().is_none_or(|s| s.is_closed()) {
            *current = Some(sink.clone());
        }
        drop(current);
        // A connection that sent Posts ahead of the worker attaches once its move ended:
        // the worker is the one it expected, arrived before the Expect did.
        self.bind_expected(worker, &hosted, Some(sink));
        let accepted = hosted.flow.lock().expect("worker flow").accepted;
        Ok(accepted)
    }

    /// A connection expects `worker` to arrive here (Expect): its Posts for it are held
    /// until then. Returns how many bytes of payload are held at most: 0 when the Expects
    /// already waiting on this node hold all there is, or when this connection already
    /// waits for [`EXPECTS_PER_CONNECTION`] workers.
    pub(crate) fn expect(&self, worker: WorkerId, secret: &[u8; 32], sink: &Sink) -> u64 {
        let mut expected = self.expected.lock().expect("expected workers");
        // Closed connections' Expects go, and so does an earlier Expect of this one for
        // the same worker (this one replaces it).
        let replaced = |e: &Expected| e.worker == worker && e.sink.same_channel(sink);
        expected.retain(|e| !(e.sink.is_closed() || replaced(e)));
        let waiting = |e: &&Expected| matches!(e.stage, ExpectStage::Waiting(_));
        let reserved: u64 = expected.iter().filter(waiting).map(|e| e.budget).sum();
        let mine = expected
            .iter()
            .filter(waiting)
            .filter(|e| e.sink.same_channel(sink))
            .count();
        let budget = if mine >= EXPECTS_PER_CONNECTION {
            0
        } else {
            EXPECT_BUDGET.min(EXPECT_TOTAL.saturating_sub(reserved))
        };
        if budget > 0 {
            expected.push(Expected {
                worker,
                owner: owner_of(secret),
                sink: sink.clone(),
                budget,
                bytes: 0,
                stage: ExpectStage::Waiting(BTreeMap::new()),
            });
        }
        budget
    }

    /// A Post (or, `quiet`, a Replay) from a connection that expects `worker` and has not
    /// attached it: held while the worker has not arrived; once it has, handed to it if it
    /// is the next message, else kept in its flow until the messages before it arrive.
    /// Every byte sent ahead counts against the Expect's budget, held or handed over.
    pub(crate) fn post_early(
        &self,
        worker: WorkerId,
        seq: u64,
        payload: Vec<u8>,
        quiet: bool,
        sink: &Sink,
    ) -> Result<(), PostError> {
        let mut expected = self.expected.lock().expect("expected workers");
        let Some(entry) = expected
            .iter_mut()
            .find(|e| e.worker == worker && e.sink.same_channel(sink))
        else {
            return Err(PostError::UnknownWorker(worker));
        };
        let len = payload.len() as u64;
        if entry.bytes + len > entry.budget {
            return Err(PostError::OverBudget {
                worker,
                seq,
                budget: entry.budget,
            });
        }
        entry.bytes += len;
        match &mut entry.stage {
            ExpectStage::Waiting(posts) => {
                posts.entry(seq).or_insert((payload, quiet));
                Ok(())
            }
            ExpectStage::Refused => Err(PostError::NotOwner(worker)),
            ExpectStage::Bound(hosted) => {
                // Only to the worker that arrived, not to one of the same id hosted since.
                if !self
                    .get(worker)
                    .is_some_and(|now| Arc::ptr_eq(&now, hosted))
                {
                    return Err(PostError::UnknownWorker(worker));
                }
                self.metrics.messages_ahead(1);
                hand_ahead(hosted, [(seq, (payload, quiet))], sink);
                Ok(())
            }
        }
    }

    /// Hands the Posts held for `worker` (by every connection that expects it, or only by
    /// `only`) to `hosted`, the worker that arrived, if the Expect named its owner; those
    /// after a gap wait in its flow for the messages before them. Done under the lock of
    /// the Expects, so that a Post sent ahead that arrives meanwhile finds them handed.
    fn bind_expected(&self, worker: WorkerId, hosted: &Arc<Hosted>, only: Option<&Sink>) {
        let mut expected = self.expected.lock().expect("expected workers");
        expected.retain(|e| !e.sink.is_closed());
        for entry in expected
            .iter_mut()
            .filter(|e| e.worker == worker && only.is_none_or(|sink| sink.same_channel(&e.sink)))
        {
            if !matches!(entry.stage, ExpectStage::Waiting(_)) {
                continue;
            }
            if entry.owner != hosted.owner {
                entry.stage = ExpectStage::Refused;
                let _ = entry.sink.send(Frame::Error {
                    code: ErrorCode::Unauthorized,
                    worker: Some(worker),
                    message: PostError::NotOwner(worker).to_string(),
                });
                continue;
            }
            let ExpectStage::Waiting(posts) =
                std::mem::replace(&mut entry.stage, ExpectStage::Bound(hosted.clone()))
            else {
                unreachable!("checked above");
            };
            if posts.is_empty() {
                continue;
            }
            tracing::debug!(
                worker = format!("{worker:032x}"),
                messages = posts.len(),
                "the worker arrived: the messages sent ahead of it go to it"
            );
            self.metrics.messages_ahead(posts.len());
            hand_ahead(hosted, posts, &entry.sink);
        }
    }

    /// Forgets the Expects of a connection that closed, and the messages they held.
    pub(crate) fn forget_expected(&self, sink: &Sink) {
        self.expected
            .lock()
            .expect("expected workers")
            .retain(|e| !(e.sink.same_channel(sink) || e.sink.is_closed()));
    }

    /// Whether `worker`'s replies go to `sink`.
    pub(crate) fn replies_to(&self, worker: WorkerId, sink: &Sink) -> bool {
        self.get(worker).is_some_and(|hosted| {
            hosted
                .sink
                .lock()
                .expect("worker sink")
                .as_ref()
                .is_some_and(|s| s.same_channel(sink))
        })
    }

    /// Hands message `seq` to the worker if it is the next one. A message already taken
    /// (a replay after a move or a reconnect) is dropped without an answer.
    pub(crate) fn post(
        &self,
        worker: WorkerId,
        seq: u64,
        payload: Vec<u8>,
        quiet: bool,
        sink: &Sink,
    ) -> Result<(), PostError> {
        let hosted = self.get(worker).ok_or(PostError::UnknownWorker(worker))?;
        let mut flow = hosted.flow.lock().expect("worker flow");
        if seq <= flow.accepted {
            return Ok(());
        }
        if seq != flow.accepted + 1 {
            return Err(PostError::Gap {
                worker,
                expected: flow.accepted + 1,
                found: seq,
            });
        }
        *hosted.sink.lock().expect("worker sink") = Some(sink.clone());
        take(&hosted, &mut flow, seq, payload, quiet);
        // Messages sent ahead of the worker that waited for this one follow it.
        take_early(&hosted, &mut flow);
        Ok(())
    }

    /// Stops taking messages for `worker`, lets the ones it took finish, and captures it.
    /// The worker stays here until [`end_move`](Hosting::end_move).
    pub(crate) async fn begin_move(&self, worker: WorkerId) -> Result<Captured, BeginMoveError> {
        let hosted = self
            .get(worker)
            .ok_or(BeginMoveError::UnknownWorker(worker))?;
        claim(&hosted, worker, |flow| flow.moving = true).await?;
        let (reply, answer) = oneshot::channel();
        hosted.capture(Command::Capture { reply });
        let captured = match answer.await {
            Ok(Ok(snapshot)) => Ok(snapshot),
            Ok(Err(e)) => Err(BeginMoveError::Capture(worker, e.to_string())),
            Err(_) => Err(BeginMoveError::Capture(
                worker,
                "the worker's thread is gone".into(),
            )),
        };
        match captured {
            Ok(snapshot) => Ok(Captured {
                owner: hosted.owner,
                module: hosted.module.clone(),
                snapshot,
            }),
            Err(e) => {
                self.end_move(worker, false);
                Err(e)
            }
        }
    }

    /// Starts a pre-copy of `worker`: no other move may start until
    /// [`end_move`](Hosting::end_move), but the worker goes on taking messages.
    pub(crate) async fn begin_precopy(
        &self,
        worker: WorkerId,
    ) -> Result<Arc<Hosted>, BeginMoveError> {
        let hosted = self
            .get(worker)
            .ok_or(BeginMoveError::UnknownWorker(worker))?;
        claim(&hosted, worker, |flow| flow.precopying = true).await?;
        Ok(hosted)
    }

    /// Starts a checkpoint's capture of `worker`, as [`begin_precopy`](Self::begin_precopy)
    /// but refused at once while a move is under way, and waited for by a move that begins
    /// before [`end_move`](Hosting::end_move).
    pub(crate) fn begin_checkpoint(&self, worker: WorkerId) -> Result<Arc<Hosted>, BeginMoveError> {
        let hosted = self
            .get(worker)
            .ok_or(BeginMoveError::UnknownWorker(worker))?;
        let mut flow = hosted.flow.lock().expect("worker flow");
        if flow.moving || flow.precopying {
            return Err(BeginMoveError::AlreadyMoving(worker));
        }
        flow.precopying = true;
        flow.copying = true;
        drop(flow);
        Ok(hosted)
    }

    /// One pre-copy round: captures the worker between two messages, compressing the
    /// chunks `compress` picks. With `last`, the worker stops taking messages first
    /// (Posts wait, as in [`begin_move`](Hosting::begin_move)) and this is its final
    /// state until [`end_move`](Hosting::end_move).
    pub(crate) async fn capture_round(
        &self,
        worker: WorkerId,
        hosted: &Hosted,
        compress: Compress,
        last: bool,
    ) -> Result<Delta, BeginMoveError> {
        if last {
            hosted.flow.lock().expect("worker flow").moving = true;
        }
        let (reply, answer) = oneshot::channel();
        hosted.capture(Command::CaptureDelta { compress, reply });
        match answer.await {
            Ok(Ok(delta)) => Ok(delta),
            Ok(Err(e)) => Err(BeginMoveError::Capture(worker, e.to_string())),
            Err(_) => Err(BeginMoveError::Capture(
                worker,
                "the worker's thread is gone".into(),
            )),
        }
    }

    /// The replies of the last messages `worker` handled after message `after` (up to
    /// [`RECENT_MESSAGES`] and [`RECENT_BYTES`]), oldest first: each message's Reply
    /// frames, then its Handled.
    pub(crate) fn recent_replies(&self, worker: WorkerId, after: u64) -> Vec<Frame> {
        let Some(hosted) = self.get(worker) else {
            return Vec::new();
        };
        let recent = hosted.recent.lock().expect("recent replies");
        let later = |frame: &&Frame| reply_seq(frame).is_none_or(|seq| seq > after);
        recent
            .messages
            .iter()
            .flat_map(|(frames, _)| frames.iter().filter(later).cloned())
            .collect()
    }

    /// Ends a move: if the state was adopted elsewhere the worker is dropped (and the
    /// messages held during the move with it: the client replays them there); otherwise it
    /// resumes with the held messages.
    pub(crate) fn end_move(&self, worker: WorkerId, adopted: bool) {
        if adopted {
            self.drop_worker(worker);
            return;
        }
        let Some(hosted) = self.get(worker) else {
            return;
        };
        let mut flow = hosted.flow.lock().expect("worker flow");
        flow.moving = false;
        flow.precopying = false;
        flow.copying = false;
        for (seq, payload) in flow.held.drain(..) {
            let _ = hosted.commands.send(Command::Deliver {
                seq,
                payload,
                quiet: false,
            });
        }
        drop(flow);
        hosted.freed.notify_waiters();
    }

    /// Drops a worker: its thread ends once it finishes what it was given.
    pub(crate) fn drop_worker(&self, worker: WorkerId) {
        let mut workers = self.workers.lock().expect("worker table");
        workers.remove(&worker);
        self.metrics.set_workers(workers.len());
    }

    /// Drops the worker whose thread follows `flow`, if the table still holds that one (and
    /// not a worker of the same id hosted since).
    fn drop_lost(&self, worker: WorkerId, flow: &Arc<Mutex<Flow>>) {
        let mut workers = self.workers.lock().expect("worker table");
        if workers
            .get(&worker)
            .is_some_and(|hosted| Arc::ptr_eq(&hosted.flow, flow))
        {
            workers.remove(&worker);
            self.metrics.set_workers(workers.len());
        }
    }

    /// Drops a worker whose state a client has taken back, unless it is moving.
    pub(crate) fn release(&self, worker: WorkerId) {
        if let Some(hosted) = self.get(worker) {
            let flow = hosted.flow.lock().expect("worker flow");
            if !flow.moving && !flow.precopying {
                drop(flow);
                self.drop_worker(worker);
            }
        }
    }
}

impl Hosted {
    /// How the worker has been handling its messages lately.
    pub(crate) fn pace(&self) -> Pace {
        let flow = self.flow.lock().expect("worker flow");
        Pace {
            handled: flow.handled,
            last_took: flow.last_took,
            queued: flow.accepted.saturating_sub(flow.handled),
            since_last: flow.last_end.map(|at| at.elapsed()),
        }
    }

    /// Sends a capture on the thread's capture lane and wakes the thread. A closed channel
    /// means the thread is gone: the capture's reply channel says so.
    fn capture(&self, command: Command) {
        let _ = self.captures.send(command);
        let _ = self.commands.send(Command::Wake);
    }
}

/// Gives message `seq`, the next one, to the worker: held while it moves.
fn take(hosted: &Hosted, flow: &mut Flow, seq: u64, payload: Vec<u8>, quiet: bool) {
    flow.accepted = seq;
    if flow.moving {
        flow.held.push((seq, payload));
    } else {
        // A closed channel means the thread is gone with the worker: nothing to answer.
        let _ = hosted.commands.send(Command::Deliver {
            seq,
            payload,
            quiet,
        });
    }
}

/// Hands `hosted` messages sent ahead of it by the connection `sink` (a message already
/// held keeps its first copy): those that come next run now, their replies to `sink`;
/// the others wait for the messages before them.
fn hand_ahead(
    hosted: &Hosted,
    posts: impl IntoIterator<Item = (u64, (Vec<u8>, bool))>,
    sink: &Sink,
) {
    let mut flow = hosted.flow.lock().expect("worker flow");
    for (seq, post) in posts {
        flow.early.entry(seq).or_insert(post);
    }
    *hosted.sink.lock().expect("worker sink") = Some(sink.clone());
    take_early(hosted, &mut flow);
}

/// Gives the worker the early Posts that now come next, in order; drops the ones it has
/// already taken.
fn take_early(hosted: &Hosted, flow: &mut Flow) {
    while let Some(entry) = flow.early.first_entry() {
        let seq = *entry.key();
        if seq > flow.accepted + 1 {
            break;
        }
        let (payload, quiet) = entry.remove();
        if seq == flow.accepted + 1 {
            take(hosted, flow, seq, payload, quiet);
        }
    }
}

/// How long a move waits for a checkpoint's capture of its worker to end (the capture
/// waits for the messages the worker has queued) before the move is refused.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(10);

/// Marks `hosted` as moving with `mark`, once no other move or capture is under way. A
/// checkpoint's capture is waited for (up to [`CHECKPOINT_WAIT`]): a client that asks for
/// a move just after a checkpoint began would otherwise be refused for a copy it no longer
/// wants. Anything else under way refuses the move at once.
async fn claim(
    hosted: &Hosted,
    worker: WorkerId,
    mark: fn(&mut Flow),
) -> Result<(), BeginMoveError> {
    let deadline = tokio::time::Instant::now() + CHECKPOINT_WAIT;
    loop {
        // Registered before the flow is read, so an end in between is not missed.
        let freed = hosted.freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        {
            let mut flow = hosted.flow.lock().expect("worker flow");
            if !flow.moving && !flow.precopying {
                mark(&mut flow);
                return Ok(());
            }
            if !flow.copying {
                return Err(BeginMoveError::AlreadyMoving(worker));
            }
        }
        tracing::debug!("a move waits for a checkpoint's capture");
        if tokio::time::timeout_at(deadline, freed).await.is_err() {
            return Err(BeginMoveError::AlreadyMoving(worker));
        }
    }
}

/// What a worker's thread reads: messages in order, and captures before them.
struct Lanes {
    commands: std_mpsc::Receiver<Command>,
    captures: std_mpsc::Receiver<Command>,
}

impl Lanes {
    /// The next command: a waiting capture first, else the next queued one (blocking);
    /// `None` once the table dropped the worker.
    fn next(&self) -> Option<Command> {
        match self.captures.try_recv() {
            Ok(capture) => Some(capture),
            Err(_) => self.commands.recv().ok(),
        }
    }
}

/// The loop of a worker's thread: one command at a time, messages in order and captures
/// between two of them, until the table drops the worker (the channels close), or until
/// the worker's state is found lost (a post-copy source that went away): then it takes
/// itself out of `table` and ends, freeing its memory, and the node answers its client's
/// next message UnknownWorker.
#[allow(clippy::too_many_arguments)]
fn run_worker(
    id: WorkerId,
    mut worker: Worker,
    lanes: Lanes,
    sink: Arc<Mutex<Option<Sink>>>,
    recent: Arc<Mutex<Recent>>,
    flow: Arc<Mutex<Flow>>,
    metrics: Arc<Metrics>,
    table: std::sync::Weak<Hosting>,
) {
    let span = tracing::info_span!("worker", worker = %format!("{id:032x}"));
    let _enter = span.enter();
    while let Some(command) = lanes.next() {
        match command {
            Command::Deliver {
                seq,
                payload,
                quiet,
            } => {
                {
                    let mut flow = flow.lock().expect("worker flow");
                    if flow.moving {
                        // Paused for a move: a message queued before the pause waits with
                        // those posted since (the capture went ahead of it).
                        let at = flow.held.partition_point(|(s, _)| *s < seq);
                        flow.held.insert(at, (seq, payload));
                        continue;
                    }
                }
                let started = Instant::now();
                let frames = match worker.deliver(&payload) {
                    Ok(_) if quiet => vec![Frame::Handled {
                        worker: id,
                        seq,
                        replies: 0,
                    }],
                    Ok(replies) => {
                        let mut frames: Vec<Frame> = replies
                            .enumerate()
                            .map(|(index, payload)| Frame::Reply {
                                worker: id,
                                seq,
                                index: index as u32,
                                payload: payload.to_vec(),
                            })
                            .collect();
                        frames.push(Frame::Handled {
                            worker: id,
                            seq,
                            replies: frames.len() as u32,
                        });
                        frames
                    }
                    // Its memory is gone with a post-copy source that died: not the
                    // application's failure, and its client recovers the worker.
                    Err(e) if matches!(e.failure(), Some(Failure::StateLost { .. })) => {
                        tracing::warn!(seq, "the worker's state is lost: {e}");
                        vec![Frame::Error {
                            code: ErrorCode::StateLost,
                            worker: Some(id),
                            message: format!("message {seq} was not handled: {e}"),
                        }]
                    }
                    Err(e) => {
                        tracing::warn!(seq, "message failed: {e}");
                        vec![Frame::WorkerFailed {
                            worker: id,
                            seq,
                            reason: e.to_string(),
                        }]
                    }
                };
                let took = started.elapsed();
                metrics.observe_message(took);
                {
                    let mut flow = flow.lock().expect("worker flow");
                    flow.handled = seq;
                    flow.last_took = took;
                    flow.last_end = Some(Instant::now());
                }
                let lost = matches!(
                    frames.first(),
                    Some(Frame::Error {
                        code: ErrorCode::StateLost,
                        ..
                    })
                );
                let sink = sink.lock().expect("worker sink");
                if !quiet && matches!(frames.last(), Some(Frame::Handled { .. })) {
                    recent.lock().expect("recent replies").keep(&frames);
                }
                if let Some(sink) = sink.as_ref() {
                    for frame in frames {
                        let _ = sink.send(frame);
                    }
                }
                drop(sink);
                if lost {
                    if let Some(table) = table.upgrade() {
                        table.drop_lost(id, &flow);
                    }
                    return;
                }
            }
            Command::Capture { reply } => {
                let _ = reply.send(worker.capture());
            }
            Command::CaptureDelta { compress, reply } => {
                let _ = reply.send(worker.capture_delta(&|hash| compress.skips(hash)));
            }
            Command::Wake => {}
        }
    }
    tracing::debug!("worker thread ends");
}
