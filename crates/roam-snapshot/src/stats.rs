//! Numbers about a snapshot for `roam snapshot inspect`, benchmarks and logs: sizes,
//! chunk counts, how much dedup and compression saved, and a human-readable summary.

use std::fmt;

use crate::chunk::ChunkEncoding;
use crate::error::module_hash_hex;
use crate::model::WASM_PAGE_SIZE;
use crate::Snapshot;

/// Sizes and counts of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SnapshotStats {
    /// Memory size in bytes.
    pub memory_size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Non-zero chunks (the chunk map's length).
    pub chunks: u64,
    /// Bytes in non-zero chunks.
    pub nonzero_bytes: u64,
    /// Distinct non-zero chunk contents, each stored once.
    pub unique_chunks: u64,
    /// Bodies stored raw because lz4 did not shrink them.
    pub raw_chunks: u64,
    /// Bytes of all stored bodies (compressed or raw), without their headers.
    pub compressed_bytes: u64,
    /// Bytes of the encoded manifest.
    pub manifest_size: u64,
    /// Bytes of the whole encoded snapshot.
    pub encoded_size: u64,
}

/// A description of a snapshot for people and for JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SnapshotSummary {
    /// The format version the snapshot encodes as.
    pub format_version: u16,
    /// The module's hash, in hex.
    pub module_hash: String,
    /// Memory size in 64 KiB pages.
    pub memory_pages: u64,
    /// Number of mutable globals.
    pub globals: usize,
    /// Size of each table.
    pub table_sizes: Vec<u64>,
    /// Sequence number of the last message handled.
    pub last_seq: u64,
    /// The worker's clock at capture, in nanoseconds.
    pub clock_ns: u64,
    /// Sizes and counts.
    pub stats: SnapshotStats,
}

impl Snapshot {
    /// Sizes and counts of this snapshot.
    pub fn stats(&self) -> SnapshotStats {
        let m = &self.manifest;
        let bodies = self.bodies();
        SnapshotStats {
            memory_size: m.memory_size,
            chunk_size: m.chunk_size,
            chunks: m.chunks.len() as u64,
            nonzero_bytes: m.chunks.len() as u64 * u64::from(m.chunk_size),
            unique_chunks: bodies.len() as u64,
            raw_chunks: bodies
                .iter()
                .filter(|b| b.encoding() == ChunkEncoding::Raw)
                .count() as u64,
            compressed_bytes: bodies.iter().map(|b| b.bytes().len() as u64).sum(),
            manifest_size: m.encoded_len() as u64,
            encoded_size: self.encoded_len() as u64,
        }
    }

    /// A description of this snapshot; its `Display` is a few lines for a terminal.
    pub fn summary(&self) -> SnapshotSummary {
        let m = &self.manifest;
        SnapshotSummary {
            format_version: crate::FORMAT_VERSION,
            module_hash: module_hash_hex(&m.module_hash),
            memory_pages: m.memory_size / u64::from(WASM_PAGE_SIZE),
            globals: m.globals.len(),
            table_sizes: m.tables.iter().map(|t| t.elements.len() as u64).collect(),
            last_seq: m.last_seq,
            clock_ns: m.clock_ns,
            stats: self.stats(),
        }
    }
}

/// Formats a byte count with a binary unit.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl fmt::Display for SnapshotSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(f, "snapshot format v{}", self.format_version)?;
        writeln!(f, "module      {}", self.module_hash)?;
        writeln!(
            f,
            "memory      {} ({} pages), {} non-zero ({:.1}%)",
            bytes(s.memory_size),
            self.memory_pages,
            bytes(s.nonzero_bytes),
            percent(s.nonzero_bytes, s.memory_size)
        )?;
        writeln!(
            f,
            "chunks      {} of {}, {} unique, {} stored raw",
            s.chunks,
            bytes(u64::from(s.chunk_size)),
            s.unique_chunks,
            s.raw_chunks
        )?;
        writeln!(
            f,
            "bodies      {} ({:.1}% of non-zero)",
            bytes(s.compressed_bytes),
            percent(s.compressed_bytes, s.nonzero_bytes)
        )?;
        writeln!(
            f,
            "encoded     {} (manifest {})",
            bytes(s.encoded_size),
            bytes(s.manifest_size)
        )?;
        let tables: Vec<String> = self.table_sizes.iter().map(u64::to_string).collect();
        writeln!(
            f,
            "globals     {}; tables [{}]",
            self.globals,
            tables.join(", ")
        )?;
        write!(
            f,
            "last seq    {}; clock {} ns",
            self.last_seq, self.clock_ns
        )
    }
}
