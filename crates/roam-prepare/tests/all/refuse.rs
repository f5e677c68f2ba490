//! Every kind of module the contract refuses, each with the error variant
//! that names the cause and a message that names the culprit.

use roam_prepare::{prepare, prepare_with, PrepareError, PrepareOptions};

use crate::support::{fixture, wasm};

/// Prepares `tests/fixtures/refuse/{name}.wat`, which must fail.
fn refused(name: &str) -> PrepareError {
    match prepare(&fixture(&format!("refuse/{name}"))) {
        Ok(_) => panic!("refuse/{name} was accepted"),
        Err(error) => error,
    }
}

fn assert_mentions(error: &PrepareError, words: &[&str]) {
    let message = error.to_string();
    for word in words {
        assert!(
            message.contains(word),
            "`{message}` does not mention `{word}`"
        );
    }
}

#[test]
fn too_large() {
    let bytes = fixture("minimal");
    let options = PrepareOptions {
        max_module_size: 16,
    };
    let error = prepare_with(&bytes, &options).unwrap_err();
    assert_eq!(
        error,
        PrepareError::TooLarge {
            size: bytes.len(),
            limit: 16
        }
    );
    assert_mentions(&error, &[&bytes.len().to_string(), "16"]);
    assert_eq!(PrepareOptions::default().max_module_size, 256 << 20);
}

#[test]
fn not_wasm() {
    for bytes in [&b""[..], b"\0as", b"hello, world", b"\x7fELF\x02\x01\x01\0"] {
        let error = prepare(bytes).unwrap_err();
        assert_eq!(error, PrepareError::NotWasm);
        assert_mentions(&error, &["\\0asm"]);
    }
}

#[test]
fn component() {
    let error = prepare(&wasm("(component)")).unwrap_err();
    assert_eq!(error, PrepareError::Component);
    assert_mentions(&error, &["component", "core module"]);
}

#[test]
fn invalid_wasm() {
    let error = refused("invalid");
    let PrepareError::InvalidWasm { message, offset } = &error else {
        panic!("{error:?}");
    };
    assert!(message.contains("type mismatch"), "{message}");
    assert!(*offset > 8);
    assert_mentions(&error, &[&format!("offset {offset}"), "type mismatch"]);
}

#[test]
fn truncated_module() {
    // Cut anywhere, including inside the code section, whose size is
    // announced before its bodies are read.
    let bytes = fixture("tables");
    // A cut between two sections leaves a shorter module that may be valid.
    let mut boundaries = vec![8];
    for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
        if let Some((_, range)) = payload.unwrap().as_section() {
            boundaries.push(range.end);
        }
    }
    for len in (0..bytes.len()).filter(|len| !boundaries.contains(len)) {
        let error = prepare(&bytes[..len]).unwrap_err();
        assert!(
            matches!(
                error,
                PrepareError::InvalidWasm { .. } | PrepareError::NotWasm
            ),
            "cut at {len}: {error:?}"
        );
    }
}

#[test]
fn unknown_version() {
    let error = prepare(b"\0asm\x02\0\0\0").unwrap_err();
    assert!(
        matches!(error, PrepareError::InvalidWasm { .. }),
        "{error:?}"
    );
}

#[test]
fn missing_export() {
    let error = refused("missing_export");
    assert_eq!(
        error,
        PrepareError::MissingExport {
            name: "roam_on_message".into()
        }
    );
    assert_mentions(&error, &["`roam_on_message`"]);

    let error = refused("missing_memory_export");
    assert_eq!(
        error,
        PrepareError::MissingExport {
            name: "memory".into()
        }
    );
    assert_mentions(&error, &["`memory`"]);
}

#[test]
fn export_with_the_wrong_signature() {
    let error = refused("export_signature");
    assert_eq!(
        error,
        PrepareError::ExportSignature {
            name: "roam_alloc".into(),
            expected: "func (i32) -> i32".into(),
            found: "func (i64) -> i32".into(),
        }
    );
    assert_mentions(
        &error,
        &["`roam_alloc`", "func (i32) -> i32", "func (i64) -> i32"],
    );

    let error = refused("init_signature");
    assert_eq!(
        error,
        PrepareError::ExportSignature {
            name: "roam_init".into(),
            expected: "func () -> ()".into(),
            found: "func () -> i32".into(),
        }
    );

    let error = refused("export_kind");
    assert_eq!(
        error,
        PrepareError::ExportSignature {
            name: "memory".into(),
            expected: "memory".into(),
            found: "global 0".into(),
        }
    );
    assert_mentions(&error, &["`memory`", "global 0"]);
}

#[test]
fn import_outside_the_contract() {
    let error = refused("import_not_allowed");
    assert_eq!(
        error,
        PrepareError::ImportNotAllowed {
            module: "env".into(),
            name: "foo".into()
        }
    );
    assert_mentions(
        &error,
        &[
            "`env.foo` is not allowed",
            "roam.post_message",
            "wasi_snapshot_preview1",
            "fd_write, fd_read,",
            "environ_sizes_get",
        ],
    );

    let error = refused("wasi_not_allowed");
    assert_eq!(
        error,
        PrepareError::ImportNotAllowed {
            module: "wasi_snapshot_preview1".into(),
            name: "path_open".into()
        }
    );
    assert_mentions(&error, &["`wasi_snapshot_preview1.path_open`"]);
}

#[test]
fn import_with_the_wrong_signature() {
    let error = refused("import_signature");
    assert_eq!(
        error,
        PrepareError::ImportSignature {
            module: "wasi_snapshot_preview1".into(),
            name: "fd_write".into(),
            expected: "func (i32, i32, i32, i32) -> i32".into(),
            found: "func (i32, i64, i32, i32) -> i32".into(),
        }
    );
    assert_mentions(&error, &["`wasi_snapshot_preview1.fd_write`"]);

    let error = refused("post_message_signature");
    assert_eq!(
        error,
        PrepareError::ImportSignature {
            module: "roam".into(),
            name: "post_message".into(),
            expected: "func (i32, i32) -> ()".into(),
            found: "func (i32, i32) -> i32".into(),
        }
    );
}

#[test]
fn imported_memory_table_or_global() {
    let error = refused("imported_memory");
    assert_eq!(
        error,
        PrepareError::ImportedMemory {
            module: "env".into(),
            name: "memory".into()
        }
    );
    assert_mentions(&error, &["`env.memory`"]);

    // Shared memories need the threads proposal; the import is still what
    // the author has to change, so that is what the error says.
    let error = refused("imported_shared_memory");
    assert!(
        matches!(error, PrepareError::ImportedMemory { .. }),
        "{error:?}"
    );

    let error = refused("imported_table");
    assert_eq!(
        error,
        PrepareError::ImportedTable {
            module: "env".into(),
            name: "table".into()
        }
    );
    assert_mentions(&error, &["`env.table`"]);

    let error = refused("imported_global");
    assert_eq!(
        error,
        PrepareError::ImportedGlobal {
            module: "env".into(),
            name: "stack_pointer".into()
        }
    );
    assert_mentions(&error, &["`env.stack_pointer`"]);
}

#[test]
fn no_memory_or_several() {
    let error = refused("no_memory");
    assert_eq!(error, PrepareError::NoMemory);
    assert_mentions(&error, &["no memory"]);

    let error = refused("two_memories");
    assert_eq!(error, PrepareError::MultipleMemories { count: 2 });
    assert_mentions(&error, &["2 memories"]);
}

#[test]
fn memory64() {
    let error = refused("memory64");
    assert_eq!(error, PrepareError::Memory64 { index: 0 });
    assert_mentions(&error, &["memory 0", "64-bit"]);
}

#[test]
fn shared_memory() {
    let error = refused("shared_memory");
    assert_eq!(error, PrepareError::SharedMemory { index: 0 });
    assert_mentions(&error, &["memory 0", "shared"]);
}

#[test]
fn externref_table() {
    let error = refused("externref_table");
    assert_eq!(
        error,
        PrepareError::UnsupportedTable {
            index: 0,
            element_type: "externref".into()
        }
    );
    assert_mentions(&error, &["table 0", "externref"]);
}

#[test]
fn mutable_externref_global() {
    let error = refused("externref_global");
    assert_eq!(
        error,
        PrepareError::UnsupportedGlobal {
            index: 0,
            value_type: "externref".into()
        }
    );
    assert_mentions(&error, &["global 0", "externref"]);
}

#[test]
fn gc_types() {
    let error = refused("gc_struct");
    assert_eq!(
        error,
        PrepareError::GcType {
            index: 0,
            kind: "struct"
        }
    );
    assert_mentions(&error, &["type 0", "struct"]);
}

#[test]
fn reserved_export_names() {
    let error = refused("reserved_export");
    assert_eq!(
        error,
        PrepareError::ReservedExport {
            name: "__roam_secret".into()
        }
    );
    assert_mentions(&error, &["`__roam_secret`"]);

    // The name is one prepare uses, but not for an immutable global.
    let error = refused("reserved_export_target");
    assert_eq!(
        error,
        PrepareError::ReservedExport {
            name: "__roam_global_0".into()
        }
    );
}

#[test]
fn reserved_export_for_the_wrong_index() {
    // `__roam_func_1` must be function 1; here it points at function 0.
    let bytes = wasm(
        r#"(module
            (memory (export "memory") 1)
            (func $alloc (export "roam_alloc") (param i32) (result i32) i32.const 0)
            (func (export "roam_on_message") (param i32 i32))
            (export "__roam_func_1" (func $alloc)))"#,
    );
    let error = prepare(&bytes).unwrap_err();
    assert_eq!(
        error,
        PrepareError::ReservedExport {
            name: "__roam_func_1".into()
        }
    );
}
