//! Settings of a runtime and the limits each worker runs under.

use std::path::PathBuf;
use std::time::Duration;

/// Limits one worker runs under. Breaking one fails the worker with a clear [`Failure`](crate::Failure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Largest linear memory, in bytes. Growing past it traps the worker.
    pub max_memory: u64,
    /// Longest a single call into the worker (start, one message) may run.
    pub message_timeout: Duration,
    /// Most bytes of replies one message may post, all replies together.
    pub max_reply_bytes: usize,
    /// Largest table a worker may grow to, in elements.
    pub max_table_elements: u64,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        WorkerLimits {
            max_memory: 1 << 30,
            message_timeout: Duration::from_secs(30),
            max_reply_bytes: 256 << 20,
            max_table_elements: 1 << 20,
        }
    }
}

/// Settings of a [`Runtime`](crate::Runtime).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Limits given to every worker this runtime starts or restores.
    pub limits: WorkerLimits,
    /// Chunk size of the snapshots this runtime captures.
    pub chunk_size: u32,
    /// How often the engine's epoch advances; the time limit is checked at this granularity.
    pub epoch_tick: Duration,
    /// Where compiled modules are kept, keyed by module hash and engine; `None` keeps them
    /// in memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            limits: WorkerLimits::default(),
            chunk_size: roam_snapshot::DEFAULT_CHUNK_SIZE,
            epoch_tick: Duration::from_millis(10),
            cache_dir: None,
        }
    }
}
