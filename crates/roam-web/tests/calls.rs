//! The browser core's calls, made natively through the same byte layout the SDK uses.

use roam_proto::{Frame, FrameLimits, NodeRole, NodeSession};
use roam_web::ops::Request;
use roam_web::{call, Answer, Store};
use serde_json::{json, Value};

/// A worker with a mutable global, a table and two pages of memory.
const WORKER: &str = r#"(module
    (import "roam" "post_message" (func $post (param i32 i32)))
    (memory (export "memory") 2)
    (global $count (mut i32) (i32.const 0))
    (table 2 funcref)
    (elem (i32.const 1) $on_message)
    (func (export "roam_alloc") (param i32) (result i32) i32.const 1024)
    (func $on_message (export "roam_on_message") (param i32 i32)
        (global.set $count (i32.add (global.get $count) (i32.const 1)))
        (call $post (local.get 0) (local.get 1)))
)"#;

fn run(store: &mut Store, args: Value, blobs: &[&[u8]]) -> Result<Answer, String> {
    let bytes = Request::encode(&args, blobs);
    call(store, Request::parse(&bytes)?)
}

fn prepared(store: &mut Store) -> String {
    let wasm = wat::parse_str(WORKER).unwrap();
    let answer = run(store, json!({ "op": "prepare" }), &[&wasm]).unwrap();
    assert_eq!(answer.json["globals"][0]["export"], "__roam_global_0");
    answer.json["hash"].as_str().unwrap().to_owned()
}

fn memory() -> Vec<u8> {
    let mut memory = vec![0u8; 2 * 65_536];
    memory[100..105].copy_from_slice(b"hello");
    memory[70_000..70_005].copy_from_slice(b"world");
    memory
}

fn capture(store: &mut Store, module: &str) -> u64 {
    let answer = run(
        store,
        json!({
            "op": "capture", "module": module, "globals": [{ "i32": 41 }],
            "tables": [[null, 2]], "last_seq": 41, "clock_ns": 5_000,
        }),
        &[&memory()],
    )
    .unwrap();
    assert_eq!(answer.json["chunks"], 2, "the zero chunks are left out");
    answer.json["snapshot"].as_u64().unwrap()
}

#[test]
fn a_module_that_is_not_wasm_is_refused_with_the_reason() {
    let mut store = Store::default();
    let error = run(&mut store, json!({ "op": "prepare" }), &[b"<html>"]).unwrap_err();
    assert!(error.starts_with("not a WebAssembly module"), "{error}");
    let wasm = wat::parse_str(r#"(module (import "env" "now" (func)))"#).unwrap();
    let error = run(&mut store, json!({ "op": "prepare" }), &[&wasm]).unwrap_err();
    assert!(error.contains("import `env.now` is not allowed"), "{error}");
}

#[test]
fn capture_then_restore_gives_back_memory_and_state() {
    let mut store = Store::default();
    let module = prepared(&mut store);
    let snapshot = capture(&mut store, &module);
    let restored = run(
        &mut store,
        json!({ "op": "restore", "snapshot": snapshot }),
        &[],
    )
    .unwrap();
    assert_eq!(restored.blobs[0], memory());
    assert_eq!(restored.json["globals"], json!([{ "i32": 41 }]));
    assert_eq!(restored.json["tables"], json!([[null, 2]]));
    assert_eq!(restored.json["last_seq"], 41);
    assert_eq!(restored.json["clock_ns"], 5_000);
}

#[test]
fn a_capture_that_does_not_fit_the_module_is_refused() {
    let mut store = Store::default();
    let module = prepared(&mut store);
    let error = run(
        &mut store,
        json!({ "op": "capture", "module": module, "globals": [], "tables": [[]], "last_seq": 0, "clock_ns": 0 }),
        &[&memory()],
    )
    .unwrap_err();
    assert!(error.contains("1 mutable globals"), "{error}");
}

/// An offload as a node sees it: Hello offering version 1 only, then a transfer the node's
/// session accepts frame by frame, whose bodies restore the captured memory.
#[test]
fn an_offload_speaks_version_1_and_sends_what_the_node_asks_for() {
    let mut store = Store::default();
    let module = prepared(&mut store);
    let snapshot = capture(&mut store, &module);
    let limits = FrameLimits::default();
    let mut node = NodeSession::new(NodeRole::Edge);

    let opened = run(&mut store, json!({ "op": "open", "name": "test" }), &[]).unwrap();
    let conn = opened.json["conn"].clone();
    let hello = Frame::decode(&opened.blobs[0], &limits).unwrap();
    assert!(matches!(
        hello,
        Frame::Hello {
            min_version: 1,
            max_version: 1,
            ..
        }
    ));
    node.on_frame(&hello).unwrap();
    let welcome = Frame::Welcome {
        version: 1,
        node_id: "edge".into(),
        role: NodeRole::Edge,
    };
    node.on_send(&welcome).unwrap();
    let answer = run(
        &mut store,
        json!({ "op": "receive", "conn": conn }),
        &[&welcome.encode()],
    )
    .unwrap();
    assert_eq!(answer.json["event"]["type"], "Welcome");

    let worker = "0000000000000000000000000000002a";
    let secret = "11".repeat(32);
    let begin = run(
        &mut store,
        json!({ "op": "send", "conn": conn, "frame": { "type": "StateBegin", "worker": worker, "secret": secret, "snapshot": snapshot } }),
        &[],
    )
    .unwrap();
    let begin = Frame::decode(&begin.blobs[0], &limits).unwrap();
    node.on_frame(&begin).unwrap();
    let Frame::StateBegin { manifest, .. } = &begin else {
        panic!("expected StateBegin")
    };
    let manifest = roam_snapshot::Manifest::decode(manifest, &Default::default()).unwrap();
    let mut chunks: Vec<u128> = manifest.chunks.iter().map(|c| c.hash).collect();
    chunks.sort_unstable();
    chunks.dedup();

    let need = Frame::StateNeed {
        worker: 42,
        module: true,
        chunks,
    };
    node.on_send(&need).unwrap();
    let answer = run(
        &mut store,
        json!({ "op": "receive", "conn": conn }),
        &[&need.encode()],
    )
    .unwrap();
    assert_eq!(answer.json["event"]["type"], "StateNeed");
    let sent = answer.json["send"].as_u64().unwrap() as usize;
    let mut bodies = Vec::new();
    let mut module_bytes = 0;
    for bytes in &answer.blobs[..sent] {
        let frame = Frame::decode(bytes, &limits).unwrap();
        node.on_frame(&frame).unwrap();
        match frame {
            Frame::ModuleData { bytes, .. } => module_bytes += bytes.len(),
            Frame::ChunkData { bodies: b, .. } => bodies.extend(b),
            Frame::StateEnd { .. } => {}
            other => panic!("unexpected {}", other.name()),
        }
    }
    assert_eq!(answer.json["event"]["module_bytes"], module_bytes);
    let bodies = bodies
        .iter()
        .map(|b| roam_snapshot::ChunkBody::decode(b).unwrap())
        .collect();
    let snapshot = roam_snapshot::Snapshot::from_parts(manifest, bodies).unwrap();
    let mut restored = vec![0u8; 2 * 65_536];
    snapshot.restore_memory(&mut restored, &[]).unwrap();
    assert_eq!(restored, memory());
}
