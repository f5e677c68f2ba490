//! The real workers, when they have been built (`cargo xtask build-workers`
//! writes them to `target/workers/`, or set `ROAM_WORKERS_DIR`).

use std::path::PathBuf;

use roam_prepare::prepare;

use crate::support::validate;

fn workers_dir() -> PathBuf {
    match std::env::var_os("ROAM_WORKERS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/workers"),
    }
}

#[test]
fn built_workers_prepare_idempotently() {
    let Ok(entries) = std::fs::read_dir(workers_dir()) else {
        eprintln!("no built workers in {}; skipped", workers_dir().display());
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|ext| ext != "wasm") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let once = prepare(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        validate(&once.bytes);
        let twice = prepare(&once.bytes).unwrap();
        assert_eq!(twice.bytes, once.bytes, "{}", path.display());
    }
}
