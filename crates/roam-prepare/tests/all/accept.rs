//! Workers that keep the contract are accepted, and `ModuleInfo` describes
//! their state exactly.

use roam_prepare::{
    module_info, prepare, FuncExport, GlobalInfo, GlobalType, MemoryInfo, TableInfo,
    ALLOWED_WASI_IMPORTS,
};

use crate::support::{fixture, wasm};

fn funcs(indices: &[u32]) -> Vec<FuncExport> {
    indices
        .iter()
        .map(|&index| FuncExport {
            index,
            export: format!("__roam_func_{index}"),
        })
        .collect()
}

fn global(index: u32, ty: GlobalType) -> GlobalInfo {
    GlobalInfo {
        index,
        ty,
        export: format!("__roam_global_{index}"),
    }
}

fn table(index: u32, min: u64, max: Option<u64>) -> TableInfo {
    TableInfo {
        index,
        min,
        max,
        export: format!("__roam_table_{index}"),
    }
}

#[test]
fn minimal_worker() {
    let info = prepare(&fixture("minimal")).unwrap().info;
    assert_eq!(
        info.memory,
        MemoryInfo {
            min_pages: 1,
            max_pages: None
        }
    );
    assert!(info.globals.is_empty());
    assert!(info.tables.is_empty());
    // Exported functions can be taken by reference (`ref.func`), so they
    // could end up in a table too.
    assert_eq!(info.table_funcs, funcs(&[1, 2]));
    assert_eq!(info.func_count, 3);
    assert!(!info.has_init);
    assert!(!info.has_initialize);
    assert!(info.wasi_imports.is_empty());
    assert!(info.data_ranges.is_empty());
}

#[test]
fn wasi_reactor_with_every_allowed_import() {
    let info = prepare(&fixture("wasi")).unwrap().info;
    let mut allowed: Vec<String> = ALLOWED_WASI_IMPORTS.iter().map(|s| s.to_string()).collect();
    allowed.sort();
    assert_eq!(info.wasi_imports, allowed);
    assert!(info.has_init);
    assert!(info.has_initialize);
    assert_eq!(info.func_count, 24);
    assert_eq!(info.globals, vec![global(0, GlobalType::I32)]);
    assert_eq!(info.table_funcs, funcs(&[20, 21, 22, 23]));
}

#[test]
fn tables_element_segments_and_globals() {
    let info = prepare(&fixture("tables")).unwrap().info;
    assert_eq!(
        info.memory,
        MemoryInfo {
            min_pages: 2,
            max_pages: Some(16)
        }
    );
    assert_eq!(
        info.globals,
        vec![
            global(0, GlobalType::I32),
            global(2, GlobalType::I64),
            global(3, GlobalType::F32),
            global(4, GlobalType::F64),
            global(5, GlobalType::V128),
            global(6, GlobalType::FuncRef),
        ]
    );
    assert_eq!(info.tables, vec![table(0, 4, Some(8)), table(1, 2, None)]);
    // 1, 2: active `func` segment; 3: active expression segment; 4: passive;
    // 5: declarative; 6: a global's initialiser; 8, 9: exports.
    // 0 (an import nobody references) and 7 (unreferenced) cannot be in a table.
    assert_eq!(info.table_funcs, funcs(&[1, 2, 3, 4, 5, 6, 8, 9]));
    assert_eq!(info.func_count, 10);
    // "hello" at 16 and "overlaps hello" at 20 merge; `global.get $base`
    // (4096) and `global.get $end` (base + 100) are resolved.
    assert_eq!(info.data_ranges, vec![16..34, 4096..4103, 4196..4197]);
}

#[test]
fn rust_like_worker() {
    let info = prepare(&fixture("rust_like")).unwrap().info;
    assert_eq!(info.memory.min_pages, 17);
    assert_eq!(info.globals, vec![global(0, GlobalType::I32)]);
    assert_eq!(info.tables, vec![table(0, 3, Some(3))]);
    assert_eq!(info.table_funcs, funcs(&[1, 2, 3, 4]));
    let rodata = "called `Option::unwrap()` on a `None` value".len() as u64;
    assert_eq!(
        info.data_ranges,
        vec![1048576..1048576 + rodata, 1049088..1049096]
    );
    assert!(!info.has_init);
}

#[test]
fn c_like_worker_with_an_import_in_its_table() {
    let info = prepare(&fixture("c_like")).unwrap().info;
    assert_eq!(
        info.memory,
        MemoryInfo {
            min_pages: 2,
            max_pages: Some(256)
        }
    );
    assert_eq!(info.wasi_imports, vec!["fd_seek", "fd_write", "proc_exit"]);
    assert!(info.has_init);
    assert!(info.has_initialize);
    assert_eq!(info.tables, vec![table(0, 4, Some(4))]);
    // fd_write (0) and fd_seek (1) are imports placed in the table.
    assert_eq!(info.table_funcs, funcs(&[0, 1, 5, 6, 7, 8, 9]));
    assert_eq!(info.data_ranges, vec![1024..1039, 1040..1044]);
}

#[test]
fn module_info_matches_prepare() {
    for name in crate::support::GOOD_FIXTURES {
        let bytes = fixture(name);
        assert_eq!(
            module_info(&bytes).unwrap(),
            prepare(&bytes).unwrap().info,
            "{name}"
        );
    }
}

#[test]
fn start_function_makes_the_whole_memory_maybe_nonzero() {
    let with_max = wasm(
        r#"(module
            (memory (export "memory") 1 4)
            (func $start (i32.store (i32.const 100000) (i32.const 1)))
            (start $start)
            (data (i32.const 0) "x")
            (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32)))"#,
    );
    assert_eq!(
        prepare(&with_max).unwrap().info.data_ranges,
        vec![0..4 * 65536]
    );

    let without_max = wasm(
        r#"(module
            (memory (export "memory") 1)
            (func $start)
            (start $start)
            (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32)))"#,
    );
    assert_eq!(
        prepare(&without_max).unwrap().info.data_ranges,
        vec![0..1 << 32]
    );
}

#[test]
fn empty_and_passive_data_segments_write_nothing() {
    let bytes = wasm(
        r#"(module
            (memory (export "memory") 1)
            (data (i32.const 500) "")
            (data "passive")
            (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32)))"#,
    );
    assert!(prepare(&bytes).unwrap().info.data_ranges.is_empty());
}

#[test]
fn offsets_above_two_gib_are_unsigned() {
    let bytes = wasm(
        r#"(module
            (memory (export "memory") 1)
            (data (i32.const -16) "0123")
            (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32)))"#,
    );
    let start = (1u64 << 32) - 16;
    assert_eq!(
        prepare(&bytes).unwrap().info.data_ranges,
        vec![start..start + 4]
    );
}

#[test]
fn immutable_reference_globals_and_typed_function_references_are_fine() {
    let bytes = wasm(
        r#"(module
            (type $f (func))
            (memory (export "memory") 1)
            (global $handle externref (ref.null extern))
            (global $fixed funcref (ref.func $target))
            (func $target (type $f))
            (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32)))"#,
    );
    let info = prepare(&bytes).unwrap().info;
    assert!(info.globals.is_empty());
    assert_eq!(info.table_funcs, funcs(&[0, 1, 2]));
}
