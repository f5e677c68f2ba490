//! A worker that breaks a limit, traps or exits fails with a clear reason, takes no more
//! messages, and its last good snapshot still restores.

use std::time::{Duration, Instant};

use roam_runtime::{CaptureError, DeliverError, Failure, WorkerLimits};

use crate::{runtime_with, send, stateful_wasm};

/// Runs `bad` after a good message, checks the failure, then restores the good snapshot.
fn fails_then_restores(limits: WorkerLimits, bad: [u8; 2]) -> Failure {
    let wasm = stateful_wasm();
    let rt = runtime_with(limits);
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    let good = send(&mut worker, &[0, 0]);
    let snapshot = worker.capture().unwrap();

    let failure = match worker.deliver(&bad) {
        Err(DeliverError::Failed(f)) => f,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("message {bad:?} should fail"),
    };
    assert_eq!(worker.failure(), Some(&failure));
    assert!(matches!(
        worker.deliver(&[0, 0]),
        Err(DeliverError::AlreadyFailed(_))
    ));
    assert!(matches!(worker.capture(), Err(CaptureError::Failed(_))));

    let mut restored = rt.restore(&module, &snapshot).unwrap();
    let next = send(&mut restored, &[0, 0]);
    assert_ne!(
        next, good,
        "the restored worker moves on from the good state"
    );
    let acc = i64::from_le_bytes(next[0][..8].try_into().unwrap());
    assert_eq!(acc, 12, "3 doubled twice");
    failure
}

#[test]
fn trap() {
    let f = fails_then_restores(WorkerLimits::default(), [4, 0]);
    let Failure::Trap { message } = f else {
        panic!("{f:?}")
    };
    assert!(message.contains("unreachable"), "{message}");
}

#[test]
fn time_limit() {
    let limits = WorkerLimits {
        message_timeout: Duration::from_millis(200),
        ..WorkerLimits::default()
    };
    let started = Instant::now();
    let f = fails_then_restores(limits, [5, 0]);
    assert_eq!(
        f,
        Failure::TimeLimit {
            limit: Duration::from_millis(200)
        }
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn memory_limit() {
    let limits = WorkerLimits {
        max_memory: 64 << 20,
        ..WorkerLimits::default()
    };
    let f = fails_then_restores(limits, [9, 0]);
    assert_eq!(
        f,
        Failure::MemoryLimit {
            limit: 64 << 20,
            requested: 20001 * 65536
        }
    );
    assert!(f.to_string().contains("over its limit"), "{f}");
}

#[test]
fn exit() {
    assert_eq!(
        fails_then_restores(WorkerLimits::default(), [6, 42]),
        Failure::Exited { code: 42 }
    );
}

#[test]
fn reply_limit() {
    let limits = WorkerLimits {
        max_reply_bytes: 100_000,
        ..WorkerLimits::default()
    };
    assert_eq!(
        fails_then_restores(limits, [8, 2]),
        Failure::ReplyTooLarge { limit: 100_000 }
    );
}

#[test]
fn reply_outside_memory() {
    let f = fails_then_restores(WorkerLimits::default(), [10, 0]);
    assert!(
        matches!(&f, Failure::Trap { message } if message.contains("outside the worker's memory")),
        "{f:?}"
    );
}

#[test]
fn a_failed_worker_does_not_disturb_others() {
    let wasm = stateful_wasm();
    let rt = runtime_with(WorkerLimits::default());
    let module = rt.load(&wasm).unwrap();
    let mut bad = rt.start(&module).unwrap();
    let mut good = rt.start(&module).unwrap();
    assert!(bad.deliver(&[4, 0]).is_err());
    assert_eq!(send(&mut good, &[0, 0]).len(), 1);
}

#[test]
fn a_bad_buffer_from_roam_alloc_fails_the_worker() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "roam_alloc") (param i32) (result i32) (i32.const 65530))
      (func (export "roam_on_message") (param i32 i32)))"#;
    let rt = runtime_with(WorkerLimits::default());
    let module = rt.load(&wat::parse_str(wat).unwrap()).unwrap();
    let mut worker = rt.start(&module).unwrap();
    let err = worker.deliver(&[0u8; 100]).err().expect("fails");
    assert_eq!(
        err.failure(),
        Some(&Failure::BadBuffer {
            ptr: 65530,
            len: 100
        })
    );
}

#[test]
fn a_worker_that_cannot_allocate_fails_instead_of_being_overwritten() {
    let wat = r#"(module
      (memory (export "memory") 1)
      (func (export "roam_alloc") (param i32) (result i32) (i32.const 0))
      (func (export "roam_on_message") (param i32 i32)))"#;
    let rt = runtime_with(WorkerLimits::default());
    let module = rt.load(&wat::parse_str(wat).unwrap()).unwrap();
    let mut worker = rt.start(&module).unwrap();
    // An empty message needs no buffer.
    assert!(worker.deliver(&[]).is_ok());
    let err = worker.deliver(&[1, 2, 3]).err().expect("fails");
    assert_eq!(err.failure(), Some(&Failure::AllocFailed { len: 3 }));
    assert!(
        worker.memory()[..3].iter().all(|&b| b == 0),
        "nothing written at 0"
    );
}
