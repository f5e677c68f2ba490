//! The error of each operation: one enum per operation, so a caller matches only the
//! failures that operation can have. Each variant's doc comment is its message.

use crate::model::{ChunkHash, ValType};

/// Formats an optional maximum for messages: `none` reads better than `None`.
fn max_text(max: &Option<u64>) -> String {
    match max {
        Some(max) => max.to_string(),
        None => "none".to_owned(),
    }
}

/// Formats a module hash as lowercase hex, the way people compare them.
pub(crate) fn module_hash_hex(hash: &[u8; 32]) -> String {
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// Why bytes could not be decoded into a [`Snapshot`](crate::Snapshot), a
/// [`Manifest`](crate::Manifest) or a [`ChunkBody`](crate::ChunkBody).
///
/// Decoding checks the size cap, the checksum, the magic and the version before it parses
/// anything, then refuses every value that breaks a structural rule or a [`DecodeLimits`]
/// cap, so a value that decodes is safe to inspect.
///
/// [`DecodeLimits`]: crate::DecodeLimits
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeSnapshotError {
    /// the input is {len} bytes, more than the cap of {max} bytes
    #[error("the input is {len} bytes, more than the cap of {max} bytes")]
    TooLarge {
        /// Length of the input.
        len: u64,
        /// The cap it broke.
        max: u64,
    },
    /// the input ends in the middle of {what}
    #[error("the input ends in the middle of {what}")]
    Truncated {
        /// The structure that was cut short.
        what: &'static str,
    },
    /// checksum mismatch (stored {stored:016x}, computed {computed:016x}): the {what} is corrupt
    #[error(
        "checksum mismatch (stored {stored:016x}, computed {computed:016x}): the {what} is corrupt"
    )]
    ChecksumMismatch {
        /// Which structure: snapshot or manifest.
        what: &'static str,
        /// The checksum the input carries.
        stored: u64,
        /// The checksum of the bytes received.
        computed: u64,
    },
    /// not a Roam {what}: the magic bytes are wrong
    #[error("not a Roam {what}: the magic bytes are wrong")]
    BadMagic {
        /// What the input was expected to be.
        what: &'static str,
    },
    /// {what} format version {version} is not supported (this reader accepts {min}..={max})
    #[error(
        "{what} format version {version} is not supported (this reader accepts {min}..={max})"
    )]
    UnsupportedVersion {
        /// Which structure carried the version.
        what: &'static str,
        /// The version found.
        version: u16,
        /// Oldest version this reader accepts.
        min: u16,
        /// Newest version this reader accepts.
        max: u16,
    },
    /// reserved flag bits {flags:#x} are set in the {what} header
    #[error("reserved flag bits {flags:#x} are set in the {what} header")]
    ReservedFlags {
        /// Which header.
        what: &'static str,
        /// The flag bits found.
        flags: u16,
    },
    /// {count} unexpected bytes follow the end of the {what}
    #[error("{count} unexpected bytes follow the end of the {what}")]
    TrailingBytes {
        /// Which structure.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB
    #[error("chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB")]
    InvalidChunkSize {
        /// The chunk size found.
        chunk_size: u32,
    },
    /// memory size {memory_size} is not a whole number of 64 KiB wasm pages
    #[error("memory size {memory_size} is not a whole number of 64 KiB wasm pages")]
    MemoryNotPageMultiple {
        /// The memory size found.
        memory_size: u64,
    },
    /// memory size {memory_size} is larger than the cap of {max} bytes
    #[error("memory size {memory_size} is larger than the cap of {max} bytes")]
    MemoryTooLarge {
        /// The memory size found.
        memory_size: u64,
        /// The cap it broke.
        max: u64,
    },
    /// {count} globals is more than the cap of {max}
    #[error("{count} globals is more than the cap of {max}")]
    TooManyGlobals {
        /// The count found.
        count: u64,
        /// The cap it broke.
        max: u64,
    },
    /// global {index} has unknown type tag {tag}
    #[error("global {index} has unknown type tag {tag}")]
    UnknownGlobalType {
        /// Position of the global.
        index: u32,
        /// The tag found.
        tag: u8,
    },
    /// {count} tables is more than the cap of {max}
    #[error("{count} tables is more than the cap of {max}")]
    TooManyTables {
        /// The count found.
        count: u64,
        /// The cap it broke.
        max: u64,
    },
    /// the tables hold {count} elements in all, more than the cap of {max}
    #[error("the tables hold {count} elements in all, more than the cap of {max}")]
    TooManyTableElements {
        /// Elements counted so far, including the table that broke the cap.
        count: u64,
        /// The cap it broke.
        max: u64,
    },
    /// {count} chunks do not fit in a memory of {chunk_count} chunks
    #[error("{count} chunks do not fit in a memory of {chunk_count} chunks")]
    TooManyChunks {
        /// Chunks listed.
        count: u64,
        /// Chunks in the memory.
        chunk_count: u64,
    },
    /// chunk {index} lies outside the memory, which has {chunk_count} chunks
    #[error("chunk {index} lies outside the memory, which has {chunk_count} chunks")]
    ChunkOutsideMemory {
        /// The chunk index found.
        index: u32,
        /// Chunks in the memory.
        chunk_count: u64,
    },
    /// chunk {index} follows chunk {previous}: chunk indices must be strictly ascending
    #[error("chunk {index} follows chunk {previous}: chunk indices must be strictly ascending")]
    ChunksNotAscending {
        /// The chunk index found.
        index: u32,
        /// The index before it.
        previous: u32,
    },
    /// {count} chunk bodies is more than the {chunks} chunks that could name them
    #[error("{count} chunk bodies is more than the {chunks} chunks that could name them")]
    TooManyBodies {
        /// Bodies the input claims.
        count: u64,
        /// Chunks in the manifest.
        chunks: u64,
    },
    /// chunk body has unknown encoding {tag}
    #[error("chunk body has unknown encoding {tag}")]
    UnknownBodyEncoding {
        /// The tag found.
        tag: u8,
    },
    /// chunk body claims {raw_len} bytes, but a chunk holds 1..={max} bytes
    #[error("chunk body claims {raw_len} bytes, but a chunk holds 1..={max} bytes")]
    BodyTooLarge {
        /// The raw length found.
        raw_len: u32,
        /// Largest chunk size.
        max: u32,
    },
    /// raw chunk body holds {len} bytes instead of {raw_len}
    #[error("raw chunk body holds {len} bytes instead of {raw_len}")]
    RawBodyLength {
        /// Bytes present.
        len: u32,
        /// Bytes expected.
        raw_len: u32,
    },
    /// compressed chunk body of {len} bytes is not smaller than its {raw_len} raw bytes
    #[error("compressed chunk body of {len} bytes is not smaller than its {raw_len} raw bytes")]
    CompressedBodyTooLong {
        /// Compressed bytes present.
        len: u32,
        /// Raw length of the chunk.
        raw_len: u32,
    },
    /// chunk body {hash:032x} holds {raw_len} bytes, but the snapshot's chunk size is {chunk_size}
    #[error(
        "chunk body {hash:032x} holds {raw_len} bytes, but the snapshot's chunk size is {chunk_size}"
    )]
    BodySizeMismatch {
        /// Hash of the body.
        hash: ChunkHash,
        /// Its raw length.
        raw_len: u32,
        /// The manifest's chunk size.
        chunk_size: u32,
    },
    /// chunk body {hash:032x} follows {previous:032x}: bodies must be stored once, in ascending hash order
    #[error(
        "chunk body {hash:032x} follows {previous:032x}: bodies must be stored once, in ascending hash order"
    )]
    BodiesNotAscending {
        /// Hash of the body.
        hash: ChunkHash,
        /// Hash of the body before it.
        previous: ChunkHash,
    },
    /// the manifest names chunk {hash:032x} but no body holds it
    #[error("the manifest names chunk {hash:032x} but no body holds it")]
    MissingBody {
        /// The chunk hash without a body.
        hash: ChunkHash,
    },
    /// chunk body {hash:032x} is not named by the manifest
    #[error("chunk body {hash:032x} is not named by the manifest")]
    UnreferencedBody {
        /// The body's hash.
        hash: ChunkHash,
    },
}

/// Why a snapshot cannot be restored into an instance of the given module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IncompatibleSnapshotError {
    /// the snapshot was taken from module {found}, not from module {expected}
    #[error(
        "the snapshot was taken from module {}, not from module {}",
        module_hash_hex(found),
        module_hash_hex(expected)
    )]
    ModuleMismatch {
        /// Hash of the loaded module.
        expected: [u8; 32],
        /// Hash the snapshot carries.
        found: [u8; 32],
    },
    /// chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB
    #[error("chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB")]
    InvalidChunkSize {
        /// The chunk size found.
        chunk_size: u32,
    },
    /// memory size {memory_size} is not a whole number of 64 KiB wasm pages
    #[error("memory size {memory_size} is not a whole number of 64 KiB wasm pages")]
    MemoryNotPageMultiple {
        /// The memory size found.
        memory_size: u64,
    },
    /// memory size {memory_size} is larger than the cap of {max} bytes
    #[error("memory size {memory_size} is larger than the cap of {max} bytes")]
    MemoryTooLarge {
        /// The snapshot's memory size.
        memory_size: u64,
        /// The cap it broke.
        max: u64,
    },
    /// the memory has {pages} pages, outside the module's limits (min {min_pages}, max {})
    #[error(
        "the memory has {pages} pages, outside the module's limits (min {min_pages}, max {})",
        max_text(max_pages)
    )]
    MemoryOutsideLimits {
        /// Pages in the snapshot's memory.
        pages: u64,
        /// The module's minimum.
        min_pages: u64,
        /// The module's maximum.
        max_pages: Option<u64>,
    },
    /// chunk {index} lies outside the memory, which has {chunk_count} chunks
    #[error("chunk {index} lies outside the memory, which has {chunk_count} chunks")]
    ChunkOutsideMemory {
        /// The chunk index found.
        index: u32,
        /// Chunks in the memory.
        chunk_count: u64,
    },
    /// chunk {index} follows chunk {previous}: chunk indices must be strictly ascending
    #[error("chunk {index} follows chunk {previous}: chunk indices must be strictly ascending")]
    ChunksNotAscending {
        /// The chunk index found.
        index: u32,
        /// The index before it.
        previous: u32,
    },
    /// the snapshot has {found} mutable globals, the module {expected}
    #[error("the snapshot has {found} mutable globals, the module {expected}")]
    GlobalCount {
        /// Globals in the snapshot.
        found: usize,
        /// Mutable globals of the module.
        expected: usize,
    },
    /// global {index} is {found} in the snapshot but {expected} in the module
    #[error("global {index} is {found} in the snapshot but {expected} in the module")]
    GlobalType {
        /// Position among the mutable globals.
        index: usize,
        /// Type in the snapshot.
        found: ValType,
        /// Type in the module.
        expected: ValType,
    },
    /// global {index} refers to function {func}, but the module has {func_count} functions
    #[error("global {index} refers to function {func}, but the module has {func_count} functions")]
    GlobalFunction {
        /// Position among the mutable globals.
        index: usize,
        /// Function index found.
        func: u32,
        /// Functions in the module.
        func_count: u32,
    },
    /// the snapshot has {found} tables, the module {expected}
    #[error("the snapshot has {found} tables, the module {expected}")]
    TableCount {
        /// Tables in the snapshot.
        found: usize,
        /// Tables of the module.
        expected: usize,
    },
    /// table {table} has {size} elements, outside the module's limits (min {min}, max {})
    #[error(
        "table {table} has {size} elements, outside the module's limits (min {min}, max {})",
        max_text(max)
    )]
    TableSize {
        /// Table index.
        table: usize,
        /// Elements in the snapshot's table.
        size: u64,
        /// The module's minimum.
        min: u64,
        /// The module's maximum.
        max: Option<u64>,
    },
    /// table {table} slot {slot} refers to function {func}, but the module has {func_count} functions
    #[error(
        "table {table} slot {slot} refers to function {func}, but the module has {func_count} functions"
    )]
    TableFunction {
        /// Table index.
        table: usize,
        /// Slot in the table.
        slot: usize,
        /// Function index found.
        func: u32,
        /// Functions in the module.
        func_count: u32,
    },
}

/// Why a snapshot's memory (or one chunk of it) could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreMemoryError {
    /// the memory is {len} bytes, but the snapshot's memory is {memory_size}
    #[error("the memory is {len} bytes, but the snapshot's memory is {memory_size}")]
    MemoryLength {
        /// Length of the memory given.
        len: u64,
        /// The snapshot's memory size.
        memory_size: u64,
    },
    /// chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB
    #[error("chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB")]
    InvalidChunkSize {
        /// The chunk size found.
        chunk_size: u32,
    },
    /// memory size {memory_size} is not a whole number of 64 KiB wasm pages
    #[error("memory size {memory_size} is not a whole number of 64 KiB wasm pages")]
    MemoryNotPageMultiple {
        /// The snapshot's memory size.
        memory_size: u64,
    },
    /// chunk {index} lies outside the memory
    #[error("chunk {index} lies outside the memory")]
    ChunkOutsideMemory {
        /// The chunk index found.
        index: u32,
    },
    /// chunk {index} needs body {hash:032x}, which the snapshot does not hold
    #[error("chunk {index} needs body {hash:032x}, which the snapshot does not hold")]
    MissingBody {
        /// The chunk index.
        index: u32,
        /// The hash it names.
        hash: ChunkHash,
    },
    /// the destination holds {len} bytes, but chunk body {hash:032x} holds {raw_len}
    #[error("the destination holds {len} bytes, but chunk body {hash:032x} holds {raw_len}")]
    DestinationLength {
        /// The body's hash.
        hash: ChunkHash,
        /// The body's raw length.
        raw_len: u32,
        /// Length of the destination.
        len: usize,
    },
    /// chunk body {hash:032x} is corrupt: it does not decompress to {raw_len} bytes
    #[error("chunk body {hash:032x} is corrupt: it does not decompress to {raw_len} bytes")]
    Corrupt {
        /// The body's hash.
        hash: ChunkHash,
        /// The body's raw length.
        raw_len: u32,
    },
    /// chunk body {expected:032x} is corrupt: its content hashes to {found:032x}
    #[error("chunk body {expected:032x} is corrupt: its content hashes to {found:032x}")]
    HashMismatch {
        /// The hash the body claims.
        expected: ChunkHash,
        /// The hash of what it decompressed to.
        found: ChunkHash,
    },
}

/// Why a snapshot (or a chunk map, or a chunk body) could not be captured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureSnapshotError {
    /// chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB
    #[error("chunk size {chunk_size} is not a power of two between 4 KiB and 64 KiB")]
    InvalidChunkSize {
        /// The chunk size asked for.
        chunk_size: u32,
    },
    /// the memory is {len} bytes, not a whole number of 64 KiB wasm pages
    #[error("the memory is {len} bytes, not a whole number of 64 KiB wasm pages")]
    MemoryNotPageMultiple {
        /// Length of the memory.
        len: u64,
    },
    /// the memory is {len} bytes, more than the format can describe ({max})
    #[error("the memory is {len} bytes, more than the format can describe ({max})")]
    MemoryTooLarge {
        /// Length of the memory.
        len: u64,
        /// Largest memory the format describes.
        max: u64,
    },
    /// a chunk of {len} bytes is empty or larger than the largest chunk size ({max})
    #[error("a chunk of {len} bytes is empty or larger than the largest chunk size ({max})")]
    ChunkLength {
        /// Length of the chunk.
        len: usize,
        /// Largest chunk size.
        max: u32,
    },
    /// {count} {what} is more than the format can describe
    #[error("{count} {what} is more than the format can describe")]
    TooMany {
        /// What there are too many of.
        what: &'static str,
        /// How many there are.
        count: usize,
    },
    /// function index {func} is reserved by the format for a null reference
    #[error("function index {func} is reserved by the format for a null reference")]
    ReservedFunctionIndex {
        /// The function index.
        func: u32,
    },
}
