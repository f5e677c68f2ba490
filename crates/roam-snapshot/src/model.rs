//! The snapshot model: what a worker's state is made of (globals, tables, a chunked
//! memory), and what the loaded module allows ([`Layout`]), against which a snapshot is
//! checked before it is restored.

use std::fmt;

/// Sha-256 of the prepared module bytes: the identity of the code a snapshot belongs to.
pub type ModuleHash = [u8; 32];

/// Xxh3-128 of a chunk's raw bytes: the name of the chunk's content.
pub type ChunkHash = u128;

/// The bytes in one wasm page. Memory sizes are whole pages; chunk sizes divide a page.
pub const WASM_PAGE_SIZE: u32 = 65_536;

/// The smallest chunk size a snapshot may use (4 KiB).
pub const MIN_CHUNK_SIZE: u32 = 4_096;

/// The largest chunk size a snapshot may use (64 KiB, one wasm page).
pub const MAX_CHUNK_SIZE: u32 = WASM_PAGE_SIZE;

/// The chunk size [`Snapshot::capture`](crate::Snapshot::capture) callers should use.
///
/// Chosen by measurement (`examples/chunk_size.rs`, table in `docs/snapshot-format.md`):
/// capture and restore speed barely change between 4 and 64 KiB, while the bytes a
/// delta needs after scattered writes grow with the chunk size; 4 KiB keeps the final
/// round of a move (the downtime) smallest, for a chunk map of 20 bytes per 4 KiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4_096;

/// Whether `chunk_size` is a power of two in `MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE`.
pub(crate) fn valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
}

/// The type of a mutable global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValType {
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 128-bit vector.
    V128,
    /// Function reference (nullable).
    FuncRef,
}

impl fmt::Display for ValType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValType::I32 => "i32",
            ValType::I64 => "i64",
            ValType::F32 => "f32",
            ValType::F64 => "f64",
            ValType::V128 => "v128",
            ValType::FuncRef => "funcref",
        })
    }
}

/// The value of a mutable global at capture.
///
/// Floats are kept as their bits so that every NaN payload survives a move unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlobalValue {
    /// An `i32`.
    I32(i32),
    /// An `i64`.
    I64(i64),
    /// An `f32`, as its bits.
    F32(u32),
    /// An `f64`, as its bits.
    F64(u64),
    /// A `v128`.
    V128(u128),
    /// A `funcref`: the index of the function it points to, or null.
    FuncRef(Option<u32>),
}

impl GlobalValue {
    /// The type of this value.
    pub fn ty(&self) -> ValType {
        match self {
            GlobalValue::I32(_) => ValType::I32,
            GlobalValue::I64(_) => ValType::I64,
            GlobalValue::F32(_) => ValType::F32,
            GlobalValue::F64(_) => ValType::F64,
            GlobalValue::V128(_) => ValType::V128,
            GlobalValue::FuncRef(_) => ValType::FuncRef,
        }
    }
}

/// The content of one table: each slot holds a function index or null.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TableState {
    /// One entry per slot; the length is the table's size.
    pub elements: Vec<Option<u32>>,
}

/// One non-zero chunk of memory: where it is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkRef {
    /// Chunk index: the chunk covers bytes `index * chunk_size ..(index + 1) * chunk_size`.
    pub index: u32,
    /// Hash of the chunk's bytes.
    pub hash: ChunkHash,
}

/// Everything about a snapshot except the chunk bodies: small, and enough to plan a move.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// The module the snapshot was taken from.
    pub module_hash: ModuleHash,
    /// Chunk size in bytes: a power of two, 4 KiB..=64 KiB.
    pub chunk_size: u32,
    /// Memory size in bytes, a whole number of 64 KiB pages.
    pub memory_size: u64,
    /// The module's mutable globals, in global-index order.
    pub globals: Vec<GlobalValue>,
    /// Every table, in table-index order.
    pub tables: Vec<TableState>,
    /// Sequence number of the last message the worker handled.
    pub last_seq: u64,
    /// The worker's monotonic clock at capture, in nanoseconds.
    pub clock_ns: u64,
    /// The non-zero chunks, in strictly ascending index order; absent chunks are zero.
    pub chunks: Vec<ChunkRef>,
}

/// The non-memory part of a worker's state, handed to [`Snapshot::capture`](crate::Snapshot::capture).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// The module the state belongs to.
    pub module_hash: ModuleHash,
    /// The module's mutable globals, in global-index order.
    pub globals: Vec<GlobalValue>,
    /// Every table, in table-index order.
    pub tables: Vec<TableState>,
    /// Sequence number of the last message the worker handled.
    pub last_seq: u64,
    /// The worker's monotonic clock, in nanoseconds.
    pub clock_ns: u64,
}

/// A table's size limits, as the module declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableLimits {
    /// Smallest size.
    pub min: u64,
    /// Largest size, if the module sets one.
    pub max: Option<u64>,
}

/// The memory's size limits in pages, as the module declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryLimits {
    /// Smallest size in pages.
    pub min_pages: u64,
    /// Largest size in pages, if the module sets one.
    pub max_pages: Option<u64>,
}

/// What the loaded module allows; a snapshot is checked against it before restore.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Layout {
    /// The loaded module's hash.
    pub module_hash: ModuleHash,
    /// Types of the module's mutable globals, in global-index order.
    pub globals: Vec<ValType>,
    /// Limits of every table, in table-index order.
    pub tables: Vec<TableLimits>,
    /// Limits of the memory.
    pub memory: MemoryLimits,
    /// Number of functions, imported and defined.
    pub func_count: u32,
}
