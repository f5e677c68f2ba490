//! `roam-node`: the edge and cloud server of Roam.
//!
//! A node hosts workers for clients and moves them when a client asks: it receives a
//! worker's state (offload from a client, handoff from another node), runs it, hands it
//! to another node directly, sends it back to its client (return), and — on the cloud —
//! fetches it from a node the client cannot reach (fallback). Every frame is checked by
//! `roam-proto`'s state machines; secrets, move tokens, module hashes and snapshots are
//! checked here. Bad input is refused with an Error frame and the node keeps serving.
//!
//! One address serves everything: the WebSocket endpoint at `GET /`, `GET /healthz`
//! (JSON) and `GET /metrics` (Prometheus text, series `roam_…`).
//!
//! ```no_run
//! use roam_node::{run, NodeConfig, NodeRole};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("ws://{}", listener.local_addr()?);
//! let config = NodeConfig::new(NodeRole::Edge, url, "/var/lib/roam");
//! // Runs until the future resolves, then saves every worker and returns.
//! run(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Without a cluster key the node runs in development mode: it warns once at start and
//! signs and checks move tokens with [`DEV_CLUSTER_KEY`], which anyone can read.
#![deny(missing_docs)]

mod cache;
mod chunks;
mod config;
mod hosting;
mod link;
mod metrics;
mod persist;
mod precopy;
mod registry;
mod server;
mod session;
mod transfer;

pub use chunks::DEFAULT_CHUNK_STORE_BYTES;
pub use config::{NodeConfig, NodeRole, DEV_CLUSTER_KEY};
pub use precopy::{PostCopyUse, PrecopySettings};
pub use server::{run, ServeError};
