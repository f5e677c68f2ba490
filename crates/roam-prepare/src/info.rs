//! What a prepared worker holds as state and where the host finds it.
//!
//! The runtime reads its snapshot layout from [`ModuleInfo`]: which globals
//! and tables to capture, under which export names, which functions a table
//! can refer to, and which bytes of a fresh memory are not zero.

use std::fmt;
use std::ops::Range;

/// Facts about a worker module that capture and restore need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The limits of the worker's one memory.
    pub memory: MemoryInfo,
    /// The mutable globals the module defines, in index order.
    pub globals: Vec<GlobalInfo>,
    /// Every table, in index order.
    pub tables: Vec<TableInfo>,
    /// Every function that can ever sit in a table or a funcref global, in
    /// index order: the functions named by element segments (active, passive
    /// and declarative), by `ref.func` in global and table initialisers, and
    /// the exported functions — exactly those wasm lets code take a reference to.
    pub table_funcs: Vec<FuncExport>,
    /// The number of functions, imported and defined.
    pub func_count: u32,
    /// Whether the module exports `roam_init: () -> ()`.
    pub has_init: bool,
    /// Whether the module exports `_initialize: () -> ()` (a WASI reactor).
    pub has_initialize: bool,
    /// The `wasi_snapshot_preview1` functions the module imports, sorted.
    pub wasi_imports: Vec<String>,
    /// The bytes of memory that may be non-zero in a fresh instance, before
    /// any export is called: sorted, merged byte ranges.
    ///
    /// These are the ranges active data segments write. A segment whose offset
    /// cannot be worked out ahead of time counts as the whole initial memory,
    /// and a module with a start function — which can write anywhere — counts
    /// as the whole memory it could ever have.
    pub data_ranges: Vec<Range<u64>>,
}

/// The limits of a worker's memory, in 64 KiB wasm pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryInfo {
    /// The size a fresh instance starts with.
    pub min_pages: u64,
    /// The most it can grow to, if the module sets a limit.
    pub max_pages: Option<u64>,
}

/// A mutable global and the name it is exported under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GlobalInfo {
    /// The global's index.
    pub index: u32,
    /// The global's value type.
    pub ty: GlobalType,
    /// The export name, `__roam_global_{index}`.
    pub export: String,
}

/// A table and the name it is exported under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableInfo {
    /// The table's index.
    pub index: u32,
    /// The table's initial size, in elements.
    pub min: u64,
    /// The most elements it can grow to, if the module sets a limit.
    pub max: Option<u64>,
    /// The export name, `__roam_table_{index}`.
    pub export: String,
}

/// A function that can sit in a table, and the name it is exported under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FuncExport {
    /// The function's index (imported functions first).
    pub index: u32,
    /// The export name, `__roam_func_{index}`.
    pub export: String,
}

/// The value type of a mutable global a worker may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GlobalType {
    /// A 32-bit integer.
    I32,
    /// A 64-bit integer.
    I64,
    /// A 32-bit float.
    F32,
    /// A 64-bit float.
    F64,
    /// A 128-bit vector.
    V128,
    /// A nullable function reference.
    FuncRef,
}

impl fmt::Display for GlobalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GlobalType::I32 => "i32",
            GlobalType::I64 => "i64",
            GlobalType::F32 => "f32",
            GlobalType::F64 => "f64",
            GlobalType::V128 => "v128",
            GlobalType::FuncRef => "funcref",
        })
    }
}

/// The export name of the mutable global at `index`.
pub(crate) fn global_export(index: u32) -> String {
    format!("__roam_global_{index}")
}

/// The export name of the table at `index`.
pub(crate) fn table_export(index: u32) -> String {
    format!("__roam_table_{index}")
}

/// The export name of the function at `index`.
pub(crate) fn func_export(index: u32) -> String {
    format!("__roam_func_{index}")
}

/// The prefix every export name that prepare adds starts with.
pub(crate) const RESERVED_PREFIX: &str = "__roam_";
