//! Roam's browser core: the snapshot codec (`roam-snapshot`), module preparation
//! (`roam-prepare`), the wire protocol (`roam-proto`) and the placement policy
//! (`roam-place`) compiled to one wasm32 module, so the browser SDK in `js/` runs the same
//! code as the nodes and the native client.
//!
//! The module has no JavaScript glue generator behind it: it exports a small C-style ABI
//! ([`abi`]) through which the SDK makes *calls*. A call is a JSON object naming the
//! operation and its arguments, plus binary blobs (module bytes, a worker's memory, frames);
//! the answer has the same shape. The operations ([`ops`]):
//!
//! - `prepare`: check a module against the worker ABI and prepare it; its info and
//!   prepared bytes come back, and the module is remembered by its hash;
//! - `capture` / `restore` / `drop_snapshot`: turn a worker's memory and state, read by the
//!   SDK from the running instance, into a snapshot kept here, and a snapshot back into a
//!   memory image and state;
//! - `open` / `send` / `receive` / `adopt` / `close`: one protocol connection to a node,
//!   checked frame by frame by the protocol's [`roam_proto::ClientSession`]. Connections
//!   send a worker's state (offload) and receive it (return) without the chunk bodies ever
//!   leaving this module;
//! - `plan_new` / `plan_feed` / `plan_decide` / `plan_drop` / `calibration`: automatic
//!   placement ([`plan`]): a `roam-place` planner per worker, fed the SDK's measurements,
//!   deciding where the worker runs; and the calibration loop the device times.
//!
//! Worker ids, module hashes, chunk hashes and secrets travel as lowercase hex strings.

#![deny(missing_docs)]

pub mod abi;
mod conn;
mod json;
pub mod ops;
pub mod plan;
mod store;

pub use ops::{call, Answer};
pub use store::Store;

/// The protocol version the browser SDK speaks. It offers this version alone in its
/// Hello, so a node that also speaks later versions answers with this one.
pub const BROWSER_PROTOCOL_VERSION: u16 = 1;
