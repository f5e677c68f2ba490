//! `roam bench core`: capture and restore throughput, message rate, and the state of every
//! example worker. Writes `core.json` and `core.md` into the results directory.
//!
//! Every figure is a median over several runs, measured in the same process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use roam_runtime::{Runtime, RuntimeConfig};
use serde::Serialize;

use crate::workloads;

/// A worker whose one message grows memory to `pages` and fills `percent` % of its 64 KiB
/// pages with incompressible words: the worst case for compression, at a chosen density.
pub(crate) const FILLER_WAT: &str = r#"
(module
  (import "roam" "post_message" (func $post (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "roam_alloc") (param i32) (result i32) (i32.const 16))
  (func (export "roam_on_message") (param $ptr i32) (param $len i32)
    (local $pages i32) (local $pct i32) (local $x i32) (local $page i32) (local $addr i32) (local $end i32)
    (local.set $pages (i32.load (local.get $ptr)))
    (local.set $pct (i32.load offset=4 (local.get $ptr)))
    (local.set $x (i32.or (i32.load offset=8 (local.get $ptr)) (i32.const 1)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $pages) (memory.size))))))
    (local.set $page (i32.const 1))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $page) (local.get $pages)))
      (if (i32.lt_u
            (i32.rem_u (i32.shr_u (i32.mul (local.get $page) (i32.const -1640531535)) (i32.const 16)) (i32.const 100))
            (local.get $pct))
        (then
          (local.set $addr (i32.shl (local.get $page) (i32.const 16)))
          (local.set $end (i32.add (local.get $addr) (i32.const 65536)))
          (loop $fill
            (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
            (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
            (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
            (i32.store (local.get $addr) (local.get $x))
            (local.set $addr (i32.add (local.get $addr) (i32.const 4)))
            (br_if $fill (i32.lt_u (local.get $addr) (local.get $end))))))
      (local.set $page (i32.add (local.get $page) (i32.const 1)))
      (br $next)))
    (call $post (local.get $ptr) (i32.const 0))))
"#;

pub(crate) fn filler_message(pages: u32, percent: u32, seed: u32) -> Vec<u8> {
    [pages, percent, seed]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Capture throughput on one memory image.
#[derive(Serialize)]
pub struct CaptureRow {
    /// What the memory holds.
    pub memory: String,
    /// Memory size in bytes.
    pub memory_bytes: u64,
    /// Bytes in non-zero chunks.
    pub nonzero_bytes: u64,
    /// Median time to capture (hash + compress), ms.
    pub capture_ms: f64,
    /// Memory bytes captured per second, GB/s (10^9).
    pub capture_gb_per_s: f64,
    /// Median time to encode the captured snapshot to bytes, ms.
    pub encode_ms: f64,
    /// Median time to decode and restore into a fresh instance, ms.
    pub restore_ms: f64,
    /// Encoded snapshot size.
    pub snapshot_bytes: u64,
}

/// The state of one example worker after a typical workload.
#[derive(Serialize)]
pub struct WorkerRow {
    /// The worker.
    pub worker: String,
    /// The workload it ran before capture.
    pub workload: String,
    /// Module size in bytes.
    pub module_bytes: u64,
    /// Raw linear memory size.
    pub memory_bytes: u64,
    /// Bytes in non-zero chunks.
    pub nonzero_bytes: u64,
    /// Encoded snapshot size.
    pub snapshot_bytes: u64,
    /// Median capture (hash + compress) time, ms.
    pub capture_ms: f64,
    /// Memory bytes captured per second, GB/s (10^9).
    pub capture_gb_per_s: f64,
    /// Median time to encode the snapshot to bytes, ms.
    pub encode_ms: f64,
    /// Median decode + restore time (fresh instance, module already loaded), ms.
    pub restore_ms: f64,
    /// Median time of one message of the workload, ms.
    pub message_ms: f64,
}

/// Message rate through a worker.
#[derive(Serialize)]
pub struct RateRow {
    /// The worker.
    pub worker: String,
    /// Messages per run.
    pub messages: u64,
    /// Bytes per message.
    pub message_bytes: u64,
    /// Median messages per second.
    pub messages_per_s: f64,
}

/// Everything `roam bench core` measures.
#[derive(Serialize)]
pub struct CoreResults {
    /// When and where it ran.
    pub machine: String,
    /// Snapshot chunk size used.
    pub chunk_size: u32,
    /// Runs per median.
    pub runs: usize,
    /// Capture and restore on synthetic memories.
    pub capture: Vec<CaptureRow>,
    /// Message rates.
    pub rates: Vec<RateRow>,
    /// Example workers.
    pub workers: Vec<WorkerRow>,
}

const RUNS: usize = 7;

/// A worker, its workload's description, the messages that bring it to a typical state, and
/// the message timed after each restore.
type WorkerCase = (&'static str, String, Vec<Vec<u8>>, Vec<u8>);

/// Runs the core benchmark and writes `core.json` and `core.md` into `out_dir`.
pub fn core(workers_dir: &Path, out_dir: &Path) -> Result<CoreResults> {
    let config = RuntimeConfig::default();
    let runtime = Runtime::new(config.clone())?;

    let mut capture = Vec::new();
    for (label, pages, percent) in [
        ("16 MiB, 10 % of pages written", 256u32, 10u32),
        ("256 MiB, 10 % of pages written", 4096, 10),
        ("64 MiB, every page written", 1024, 100),
    ] {
        eprintln!("  capture/restore: {label}");
        capture.push(capture_row(&runtime, label, pages, percent)?);
    }

    let mut rates = Vec::new();
    for name in ["counter", "c_counter"] {
        let path = workers_dir.join(format!("{name}.wasm"));
        if !path.exists() {
            eprintln!("  (skipping {name}: {} is missing)", path.display());
            continue;
        }
        eprintln!("  message rate: {name}");
        rates.push(rate_row(&runtime, name, &std::fs::read(&path)?)?);
    }

    let mut workers = Vec::new();
    let cases: Vec<WorkerCase> = vec![
        (
            "counter",
            "1,000 messages".into(),
            workloads::counter_messages(1000),
            b"one more".to_vec(),
        ),
        (
            "c_counter",
            "1,000 messages".into(),
            workloads::counter_messages(1000),
            b"one more".to_vec(),
        ),
        (
            "physics",
            "1,000 cubes, 60 steps".into(),
            std::iter::once(workloads::physics_init(1000, 1))
                .chain((0..60).map(|_| workloads::physics_step(1)))
                .collect(),
            workloads::physics_step(1),
        ),
        (
            "facedetect",
            "one 1666x1136 picture".into(),
            vec![workloads::facedetect_message(1666, 1136, 1)],
            workloads::facedetect_message(1666, 1136, 2),
        ),
        (
            "blur",
            "one 1920x1080 RGBA picture, sigma 3".into(),
            vec![workloads::blur_message(1920, 1080, 3.0, 1)],
            workloads::blur_message(1920, 1080, 3.0, 2),
        ),
    ];
    for (name, workload, warmup, timed) in cases {
        let path = workers_dir.join(format!("{name}.wasm"));
        if !path.exists() {
            eprintln!("  (skipping {name}: {} is missing)", path.display());
            continue;
        }
        eprintln!("  worker state: {name}");
        let wasm = std::fs::read(&path)?;
        workers.push(worker_row(
            &runtime, name, workload, &wasm, &warmup, &timed,
        )?);
    }

    let results = CoreResults {
        machine: machine_description(),
        chunk_size: config.chunk_size,
        runs: RUNS,
        capture,
        rates,
        workers,
    };
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("core.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(out_dir.join("core.md"), markdown(&results))?;
    Ok(results)
}

fn capture_row(runtime: &Runtime, label: &str, pages: u32, percent: u32) -> Result<CaptureRow> {
    let module = runtime.load(&wat::parse_str(FILLER_WAT)?)?;
    let mut worker = runtime.start(&module)?;
    worker.deliver(&filler_message(pages, percent, 12345))?;
    let (mut captures, mut encodes, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        let snapshot = worker.capture()?;
        captures.push(ms(started.elapsed()));
        let started = Instant::now();
        let bytes = snapshot.encode();
        encodes.push(ms(started.elapsed()));
        let started = Instant::now();
        let decoded = runtime.decode_snapshot(&bytes)?;
        let restored = runtime.restore(&module, &decoded)?;
        restores.push(ms(started.elapsed()));
        ensure!(
            restored.memory() == worker.memory(),
            "restored memory differs"
        );
        last = Some((snapshot.stats(), bytes.len() as u64));
    }
    let (stats, snapshot_bytes) = last.expect("RUNS > 0");
    let capture_ms = median(captures);
    Ok(CaptureRow {
        memory: label.into(),
        memory_bytes: worker.memory().len() as u64,
        nonzero_bytes: stats.nonzero_bytes,
        capture_ms,
        capture_gb_per_s: worker.memory().len() as f64 / (capture_ms / 1e3) / 1e9,
        encode_ms: median(encodes),
        restore_ms: median(restores),
        snapshot_bytes,
    })
}

fn rate_row(runtime: &Runtime, name: &str, wasm: &[u8]) -> Result<RateRow> {
    let module = runtime.load(wasm)?;
    let mut worker = runtime.start(&module)?;
    let message = [7u8; 16];
    let n: u64 = 1_000_000;
    let mut rates = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..n {
            let replies = worker.deliver(&message)?;
            ensure!(replies.len() == 1, "counter posts one reply per message");
        }
        rates.push(n as f64 / started.elapsed().as_secs_f64());
    }
    Ok(RateRow {
        worker: name.into(),
        messages: n,
        message_bytes: message.len() as u64,
        messages_per_s: median(rates),
    })
}

fn worker_row(
    runtime: &Runtime,
    name: &str,
    workload: String,
    wasm: &[u8],
    warmup: &[Vec<u8>],
    timed: &[u8],
) -> Result<WorkerRow> {
    let module = runtime.load(wasm)?;
    let mut worker = runtime.start(&module)?;
    for m in warmup {
        worker
            .deliver(m)
            .with_context(|| format!("{name}: warm-up message"))?;
    }
    let (mut captures, mut encodes) = (Vec::new(), Vec::new());
    let (mut restores, mut messages) = (Vec::new(), Vec::new());
    let mut last = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        let snapshot = worker.capture()?;
        captures.push(ms(started.elapsed()));
        let started = Instant::now();
        let bytes = snapshot.encode();
        encodes.push(ms(started.elapsed()));
        let started = Instant::now();
        let decoded = runtime.decode_snapshot(&bytes)?;
        let mut restored = runtime.restore(&module, &decoded)?;
        restores.push(ms(started.elapsed()));
        let started = Instant::now();
        let replies: Vec<Vec<u8>> = restored.deliver(timed)?.map(<[u8]>::to_vec).collect();
        messages.push(ms(started.elapsed()));
        // The original handles the same message: both must answer alike (and the next run
        // captures the original one message further on).
        let expected: Vec<Vec<u8>> = worker.deliver(timed)?.map(<[u8]>::to_vec).collect();
        ensure!(
            replies == expected,
            "{name}: the restored worker answers differently from the original"
        );
        last = Some((snapshot.stats(), bytes.len() as u64));
    }
    let (stats, snapshot_bytes) = last.expect("RUNS > 0");
    let capture_ms = median(captures);
    Ok(WorkerRow {
        worker: name.into(),
        workload,
        module_bytes: wasm.len() as u64,
        memory_bytes: worker.memory().len() as u64,
        nonzero_bytes: stats.nonzero_bytes,
        snapshot_bytes,
        capture_ms,
        capture_gb_per_s: worker.memory().len() as f64 / (capture_ms / 1e3) / 1e9,
        encode_ms: median(encodes),
        restore_ms: median(restores),
        message_ms: median(messages),
    })
}

/// The CPU model and core count, for the results' heading.
pub(crate) fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Bytes as MiB with two decimals.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The results as markdown tables.
pub fn markdown(r: &CoreResults) -> String {
    let mut s = String::new();
    s += &format!(
        "# Core benchmark\n\nMachine: {}. Chunk size {} KiB. Medians of {} runs (message rate: of 5 runs of 1,000,000 messages).\n\n",
        r.machine,
        r.chunk_size / 1024,
        r.runs
    );
    s += "## Capture and restore\n\n| memory | size | non-zero | capture (hash + compress) | throughput | encode | decode + restore | snapshot |\n|---|---|---|---|---|---|---|---|\n";
    for c in &r.capture {
        s += &format!(
            "| {} | {} | {} | {:.2} ms | {:.2} GB/s | {:.2} ms | {:.2} ms | {} |\n",
            c.memory,
            mib(c.memory_bytes),
            mib(c.nonzero_bytes),
            c.capture_ms,
            c.capture_gb_per_s,
            c.encode_ms,
            c.restore_ms,
            mib(c.snapshot_bytes)
        );
    }
    s += "\n## Messages through a local worker\n\n| worker | message | messages/s |\n|---|---|---|\n";
    for m in &r.rates {
        s += &format!(
            "| {} | {} bytes | {:.0} |\n",
            m.worker, m.message_bytes, m.messages_per_s
        );
    }
    s += "\n## Example workers\n\n| worker | workload | module | memory | non-zero | snapshot | capture | throughput | encode | decode + restore | next message |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for w in &r.workers {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.2} ms | {:.2} GB/s | {:.2} ms | {:.2} ms | {:.2} ms |\n",
            w.worker,
            w.workload,
            mib(w.module_bytes),
            mib(w.memory_bytes),
            mib(w.nonzero_bytes),
            mib(w.snapshot_bytes),
            w.capture_ms,
            w.capture_gb_per_s,
            w.encode_ms,
            w.restore_ms,
            w.message_ms
        );
    }
    s
}
