//! Post-copy restore with the real userfaultfd: a worker restored with only part of its
//! memory replies exactly as an eagerly restored copy while the rest arrives on demand;
//! losing the source fails it cleanly and promptly; capture, growth, early drops and the
//! disabled fallback behave.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roam_runtime::{
    post_copy_available, CaptureError, DeliverError, Failure, Pager, PostCopyRestoreError,
    PostCopyUnavailable, Runtime, Snapshot, SupplyError, Worker, WorkerLimits, WorkerModule,
};
use roam_snapshot::{ChunkBody, ChunkHash, ChunkRef};

use crate::{runtime, runtime_with, send, stateful_wasm};

/// Set in the environment of a test run in a child process of its own.
const CHILD: &str = "ROAM_POSTCOPY_TEST_CHILD";

fn paged_wasm() -> Vec<u8> {
    wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/paged.wat"
    ))
    .expect("fixture parses")
}

fn msg(op: u8, arg: u32) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0] = op;
    m[4..].copy_from_slice(&arg.to_le_bytes());
    m
}

const FILL: u8 = 1;
const CHECKSUM: u8 = 2;
const MUTATE: u8 = 3;
const GROW: u8 = 4;
const READ: u8 = 5;
const TOUCH: u8 = 6;

fn require_post_copy() {
    if let Err(e) = post_copy_available() {
        panic!("these tests need userfaultfd (run them as root): {e}");
    }
}

/// A worker with `pages` × 64 KiB of state, captured after two messages.
fn source_snapshot(runtime: &Runtime, module: &Arc<WorkerModule>, pages: u32) -> Snapshot {
    let mut worker = runtime.start(module).expect("start");
    send(&mut worker, &msg(FILL, pages));
    send(&mut worker, &msg(MUTATE, 1));
    worker.capture().expect("capture")
}

/// The replies of an eagerly restored copy of `snapshot` to `messages`.
fn eager_replies(
    module_wasm: &[u8],
    snapshot: &Snapshot,
    messages: &[[u8; 8]],
) -> Vec<Vec<Vec<u8>>> {
    let runtime = runtime();
    let module = runtime.load(module_wasm).unwrap();
    let mut worker = runtime.restore(&module, snapshot).expect("eager restore");
    messages.iter().map(|m| send(&mut worker, m)).collect()
}

fn hot_bodies(snapshot: &Snapshot, hot: impl Fn(&ChunkRef) -> bool) -> Vec<ChunkBody> {
    let mut hashes: Vec<ChunkHash> = snapshot
        .manifest
        .chunks
        .iter()
        .filter(|c| hot(c))
        .map(|c| c.hash)
        .collect();
    hashes.sort_unstable();
    hashes.dedup();
    hashes
        .into_iter()
        .map(|h| snapshot.body(h).unwrap().clone())
        .collect()
}

/// A source that answers each fetch request after `delay`, as a node at the other end of a
/// priority lane would. Ends when the pager stops asking.
struct Source {
    requests: mpsc::Receiver<ChunkHash>,
}

fn fetch_channel() -> (impl Fn(ChunkHash) + Send + Sync + 'static, Source) {
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let fetch = move |hash| {
        let _ = tx.lock().unwrap().send(hash);
    };
    (fetch, Source { requests: rx })
}

impl Source {
    /// Answers every request after `delay`, from a thread of its own; returns how many it
    /// answered once the pager stops asking.
    fn serve(self, snapshot: Snapshot, pager: Pager, delay: Duration) -> JoinHandle<usize> {
        std::thread::spawn(move || {
            let mut answered = 0;
            while let Ok(hash) = self.requests.recv() {
                std::thread::sleep(delay);
                let body = snapshot.body(hash).expect("the source holds every body");
                pager.supply(body).expect("a good body installs");
                answered += 1;
            }
            answered
        })
    }
}

fn missing_at_start(snapshot: &Snapshot, hot: &[ChunkBody]) -> usize {
    let hot: std::collections::HashSet<ChunkHash> = hot.iter().map(ChunkBody::hash).collect();
    let mut missing: Vec<ChunkHash> = snapshot
        .manifest
        .chunks
        .iter()
        .map(|c| c.hash)
        .filter(|h| !hot.contains(h))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing.len()
}

#[test]
fn a_lazily_restored_worker_replies_as_an_eagerly_restored_one() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    // 8 MiB: 2048 chunks, a fifth of them zero, a seventh sharing one content.
    let snapshot = source_snapshot(&rt, &module, 128);
    let messages = [
        msg(READ, 3 << 20),
        msg(MUTATE, 2),
        msg(TOUCH, 1024),
        msg(CHECKSUM, 0),
        msg(GROW, 4),
        msg(CHECKSUM, 0),
    ];
    let expected = eager_replies(&wasm, &snapshot, &messages);

    // Only the first 2 MiB arrive with the manifest.
    let hot = hot_bodies(&snapshot, |c| c.index < 512);
    let (fetch, source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &hot, fetch)
        .expect("post-copy restore");
    assert!(!pager.is_complete());
    let missing = missing_at_start(&snapshot, &hot);
    assert_eq!(pager.missing().len(), missing);
    let server = source.serve(snapshot.clone(), pager.clone(), Duration::from_micros(200));

    let got: Vec<_> = messages.iter().map(|m| send(&mut worker, m)).collect();
    assert_eq!(got, expected, "replies of the lazily restored worker");

    // The checksum touched every chunk: all arrived, each content asked for once.
    assert!(pager.is_complete());
    pager.wait_complete(Duration::ZERO).expect("complete");
    let stats = pager.stats();
    assert_eq!(stats.requests as usize, missing, "{stats:?}");
    assert!(stats.faults >= stats.requests, "{stats:?}");
    assert!(
        stats.zero_faults > 0,
        "zero chunks were served locally: {stats:?}"
    );
    assert!(
        stats.fault_wait >= Duration::from_micros(200) * missing as u32,
        "{stats:?}"
    );
    // A hot body fills every position holding its content, not only those in the first 2 MiB.
    let hot_hashes: Vec<ChunkHash> = hot.iter().map(ChunkBody::hash).collect();
    let hot_positions = snapshot
        .manifest
        .chunks
        .iter()
        .filter(|c| hot_hashes.contains(&c.hash))
        .count();
    assert_eq!(stats.hot_chunks as usize, hot_positions);
    let lazy_positions = snapshot.manifest.chunks.len() - stats.hot_chunks as usize;
    assert_eq!(stats.chunks_installed as usize, lazy_positions);
    assert_eq!(stats.bytes_installed, lazy_positions as u64 * 4096);
    drop(worker);
    assert_eq!(server.join().unwrap(), missing);
}

#[test]
fn growth_past_the_snapshot_size_reads_zero_without_asking() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 64);
    let size = snapshot.manifest.memory_size as u32;
    let messages = [
        msg(GROW, 8),
        msg(READ, size + 4096),
        msg(READ, size + 8 * 65536 - 16),
        msg(CHECKSUM, 0),
    ];
    let expected = eager_replies(&wasm, &snapshot, &messages);

    let (fetch, source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], fetch)
        .expect("post-copy restore");
    let server = source.serve(snapshot.clone(), pager.clone(), Duration::ZERO);
    let mut got: Vec<_> = messages[..3].iter().map(|m| send(&mut worker, m)).collect();
    // Growing and reading the new memory asked only for the chunk holding the message
    // buffer and the replies.
    assert_eq!(pager.stats().requests, 1, "{:?}", pager.stats());
    assert!(!pager.is_complete());
    got.push(send(&mut worker, &messages[3]));
    assert_eq!(got, expected);
    assert!(pager.is_complete());
    drop(worker);
    server.join().unwrap();
}

/// A worker back from a thread that delivered a message to it, and what came of it.
type Delivered = (Worker, Result<Vec<Vec<u8>>, DeliverError>);

/// Delivers `message` on a thread of its own; the result comes back on the channel.
fn deliver_elsewhere(mut worker: Worker, message: [u8; 8]) -> mpsc::Receiver<Delivered> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = worker
            .deliver(&message)
            .map(|replies| replies.map(<[u8]>::to_vec).collect());
        let _ = tx.send((worker, result));
    });
    rx
}

fn assert_state_lost(error: &DeliverError, reason: &str) {
    match error.failure() {
        Some(Failure::StateLost { reason: r }) => assert!(r.contains(reason), "{r}"),
        other => panic!("expected the state to be lost, got {other:?} ({error})"),
    }
}

#[test]
fn losing_the_source_mid_message_fails_the_worker_without_hanging() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 64);
    let hot = hot_bodies(&snapshot, |c| c.index < 64);
    // A source that never answers.
    let (fetch, source) = fetch_channel();
    let (worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &hot, fetch)
        .expect("post-copy restore");

    let done = deliver_elsewhere(worker, msg(CHECKSUM, 0));
    source
        .requests
        .recv_timeout(Duration::from_secs(10))
        .expect("the worker faults on a missing chunk");
    std::thread::sleep(Duration::from_millis(50));
    assert!(done.try_recv().is_err(), "the worker waits for its memory");

    let abandoned = Instant::now();
    pager.abandon("the source node died");
    let (mut worker, result) = done
        .recv_timeout(Duration::from_secs(5))
        .expect("the worker does not hang once the source is lost");
    let failed_after = abandoned.elapsed();
    eprintln!("the worker failed {failed_after:?} after its source was lost");
    let error = result.expect_err("no replies from a worker whose memory is not its own");
    assert!(matches!(error, DeliverError::Failed(_)));
    assert_state_lost(&error, "the source node died");
    assert!(
        failed_after < Duration::from_secs(1),
        "failed after {failed_after:?}"
    );

    let again = worker.deliver(&msg(READ, 0)).map(|_| ()).unwrap_err();
    assert!(matches!(
        again,
        DeliverError::AlreadyFailed(Failure::StateLost { .. })
    ));
    assert!(matches!(
        worker.capture(),
        Err(CaptureError::Failed(Failure::StateLost { .. }))
    ));
    assert!(!pager.is_complete());
}

#[test]
fn dropping_every_pager_handle_fails_a_waiting_worker() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 32);
    let (fetch, source) = fetch_channel();
    let (worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], fetch)
        .expect("post-copy restore");
    let done = deliver_elsewhere(worker, msg(CHECKSUM, 0));
    source
        .requests
        .recv_timeout(Duration::from_secs(10))
        .unwrap();
    drop(pager);
    let (_worker, result) = done.recv_timeout(Duration::from_secs(5)).expect("no hang");
    assert_state_lost(&result.unwrap_err(), "pager was dropped");
}

#[test]
fn losing_the_source_between_messages_refuses_the_next_one() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 32);
    let hot = hot_bodies(&snapshot, |c| c.index < 64);
    let (fetch, _source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &hot, fetch)
        .unwrap();
    // Within the hot chunks: no fault, a good reply.
    let expected = eager_replies(&wasm, &snapshot, &[msg(TOUCH, 64)]);
    assert_eq!(vec![send(&mut worker, &msg(TOUCH, 64))], expected);
    pager.abandon("handoff cancelled");
    let error = worker.deliver(&msg(TOUCH, 1)).map(|_| ()).unwrap_err();
    assert!(matches!(error, DeliverError::Failed(_)));
    assert_state_lost(&error, "handoff cancelled");
}

#[test]
fn abandoning_after_the_memory_arrived_changes_nothing() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 16);
    let (fetch, _source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], fetch)
        .unwrap();
    // The background stream delivers everything before the worker runs.
    for body in snapshot.bodies() {
        assert!(pager.supply(body).unwrap() > 0);
    }
    assert!(pager.is_complete());
    assert!(pager.missing().is_empty());
    assert_eq!(
        pager.supply(&snapshot.bodies()[0]).unwrap(),
        0,
        "already in"
    );
    pager.abandon("too late to matter");
    let expected = eager_replies(&wasm, &snapshot, &[msg(CHECKSUM, 0)]);
    assert_eq!(vec![send(&mut worker, &msg(CHECKSUM, 0))], expected);
    assert_eq!(pager.stats().faults, 0);
}

#[test]
fn capturing_a_lazy_worker_gives_the_source_snapshot() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 64);
    let hot = hot_bodies(&snapshot, |c| c.index % 10 == 0);
    let (fetch, source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &hot, fetch)
        .unwrap();
    let server = source.serve(snapshot.clone(), pager.clone(), Duration::from_micros(50));
    let captured = worker.capture().expect("capture waits for the memory");
    assert!(pager.is_complete());
    let (a, b) = (&captured.manifest, &snapshot.manifest);
    assert_eq!(a.memory_size, b.memory_size);
    assert_eq!(a.chunks, b.chunks);
    assert_eq!(a.globals, b.globals);
    assert_eq!(a.tables, b.tables);
    assert_eq!(a.last_seq, b.last_seq);
    assert!(a.clock_ns >= b.clock_ns);
    assert_eq!(captured.bodies(), snapshot.bodies());
    drop(worker);
    server.join().unwrap();

    // A pre-copy round's delta waits the same way: nothing changed, nothing to send.
    let (fetch, source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &hot, fetch)
        .unwrap();
    let server = source.serve(snapshot.clone(), pager.clone(), Duration::ZERO);
    let delta = worker
        .capture_delta(&|_| true)
        .expect("delta waits for the memory");
    assert!(pager.is_complete());
    assert_eq!(delta.manifest.chunks, snapshot.manifest.chunks);
    assert!(delta.bodies.is_empty());
    drop(worker);
    server.join().unwrap();
}

#[test]
fn a_corrupt_body_is_refused_and_its_chunk_stays_missing() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 16);
    let (fetch, _source) = fetch_channel();
    let (_worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], fetch)
        .unwrap();
    let good = &snapshot.bodies()[0];
    let mut bytes = good.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    let bad = ChunkBody::decode(&bytes).expect("well-formed");
    assert!(matches!(pager.supply(&bad), Err(SupplyError::Corrupt(_))));
    assert!(pager.missing().contains(&good.hash()));
    assert!(pager.supply(good).unwrap() > 0);
    assert!(!pager.missing().contains(&good.hash()));
}

#[test]
fn a_lazy_worker_keeps_its_time_limit() {
    require_post_copy();
    let wasm = stateful_wasm();
    let limits = WorkerLimits {
        message_timeout: Duration::from_millis(200),
        ..WorkerLimits::default()
    };
    let rt = runtime_with(limits);
    let module = rt.load(&wasm).unwrap();
    let mut source = rt.start(&module).unwrap();
    send(&mut source, &[2, 3]);
    let snapshot = source.capture().unwrap();
    let (fetch, source) = fetch_channel();
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], fetch)
        .unwrap();
    let server = source.serve(snapshot.clone(), pager.clone(), Duration::ZERO);
    let started = Instant::now();
    let error = worker.deliver(&[5, 0]).map(|_| ()).unwrap_err();
    assert!(
        matches!(error.failure(), Some(Failure::TimeLimit { .. })),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop((worker, pager));
    server.join().unwrap();
}

/// Runs the test `name` alone in a child process with `env` set, and checks that it ran and
/// passed there. Tests that count the process's threads and descriptors, or change its
/// environment, cannot share a process with the others.
fn run_in_child(name: &str, env: &[(&str, &str)]) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in a child process:\n{stdout}\n{stderr}"
    );
}

fn count_entries(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[test]
fn dropping_early_leaks_no_thread_or_descriptor() {
    if std::env::var_os(CHILD).is_none() {
        return run_in_child(
            "post_copy::dropping_early_leaks_no_thread_or_descriptor",
            &[],
        );
    }
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 16);
    // Warm up whatever the first restore sets up once per process.
    drop(rt.restore(&module, &snapshot).unwrap());
    let threads = count_entries("/proc/self/task");
    let fds = count_entries("/proc/self/fd");
    let asked = Arc::new(AtomicUsize::new(0));
    let counting = |asked: &Arc<AtomicUsize>| {
        let asked = asked.clone();
        move |_| {
            asked.fetch_add(1, Ordering::SeqCst);
        }
    };
    for _ in 0..3 {
        // The worker goes first, the pager still held.
        let (worker, pager) = rt
            .restore_post_copy(&module, &snapshot.manifest, &[], counting(&asked))
            .unwrap();
        drop(worker);
        assert!(pager.wait_complete(Duration::from_secs(1)).is_err());
        drop(pager);

        // The pager goes first, then the worker, which never ran.
        let (worker, pager) = rt
            .restore_post_copy(&module, &snapshot.manifest, &[], counting(&asked))
            .unwrap();
        drop(pager);
        drop(worker);

        // The worker is blocked on a fault when the pager goes.
        let (worker, pager) = rt
            .restore_post_copy(&module, &snapshot.manifest, &[], counting(&asked))
            .unwrap();
        let done = deliver_elsewhere(worker, msg(CHECKSUM, 0));
        let until = Instant::now() + Duration::from_secs(10);
        while pager.stats().requests == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(pager);
        let (worker, result) = done.recv_timeout(Duration::from_secs(5)).expect("no hang");
        assert!(result.is_err(), "{:?}", result.map(|r| r.len()));
        drop(worker);

        // The memory completes, then both go.
        let (mut worker, pager) = rt
            .restore_post_copy(&module, &snapshot.manifest, &[], counting(&asked))
            .unwrap();
        for body in snapshot.bodies() {
            pager.supply(body).unwrap();
        }
        send(&mut worker, &msg(CHECKSUM, 0));
        drop((worker, pager));
    }
    // The thread that ran the blocked worker may still be on its way out.
    let until = Instant::now() + Duration::from_secs(5);
    while count_entries("/proc/self/task") > threads && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(count_entries("/proc/self/task"), threads, "threads");
    assert_eq!(count_entries("/proc/self/fd"), fds, "descriptors");
    assert!(asked.load(Ordering::SeqCst) >= 3);
}

#[test]
fn disabled_post_copy_is_reported_and_refused() {
    if std::env::var_os(CHILD).is_none() {
        return run_in_child(
            "post_copy::disabled_post_copy_is_reported_and_refused",
            &[("ROAM_DISABLE_POSTCOPY", "1")],
        );
    }
    assert_eq!(post_copy_available(), Err(PostCopyUnavailable::Disabled));
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    let snapshot = source_snapshot(&rt, &module, 4);
    let refused = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], |_| {})
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            refused,
            PostCopyRestoreError::Unavailable(PostCopyUnavailable::Disabled)
        ),
        "{refused}"
    );
    // The fallback: wait for every body and restore eagerly.
    let mut worker = rt.restore(&module, &snapshot).unwrap();
    let expected = eager_replies(&wasm, &snapshot, &[msg(CHECKSUM, 0)]);
    assert_eq!(vec![send(&mut worker, &msg(CHECKSUM, 0))], expected);
}

#[test]
fn a_snapshot_of_another_module_is_refused_before_anything_runs() {
    require_post_copy();
    let rt = runtime();
    let paged = rt.load(&paged_wasm()).unwrap();
    let other = rt.load(&stateful_wasm()).unwrap();
    let snapshot = source_snapshot(&rt, &paged, 4);
    let refused = rt
        .restore_post_copy(&other, &snapshot.manifest, &[], |_| {})
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(refused, PostCopyRestoreError::Incompatible(_)),
        "{refused}"
    );
}

#[test]
fn zero_memory_is_served_without_asking_in_runs() {
    require_post_copy();
    let wasm = paged_wasm();
    let rt = runtime();
    let module = rt.load(&wasm).unwrap();
    // 16 MiB, all zero but the first chunk and the last.
    let mut source = rt.start(&module).unwrap();
    send(&mut source, &msg(GROW, 255));
    let snapshot = source.capture().unwrap();
    assert_eq!(snapshot.manifest.chunks.len(), 2);
    let expected = eager_replies(&wasm, &snapshot, &[msg(CHECKSUM, 0)]);
    let asked = Arc::new(AtomicUsize::new(0));
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, snapshot.bodies(), {
            let asked = asked.clone();
            move |_| {
                asked.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    // Everything non-zero came hot: nothing to wait for.
    assert!(pager.is_complete());
    assert_eq!(vec![send(&mut worker, &msg(CHECKSUM, 0))], expected);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(pager.stats().faults, 0);

    // With the two non-zero chunks missing, the 4094 zero chunks fault in runs.
    let (mut worker, pager) = rt
        .restore_post_copy(&module, &snapshot.manifest, &[], {
            let asked = asked.clone();
            move |_| {
                asked.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    for body in snapshot.bodies() {
        if body.hash() != snapshot.manifest.chunks[1].hash {
            pager.supply(body).unwrap();
        }
    }
    assert_eq!(
        vec![send(&mut worker, &msg(TOUCH, 4095))],
        eager_replies(&wasm, &snapshot, &[msg(TOUCH, 4095)])
    );
    let stats = pager.stats();
    assert_eq!(asked.load(Ordering::SeqCst), 0, "{stats:?}");
    assert!(
        stats.zero_faults > 0 && stats.zero_faults <= 4096 / 64 + 2,
        "{stats:?}"
    );
    assert!(!pager.is_complete(), "the last chunk was never touched");
}
