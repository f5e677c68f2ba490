//! What post-copy costs on this machine: the time to resume a 16 MiB worker eagerly and
//! post-copy, and the latency of a fault served from chunks already in this process (no
//! network: the floor under any real fetch) and of a fault on a zero chunk.
//!
//! ```sh
//! cargo run --release -p roam-runtime --example post_copy_costs
//! ```

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use roam_runtime::{ChunkBody, ChunkHash, Pager, Runtime, RuntimeConfig, Snapshot, Worker};

const RUNS: usize = 7;

fn msg(op: u8, arg: u32) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0] = op;
    m[4..].copy_from_slice(&arg.to_le_bytes());
    m
}

fn send(worker: &mut Worker, m: &[u8]) -> Vec<Vec<u8>> {
    worker.deliver(m).unwrap().map(<[u8]>::to_vec).collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// A post-copy restore whose fetch callback supplies the body at once, from the fault
/// thread, out of the bodies in `source`.
fn restore_post_copy(
    runtime: &Runtime,
    module: &Arc<roam_runtime::WorkerModule>,
    snapshot: &Snapshot,
    source: &Arc<HashMap<ChunkHash, ChunkBody>>,
) -> (Worker, Pager) {
    let slot: Arc<OnceLock<Pager>> = Arc::new(OnceLock::new());
    let fetch = {
        let slot = slot.clone();
        let source = source.clone();
        move |hash: ChunkHash| {
            if let Some(pager) = slot.get() {
                pager.supply(&source[&hash]).unwrap();
            }
        }
    };
    let (worker, pager) = runtime
        .restore_post_copy(module, &snapshot.manifest, &[], fetch)
        .unwrap();
    // The callback holds a pager clone only until paging ends (it is dropped then).
    let _ = slot.set(pager.clone());
    (worker, pager)
}

fn main() {
    roam_runtime::post_copy_available().expect("post-copy needs userfaultfd");
    let wasm = wat::parse_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/paged.wat"
    ))
    .unwrap();
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let module = runtime.load(&wasm).unwrap();

    // 16 MiB: 4096 chunks, 80 % of them non-zero.
    let mut source = runtime.start(&module).unwrap();
    send(&mut source, &msg(1, 256));
    let snapshot = source.capture().unwrap();
    let bodies: Arc<HashMap<ChunkHash, ChunkBody>> = Arc::new(
        snapshot
            .bodies()
            .iter()
            .map(|b| (b.hash(), b.clone()))
            .collect(),
    );
    let checksum = msg(2, 0);
    let expected = send(&mut source, &checksum);

    let (mut eager_restore, mut eager_first, mut eager_second) = (vec![], vec![], vec![]);
    let (mut lazy_restore, mut lazy_first, mut lazy_second) = (vec![], vec![], vec![]);
    let mut per_fault = vec![];
    let mut faults = 0;
    let mut zero_faults = 0;
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut worker = runtime.restore(&module, &snapshot).unwrap();
        eager_restore.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(send(&mut worker, &checksum), expected);
        eager_first.push(started.elapsed());
        let started = Instant::now();
        send(&mut worker, &checksum);
        eager_second.push(started.elapsed());

        let started = Instant::now();
        let (mut worker, pager) = restore_post_copy(&runtime, &module, &snapshot, &bodies);
        lazy_restore.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(send(&mut worker, &checksum), expected);
        let first = started.elapsed();
        lazy_first.push(first);
        let started = Instant::now();
        send(&mut worker, &checksum);
        lazy_second.push(started.elapsed());
        let stats = pager.stats();
        assert!(pager.is_complete());
        faults = stats.faults;
        zero_faults = stats.zero_faults;
        // What the faults added to the first message, per fault.
        let eager = *eager_first.last().unwrap();
        per_fault.push(first.saturating_sub(eager) / stats.faults as u32);
    }

    // Zero chunks: a 16 MiB memory that is all zero but its first and last chunks.
    let mut sparse = runtime.start(&module).unwrap();
    send(&mut sparse, &msg(4, 255));
    let sparse_snapshot = sparse.capture().unwrap();
    // One word of every 4 KiB page but the last.
    let scan = msg(6, 4095);
    let (mut sparse_eager, mut sparse_lazy) = (vec![], vec![]);
    let mut sparse_faults = 0;
    for _ in 0..RUNS {
        let mut eager = runtime.restore(&module, &sparse_snapshot).unwrap();
        let started = Instant::now();
        send(&mut eager, &scan);
        sparse_eager.push(started.elapsed());
        let (mut worker, pager) = runtime
            .restore_post_copy(&module, &sparse_snapshot.manifest, &[], |_| {})
            .unwrap();
        // The first chunk arrives before the worker runs; the last one, which the scan does
        // not reach, never does; zero chunks are never sent.
        let first = sparse_snapshot.manifest.chunks[0].hash;
        pager.supply(sparse_snapshot.body(first).unwrap()).unwrap();
        let started = Instant::now();
        send(&mut worker, &scan);
        sparse_lazy.push(started.elapsed());
        sparse_faults = pager.stats().faults;
    }

    println!(
        "16 MiB worker, {} chunks ({} non-zero, {} distinct), medians of {RUNS} runs",
        snapshot.manifest.memory_size / 4096,
        snapshot.manifest.chunks.len(),
        snapshot.bodies().len()
    );
    println!("| | eager restore | post-copy restore |");
    println!("|---|---|---|");
    println!(
        "| restore returns | {} | {} |",
        ms(median(eager_restore)),
        ms(median(lazy_restore))
    );
    println!(
        "| first message (touches all memory) | {} | {} |",
        ms(median(eager_first)),
        ms(median(lazy_first))
    );
    println!(
        "| second message | {} | {} |",
        ms(median(eager_second)),
        ms(median(lazy_second))
    );
    println!("faults in the first message: {faults} ({zero_faults} on zero chunks)");
    println!(
        "added per fault, chunk supplied at once from memory: {:.1} µs",
        median(per_fault).as_secs_f64() * 1e6
    );
    println!(
        "16 MiB of zero memory, first read of every page: eager {}, post-copy {} ({sparse_faults} faults)",
        ms(median(sparse_eager)),
        ms(median(sparse_lazy))
    );
}
