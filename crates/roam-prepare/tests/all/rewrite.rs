//! The prepared module: still valid, exports what `ModuleInfo` says under
//! the reserved names, keeps the module's own exports, and leaves every
//! other section untouched.

use roam_prepare::{prepare, PREPARED_SECTION, PREPARE_VERSION};
use wasmparser::ExternalKind;

use crate::support::{exports, fixture, sections, validate, wasm, EXPORT_SECTION, GOOD_FIXTURES};

#[test]
fn prepared_module_validates_and_exports_its_state() {
    for name in GOOD_FIXTURES {
        let prepared = prepare(&fixture(name)).unwrap();
        validate(&prepared.bytes);
        let exports = exports(&prepared.bytes);
        let has = |export: &str, kind: ExternalKind, index: u32| {
            exports.contains(&(export.to_string(), kind, index))
        };
        for global in &prepared.info.globals {
            assert!(
                has(&global.export, ExternalKind::Global, global.index),
                "{name}: {global:?}"
            );
        }
        for table in &prepared.info.tables {
            assert!(
                has(&table.export, ExternalKind::Table, table.index),
                "{name}: {table:?}"
            );
        }
        for func in &prepared.info.table_funcs {
            assert!(
                has(&func.export, ExternalKind::Func, func.index),
                "{name}: {func:?}"
            );
        }
        let reserved = exports
            .iter()
            .filter(|(n, _, _)| n.starts_with("__roam_"))
            .count();
        let info = &prepared.info;
        assert_eq!(
            reserved,
            info.globals.len() + info.tables.len() + info.table_funcs.len(),
            "{name}: no reserved export beyond what ModuleInfo lists"
        );
    }
}

#[test]
fn original_exports_come_first_in_their_order() {
    for name in GOOD_FIXTURES {
        let original = fixture(name);
        let before = exports(&original);
        let after = exports(&prepare(&original).unwrap().bytes);
        assert_eq!(&after[..before.len()], &before[..], "{name}");
    }
}

#[test]
fn reserved_exports_follow_in_canonical_order() {
    let prepared = prepare(&fixture("tables")).unwrap();
    let reserved: Vec<String> = exports(&prepared.bytes)
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|name| name.starts_with("__roam_"))
        .collect();
    let expected: Vec<String> = [
        "__roam_global_0",
        "__roam_global_2",
        "__roam_global_3",
        "__roam_global_4",
        "__roam_global_5",
        "__roam_global_6",
        "__roam_table_0",
        "__roam_table_1",
        "__roam_func_1",
        "__roam_func_2",
        "__roam_func_3",
        "__roam_func_4",
        "__roam_func_5",
        "__roam_func_6",
        "__roam_func_8",
        "__roam_func_9",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(reserved, expected);
}

/// Every section but the export section and the marker, in order.
fn untouched(bytes: &[u8]) -> Vec<(u8, Option<String>, Vec<u8>)> {
    sections(bytes)
        .into_iter()
        .filter(|(id, name, _)| *id != EXPORT_SECTION && name.as_deref() != Some(PREPARED_SECTION))
        .collect()
}

#[test]
fn other_sections_are_copied_byte_for_byte() {
    for name in GOOD_FIXTURES {
        let original = fixture(name);
        let prepared = prepare(&original).unwrap();
        assert_eq!(untouched(&original), untouched(&prepared.bytes), "{name}");
    }
    // The Rust-like fixture has name, producers and target_features sections.
    let names: Vec<Option<String>> = sections(&fixture("rust_like"))
        .into_iter()
        .map(|(_, name, _)| name)
        .collect();
    for custom in ["name", "producers", "target_features"] {
        assert!(names.contains(&Some(custom.to_string())), "{custom}");
    }
}

#[test]
fn marker_section_is_last_and_holds_the_version() {
    for name in GOOD_FIXTURES {
        let prepared = prepare(&fixture(name)).unwrap();
        let all = sections(&prepared.bytes);
        let markers: Vec<_> = all
            .iter()
            .filter(|(_, custom, _)| custom.as_deref() == Some(PREPARED_SECTION))
            .collect();
        assert_eq!(markers.len(), 1, "{name}");
        let (id, custom, contents) = all.last().unwrap();
        assert_eq!(
            (*id, custom.as_deref()),
            (0, Some(PREPARED_SECTION)),
            "{name}"
        );
        // The custom section's contents: the name, then the version.
        let mut expected = vec![PREPARED_SECTION.len() as u8];
        expected.extend_from_slice(PREPARED_SECTION.as_bytes());
        expected.extend_from_slice(&PREPARE_VERSION.to_le_bytes());
        assert_eq!(contents, &expected, "{name}");
    }
    assert_eq!(PREPARE_VERSION, 1);
}

#[test]
fn a_stale_marker_is_replaced() {
    let body = r#"
        (memory (export "memory") 1)
        (func (export "roam_alloc") (param i32) (result i32) i32.const 0)
        (func (export "roam_on_message") (param i32 i32))"#;
    let clean = wasm(&format!("(module {body})"));
    let stale = wasm(&format!(
        r#"(module {body}
            (@custom "roam-prepared" (before first) "\07\00\00\00")
            (@custom "roam-prepared" (after func) "junk"))"#
    ));
    assert_eq!(
        prepare(&stale).unwrap().bytes,
        prepare(&clean).unwrap().bytes
    );
}
