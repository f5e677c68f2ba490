//! The manifest's own encoding, so it can travel ahead of the chunk bodies, and the caps
//! ([`DecodeLimits`]) that bound what a decoder accepts.

use crate::model::{valid_chunk_size, ChunkRef, GlobalValue, Manifest, TableState, WASM_PAGE_SIZE};
use crate::wire::{frame_end, frame_start, unframe, PutLe, Reader, CHECKSUM_LEN};
use crate::{DecodeSnapshotError, IncompatibleSnapshotError};

/// Magic bytes that open an encoded manifest.
pub(crate) const MANIFEST_MAGIC: &[u8; 8] = b"ROAMMANF";

/// The encoding of a null function reference in globals and tables.
const NULL_FUNC: u32 = u32::MAX;

/// Fixed bytes of an encoded manifest: magic, version, flags, module hash, chunk size,
/// memory size, last sequence, clock, the three counts, and the checksum.
const MANIFEST_FIXED_LEN: usize = 8 + 2 + 2 + 32 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + CHECKSUM_LEN;

/// Caps on what a decoder accepts, checked before anything is allocated from a length
/// the input claims.
///
/// The defaults admit any wasm32 worker that wasmtime accepts with its default
/// configuration; lower them where less is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeLimits {
    /// Largest encoded snapshot or manifest, in bytes. Default: 4 GiB + 256 MiB (a full
    /// 4 GiB memory of incompressible chunks, plus its manifest).
    pub max_encoded_len: u64,
    /// Largest memory, in bytes. Default: 4 GiB, the wasm32 maximum.
    pub max_memory_size: u64,
    /// Most mutable globals. Default: 1,000,000 (wasmparser's cap on globals).
    pub max_globals: u32,
    /// Most tables. Default: 100 (wasmparser's cap on tables).
    pub max_tables: u32,
    /// Most table elements, all tables together. Default: 10,000,000 (wasmparser's cap).
    pub max_table_elements: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_encoded_len: (4 << 30) + (256 << 20),
            max_memory_size: 4 << 30,
            max_globals: 1_000_000,
            max_tables: 100,
            max_table_elements: 10_000_000,
        }
    }
}

/// A break of the manifest's structural rules, reported by whichever operation found it.
pub(crate) enum ShapeError {
    InvalidChunkSize { chunk_size: u32 },
    MemoryNotPageMultiple { memory_size: u64 },
    ChunkOutsideMemory { index: u32, chunk_count: u64 },
    ChunksNotAscending { index: u32, previous: u32 },
}

impl From<ShapeError> for DecodeSnapshotError {
    fn from(e: ShapeError) -> Self {
        match e {
            ShapeError::InvalidChunkSize { chunk_size } => {
                DecodeSnapshotError::InvalidChunkSize { chunk_size }
            }
            ShapeError::MemoryNotPageMultiple { memory_size } => {
                DecodeSnapshotError::MemoryNotPageMultiple { memory_size }
            }
            ShapeError::ChunkOutsideMemory { index, chunk_count } => {
                DecodeSnapshotError::ChunkOutsideMemory { index, chunk_count }
            }
            ShapeError::ChunksNotAscending { index, previous } => {
                DecodeSnapshotError::ChunksNotAscending { index, previous }
            }
        }
    }
}

impl From<ShapeError> for IncompatibleSnapshotError {
    fn from(e: ShapeError) -> Self {
        match e {
            ShapeError::InvalidChunkSize { chunk_size } => {
                IncompatibleSnapshotError::InvalidChunkSize { chunk_size }
            }
            ShapeError::MemoryNotPageMultiple { memory_size } => {
                IncompatibleSnapshotError::MemoryNotPageMultiple { memory_size }
            }
            ShapeError::ChunkOutsideMemory { index, chunk_count } => {
                IncompatibleSnapshotError::ChunkOutsideMemory { index, chunk_count }
            }
            ShapeError::ChunksNotAscending { index, previous } => {
                IncompatibleSnapshotError::ChunksNotAscending { index, previous }
            }
        }
    }
}

/// Checks the chunk size and the memory size, and returns the memory's chunk count.
pub(crate) fn check_geometry(chunk_size: u32, memory_size: u64) -> Result<u64, ShapeError> {
    if !valid_chunk_size(chunk_size) {
        return Err(ShapeError::InvalidChunkSize { chunk_size });
    }
    if !memory_size.is_multiple_of(u64::from(WASM_PAGE_SIZE)) {
        return Err(ShapeError::MemoryNotPageMultiple { memory_size });
    }
    Ok(memory_size / u64::from(chunk_size))
}

/// Checks that chunk indices are strictly ascending and inside a memory of `chunk_count`.
pub(crate) fn check_chunks(chunks: &[ChunkRef], chunk_count: u64) -> Result<(), ShapeError> {
    let mut previous: Option<u32> = None;
    for chunk in chunks {
        if u64::from(chunk.index) >= chunk_count {
            return Err(ShapeError::ChunkOutsideMemory {
                index: chunk.index,
                chunk_count,
            });
        }
        if let Some(previous) = previous {
            if chunk.index <= previous {
                return Err(ShapeError::ChunksNotAscending {
                    index: chunk.index,
                    previous,
                });
            }
        }
        previous = Some(chunk.index);
    }
    Ok(())
}

impl Manifest {
    /// Checks the rules every manifest must meet, whatever module it is for.
    pub(crate) fn check_shape(&self) -> Result<(), ShapeError> {
        let chunk_count = check_geometry(self.chunk_size, self.memory_size)?;
        check_chunks(&self.chunks, chunk_count)
    }

    /// The number of chunks in the memory.
    pub fn chunk_count(&self) -> u64 {
        if self.chunk_size == 0 {
            0
        } else {
            self.memory_size / u64::from(self.chunk_size)
        }
    }

    /// Length of [`encode`](Manifest::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        let globals: usize = self.globals.iter().map(|g| 1 + global_payload_len(g)).sum();
        let tables: usize = self.tables.iter().map(|t| 4 + 4 * t.elements.len()).sum();
        MANIFEST_FIXED_LEN + globals + tables + 20 * self.chunks.len()
    }

    /// Encodes the manifest on its own, framed with magic, version and checksum, so it can
    /// be sent ahead of the chunk bodies.
    ///
    /// A manifest from [`Snapshot::capture`](crate::Snapshot::capture) or a decoder
    /// always encodes faithfully. A hand-built one must keep each count below 2^32 and
    /// must not use function index `u32::MAX`, which the format reserves for null.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends [`encode`](Manifest::encode)'s output to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        frame_start(out, MANIFEST_MAGIC);
        out.extend_from_slice(&self.module_hash);
        out.put_u32(self.chunk_size);
        out.put_u64(self.memory_size);
        out.put_u64(self.last_seq);
        out.put_u64(self.clock_ns);
        out.put_u32(self.globals.len() as u32);
        for global in &self.globals {
            encode_global(out, global);
        }
        out.put_u32(self.tables.len() as u32);
        for table in &self.tables {
            out.put_u32(table.elements.len() as u32);
            for element in &table.elements {
                out.put_u32(element.unwrap_or(NULL_FUNC));
            }
        }
        out.put_u32(self.chunks.len() as u32);
        for chunk in &self.chunks {
            out.put_u32(chunk.index);
            out.put_u128(chunk.hash);
        }
        frame_end(out, start);
    }

    /// Decodes a manifest encoded by [`encode`](Manifest::encode).
    ///
    /// Checks, in order: the size cap, the checksum, the magic, the version; then parses,
    /// refusing anything that breaks `limits` or the manifest's structural rules (chunk
    /// size, whole pages, chunks strictly ascending and inside the memory).
    pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<Manifest, DecodeSnapshotError> {
        let content = unframe(bytes, limits.max_encoded_len, MANIFEST_MAGIC, "manifest")?;
        let mut reader = Reader::new(content);
        let manifest = decode_content(&mut reader, limits)?;
        reader.finish("manifest")?;
        Ok(manifest)
    }
}

fn global_payload_len(global: &GlobalValue) -> usize {
    match global {
        GlobalValue::I32(_) | GlobalValue::F32(_) | GlobalValue::FuncRef(_) => 4,
        GlobalValue::I64(_) | GlobalValue::F64(_) => 8,
        GlobalValue::V128(_) => 16,
    }
}

fn encode_global(out: &mut Vec<u8>, global: &GlobalValue) {
    match *global {
        GlobalValue::I32(v) => {
            out.put_u8(0);
            out.put_u32(v as u32);
        }
        GlobalValue::I64(v) => {
            out.put_u8(1);
            out.put_u64(v as u64);
        }
        GlobalValue::F32(bits) => {
            out.put_u8(2);
            out.put_u32(bits);
        }
        GlobalValue::F64(bits) => {
            out.put_u8(3);
            out.put_u64(bits);
        }
        GlobalValue::V128(v) => {
            out.put_u8(4);
            out.put_u128(v);
        }
        GlobalValue::FuncRef(func) => {
            out.put_u8(5);
            out.put_u32(func.unwrap_or(NULL_FUNC));
        }
    }
}

fn decode_func(raw: u32) -> Option<u32> {
    (raw != NULL_FUNC).then_some(raw)
}

fn decode_content(
    reader: &mut Reader<'_>,
    limits: &DecodeLimits,
) -> Result<Manifest, DecodeSnapshotError> {
    const WHAT: &str = "manifest";
    let module_hash = reader.bytes32(WHAT)?;
    let chunk_size = reader.u32(WHAT)?;
    let memory_size = reader.u64(WHAT)?;
    let chunk_count = check_geometry(chunk_size, memory_size)?;
    if memory_size > limits.max_memory_size {
        return Err(DecodeSnapshotError::MemoryTooLarge {
            memory_size,
            max: limits.max_memory_size,
        });
    }
    let last_seq = reader.u64(WHAT)?;
    let clock_ns = reader.u64(WHAT)?;

    let count = u64::from(reader.u32(WHAT)?);
    if count > u64::from(limits.max_globals) {
        return Err(DecodeSnapshotError::TooManyGlobals {
            count,
            max: u64::from(limits.max_globals),
        });
    }
    // The smallest global is a tag and four bytes.
    let count = reader.check_room(count, 5, "globals")?;
    let mut globals = Vec::with_capacity(count);
    for index in 0..count {
        const G: &str = "globals";
        let global = match reader.u8(G)? {
            0 => GlobalValue::I32(reader.u32(G)? as i32),
            1 => GlobalValue::I64(reader.u64(G)? as i64),
            2 => GlobalValue::F32(reader.u32(G)?),
            3 => GlobalValue::F64(reader.u64(G)?),
            4 => GlobalValue::V128(reader.u128(G)?),
            5 => GlobalValue::FuncRef(decode_func(reader.u32(G)?)),
            tag => {
                return Err(DecodeSnapshotError::UnknownGlobalType {
                    // count <= max_globals, a u32.
                    index: index as u32,
                    tag,
                });
            }
        };
        globals.push(global);
    }

    let count = u64::from(reader.u32(WHAT)?);
    if count > u64::from(limits.max_tables) {
        return Err(DecodeSnapshotError::TooManyTables {
            count,
            max: u64::from(limits.max_tables),
        });
    }
    let count = reader.check_room(count, 4, "tables")?;
    let mut tables = Vec::with_capacity(count);
    let mut total_elements = 0u64;
    for _ in 0..count {
        let len = u64::from(reader.u32("tables")?);
        total_elements += len;
        if total_elements > limits.max_table_elements {
            return Err(DecodeSnapshotError::TooManyTableElements {
                count: total_elements,
                max: limits.max_table_elements,
            });
        }
        let len = reader.check_room(len, 4, "table elements")?;
        let raw = reader.take(len * 4, "table elements")?;
        let elements = raw
            .chunks_exact(4)
            .map(|e| decode_func(u32::from_le_bytes([e[0], e[1], e[2], e[3]])))
            .collect();
        tables.push(TableState { elements });
    }

    let count = u64::from(reader.u32(WHAT)?);
    if count > chunk_count {
        return Err(DecodeSnapshotError::TooManyChunks { count, chunk_count });
    }
    let count = reader.check_room(count, 20, "chunk map")?;
    let mut chunks = Vec::with_capacity(count);
    for _ in 0..count {
        let index = reader.u32("chunk map")?;
        let hash = reader.u128("chunk map")?;
        chunks.push(ChunkRef { index, hash });
    }
    check_chunks(&chunks, chunk_count)?;

    Ok(Manifest {
        module_hash,
        chunk_size,
        memory_size,
        globals,
        tables,
        last_seq,
        clock_ns,
        chunks,
    })
}
