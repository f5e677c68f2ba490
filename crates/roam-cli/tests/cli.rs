//! The `roam` binary, run as a separate process on the example workers: replies are the same
//! whether or not the worker is captured and restored in a fresh engine along the way, and
//! bad input fails with a message that says what is wrong.
//!
//! The workers come from `cargo xtask build-workers` (`target/workers/`, or
//! `$ROAM_WORKERS_DIR`); `cargo xtask test` builds them first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use roam_cli::records::encode_records;
use roam_cli::workloads;

fn workers_dir() -> PathBuf {
    std::env::var_os("ROAM_WORKERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/workers"))
}

fn worker(name: &str) -> PathBuf {
    let path = workers_dir().join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the workers with `cargo xtask build-workers` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

fn roam(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roam"))
        .args(args)
        .output()
        .expect("roam runs")
}

fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "roam failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn fails(output: Output) -> String {
    assert!(!output.status.success(), "roam should have failed");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `roam exec` and returns the reply file's bytes.
fn exec(dir: &Path, wasm: &Path, messages: &[u8], extra: &[&str]) -> Vec<u8> {
    let input = dir.join("in.rec");
    let out = dir.join("out.rec");
    std::fs::write(&input, messages).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "exec".as_ref(),
        wasm.as_os_str(),
        "--messages".as_ref(),
        input.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    ok(roam(&args));
    std::fs::read(out).unwrap()
}

fn records(messages: &[Vec<u8>]) -> Vec<u8> {
    encode_records(messages.iter().map(Vec::as_slice))
}

/// OUT with checkpoints after every N messages is byte-identical to OUT without.
fn checkpoints_change_nothing(name: &str, messages: &[Vec<u8>], intervals: &[u64]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let wasm = worker(name);
    let input = records(messages);
    let straight = exec(dir.path(), &wasm, &input, &[]);
    assert!(!straight.is_empty(), "{name} replied");
    for every in intervals {
        let moved = exec(
            dir.path(),
            &wasm,
            &input,
            &["--checkpoint-every", &every.to_string()],
        );
        assert!(
            moved == straight,
            "{name}: replies differ with a checkpoint every {every} messages"
        );
    }
    straight
}

#[test]
fn counter_replies_are_exact_with_and_without_checkpoints() {
    let messages = workloads::counter_messages(200);
    let out = checkpoints_change_nothing("counter", &messages, &[1, 2, 3, 7, 50, 199, 200]);
    assert_eq!(
        out,
        records(&workloads::counter_expected(&messages)),
        "every message counted once, every byte hashed once"
    );
}

#[test]
fn the_c_worker_answers_like_the_rust_one() {
    let messages = workloads::counter_messages(120);
    let out = checkpoints_change_nothing("c_counter", &messages, &[1, 4, 33]);
    assert_eq!(out, records(&workloads::counter_expected(&messages)));
}

#[test]
fn physics_frames_are_identical_across_checkpoints() {
    let messages: Vec<Vec<u8>> = std::iter::once(workloads::physics_init(150, 3))
        .chain((0..40).map(|i| workloads::physics_step(1 + i % 3)))
        .collect();
    checkpoints_change_nothing("physics", &messages, &[1, 5, 13]);
}

#[test]
fn facedetect_boxes_are_identical_across_checkpoints() {
    let messages: Vec<Vec<u8>> = (0..4)
        .map(|i| workloads::facedetect_message(320, 240, i))
        .collect();
    checkpoints_change_nothing("facedetect", &messages, &[1, 3]);
}

#[test]
fn blurred_pictures_are_identical_across_checkpoints() {
    let messages: Vec<Vec<u8>> = (0..4)
        .map(|i| workloads::blur_message(200, 120, 1.5 + i as f32, i))
        .collect();
    let out = checkpoints_change_nothing("blur", &messages, &[1, 2]);
    assert_eq!(out.len(), 4 * (4 + 8 + 200 * 120 * 4), "four pictures back");
}

#[test]
fn a_saved_snapshot_continues_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = worker("counter");
    let messages = workloads::counter_messages(60);
    let snap = dir.path().join("half.snap");
    let first = exec(
        dir.path(),
        &wasm,
        &records(&messages[..25]),
        &["--save-snapshot", snap.to_str().unwrap()],
    );
    let second = exec(
        dir.path(),
        &wasm,
        &records(&messages[25..]),
        &["--restore", snap.to_str().unwrap()],
    );
    let whole = records(&workloads::counter_expected(&messages));
    assert_eq!([first, second].concat(), whole);

    let text = ok(roam(&[
        "snapshot".as_ref(),
        "inspect".as_ref(),
        snap.as_os_str(),
    ]));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("25 handled"), "{text}");
    let json = ok(roam(&[
        "snapshot".as_ref(),
        "inspect".as_ref(),
        snap.as_os_str(),
        "--json".as_ref(),
    ]));
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["last_seq"], 25);
    assert_eq!(json["memory_bytes"].as_u64().unwrap() % 65536, 0);
    assert_eq!(json["module_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn prepare_writes_a_module_that_prepares_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    let once = dir.path().join("once.wasm");
    let twice = dir.path().join("twice.wasm");
    let out = ok(roam(&[
        "prepare".as_ref(),
        worker("physics").as_os_str(),
        "-o".as_ref(),
        once.as_os_str(),
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("mutable globals"));
    ok(roam(&[
        "prepare".as_ref(),
        once.as_os_str(),
        "-o".as_ref(),
        twice.as_os_str(),
    ]));
    assert!(std::fs::read(&once).unwrap() == std::fs::read(&twice).unwrap());
}

#[test]
fn bad_input_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let counter = worker("counter");
    let good = records(&workloads::counter_messages(3));
    std::fs::write(d.join("in.rec"), &good).unwrap();
    let exec_args = |wasm: &Path, input: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "exec".into(),
            wasm.into(),
            "--messages".into(),
            input.into(),
            "--out".into(),
            d.join("out.rec").into(),
        ]
    };
    let run = |args: Vec<std::ffi::OsString>| {
        roam(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
    };

    // Not wasm at all.
    std::fs::write(d.join("text.wasm"), b"hello, world").unwrap();
    let err = fails(run(exec_args(&d.join("text.wasm"), &d.join("in.rec"))));
    assert!(err.contains("worker contract"), "{err}");

    // A module that imports something a worker may not.
    let sneaky = wat::parse_str(
        r#"(module (import "env" "open_socket" (func))
            (memory (export "memory") 1)
            (func (export "roam_alloc") (param i32) (result i32) (i32.const 0))
            (func (export "roam_on_message") (param i32 i32)))"#,
    )
    .unwrap();
    std::fs::write(d.join("sneaky.wasm"), sneaky).unwrap();
    let err = fails(run(exec_args(&d.join("sneaky.wasm"), &d.join("in.rec"))));
    assert!(err.contains("env") && err.contains("open_socket"), "{err}");
    let err = fails(roam(&[
        "prepare".as_ref(),
        d.join("sneaky.wasm").as_os_str(),
        "-o".as_ref(),
        d.join("x.wasm").as_os_str(),
    ]));
    assert!(err.contains("open_socket"), "{err}");

    // A message file cut short inside a record.
    std::fs::write(d.join("cut.rec"), &good[..good.len() - 3]).unwrap();
    let err = fails(run(exec_args(&counter, &d.join("cut.rec"))));
    assert!(err.contains("cut short"), "{err}");

    // A snapshot that is not one, or is damaged.
    std::fs::write(d.join("junk.snap"), b"ROAMSNAP but not really").unwrap();
    let err = fails(roam(&[
        "snapshot".as_ref(),
        "inspect".as_ref(),
        d.join("junk.snap").as_os_str(),
    ]));
    assert!(err.contains("not a valid snapshot"), "{err}");
    exec(
        d,
        &counter,
        &good,
        &["--save-snapshot", d.join("good.snap").to_str().unwrap()],
    );
    let mut bytes = std::fs::read(d.join("good.snap")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(d.join("flipped.snap"), &bytes).unwrap();
    let mut args = exec_args(&counter, &d.join("in.rec"));
    args.extend(["--restore".into(), d.join("flipped.snap").into()]);
    let err = fails(run(args));
    assert!(err.contains("not a usable snapshot"), "{err}");

    // A snapshot of another worker.
    let mut args = exec_args(&worker("c_counter"), &d.join("in.rec"));
    args.extend(["--restore".into(), d.join("good.snap").into()]);
    let err = fails(run(args));
    assert!(err.contains("cannot restore"), "{err}");

    // Nonsense options.
    let mut args = exec_args(&counter, &d.join("in.rec"));
    args.extend(["--checkpoint-every".into(), "0".into()]);
    fails(run(args));
}

#[test]
fn a_worker_over_its_memory_limit_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roam"))
        .arg("exec")
        .arg(worker("physics"))
        .arg("--messages")
        .arg({
            let p = dir.path().join("in.rec");
            std::fs::write(&p, records(&[workloads::physics_init(20_000, 1)])).unwrap();
            p
        })
        .arg("--out")
        .arg(dir.path().join("out.rec"))
        .args(["--max-memory", "4MiB"])
        .output()
        .unwrap();
    let err = fails(out);
    assert!(err.contains("over its limit"), "{err}");
}
