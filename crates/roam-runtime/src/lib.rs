//! The wasmtime host for Roam workers.
//!
//! A [`Runtime`] owns one wasmtime [`Engine`](wasmtime::Engine). It loads worker modules
//! (checking the worker contract and preparing them with `roam-prepare` on the way), starts
//! workers, delivers messages to them and collects their replies, captures a worker into a
//! [`Snapshot`] between two messages, and restores a snapshot into a fresh instance —
//! in this engine or in any other, in this process or in another.
//!
//! ```no_run
//! use roam_runtime::{Runtime, RuntimeConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wasm = std::fs::read("target/workers/counter.wasm")?;
//!
//! let runtime = Runtime::new(RuntimeConfig::default())?;
//! let module = runtime.load(&wasm)?;
//! let mut worker = runtime.start(&module)?;
//! for reply in worker.deliver(b"hello")? {
//!     println!("reply of {} bytes", reply.len());
//! }
//!
//! // Between two messages the worker can be captured, encoded, and restored anywhere.
//! let bytes = worker.capture()?.encode();
//!
//! let elsewhere = Runtime::new(RuntimeConfig::default())?;
//! let module = elsewhere.load(&wasm)?;
//! let snapshot = elsewhere.decode_snapshot(&bytes)?;
//! let mut worker = elsewhere.restore(&module, &snapshot)?;
//! worker.deliver(b"world")?;
//! # Ok(())
//! # }
//! ```
//!
//! A worker can also be restored *post-copy*, before all of its memory has arrived
//! ([`Runtime::restore_post_copy`]): it runs at once, and the chunks it touches first are
//! fetched on demand through userfaultfd while a [`Pager`] takes in the rest (Linux, where
//! [`post_copy_available`] says so; docs/postcopy.md).
//!
//! Limits are per worker ([`WorkerLimits`]): linear memory (default 1 GiB) and time per
//! message (default 30 s, enforced with wasmtime's epoch interruption). A worker that breaks
//! a limit, traps or exits is *failed*: it refuses further messages and captures, and the
//! application restores its last good snapshot.
#![deny(missing_docs)]

mod calibrate;
mod config;
mod error;
mod host;
mod module;
mod postcopy;
mod worker;

pub use calibrate::{calibrate, CalibrateError, Calibration};
pub use config::{RuntimeConfig, WorkerLimits};
pub use error::{
    CaptureError, DeliverError, Failure, LoadError, PostCopyRestoreError, PostCopyUnavailable,
    RestoreError, RuntimeError, StartError, SupplyError, WaitCompleteError,
};
pub use module::{Runtime, WorkerModule};
pub use postcopy::{post_copy_available, Pager, PagerStats, DISABLE_POST_COPY_ENV};
pub use roam_snapshot::{ChunkBody, ChunkHash, Delta, Manifest, Snapshot};
pub use worker::{Replies, Worker};
