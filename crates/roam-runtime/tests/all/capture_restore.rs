//! A worker captured between messages and restored in a fresh engine carries on exactly as
//! an uninterrupted one: memory, globals of every type, tables changed at run time, funcref
//! globals, grown memory, message count.

use crate::{moved, runtime, send, stateful_wasm};

/// The messages of a session that touches every kind of state.
fn session() -> Vec<[u8; 2]> {
    vec![
        [0, 0], // acc *= 2
        [0, 1], // acc = acc^2
        [2, 3], // grow memory by 3 pages, mark the end
        [1, 2], // table[2] = negate, fref = negate
        [0, 2], // acc = -acc through the table slot set at run time
        [0, 9], // acc through the funcref global
        [2, 1], // grow again
        [0, 0],
        [0, 1],
        [1, 0], // replace a slot that held an element-segment function
        [0, 0],
        [0, 1],
    ]
}

fn uninterrupted() -> Vec<Vec<Vec<u8>>> {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    session().iter().map(|m| send(&mut worker, m)).collect()
}

#[test]
fn every_checkpoint_interval_gives_the_uninterrupted_replies() {
    let expected = uninterrupted();
    let wasm = stateful_wasm();
    for every in 1..=session().len() {
        let rt = runtime();
        let module = rt.load(&wasm).unwrap();
        let mut worker = rt.start(&module).unwrap();
        let mut _runtime = rt;
        let mut got = Vec::new();
        for (i, m) in session().iter().enumerate() {
            got.push(send(&mut worker, m));
            if (i + 1) % every == 0 {
                let (r, w) = moved(&mut worker, &wasm);
                _runtime = r;
                worker = w;
            }
        }
        assert_eq!(got, expected, "checkpoint every {every} messages");
    }
}

#[test]
fn restored_state_matches_the_captured_state() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    for m in &session()[..7] {
        send(&mut worker, m);
    }
    let before = worker.capture().unwrap();
    let (_rt, mut restored) = moved(&mut worker, &wasm);
    assert_eq!(restored.memory(), worker.memory(), "memory");
    assert_eq!(restored.last_seq(), 7);
    let after = restored.capture().unwrap();
    assert_eq!(after.manifest.globals, before.manifest.globals);
    assert_eq!(after.manifest.tables, before.manifest.tables);
    assert_eq!(after.manifest.chunks, before.manifest.chunks);
    assert_eq!(after.manifest.memory_size, 5 * 65536);
}

#[test]
fn restore_does_not_run_init_again_and_counts_on() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    send(&mut worker, &[0, 0]);
    send(&mut worker, &[0, 0]);
    let (_rt, mut restored) = moved(&mut worker, &wasm);
    let reply = send(&mut restored, &[0, 0]).remove(0);
    let calls = u32::from_le_bytes(reply[8..12].try_into().unwrap());
    assert_eq!(calls, 3, "the restored worker continues the count");
    assert_eq!(restored.last_seq(), 3);
}

#[test]
fn data_segment_bytes_cleared_by_the_worker_stay_cleared() {
    // The fresh instance a restore starts from has the data segments written again; bytes
    // the worker had zeroed since must come back zero.
    let wat = r#"(module
      (import "roam" "post_message" (func $post (param i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 100) "initial data, soon wiped")
      (func (export "roam_alloc") (param i32) (result i32) (i32.const 4096))
      (func (export "roam_on_message") (param i32 i32)
        (memory.fill (i32.const 100) (i32.const 0) (i32.const 24))
        (call $post (i32.const 100) (i32.const 24))))"#;
    let wasm = wat::parse_str(wat).unwrap();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    send(&mut worker, b"x");
    let (_rt, restored) = moved(&mut worker, &wasm);
    assert_eq!(&restored.memory()[100..124], &[0u8; 24]);
}

#[test]
fn a_snapshot_of_another_module_is_refused() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    let snapshot = worker.capture().unwrap();
    let other = wat::parse_str(
        r#"(module (memory (export "memory") 1)
            (func (export "roam_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "roam_on_message") (param i32 i32)))"#,
    )
    .unwrap();
    let other = rt.load(&other).unwrap();
    let err = rt.restore(&other, &snapshot).err().expect("refused");
    assert!(
        matches!(err, roam_runtime::RestoreError::Incompatible(_)),
        "{err}"
    );
}

#[test]
fn corrupt_snapshot_bytes_are_refused_with_an_error() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    send(&mut worker, &[2, 2]);
    let bytes = worker.capture().unwrap().encode();
    for at in [0, 9, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        assert!(rt.decode_snapshot(&bad).is_err(), "flip at {at}");
    }
    assert!(rt.decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
    // ... and the worker that was captured still runs.
    send(&mut worker, &[0, 0]);
}
