//! Preparing is idempotent, so a worker has one identity whether it was
//! loaded in its original or its prepared form.

use roam_prepare::prepare;

use crate::support::{fixture, wasm, GOOD_FIXTURES};

#[test]
fn preparing_twice_changes_nothing() {
    for name in GOOD_FIXTURES {
        let once = prepare(&fixture(name)).unwrap();
        let twice = prepare(&once.bytes).unwrap();
        assert_eq!(twice.bytes, once.bytes, "{name}");
        assert_eq!(twice.info, once.info, "{name}");
        let thrice = prepare(&twice.bytes).unwrap();
        assert_eq!(thrice.bytes, once.bytes, "{name}");
    }
}

#[test]
fn preparing_is_deterministic() {
    for name in GOOD_FIXTURES {
        let bytes = fixture(name);
        assert_eq!(prepare(&bytes).unwrap(), prepare(&bytes).unwrap(), "{name}");
    }
}

const WORKER: &str = r#"
    (memory (export "memory") 1)
    (global $a (mut i32) (i32.const 0))
    (global $b (mut i64) (i64.const 0))
    (table $t 2 funcref)
    (elem (i32.const 0) func $alloc)
    (func $alloc (export "roam_alloc") (param i32) (result i32) i32.const 0)
    (func $on_message (export "roam_on_message") (param i32 i32))
    (func $extra (export "extra"))"#;

#[test]
fn reserved_exports_in_any_order_give_the_canonical_form() {
    let plain = prepare(&wasm(&format!("(module {WORKER})"))).unwrap();
    // The reserved exports prepare would add, shuffled among the module's
    // own, as another tool rewriting a prepared module might leave them.
    let shuffled = wasm(&format!(
        r#"(module {WORKER}
            (export "__roam_func_1" (func $on_message))
            (export "__roam_table_0" (table $t))
            (export "__roam_global_1" (global $b))
            (export "__roam_func_0" (func $alloc)))"#
    ));
    let reordered = prepare(&shuffled).unwrap();
    assert_eq!(reordered.bytes, plain.bytes);
    assert_eq!(reordered.info, plain.info);
}

#[test]
fn a_partly_prepared_module_is_completed() {
    let plain = prepare(&wasm(&format!("(module {WORKER})"))).unwrap();
    let partial = wasm(&format!(
        r#"(module {WORKER} (export "__roam_global_0" (global $a)))"#
    ));
    assert_eq!(prepare(&partial).unwrap().bytes, plain.bytes);
}
