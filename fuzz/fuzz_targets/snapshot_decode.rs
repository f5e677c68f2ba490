//! Feeds arbitrary bytes to `Snapshot::decode`. Whatever decodes must re-encode to the
//! same bytes (the format has one encoding per snapshot), must pass `check_against` the
//! layout it describes, and must restore into a memory bounded by the decode caps without
//! panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use roam_snapshot::{
    DecodeLimits, GlobalValue, Layout, MemoryLimits, Snapshot, TableLimits, WASM_PAGE_SIZE,
};

/// Small caps keep each run fast; the decoder's checks are the same at any size.
const LIMITS: DecodeLimits = DecodeLimits {
    max_encoded_len: 1 << 22,
    max_memory_size: 1 << 24,
    max_globals: 1_000,
    max_tables: 10,
    max_table_elements: 100_000,
};

/// The layout of a module this snapshot would fit exactly.
fn own_layout(snapshot: &Snapshot) -> Layout {
    let m = &snapshot.manifest;
    let funcs = m
        .globals
        .iter()
        .filter_map(|g| match g {
            GlobalValue::FuncRef(f) => *f,
            _ => None,
        })
        .chain(
            m.tables
                .iter()
                .flat_map(|t| t.elements.iter().flatten().copied()),
        );
    let pages = m.memory_size / u64::from(WASM_PAGE_SIZE);
    Layout {
        module_hash: m.module_hash,
        globals: m.globals.iter().map(GlobalValue::ty).collect(),
        tables: m
            .tables
            .iter()
            .map(|t| TableLimits {
                min: t.elements.len() as u64,
                max: Some(t.elements.len() as u64),
            })
            .collect(),
        memory: MemoryLimits {
            min_pages: pages,
            max_pages: Some(pages),
        },
        func_count: funcs.max().map_or(0, |f| f + 1),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = Snapshot::decode(data, &LIMITS) else {
        return;
    };
    assert_eq!(
        snapshot.encode(),
        data,
        "decode then encode changed the bytes"
    );
    snapshot
        .check_against(&own_layout(&snapshot), LIMITS.max_memory_size)
        .expect("a decoded snapshot fits the layout it describes");

    let mut memory = vec![0u8; snapshot.manifest.memory_size as usize];
    let _ = snapshot.restore_memory(&mut memory, &[0..4096, 1 << 20..(1 << 20) + 1]);
    let _ = snapshot.summary().to_string();
});
