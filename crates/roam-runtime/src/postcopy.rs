//! Post-copy restore: a worker resumes at its destination before all of its memory has
//! arrived, and the chunks it touches first are fetched on demand.
//!
//! [`Runtime::restore_post_copy`](crate::Runtime::restore_post_copy) restores the globals,
//! tables and the chunks already at hand (the *hot* chunks), then hands the rest of the
//! memory to Linux's userfaultfd in MISSING mode: a touch of a page whose chunk has not
//! arrived blocks the touching thread, and a fault thread owned by the worker asks the
//! caller for that chunk. Each chunk body that arrives, on demand or from a background
//! stream, goes to [`Pager::supply`], which maps it at every position of the manifest that
//! holds it and wakes the worker. When every chunk is in, the fault thread ends and the
//! memory is an ordinary one again.
//!
//! If the source goes away first ([`Pager::abandon`]), the worker fails with
//! [`Failure::StateLost`](crate::Failure::StateLost): it never hands out replies computed
//! from memory that is not its own, and it does not hang. docs/postcopy.md tells the story.

mod memory;
mod uffd;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roam_snapshot::{ChunkBody, ChunkHash, ChunkRef};

use crate::error::{PostCopyUnavailable, SupplyError, WaitCompleteError};
pub(crate) use memory::{configure, last_created_base};
pub(crate) use uffd::page_size;
use uffd::{EventFd, OpenError, Userfaultfd};

/// The environment variable that turns post-copy off: set to `1`, [`post_copy_available`]
/// reports it unavailable and restores that ask for it are refused.
pub const DISABLE_POST_COPY_ENV: &str = "ROAM_DISABLE_POSTCOPY";

/// Tells whether post-copy restore can run in this process and, if not, why: turned off with
/// `ROAM_DISABLE_POSTCOPY=1`, userfaultfd refused to this process (it needs root or
/// `CAP_SYS_PTRACE`, unless `vm.unprivileged_userfaultfd=1` or `/dev/userfaultfd` is open to
/// it), or a kernel without userfaultfd.
///
/// The environment variable is read on every call; the kernel is asked once per process.
pub fn post_copy_available() -> Result<(), PostCopyUnavailable> {
    if std::env::var_os(DISABLE_POST_COPY_ENV).is_some_and(|v| !v.is_empty() && v != "0") {
        return Err(PostCopyUnavailable::Disabled);
    }
    static PROBE: OnceLock<Result<(), PostCopyUnavailable>> = OnceLock::new();
    PROBE
        .get_or_init(|| match Userfaultfd::open() {
            Ok(_) => {
                if page_size() > roam_snapshot::MIN_CHUNK_SIZE as usize {
                    Err(PostCopyUnavailable::PageTooLarge {
                        page_size: page_size(),
                    })
                } else {
                    Ok(())
                }
            }
            Err(OpenError::NotPermitted(e)) => {
                Err(PostCopyUnavailable::NotPermitted(e.to_string()))
            }
            Err(OpenError::NotSupported(e)) => {
                Err(PostCopyUnavailable::NotSupported(e.to_string()))
            }
        })
        .clone()
}

/// Most zero chunks mapped for one fault on a zero chunk.
const ZERO_RUN_MAX: usize = 64;

/// Counters of a post-copy restore, from the restore on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PagerStats {
    /// Page faults the worker took in memory that was not there yet.
    pub faults: u64,
    /// Of those, faults on chunks that are zero in the manifest, answered with zero pages
    /// (for the run of zero chunks around the fault) without asking the source. Memory grown
    /// beyond the snapshot's size takes no fault here at all.
    pub zero_faults: u64,
    /// Chunk contents asked of the source through the fetch callback.
    pub requests: u64,
    /// Total time the worker spent blocked on faults, from the fault until its page was
    /// mapped.
    pub fault_wait: Duration,
    /// Chunk positions filled from the hot chunks during the restore.
    pub hot_chunks: u64,
    /// Chunk positions filled by [`Pager::supply`] since.
    pub chunks_installed: u64,
    /// Bytes of memory those positions cover.
    pub bytes_installed: u64,
}

/// The fetch callback: called with the hash of a chunk the worker touched whose body has
/// not been supplied.
pub(crate) type FetchChunk = Arc<dyn Fn(ChunkHash) + Send + Sync>;

/// What the fault thread, the pager handles and the worker share.
pub(crate) struct PagerShared {
    state: Mutex<PagerState>,
    /// Signalled when the memory completes, the source is lost or the worker goes away.
    settled: Condvar,
    /// Set once every chunk is in; never cleared.
    complete: AtomicBool,
    /// Set when the source was lost before every chunk was in; never cleared.
    lost: AtomicBool,
    /// Wakes the fault thread for something other than a fault.
    wake: EventFd,
    /// To interrupt the worker at once when its state is lost.
    engine: wasmtime::EngineWeak,
    /// The registered region: `[base, base + len)`, whole chunks.
    base: usize,
    len: usize,
    chunk_size: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Zero in the manifest, nothing mapped yet.
    Zero,
    /// Non-zero in the manifest, its body has not arrived.
    Missing,
    /// Mapped: from a body, as a zero page, or by the restore.
    Present,
}

struct PagerState {
    /// The descriptor, while the region is registered; `None` once the memory is complete,
    /// the source is lost or the worker is gone.
    uffd: Option<Userfaultfd>,
    /// The manifest's chunk refs, ascending by index.
    chunks: Vec<ChunkRef>,
    /// One entry per chunk of the region.
    states: Vec<ChunkState>,
    /// Chunk indices still missing, by content.
    missing: HashMap<ChunkHash, Vec<u32>>,
    /// Contents already asked of the source.
    requested: HashSet<ChunkHash>,
    /// When the worker first faulted on each content it is waiting for.
    waiting: HashMap<ChunkHash, Instant>,
    /// Ask the source for everything missing (a capture needs it all).
    request_all: bool,
    lost_reason: Option<String>,
    /// Set by the fault thread when it cannot serve a fault: the restore is then abandoned
    /// with this reason, as no thread may stay blocked.
    failed: Option<String>,
    worker_gone: bool,
    fetch: Option<FetchChunk>,
    stats: PagerStats,
    thread: Option<JoinHandle<()>>,
}

/// How a pager stops paging.
enum Settle {
    Complete,
    Lost(String),
    WorkerGone,
}

impl PagerShared {
    fn lock(&self) -> MutexGuard<'_, PagerState> {
        // A panic in a fetch callback does not hold the lock; nothing else can poison it
        // half-way through an update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the worker's state was lost, if it was.
    pub(crate) fn lost_reason(&self) -> Option<String> {
        if !self.lost.load(Ordering::SeqCst) {
            return None;
        }
        self.lock().lost_reason.clone()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.complete.load(Ordering::SeqCst)
    }

    /// Asks the source for every chunk still missing.
    pub(crate) fn request_all(&self) {
        let mut state = self.lock();
        if state.uffd.is_some() {
            state.request_all = true;
            self.wake.signal();
        }
    }

    pub(crate) fn wait_complete(&self, timeout: Duration) -> Result<(), WaitCompleteError> {
        let started = Instant::now();
        let mut state = self.lock();
        loop {
            if self.is_complete() {
                return Ok(());
            }
            if let Some(reason) = &state.lost_reason {
                return Err(WaitCompleteError::Lost(reason.clone()));
            }
            if state.worker_gone {
                return Err(WaitCompleteError::WorkerGone);
            }
            let waited = started.elapsed();
            let Some(left) = timeout.checked_sub(waited).filter(|d| !d.is_zero()) else {
                return Err(WaitCompleteError::TimedOut {
                    missing: state.missing.len(),
                    waited,
                });
            };
            state = self
                .settled
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn abandon(&self, reason: String) {
        {
            let mut state = self.lock();
            if state.uffd.is_none() {
                return;
            }
            tracing::warn!("post-copy source lost before the memory arrived: {reason}");
            self.settle(&mut state, Settle::Lost(reason));
        }
        // A worker running on zero pages must stop at its next check, not at its next tick.
        if let Some(engine) = self.engine.upgrade() {
            engine.increment_epoch();
        }
    }

    /// Called when the worker is dropped: stops the fault thread and waits for it.
    pub(crate) fn shutdown(&self) {
        let thread = {
            let mut state = self.lock();
            if state.uffd.is_some() {
                self.settle(&mut state, Settle::WorkerGone);
            }
            state.worker_gone = true;
            state.fetch = None;
            state.thread.take()
        };
        self.settled.notify_all();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    /// Ends paging: unregisters the region (waking any thread blocked on it, which then
    /// sees the page as the kernel fills it: zero), closes this side's descriptor and tells
    /// the fault thread and the waiters.
    fn settle(&self, state: &mut PagerState, how: Settle) {
        // The outcome is published before the region is unregistered: a worker released by
        // the unregistration must find its state marked lost when it next looks.
        match how {
            Settle::Complete => self.complete.store(true, Ordering::SeqCst),
            Settle::Lost(reason) => {
                state.lost_reason = Some(reason);
                self.lost.store(true, Ordering::SeqCst);
            }
            Settle::WorkerGone => state.worker_gone = true,
        }
        if let Some(uffd) = state.uffd.take() {
            if let Err(e) = uffd.unregister(self.base, self.len) {
                tracing::warn!("cannot unregister a post-copy memory: {e}");
            }
        }
        // Paging is over whichever way it ended: nothing more to ask the source for.
        state.fetch = None;
        state.waiting.clear();
        self.wake.signal();
        self.settled.notify_all();
    }

    fn chunk_start(&self, index: u32) -> usize {
        self.base + index as usize * self.chunk_size
    }

    fn wake_all(&self, state: &PagerState, indices: &[u32]) {
        if let Some(uffd) = &state.uffd {
            for &index in indices {
                let _ = uffd.wake(self.chunk_start(index), self.chunk_size);
            }
        }
    }

    /// Handles one page fault at `addr`; returns the content to ask the source for, if any.
    fn on_fault(&self, state: &mut PagerState, addr: usize, now: Instant) -> Option<ChunkHash> {
        let uffd = state.uffd.as_ref()?;
        let offset = addr.wrapping_sub(self.base);
        if offset >= self.len {
            let page = page_size();
            let _ = uffd.wake(addr / page * page, page);
            return None;
        }
        let index = offset / self.chunk_size;
        let start = self.chunk_start(index as u32);
        state.stats.faults += 1;
        match state.states[index] {
            ChunkState::Present => {
                let _ = uffd.wake(start, self.chunk_size);
                None
            }
            ChunkState::Zero => {
                // Zero memory tends to come in runs (a heap's unused end): map the zero run
                // around the fault, up to a cap, so a scan through it faults once per run.
                let mut first = index;
                let mut end = index + 1;
                while end - first < ZERO_RUN_MAX
                    && end < state.states.len()
                    && state.states[end] == ChunkState::Zero
                {
                    end += 1;
                }
                while end - first < ZERO_RUN_MAX
                    && first > 0
                    && state.states[first - 1] == ChunkState::Zero
                {
                    first -= 1;
                }
                let (run_start, run_len) = (
                    self.chunk_start(first as u32),
                    (end - first) * self.chunk_size,
                );
                match uffd.zero(run_start, run_len) {
                    Ok(true) => {}
                    // Mapped meanwhile by other means: the waiter only needs waking.
                    Ok(false) => {
                        let _ = uffd.wake(run_start, run_len);
                    }
                    Err(e) => {
                        state.failed = Some(format!("cannot map a zero page: {e}"));
                        return None;
                    }
                }
                state.states[first..end].fill(ChunkState::Present);
                state.stats.zero_faults += 1;
                state.stats.fault_wait += now.elapsed();
                None
            }
            ChunkState::Missing => {
                let position = state
                    .chunks
                    .binary_search_by_key(&(index as u32), |c| c.index)
                    .expect("a missing chunk is in the manifest");
                let hash = state.chunks[position].hash;
                state.waiting.entry(hash).or_insert(now);
                if state.requested.insert(hash) {
                    state.stats.requests += 1;
                    Some(hash)
                } else {
                    None
                }
            }
        }
    }

    fn supply(&self, body: &ChunkBody) -> Result<usize, SupplyError> {
        let hash = body.hash();
        if body.raw_len() as usize != self.chunk_size {
            return Err(SupplyError::WrongSize {
                hash,
                raw_len: body.raw_len(),
                chunk_size: self.chunk_size as u32,
            });
        }
        {
            let state = self.lock();
            if state.uffd.is_none() || !state.missing.contains_key(&hash) {
                return Ok(0);
            }
        }
        // Decompress and verify outside the lock: bodies may arrive on several threads.
        let mut raw = vec![0u8; self.chunk_size];
        body.decompress_into(&mut raw)?;

        let mut state = self.lock();
        let state = &mut *state;
        let Some(uffd) = state.uffd.as_ref() else {
            return Ok(0);
        };
        let Some(mut positions) = state.missing.remove(&hash) else {
            return Ok(0);
        };
        // Map every position first and wake the worker after the books are updated, so
        // that once it runs on, the pager already counts the chunk in (and, for the last
        // one, is complete).
        let mut filled = Vec::with_capacity(positions.len());
        let mut failed = None;
        while let Some(index) = positions.pop() {
            match uffd.copy_no_wake(self.chunk_start(index), &raw) {
                Ok(_) => {
                    state.states[index as usize] = ChunkState::Present;
                    filled.push(index);
                }
                Err(e) => {
                    positions.push(index);
                    failed = Some(e);
                    break;
                }
            }
        }
        let installed = filled.len();
        state.stats.chunks_installed += installed as u64;
        state.stats.bytes_installed += (installed * self.chunk_size) as u64;
        if let Some(since) = state.waiting.remove(&hash) {
            state.stats.fault_wait += since.elapsed();
        }
        if let Some(e) = failed {
            state.missing.insert(hash, positions);
            self.wake_all(state, &filled);
            return Err(SupplyError::Install(e.to_string()));
        }
        if state.missing.is_empty() {
            // Unregistering wakes every waiter.
            self.settle(state, Settle::Complete);
        } else {
            self.wake_all(state, &filled);
        }
        Ok(installed)
    }
}

/// The fault thread: reads page faults, answers the ones it can (zero chunks, chunks
/// already present) and asks the source for the rest, until paging ends.
fn run_fault_thread(shared: Arc<PagerShared>, uffd: Userfaultfd) {
    use std::os::fd::AsRawFd;
    let mut faults = Vec::new();
    let mut to_fetch = Vec::new();
    loop {
        if let Err(e) = uffd::poll_readable(&[uffd.as_raw_fd(), shared.wake.as_raw_fd()]) {
            shared.abandon(format!("waiting for page faults failed: {e}"));
            return;
        }
        shared.wake.clear();
        faults.clear();
        let read = uffd.read_faults(&mut faults);
        let (fetch, failed) = {
            let mut state = shared.lock();
            if state.uffd.is_none() {
                return;
            }
            let now = Instant::now();
            for &addr in &faults {
                if let Some(hash) = shared.on_fault(&mut state, addr, now) {
                    to_fetch.push(hash);
                }
            }
            if std::mem::take(&mut state.request_all) {
                let state = &mut *state;
                for &hash in state.missing.keys() {
                    if state.requested.insert(hash) {
                        state.stats.requests += 1;
                        to_fetch.push(hash);
                    }
                }
            }
            (state.fetch.clone(), state.failed.take())
        };
        if let Some(reason) = failed {
            shared.abandon(reason);
            return;
        }
        if let Err(e) = read {
            shared.abandon(format!("reading page faults failed: {e}"));
            return;
        }
        // The callback runs without the lock: it may supply a body right away.
        if let Some(fetch) = fetch {
            for hash in to_fetch.drain(..) {
                fetch(hash);
            }
        }
        to_fetch.clear();
    }
}

/// The handle of a post-copy restore, held by whoever receives the rest of the memory.
/// Cheap to clone; clones share the restore. When the last clone is dropped before the
/// memory is complete, the restore is abandoned as by [`Pager::abandon`].
#[derive(Clone)]
pub struct Pager {
    handle: Arc<PagerHandle>,
}

struct PagerHandle {
    shared: Arc<PagerShared>,
}

impl Drop for PagerHandle {
    fn drop(&mut self) {
        self.shared
            .abandon("the pager was dropped before the memory arrived".into());
    }
}

impl std::fmt::Debug for Pager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pager")
            .field("complete", &self.is_complete())
            .field("lost", &self.handle.shared.is_lost())
            .finish_non_exhaustive()
    }
}

impl Pager {
    /// Installs a chunk body that arrived (from a priority fetch or the background stream)
    /// at every position of the manifest that holds it and is still missing, waking the
    /// worker if it waits on one. Returns how many positions it filled: 0 for a body no
    /// longer (or never) needed, and once the memory is complete or the restore abandoned.
    ///
    /// The body is checked against its hash before anything is mapped.
    pub fn supply(&self, body: &ChunkBody) -> Result<usize, SupplyError> {
        self.handle.shared.supply(body)
    }

    /// The distinct chunk contents still missing.
    pub fn missing(&self) -> Vec<ChunkHash> {
        self.handle.shared.lock().missing.keys().copied().collect()
    }

    /// Whether every chunk has arrived; from then on the worker's memory is an ordinary one.
    pub fn is_complete(&self) -> bool {
        self.handle.shared.is_complete()
    }

    /// Waits until every chunk has arrived, at most `timeout`.
    pub fn wait_complete(&self, timeout: Duration) -> Result<(), WaitCompleteError> {
        self.handle.shared.wait_complete(timeout)
    }

    /// The counters so far.
    pub fn stats(&self) -> PagerStats {
        self.handle.shared.lock().stats.clone()
    }

    /// The source of the memory is gone: nothing more will be supplied. Unless the memory
    /// is already complete, the worker fails with
    /// [`Failure::StateLost`](crate::Failure::StateLost) — at once if it is running (a
    /// thread blocked on a fault is released), at its next message otherwise — and the
    /// replies of the message it was handling are not handed out.
    pub fn abandon(&self, reason: &str) {
        self.handle.shared.abandon(reason.to_owned());
    }
}

/// The worker's side of a post-copy restore: ends paging when the worker is dropped.
pub(crate) struct PostCopyMemory {
    pub shared: Arc<PagerShared>,
}

impl Drop for PostCopyMemory {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

/// The per-call watch a post-copy worker's store keeps: its time budget in epoch ticks, and
/// the pager, to stop the worker when its state is lost.
pub(crate) struct PostCopyWatch {
    pub shared: Arc<PagerShared>,
    pub ticks_left: u64,
}

/// The trap a post-copy worker stops with when its state is lost mid-call.
#[derive(Debug, thiserror::Error)]
#[error("the worker's memory source was lost")]
pub(crate) struct StateLostTrap;

/// What [`PostCopyRegion::start`] needs to know about the restored memory.
pub(crate) struct PostCopyRegion<'a> {
    pub base: usize,
    pub len: usize,
    pub chunk_size: usize,
    pub chunks: &'a [ChunkRef],
    /// Chunk indices whose content the restore wrote.
    pub present: Vec<bool>,
    pub hot_chunks: u64,
}

impl PostCopyRegion<'_> {
    /// Registers the region's missing pages with userfaultfd and starts the fault thread.
    /// Every page not written by the restore must be unmapped (never touched, or dropped
    /// with `MADV_DONTNEED`) before this is called.
    pub fn start(
        self,
        engine: &wasmtime::Engine,
        fetch: FetchChunk,
    ) -> Result<(Pager, Option<PostCopyMemory>), String> {
        let chunk_count = self.len / self.chunk_size;
        let mut states = vec![ChunkState::Zero; chunk_count];
        let mut missing: HashMap<ChunkHash, Vec<u32>> = HashMap::new();
        for chunk in self.chunks {
            let index = chunk.index as usize;
            if self.present[index] {
                states[index] = ChunkState::Present;
            } else {
                states[index] = ChunkState::Missing;
                missing.entry(chunk.hash).or_default().push(chunk.index);
            }
        }
        let complete = missing.is_empty();
        let wake = EventFd::new().map_err(|e| format!("cannot create an eventfd: {e}"))?;
        let uffd = if complete {
            None
        } else {
            let uffd = Userfaultfd::open().map_err(|e| match e {
                OpenError::NotPermitted(e) | OpenError::NotSupported(e) => {
                    format!("cannot open a userfaultfd: {e}")
                }
            })?;
            uffd.register_missing(self.base, self.len)
                .map_err(|e| format!("cannot register the memory with userfaultfd: {e}"))?;
            Some(uffd)
        };
        let shared = Arc::new(PagerShared {
            state: Mutex::new(PagerState {
                uffd: None,
                chunks: self.chunks.to_vec(),
                states,
                missing,
                requested: HashSet::new(),
                waiting: HashMap::new(),
                request_all: false,
                lost_reason: None,
                failed: None,
                worker_gone: false,
                fetch: (!complete).then_some(fetch),
                stats: PagerStats {
                    hot_chunks: self.hot_chunks,
                    ..PagerStats::default()
                },
                thread: None,
            }),
            settled: Condvar::new(),
            complete: AtomicBool::new(complete),
            lost: AtomicBool::new(false),
            wake,
            engine: engine.weak(),
            base: self.base,
            len: self.len,
            chunk_size: self.chunk_size,
        });
        let pager = Pager {
            handle: Arc::new(PagerHandle {
                shared: shared.clone(),
            }),
        };
        let Some(uffd) = uffd else {
            return Ok((pager, None));
        };
        let thread_side = match uffd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                let _ = uffd.unregister(self.base, self.len);
                return Err(format!("cannot duplicate the userfaultfd: {e}"));
            }
        };
        let mut state = shared.lock();
        state.uffd = Some(uffd);
        let spawned = std::thread::Builder::new()
            .name("roam-postcopy".into())
            .spawn({
                let shared = shared.clone();
                move || run_fault_thread(shared, thread_side)
            });
        match spawned {
            Ok(thread) => state.thread = Some(thread),
            Err(e) => {
                shared.settle(&mut state, Settle::WorkerGone);
                return Err(format!("cannot start the fault thread: {e}"));
            }
        }
        drop(state);
        let memory = PostCopyMemory {
            shared: shared.clone(),
        };
        Ok((pager, Some(memory)))
    }
}
