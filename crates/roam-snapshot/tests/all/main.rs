//! Integration tests of the snapshot crate, one module per area. Shared fixtures live here.

// A list holding one range of possibly non-zero bytes is what `restore_memory` takes.
#![allow(clippy::single_range_in_vec_init)]

mod check;
mod malformed;
mod restore;
mod roundtrip;
mod sweep;

use roam_snapshot::{
    ChunkBody, GlobalValue, Layout, Manifest, MemoryLimits, Snapshot, State, TableLimits,
    TableState, ValType,
};

pub const PAGE: usize = 65_536;
pub const CHUNK: u32 = 4_096;
pub const MODULE: [u8; 32] = [0x42; 32];

/// A state with every global kind, including a NaN with a payload, and two tables.
pub fn state() -> State {
    State {
        module_hash: MODULE,
        globals: vec![
            GlobalValue::I32(-7),
            GlobalValue::I64(i64::MIN),
            GlobalValue::F32(0x7fc0_0123), // NaN with payload
            GlobalValue::F64(f64::to_bits(-0.0)),
            GlobalValue::V128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            GlobalValue::FuncRef(Some(3)),
            GlobalValue::FuncRef(None),
        ],
        tables: vec![
            TableState {
                elements: vec![None, Some(0), Some(4), None],
            },
            TableState {
                elements: Vec::new(),
            },
        ],
        last_seq: 99,
        clock_ns: 123_456_789,
    }
}

/// The layout of the module `state()` belongs to.
pub fn layout() -> Layout {
    Layout {
        module_hash: MODULE,
        globals: vec![
            ValType::I32,
            ValType::I64,
            ValType::F32,
            ValType::F64,
            ValType::V128,
            ValType::FuncRef,
            ValType::FuncRef,
        ],
        tables: vec![
            TableLimits {
                min: 4,
                max: Some(10),
            },
            TableLimits { min: 0, max: None },
        ],
        memory: MemoryLimits {
            min_pages: 1,
            max_pages: Some(4),
        },
        func_count: 5,
    }
}

/// Two pages: text at the start, a repeated pattern, a lone byte near the end.
pub fn memory() -> Vec<u8> {
    let mut memory = vec![0u8; 2 * PAGE];
    for (i, b) in memory[..5_000].iter_mut().enumerate() {
        *b = b"roam worker memory "[i % 19];
    }
    // Chunks 4 and 6 hold the same content: stored once.
    memory[4 * 4096..5 * 4096].fill(0x5A);
    memory[6 * 4096..7 * 4096].fill(0x5A);
    memory[2 * PAGE - 1] = 1;
    memory
}

pub fn snapshot() -> Snapshot {
    Snapshot::capture(&memory(), CHUNK, state()).expect("capture")
}

/// Replaces the trailing xxh3-64 checksum of a framed structure, so a test can reach the
/// checks that come after the checksum.
pub fn reseal(bytes: &mut [u8]) {
    let end = bytes.len() - 8;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..end]);
    bytes[end..].copy_from_slice(&sum.to_le_bytes());
}

/// Builds a snapshot file by hand from the documented layout, with the bodies in the given
/// order, so tests can make files that `Snapshot::encode` never would.
pub fn assemble(manifest: &Manifest, bodies: &[ChunkBody]) -> Vec<u8> {
    assemble_raw(&manifest.encode(), bodies)
}

/// Like [`assemble`], with the manifest's bytes given as they are.
pub fn assemble_raw(manifest: &[u8], bodies: &[ChunkBody]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"ROAMSNAP");
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
    out.extend_from_slice(manifest);
    out.extend_from_slice(&(bodies.len() as u32).to_le_bytes());
    for body in bodies {
        out.extend_from_slice(&body.encode());
    }
    out.extend_from_slice(&[0; 8]);
    reseal(&mut out);
    out
}
