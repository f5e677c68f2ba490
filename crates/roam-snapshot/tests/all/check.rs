//! A snapshot is checked against the module about to receive it, and refused with a
//! reason when it does not fit.

use roam_snapshot::{
    GlobalValue, IncompatibleSnapshotError as E, Layout, MemoryLimits, Snapshot, TableLimits,
    ValType,
};

use crate::{layout, snapshot, PAGE};

fn check(snap: &Snapshot, layout: &Layout) -> Result<(), E> {
    snap.check_against(layout, 1 << 30)
}

#[test]
fn a_matching_snapshot_passes() {
    check(&snapshot(), &layout()).unwrap();
}

#[test]
fn a_snapshot_of_another_module_is_refused() {
    let mut other = layout();
    other.module_hash[31] ^= 1;
    let err = check(&snapshot(), &other).unwrap_err();
    assert!(matches!(err, E::ModuleMismatch { .. }));
    let text = err.to_string();
    assert!(text.contains(&"42".repeat(32)), "{text}");
}

#[test]
fn the_memory_must_fit_the_cap_and_the_module_limits() {
    let snap = snapshot(); // 2 pages
    assert_eq!(
        snap.check_against(&layout(), PAGE as u64),
        Err(E::MemoryTooLarge {
            memory_size: 2 * PAGE as u64,
            max: PAGE as u64
        })
    );
    for memory in [
        MemoryLimits {
            min_pages: 3,
            max_pages: None,
        },
        MemoryLimits {
            min_pages: 1,
            max_pages: Some(1),
        },
    ] {
        let layout = Layout { memory, ..layout() };
        assert_eq!(
            check(&snap, &layout),
            Err(E::MemoryOutsideLimits {
                pages: 2,
                min_pages: memory.min_pages,
                max_pages: memory.max_pages
            })
        );
    }
    let mut odd = snapshot();
    odd.manifest.memory_size += 4096;
    assert!(matches!(
        check(&odd, &layout()),
        Err(E::MemoryNotPageMultiple { .. })
    ));
}

#[test]
fn globals_must_match_in_count_type_and_function() {
    let mut fewer = layout();
    fewer.globals.pop();
    assert_eq!(
        check(&snapshot(), &fewer),
        Err(E::GlobalCount {
            found: 7,
            expected: 6
        })
    );

    let mut retyped = layout();
    retyped.globals[1] = ValType::I32;
    assert_eq!(
        check(&snapshot(), &retyped),
        Err(E::GlobalType {
            index: 1,
            found: ValType::I64,
            expected: ValType::I32
        })
    );
    assert_eq!(
        check(&snapshot(), &retyped).unwrap_err().to_string(),
        "global 1 is i64 in the snapshot but i32 in the module"
    );

    let mut snap = snapshot();
    snap.manifest.globals[5] = GlobalValue::FuncRef(Some(5));
    assert_eq!(
        check(&snap, &layout()),
        Err(E::GlobalFunction {
            index: 5,
            func: 5,
            func_count: 5
        })
    );
}

#[test]
fn tables_must_match_in_count_size_and_functions() {
    let mut one = layout();
    one.tables.pop();
    assert_eq!(
        check(&snapshot(), &one),
        Err(E::TableCount {
            found: 2,
            expected: 1
        })
    );

    for limits in [
        TableLimits { min: 5, max: None },
        TableLimits {
            min: 0,
            max: Some(3),
        },
    ] {
        let mut layout = layout();
        layout.tables[0] = limits;
        assert_eq!(
            check(&snapshot(), &layout),
            Err(E::TableSize {
                table: 0,
                size: 4,
                min: limits.min,
                max: limits.max
            })
        );
    }

    // The table names function 4; a module with 4 functions has no such function.
    let mut fewer_funcs = layout();
    fewer_funcs.func_count = 4;
    assert_eq!(
        check(&snapshot(), &fewer_funcs),
        Err(E::TableFunction {
            table: 0,
            slot: 2,
            func: 4,
            func_count: 4
        })
    );
}

#[test]
fn a_manifest_changed_by_hand_is_checked_for_structure() {
    let mut snap = snapshot();
    snap.manifest.chunks.swap(0, 1);
    assert_eq!(
        check(&snap, &layout()),
        Err(E::ChunksNotAscending {
            index: 0,
            previous: 1
        })
    );
    let mut snap = snapshot();
    snap.manifest.chunks.last_mut().unwrap().index = 32;
    assert_eq!(
        check(&snap, &layout()),
        Err(E::ChunkOutsideMemory {
            index: 32,
            chunk_count: 32
        })
    );
    let mut snap = snapshot();
    snap.manifest.chunk_size = 1 << 20;
    assert_eq!(
        check(&snap, &layout()),
        Err(E::InvalidChunkSize {
            chunk_size: 1 << 20
        })
    );
}
