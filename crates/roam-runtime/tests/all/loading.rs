//! Loading modules: contract errors name their cause; compiled modules are cached on disk
//! and a damaged cache entry is recompiled, not trusted.

use roam_runtime::{LoadError, Runtime, RuntimeConfig};

use crate::{send, stateful_wasm};

#[test]
fn bad_modules_are_refused_with_the_reason() {
    let rt = crate::runtime();
    let err = rt.load(b"not wasm at all").err().expect("refused");
    assert!(matches!(err, LoadError::Contract(_)), "{err}");

    let wat = r#"(module (import "env" "sneaky" (func))
        (memory (export "memory") 1)
        (func (export "roam_alloc") (param i32) (result i32) (i32.const 0))
        (func (export "roam_on_message") (param i32 i32)))"#;
    let err = rt
        .load(&wat::parse_str(wat).unwrap())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("env"), "{err}");
    assert!(err.to_string().contains("sneaky"), "{err}");
}

#[test]
fn original_and_prepared_modules_are_the_same_module() {
    let wasm = stateful_wasm();
    let prepared = roam_prepare::prepare(&wasm).unwrap().bytes;
    let rt = crate::runtime();
    let a = rt.load(&wasm).unwrap();
    let b = rt.load(&prepared).unwrap();
    assert_eq!(a.hash(), b.hash());
    // A snapshot taken under one restores under the other.
    let mut worker = rt.start(&a).unwrap();
    send(&mut worker, &[0, 1]);
    let snapshot = worker.capture().unwrap();
    let fresh = Runtime::new(RuntimeConfig::default()).unwrap();
    let b = fresh.load(&prepared).unwrap();
    fresh.restore(&b, &snapshot).expect("restores");
}

#[test]
fn compiled_modules_are_cached_and_damage_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let wasm = stateful_wasm();
    {
        let rt = Runtime::new(config.clone()).unwrap();
        rt.load(&wasm).unwrap();
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one artifact: {files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "cwasm"));

    // A second engine loads the artifact and runs the worker.
    let rt = Runtime::new(config.clone()).unwrap();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    assert_eq!(send(&mut worker, &[0, 0]).len(), 1);
    drop((worker, module, rt));

    // Damage the artifact: the next load notices and compiles again.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[0], &bytes).unwrap();
    let rt = Runtime::new(config).unwrap();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    assert_eq!(send(&mut worker, &[0, 0]).len(), 1);
}
