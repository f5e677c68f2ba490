//! What workers call on the host: replies, the log, the clock that continues across moves.

use std::time::Duration;

use crate::{moved, runtime, send, stateful_wasm};

fn clock_of(reply: &[u8]) -> u64 {
    u64::from_le_bytes(reply[..8].try_into().unwrap())
}

#[test]
fn the_monotonic_clock_never_goes_back_across_a_move() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let before = clock_of(&send(&mut worker, &[3, 0])[0]);
    assert!(before >= 30_000_000, "the clock advances: {before}");
    let (_rt, mut restored) = moved(&mut worker, &wasm);
    let after = clock_of(&send(&mut restored, &[3, 0])[0]);
    assert!(after >= before, "clock went back: {before} -> {after}");
    // A fresh worker's clock starts at zero, so a restored one is not simply the host's clock.
    let mut fresh = rt.start(&module).unwrap();
    let fresh_clock = clock_of(&send(&mut fresh, &[3, 0])[0]);
    assert!(
        fresh_clock < after,
        "fresh {fresh_clock} vs restored {after}"
    );
}

#[test]
fn stdout_goes_to_the_log() {
    let wasm = stateful_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let mut worker = rt.start(&module).unwrap();
    send(&mut worker, &[7, 0]);
    assert_eq!(worker.take_log(), vec!["hello from wat".to_string()]);
    assert!(worker.take_log().is_empty());
}

#[test]
fn replies_come_back_in_order() {
    let wat = r#"(module
      (import "roam" "post_message" (func $post (param i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "abc")
      (func (export "roam_alloc") (param i32) (result i32) (i32.const 4096))
      (func (export "roam_on_message") (param $p i32) (param $n i32)
        (call $post (i32.const 0) (i32.const 1))
        (call $post (local.get $p) (local.get $n))
        (call $post (i32.const 1) (i32.const 0))
        (call $post (i32.const 1) (i32.const 2))))"#;
    let rt = runtime();
    let module = rt.load(&wat::parse_str(wat).unwrap()).unwrap();
    let mut worker = rt.start(&module).unwrap();
    let replies = send(&mut worker, b"message");
    assert_eq!(
        replies,
        vec![b"a".to_vec(), b"message".to_vec(), vec![], b"bc".to_vec()]
    );
    // An empty message is a message too.
    assert_eq!(send(&mut worker, b"")[1], Vec::<u8>::new());
}
