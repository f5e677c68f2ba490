//! Integration tests of the runtime, one module per area. Fixtures are `.wat` files in
//! `tests/fixtures/`.

mod capture_restore;
mod host_calls;
mod limits;
mod loading;
mod post_copy;

use std::time::Duration;

use roam_runtime::{Runtime, RuntimeConfig, Worker, WorkerLimits};

pub fn stateful_wasm() -> Vec<u8> {
    wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stateful.wat"
    ))
    .expect("fixture parses")
}

pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig::default()).expect("runtime")
}

pub fn runtime_with(limits: WorkerLimits) -> Runtime {
    Runtime::new(RuntimeConfig {
        limits,
        epoch_tick: Duration::from_millis(5),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Delivers one message and returns its replies as owned bytes.
pub fn send(worker: &mut Worker, message: &[u8]) -> Vec<Vec<u8>> {
    worker
        .deliver(message)
        .expect("message handled")
        .map(<[u8]>::to_vec)
        .collect()
}

/// Moves the worker through bytes into a fresh runtime (fresh engine), as a node would.
pub fn moved(worker: &mut Worker, wasm: &[u8]) -> (Runtime, Worker) {
    let bytes = worker.capture().expect("capture").encode();
    let runtime = runtime();
    let module = runtime.load(wasm).expect("load");
    let snapshot = runtime.decode_snapshot(&bytes).expect("decode");
    let worker = runtime.restore(&module, &snapshot).expect("restore");
    (runtime, worker)
}
