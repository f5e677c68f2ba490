//! Snapshots of Roam workers: the state a worker needs to resume on another device, edge
//! server or cloud node, and the byte format it travels in.
//!
//! A worker is captured between two messages, so its state is its linear memory, its
//! mutable globals, its tables, the sequence number of the last message it handled and
//! its clock. The memory is cut into fixed-size chunks; chunks that are all zero are left
//! out, the others are named by the xxh3-128 hash of their bytes and compressed with lz4,
//! each distinct content once. The [`Manifest`] (everything but the chunk bodies) is small
//! and can travel on its own; each [`ChunkBody`] verifies itself against its hash.
//!
//! This crate does no I/O and knows nothing of wasmtime, so the same code runs on nodes
//! and, compiled to wasm32, in the browser.
//!
//! # A round trip
//!
//! Capture a memory and the rest of the state, encode it, decode it where it lands, check
//! it against the module loaded there, and restore the memory:
//!
//! ```
//! use roam_snapshot::{
//!     DecodeLimits, GlobalValue, Layout, MemoryLimits, Snapshot, State, TableLimits,
//!     TableState, ValType, DEFAULT_CHUNK_SIZE,
//! };
//!
//! // Two pages of worker memory: a counter near the start, a buffer further on.
//! let mut memory = vec![0u8; 2 * 65_536];
//! memory[16..24].copy_from_slice(&41u64.to_le_bytes());
//! memory[70_000..70_013].copy_from_slice(b"hello, worker");
//!
//! let module_hash = [7u8; 32];
//! let state = State {
//!     module_hash,
//!     globals: vec![GlobalValue::I32(65_536)], // the stack pointer
//!     tables: vec![TableState { elements: vec![None, Some(3)] }],
//!     last_seq: 41,
//!     clock_ns: 1_500_000,
//! };
//! let snapshot = Snapshot::capture(&memory, DEFAULT_CHUNK_SIZE, state)?;
//! assert_eq!(snapshot.manifest.chunks.len(), 2); // the zero chunks are left out
//!
//! // The bytes that go over the network or to a file.
//! let bytes = snapshot.encode();
//!
//! // At the destination: decode within caps, then check against the loaded module.
//! let received = Snapshot::decode(&bytes, &DecodeLimits::default())?;
//! let layout = Layout {
//!     module_hash,
//!     globals: vec![ValType::I32],
//!     tables: vec![TableLimits { min: 2, max: None }],
//!     memory: MemoryLimits { min_pages: 1, max_pages: Some(16) },
//!     func_count: 10,
//! };
//! received.check_against(&layout, 1 << 30)?;
//!
//! // Restore into the fresh instance's memory. Its data segments wrote bytes 0..1024,
//! // which the snapshot's zero chunks must clear.
//! let mut fresh = vec![0u8; received.manifest.memory_size as usize];
//! fresh[512..1024].fill(0xAA);
//! received.restore_memory(&mut fresh, &[0..1024])?;
//! assert_eq!(fresh, memory);
//!
//! println!("{}", received.summary());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Parts on their own
//!
//! [`chunk_map`] hashes a memory without compressing it, which is how pre-copy finds the
//! chunks that changed since the last round. [`ChunkBody::compress`] compresses one chunk,
//! [`Manifest::encode`] and [`ChunkBody::encode`] encode the parts separately, and
//! [`Snapshot::from_parts`] puts them together again after checking that they fit.
//!
//! # Trust
//!
//! Decoders take bytes from the network. They check the size cap, the checksum, the magic
//! and the version before anything else, bound every allocation by the remaining input
//! and by [`DecodeLimits`], and refuse anything malformed with an error rather than a
//! panic. [`Snapshot::check_against`] then refuses a snapshot that does not fit the module
//! it is about to be restored into. The format is described in `docs/snapshot-format.md`.

#![deny(missing_docs)]

mod chunk;
mod error;
mod manifest;
mod model;
mod snapshot;
mod stats;
mod wire;

pub use chunk::{chunk_map, hash_chunk, ChunkBody, ChunkEncoding};
pub use error::{
    CaptureSnapshotError, DecodeSnapshotError, IncompatibleSnapshotError, RestoreMemoryError,
};
pub use manifest::DecodeLimits;
pub use model::{
    ChunkHash, ChunkRef, GlobalValue, Layout, Manifest, MemoryLimits, ModuleHash, State,
    TableLimits, TableState, ValType, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
    WASM_PAGE_SIZE,
};
pub use snapshot::{Delta, Snapshot};
pub use stats::{SnapshotStats, SnapshotSummary};

/// The format version this crate writes, in snapshots and manifests alike.
pub const FORMAT_VERSION: u16 = 1;

/// The oldest format version this crate reads. A reader accepts every version from this
/// one to [`FORMAT_VERSION`]; see `docs/snapshot-format.md` for the policy.
pub const MIN_READ_VERSION: u16 = 1;
