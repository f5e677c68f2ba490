//! The native Roam client: a [`WorkerHandle`] owns one worker and decides where it runs —
//! locally, on an edge node, or on the cloud — and moves it while the application keeps
//! posting messages.
//!
//! ```no_run
//! use roam_client::{Place, WorkerHandle, WorkerOptions};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let wasm = std::fs::read("target/workers/counter.wasm")?;
//! let mut worker = WorkerHandle::start(&wasm, WorkerOptions::default())?;
//! worker.post(b"handled here".to_vec()).await?;
//! worker.move_to(Place::Node("ws://127.0.0.1:7700".into())).await?; // offload
//! worker.post(b"handled on the edge".to_vec()).await?;
//! worker.move_to(Place::Local).await?; // return
//! while let Some(reply) = worker.next_reply().await? {
//!     println!("reply to message {}: {} bytes", reply.seq, reply.payload.len());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Exactly once: every message carries a sequence number and stays in the handle's log
//! until the worker's state has handled it; after a move, the destination reports the last
//! message it handled and the handle resends the rest. Replies are delivered once each, in
//! order (see `docs/protocol.md`).
#![deny(missing_docs)]

mod auto;
mod connection;
mod error;
mod probe;
mod worker;

pub use auto::{AutoOptions, AutoPlacer, CandidateView, Decision, Memory, Requirements};
pub use error::ClientError;
pub use worker::{MoveKind, MoveMode, MoveReport, Place, Reply, WorkerHandle, WorkerOptions};
