//! One error type per operation of the runtime, and [`Failure`]: why a worker stopped.

use std::time::Duration;

/// Why a worker stopped running. After a failure the worker refuses further messages and
/// captures; its last good snapshot still restores.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// the worker tried to grow its memory to {requested} bytes, over its limit of {limit} bytes
    #[error(
        "the worker tried to grow its memory to {requested} bytes, over its limit of {limit} bytes"
    )]
    MemoryLimit {
        /// The limit in bytes.
        limit: u64,
        /// The size the worker asked for.
        requested: u64,
    },
    /// the worker ran longer than its limit of {limit:?} for one call
    #[error("the worker ran longer than its limit of {limit:?} for one call")]
    TimeLimit {
        /// The limit per call.
        limit: Duration,
    },
    /// the worker posted more than {limit} bytes of replies for one message
    #[error("the worker posted more than {limit} bytes of replies for one message")]
    ReplyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// the worker exited with code {code}
    #[error("the worker exited with code {code}")]
    Exited {
        /// The exit code it passed to `proc_exit`.
        code: i32,
    },
    /// the worker could not allocate a buffer for a {len}-byte message (roam_alloc returned 0)
    #[error(
        "the worker could not allocate a buffer for a {len}-byte message (roam_alloc returned 0)"
    )]
    AllocFailed {
        /// The message length.
        len: u32,
    },
    /// the worker returned a message buffer outside its memory (pointer {ptr:#x}, length {len})
    #[error(
        "the worker returned a message buffer outside its memory (pointer {ptr:#x}, length {len})"
    )]
    BadBuffer {
        /// The pointer `roam_alloc` returned.
        ptr: u32,
        /// The length asked for.
        len: u32,
    },
    /// the worker trapped: {message}
    #[error("the worker trapped: {message}")]
    Trap {
        /// What wasmtime said, with the wasm backtrace when there is one.
        message: String,
    },
    /// the worker's state was lost before all of its memory arrived ({reason}); restore it from a snapshot
    #[error(
        "the worker's state was lost before all of its memory arrived ({reason}); restore it from a snapshot"
    )]
    StateLost {
        /// Why the rest of the memory will not arrive, as given to `Pager::abandon`.
        reason: String,
    },
}

/// The runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// the wasmtime engine could not be configured: {0}
    #[error("the wasmtime engine could not be configured: {0}")]
    Engine(String),
    /// the module cache directory {path} could not be created: {source}
    #[error("the module cache directory {path} could not be created: {source}")]
    CacheDir {
        /// The directory.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// A module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// the module breaks the worker contract: {0}
    #[error("the module breaks the worker contract: {0}")]
    Contract(#[from] roam_prepare::PrepareError),
    /// the module could not be compiled: {0}
    #[error("the module could not be compiled: {0}")]
    Compile(String),
}

/// A worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// the worker could not be instantiated: {0}
    #[error("the worker could not be instantiated: {0}")]
    Instantiate(String),
    /// the worker failed while initialising: {0}
    #[error("the worker failed while initialising: {0}")]
    Init(Failure),
}

/// A message could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// the worker failed while handling the message: {0}
    #[error("the worker failed while handling the message: {0}")]
    Failed(Failure),
    /// the worker failed earlier and takes no more messages ({0}); restore its last snapshot
    #[error(
        "the worker failed earlier and takes no more messages ({0}); restore its last snapshot"
    )]
    AlreadyFailed(Failure),
    /// the message is {len} bytes, more than a worker can take (4 GiB)
    #[error("the message is {len} bytes, more than a worker can take (4 GiB)")]
    TooLarge {
        /// The message length.
        len: usize,
    },
}

impl DeliverError {
    /// The failure behind the error, if the worker failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            DeliverError::Failed(f) | DeliverError::AlreadyFailed(f) => Some(f),
            DeliverError::TooLarge { .. } => None,
        }
    }
}

/// A worker could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// the worker failed earlier and its state is not consistent ({0}); restore its last snapshot
    #[error(
        "the worker failed earlier and its state is not consistent ({0}); restore its last snapshot"
    )]
    Failed(Failure),
    /// table {table} holds a function the module does not export for capture (element {element})
    #[error(
        "table {table} holds a function the module does not export for capture (element {element})"
    )]
    UnknownTableFunction {
        /// The table index.
        table: u32,
        /// The element index.
        element: u64,
    },
    /// global {index} holds a value a snapshot cannot carry ({kind})
    #[error("global {index} holds a value a snapshot cannot carry ({kind})")]
    UnsupportedGlobal {
        /// The global's index in the module.
        index: u32,
        /// What kind of value it holds.
        kind: &'static str,
    },
    /// the snapshot could not be built: {0}
    #[error("the snapshot could not be built: {0}")]
    Snapshot(#[from] roam_snapshot::CaptureSnapshotError),
    /// the worker's memory had not all arrived after {waited:?} ({missing} chunk contents missing); try again later
    #[error(
        "the worker's memory had not all arrived after {waited:?} ({missing} chunk contents missing); try again later"
    )]
    MemoryIncomplete {
        /// Distinct chunk contents still missing.
        missing: usize,
        /// How long the capture waited for them.
        waited: Duration,
    },
}

/// A snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// the snapshot does not fit the module: {0}
    #[error("the snapshot does not fit the module: {0}")]
    Incompatible(#[from] roam_snapshot::IncompatibleSnapshotError),
    /// the snapshot could not be decoded: {0}
    #[error("the snapshot could not be decoded: {0}")]
    Decode(#[from] roam_snapshot::DecodeSnapshotError),
    /// the snapshot's memory could not be restored: {0}
    #[error("the snapshot's memory could not be restored: {0}")]
    Memory(#[from] roam_snapshot::RestoreMemoryError),
    /// the worker could not be instantiated: {0}
    #[error("the worker could not be instantiated: {0}")]
    Instantiate(String),
    /// the worker's state could not be set: {0}
    #[error("the worker's state could not be set: {0}")]
    State(String),
}

/// Post-copy restore cannot run in this process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PostCopyUnavailable {
    /// post-copy is turned off (ROAM_DISABLE_POSTCOPY is set)
    #[error("post-copy is turned off (ROAM_DISABLE_POSTCOPY is set)")]
    Disabled,
    /// userfaultfd is refused to this process (it needs root or CAP_SYS_PTRACE, unless vm.unprivileged_userfaultfd=1 or /dev/userfaultfd is open to it): {0}
    #[error(
        "userfaultfd is refused to this process (it needs root or CAP_SYS_PTRACE, unless vm.unprivileged_userfaultfd=1 or /dev/userfaultfd is open to it): {0}"
    )]
    NotPermitted(String),
    /// this kernel offers no userfaultfd: {0}
    #[error("this kernel offers no userfaultfd: {0}")]
    NotSupported(String),
    /// the host's pages of {page_size} bytes are larger than the smallest chunk (4 KiB)
    #[error("the host's pages of {page_size} bytes are larger than the smallest chunk (4 KiB)")]
    PageTooLarge {
        /// The host's page size.
        page_size: usize,
    },
}

/// A worker could not be restored post-copy.
#[derive(Debug, thiserror::Error)]
pub enum PostCopyRestoreError {
    /// post-copy is not available here: {0}
    #[error("post-copy is not available here: {0}")]
    Unavailable(#[from] PostCopyUnavailable),
    /// the snapshot does not fit the module: {0}
    #[error("the snapshot does not fit the module: {0}")]
    Incompatible(#[from] roam_snapshot::IncompatibleSnapshotError),
    /// chunks of {chunk_size} bytes are smaller than this host's pages ({page_size} bytes)
    #[error("chunks of {chunk_size} bytes are smaller than this host's pages ({page_size} bytes)")]
    ChunkSmallerThanPage {
        /// The manifest's chunk size.
        chunk_size: u32,
        /// The host's page size.
        page_size: usize,
    },
    /// a hot chunk could not be restored: {0}
    #[error("a hot chunk could not be restored: {0}")]
    HotChunk(#[from] roam_snapshot::RestoreMemoryError),
    /// the worker could not be instantiated: {0}
    #[error("the worker could not be instantiated: {0}")]
    Instantiate(String),
    /// the worker's state could not be set: {0}
    #[error("the worker's state could not be set: {0}")]
    State(String),
    /// the worker's memory could not be handed to userfaultfd: {0}
    #[error("the worker's memory could not be handed to userfaultfd: {0}")]
    Paging(String),
}

/// A chunk body could not be installed in a post-copy worker's memory.
#[derive(Debug, thiserror::Error)]
pub enum SupplyError {
    /// chunk body {hash:032x} holds {raw_len} bytes, not the manifest's chunk size of {chunk_size}
    #[error(
        "chunk body {hash:032x} holds {raw_len} bytes, not the manifest's chunk size of {chunk_size}"
    )]
    WrongSize {
        /// The body's hash.
        hash: roam_snapshot::ChunkHash,
        /// Its raw length.
        raw_len: u32,
        /// The manifest's chunk size.
        chunk_size: u32,
    },
    /// the chunk body does not hold what its hash names: {0}
    #[error("the chunk body does not hold what its hash names: {0}")]
    Corrupt(#[from] roam_snapshot::RestoreMemoryError),
    /// the chunk could not be mapped into the worker's memory: {0}
    #[error("the chunk could not be mapped into the worker's memory: {0}")]
    Install(String),
}

/// A post-copy worker's memory did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitCompleteError {
    /// the memory's source was lost: {0}
    #[error("the memory's source was lost: {0}")]
    Lost(String),
    /// the worker was dropped before its memory arrived
    #[error("the worker was dropped before its memory arrived")]
    WorkerGone,
    /// {missing} chunk contents were still missing after {waited:?}
    #[error("{missing} chunk contents were still missing after {waited:?}")]
    TimedOut {
        /// Distinct chunk contents still missing.
        missing: usize,
        /// How long it waited.
        waited: Duration,
    },
}
