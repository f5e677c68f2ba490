//! Why a module cannot be prepared as a worker.
//!
//! Every refusal names its cause — the import, export, memory, table, global
//! or type at fault — so the author of a worker can tell from the message
//! alone what to change.

use crate::contract::allowed_wasi_list;

/// The reason [`prepare`](crate::prepare) refused a module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// the module is {size} bytes, over the limit of {limit} bytes
    #[error("the module is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The size of the module given.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// not a WebAssembly module: the bytes do not start with the `\0asm` magic
    #[error("not a WebAssembly module: the bytes do not start with the `\\0asm` magic")]
    NotWasm,

    /// this is a WebAssembly component, not a core module: a worker must be a core module
    #[error("this is a WebAssembly component, not a core module: a worker must be a core module")]
    Component,

    /// invalid WebAssembly at byte offset {offset}: {message}
    #[error("invalid WebAssembly at byte offset {offset}: {message}")]
    InvalidWasm {
        /// What the validator found wrong.
        message: String,
        /// Where in the module it found it.
        offset: usize,
    },

    /// type {index} is a GC {kind} type: objects on the GC heap are worker state that cannot be captured
    #[error(
        "type {index} is a GC {kind} type: objects on the GC heap are worker state that cannot be captured"
    )]
    GcType {
        /// The index of the type.
        index: u32,
        /// `struct`, `array` or `continuation`.
        kind: &'static str,
    },

    /// import `{module}.{name}` is not allowed: a worker may import roam.post_message and these wasi_snapshot_preview1 functions: fd_write, fd_read, …
    #[error(
        "import `{module}.{name}` is not allowed: a worker may import roam.post_message and these wasi_snapshot_preview1 functions: {}",
        allowed_wasi_list()
    )]
    ImportNotAllowed {
        /// The module name of the import.
        module: String,
        /// The item name of the import.
        name: String,
    },

    /// import `{module}.{name}` has the wrong signature: expected {expected}, found {found}
    #[error(
        "import `{module}.{name}` has the wrong signature: expected {expected}, found {found}"
    )]
    ImportSignature {
        /// The module name of the import.
        module: String,
        /// The item name of the import.
        name: String,
        /// The signature the contract requires.
        expected: String,
        /// The signature the module declares.
        found: String,
    },

    /// memory `{module}.{name}` is imported: a worker must define its one memory itself
    #[error("memory `{module}.{name}` is imported: a worker must define its one memory itself")]
    ImportedMemory {
        /// The module name of the import.
        module: String,
        /// The item name of the import.
        name: String,
    },

    /// table `{module}.{name}` is imported: a worker must define its tables itself, so that they move with it
    #[error(
        "table `{module}.{name}` is imported: a worker must define its tables itself, so that they move with it"
    )]
    ImportedTable {
        /// The module name of the import.
        module: String,
        /// The item name of the import.
        name: String,
    },

    /// global `{module}.{name}` is imported: a worker must define its globals itself, so that they move with it
    #[error(
        "global `{module}.{name}` is imported: a worker must define its globals itself, so that they move with it"
    )]
    ImportedGlobal {
        /// The module name of the import.
        module: String,
        /// The item name of the import.
        name: String,
    },

    /// the module defines no memory: a worker must define exactly one and export it as `memory`
    #[error(
        "the module defines no memory: a worker must define exactly one and export it as `memory`"
    )]
    NoMemory,

    /// the module defines {count} memories: a worker must define exactly one
    #[error("the module defines {count} memories: a worker must define exactly one")]
    MultipleMemories {
        /// How many memories the module defines.
        count: u32,
    },

    /// memory {index} is a 64-bit memory (memory64): a worker's memory must be 32-bit
    #[error("memory {index} is a 64-bit memory (memory64): a worker's memory must be 32-bit")]
    Memory64 {
        /// The index of the memory.
        index: u32,
    },

    /// memory {index} is shared: a worker's memory must not be shared
    #[error("memory {index} is shared: a worker's memory must not be shared")]
    SharedMemory {
        /// The index of the memory.
        index: u32,
    },

    /// table {index} holds {element_type}: a worker's tables must hold funcref
    #[error("table {index} holds {element_type}: a worker's tables must hold funcref")]
    UnsupportedTable {
        /// The index of the table.
        index: u32,
        /// The element type the table declares.
        element_type: String,
    },

    /// global {index} is a mutable {value_type}: a worker's mutable reference globals must be funcref
    #[error(
        "global {index} is a mutable {value_type}: a worker's mutable reference globals must be funcref"
    )]
    UnsupportedGlobal {
        /// The index of the global.
        index: u32,
        /// The value type the global declares.
        value_type: String,
    },

    /// the module does not export `{name}`, which every worker must export
    #[error("the module does not export `{name}`, which every worker must export")]
    MissingExport {
        /// The export the contract requires.
        name: String,
    },

    /// export `{name}` has the wrong type: expected {expected}, found {found}
    #[error("export `{name}` has the wrong type: expected {expected}, found {found}")]
    ExportSignature {
        /// The name of the export.
        name: String,
        /// What the contract requires.
        expected: String,
        /// What the module exports under that name.
        found: String,
    },

    /// export `{name}` uses the reserved prefix `__roam_` but is not an export prepare makes for this module
    #[error(
        "export `{name}` uses the reserved prefix `__roam_` but is not an export prepare makes for this module"
    )]
    ReservedExport {
        /// The name of the export.
        name: String,
    },
}

impl PrepareError {
    pub(crate) fn invalid(error: wasmparser::BinaryReaderError) -> Self {
        PrepareError::InvalidWasm {
            message: error.message().to_string(),
            offset: error.offset(),
        }
    }
}
