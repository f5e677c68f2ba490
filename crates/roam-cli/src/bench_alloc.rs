//! `roam bench alloc`: what the guest SDK's `zero-freed` allocator costs and saves. The
//! same example workers, built with and without the feature, handle the same messages side
//! by side in one process; for each workload this records the handler time per message and
//! the size of a snapshot taken after a few messages. Writes `alloc.json` and `alloc.md`
//! into the results directory.
//!
//! The two builds take turns message by message (with, without; then without, with), so
//! whatever else the machine does falls on both alike, and the cost is the median of the
//! per-round ratios.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use roam_runtime::{Runtime, RuntimeConfig, Worker};
use serde::Serialize;

use crate::bench::{machine_description, median, mib, ms};
use crate::workloads;

/// One build of a worker, measured.
#[derive(Serialize)]
pub struct VariantFigures {
    /// Module size in bytes.
    pub module_bytes: u64,
    /// Median handler time per timed message, ms (host call included: buffer, copy, free).
    pub handler_ms: f64,
    /// Raw linear memory size at the capture.
    pub memory_bytes: u64,
    /// Bytes in non-zero chunks at the capture.
    pub nonzero_bytes: u64,
    /// Bytes of the compressed chunk bodies.
    pub compressed_bytes: u64,
    /// The encoded snapshot's size.
    pub snapshot_bytes: u64,
}

/// One workload, run by both builds of its worker.
#[derive(Serialize)]
pub struct AllocRow {
    /// The worker.
    pub worker: String,
    /// The messages handled before the capture.
    pub before_capture: String,
    /// The message timed, and how many rounds.
    pub timed: String,
    /// Rounds of one timed message per build.
    pub rounds: usize,
    /// Built with `zero-freed` (the default).
    pub with_zeroing: VariantFigures,
    /// Built with `--no-default-features`.
    pub without_zeroing: VariantFigures,
    /// Median over rounds of (time with / time without − 1), in %.
    pub handler_cost_percent: f64,
}

/// Everything `roam bench alloc` measures.
#[derive(Serialize)]
pub struct AllocResults {
    /// When and where it ran.
    pub machine: String,
    /// Snapshot chunk size used.
    pub chunk_size: u32,
    /// The SDK's threshold: freed blocks of at least this many bytes are zeroed.
    pub zero_freed_min_size: usize,
    /// One row per workload.
    pub rows: Vec<AllocRow>,
}

/// A workload: the worker, the messages before the capture, the timed message, rounds.
struct Case {
    worker: &'static str,
    before_capture: &'static str,
    setup: Vec<Vec<u8>>,
    timed_label: &'static str,
    timed: Vec<u8>,
    rounds: usize,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            worker: "physics",
            before_capture: "1,000 cubes, 60 steps",
            setup: std::iter::once(workloads::physics_init(1000, 1))
                .chain((0..60).map(|_| workloads::physics_step(1)))
                .collect(),
            timed_label: "one step of 1,000 cubes",
            timed: workloads::physics_step(1),
            rounds: 300,
        },
        Case {
            worker: "facedetect",
            before_capture: "three 1666x1136 pictures",
            setup: (1..=3)
                .map(|seed| workloads::facedetect_message(1666, 1136, seed))
                .collect(),
            timed_label: "one 1666x1136 picture",
            timed: workloads::facedetect_message(1666, 1136, 4),
            rounds: 21,
        },
        Case {
            worker: "blur",
            before_capture: "three 1920x1080 RGBA pictures, sigma 3",
            setup: (1..=3)
                .map(|seed| workloads::blur_message(1920, 1080, 3.0, seed))
                .collect(),
            timed_label: "one 1920x1080 RGBA picture, sigma 3",
            timed: workloads::blur_message(1920, 1080, 3.0, 4),
            rounds: 31,
        },
    ]
}

/// Runs the benchmark on the workers in `with_dir` (built with `zero-freed`) and
/// `without_dir` (built without), and writes `alloc.json` and `alloc.md` into `out_dir`.
pub fn alloc(with_dir: &Path, without_dir: &Path, out_dir: &Path) -> Result<AllocResults> {
    let config = RuntimeConfig::default();
    let runtime = Runtime::new(config.clone())?;
    let mut rows = Vec::new();
    for case in cases() {
        eprintln!("  {}: {} rounds", case.worker, case.rounds);
        rows.push(row(&runtime, &case, with_dir, without_dir)?);
    }
    let results = AllocResults {
        machine: machine_description(),
        chunk_size: config.chunk_size,
        zero_freed_min_size: roam_worker::ZERO_FREED_MIN_SIZE,
        rows,
    };
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("alloc.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(out_dir.join("alloc.md"), markdown(&results))?;
    Ok(results)
}

/// Delivers `message` and returns the replies and the time the call took, ms.
fn timed_deliver(worker: &mut Worker, message: &[u8]) -> Result<(Vec<Vec<u8>>, f64)> {
    let started = Instant::now();
    let replies = worker.deliver(message)?;
    let elapsed = ms(started.elapsed());
    Ok((replies.map(<[u8]>::to_vec).collect(), elapsed))
}

fn row(runtime: &Runtime, case: &Case, with_dir: &Path, without_dir: &Path) -> Result<AllocRow> {
    let read = |dir: &Path| -> Result<Vec<u8>> {
        let path = dir.join(format!("{}.wasm", case.worker));
        std::fs::read(&path).with_context(|| format!("read {}", path.display()))
    };
    let wasm = [read(with_dir)?, read(without_dir)?];
    ensure!(
        wasm[0] != wasm[1],
        "{}: the two builds are the same module; was the second built without zero-freed?",
        case.worker
    );
    let mut workers = Vec::new();
    for bytes in &wasm {
        let module = runtime.load(bytes)?;
        let mut worker = runtime.start(&module)?;
        for message in &case.setup {
            worker
                .deliver(message)
                .with_context(|| format!("{}: setup message", case.worker))?;
        }
        workers.push(worker);
    }
    let snapshots = [workers[0].capture()?, workers[1].capture()?];

    let mut times = [Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for round in 0..case.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        let mut replies = [Vec::new(), Vec::new()];
        for i in order {
            let (r, t) = timed_deliver(&mut workers[i], &case.timed)?;
            replies[i] = r;
            times[i].push(t);
        }
        ensure!(
            replies[0] == replies[1],
            "{}: the two builds answer differently",
            case.worker
        );
        ratios.push(times[0][round] / times[1][round]);
    }

    let figures = |i: usize| {
        let stats = snapshots[i].stats();
        VariantFigures {
            module_bytes: wasm[i].len() as u64,
            handler_ms: median(times[i].clone()),
            memory_bytes: stats.memory_size,
            nonzero_bytes: stats.nonzero_bytes,
            compressed_bytes: stats.compressed_bytes,
            snapshot_bytes: stats.encoded_size,
        }
    };
    Ok(AllocRow {
        worker: case.worker.into(),
        before_capture: case.before_capture.into(),
        timed: case.timed_label.into(),
        rounds: case.rounds,
        with_zeroing: figures(0),
        without_zeroing: figures(1),
        handler_cost_percent: (median(ratios) - 1.0) * 100.0,
    })
}

/// `part` as a percentage of `whole`.
fn percent(part: u64, whole: u64) -> f64 {
    part as f64 / whole.max(1) as f64 * 100.0
}

/// The results as markdown tables.
pub fn markdown(r: &AllocResults) -> String {
    let mut s = format!(
        "# Zeroing freed memory in the guest allocator\n\nMachine: {}. Chunk size {} KiB. The SDK zeroes freed blocks of at least {} KiB. Each worker built with the `zero-freed` feature (the default) and without it, both run side by side in one process, taking turns message by message.\n\n",
        r.machine,
        r.chunk_size / 1024,
        r.zero_freed_min_size / 1024
    );
    s += "## Handler time per message\n\n| worker | message | rounds | with | without | cost (median of per-round ratios) |\n|---|---|---|---|---|---|\n";
    for row in &r.rows {
        s += &format!(
            "| {} | {} | {} | {:.3} ms | {:.3} ms | {:+.2} % |\n",
            row.worker,
            row.timed,
            row.rounds,
            row.with_zeroing.handler_ms,
            row.without_zeroing.handler_ms,
            row.handler_cost_percent
        );
    }
    s += "\n## Snapshot after a few messages\n\n| worker | messages | memory with / without | non-zero with | non-zero without | saved | compressed with | compressed without | saved |\n|---|---|---|---|---|---|---|---|---|\n";
    for row in &r.rows {
        let (with, without) = (&row.with_zeroing, &row.without_zeroing);
        s += &format!(
            "| {} | {} | {} / {} | {} | {} | {:.1} % | {} | {} | {:.1} % |\n",
            row.worker,
            row.before_capture,
            mib(with.memory_bytes),
            mib(without.memory_bytes),
            mib(with.nonzero_bytes),
            mib(without.nonzero_bytes),
            100.0 - percent(with.nonzero_bytes, without.nonzero_bytes),
            mib(with.compressed_bytes),
            mib(without.compressed_bytes),
            100.0 - percent(with.compressed_bytes, without.compressed_bytes),
        );
    }
    s
}
