//! The `roam` subcommands, as functions the binary and the tests both call.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use roam_runtime::{Runtime, RuntimeConfig, Snapshot, Worker, WorkerLimits};
use serde::Serialize;

use crate::records::{write_record, RecordReader};

/// `roam prepare IN -o OUT`: checks the worker contract and writes the prepared module.
pub fn prepare(input: &Path, output: &Path) -> Result<roam_prepare::ModuleInfo> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let prepared = roam_prepare::prepare(&bytes)
        .with_context(|| format!("{} cannot be a worker", input.display()))?;
    std::fs::write(output, &prepared.bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(prepared.info)
}

/// What `roam exec` runs.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The worker module.
    pub worker: PathBuf,
    /// Records to deliver, one message each.
    pub messages: PathBuf,
    /// Where every reply goes, as records, in order.
    pub out: PathBuf,
    /// Capture, encode and restore into a fresh engine after every N messages.
    pub checkpoint_every: Option<u64>,
    /// Where to write the final snapshot.
    pub save_snapshot: Option<PathBuf>,
    /// Start from this snapshot instead of a fresh worker.
    pub restore: Option<PathBuf>,
    /// Limits for the worker.
    pub limits: WorkerLimits,
}

/// What `roam exec` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ExecReport {
    /// Messages delivered.
    pub messages: u64,
    /// Replies written.
    pub replies: u64,
    /// Capture → encode → decode → restore cycles done.
    pub checkpoints: u64,
    /// Milliseconds spent capturing and encoding, all checkpoints together.
    pub capture_ms: f64,
    /// Milliseconds spent creating fresh engines and loading the module into them.
    pub load_ms: f64,
    /// Milliseconds spent decoding and restoring, all together.
    pub restore_ms: f64,
    /// Encoded size of the last snapshot taken.
    pub last_snapshot_bytes: u64,
    /// The worker's memory size at the end.
    pub memory_bytes: u64,
}

/// A runtime configuration whose compiled modules are kept in `cache`, so that every fresh
/// engine after a checkpoint loads the artifact instead of compiling again — as a node with
/// a warm cache does.
pub fn config_with_cache(limits: WorkerLimits, cache: &Path) -> RuntimeConfig {
    RuntimeConfig {
        limits,
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    }
}

/// Opens the message file for reading and the reply file for writing.
pub(crate) fn open_records(
    options: &ExecOptions,
) -> Result<(RecordReader<BufReader<File>>, BufWriter<File>)> {
    let input = File::open(&options.messages)
        .with_context(|| format!("cannot open {}", options.messages.display()))?;
    let output = File::create(&options.out)
        .with_context(|| format!("cannot create {}", options.out.display()))?;
    Ok((
        RecordReader::new(BufReader::with_capacity(1 << 20, input)),
        BufWriter::with_capacity(1 << 20, output),
    ))
}

/// `roam exec`: delivers every message to the worker and writes every reply.
pub fn exec(options: &ExecOptions, progress: &mut dyn FnMut(&ExecReport)) -> Result<ExecReport> {
    let wasm = std::fs::read(&options.worker)
        .with_context(|| format!("cannot read {}", options.worker.display()))?;
    let cache = tempfile::tempdir().context("cannot create a directory for compiled modules")?;
    let config = config_with_cache(options.limits.clone(), cache.path());
    let mut runtime = Runtime::new(config.clone())?;
    let module = runtime.load(&wasm)?;
    let mut worker = match &options.restore {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let snapshot = runtime
                .decode_snapshot(&bytes)
                .with_context(|| format!("{} is not a usable snapshot", path.display()))?;
            runtime
                .restore(&module, &snapshot)
                .with_context(|| format!("cannot restore {}", path.display()))?
        }
        None => runtime.start(&module)?,
    };
    drop(module);

    let (mut messages, mut out) = open_records(options)?;

    let mut report = ExecReport::default();
    let mut last_progress = Instant::now();
    while let Some(message) = messages
        .next_record()
        .with_context(|| format!("in {}", options.messages.display()))?
    {
        let replies = worker
            .deliver(&message)
            .with_context(|| format!("message {}", report.messages))?;
        for reply in replies {
            write_record(&mut out, reply).context("cannot write a reply")?;
            report.replies += 1;
        }
        report.messages += 1;
        if let Some(every) = options.checkpoint_every {
            if report.messages % every == 0 {
                let (next_runtime, next_worker, cost) = checkpoint(&mut worker, &wasm, &config)?;
                runtime = next_runtime;
                worker = next_worker;
                report.checkpoints += 1;
                report.capture_ms += cost.capture.as_secs_f64() * 1e3;
                report.load_ms += cost.load.as_secs_f64() * 1e3;
                report.restore_ms += cost.restore.as_secs_f64() * 1e3;
                report.last_snapshot_bytes = cost.snapshot_bytes;
            }
        }
        if last_progress.elapsed() > Duration::from_secs(1) {
            progress(&report);
            last_progress = Instant::now();
        }
    }
    out.flush().context("cannot write replies")?;
    if let Some(path) = &options.save_snapshot {
        let started = Instant::now();
        let bytes = worker.capture()?.encode();
        report.capture_ms += started.elapsed().as_secs_f64() * 1e3;
        report.last_snapshot_bytes = bytes.len() as u64;
        std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    report.memory_bytes = worker.memory().len() as u64;
    drop(worker);
    drop(runtime);
    Ok(report)
}

/// What one capture → encode → decode → restore cycle cost.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    /// Capturing the worker and encoding the snapshot.
    pub capture: Duration,
    /// Creating a fresh engine and loading the module into it (from the compiled-module
    /// cache when the runtime has one).
    pub load: Duration,
    /// Decoding the bytes and restoring them into a fresh worker.
    pub restore: Duration,
    /// The encoded snapshot's size.
    pub snapshot_bytes: u64,
    /// The worker's memory size.
    pub memory_bytes: u64,
}

/// Captures the worker, encodes the snapshot to bytes, and restores those bytes into a fresh
/// worker in a fresh engine — what a move does, minus the network. The old worker is left
/// as it was; the caller drops it.
pub fn checkpoint(
    worker: &mut Worker,
    wasm: &[u8],
    config: &RuntimeConfig,
) -> Result<(Runtime, Worker, Checkpoint)> {
    let started = Instant::now();
    let bytes = worker.capture().context("capture failed")?.encode();
    let capture = started.elapsed();

    let started = Instant::now();
    let runtime = Runtime::new(config.clone())?;
    let module = runtime.load(wasm)?;
    let load = started.elapsed();

    let started = Instant::now();
    let snapshot = runtime.decode_snapshot(&bytes)?;
    let restored = runtime.restore(&module, &snapshot)?;
    let restore = started.elapsed();
    Ok((
        runtime,
        restored,
        Checkpoint {
            capture,
            load,
            restore,
            snapshot_bytes: bytes.len() as u64,
            memory_bytes: worker.memory().len() as u64,
        },
    ))
}

/// What `roam snapshot inspect` shows.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// File size in bytes.
    pub file_bytes: u64,
    /// The module's sha-256, hex.
    pub module_hash: String,
    /// Messages handled when it was taken.
    pub last_seq: u64,
    /// The worker's monotonic clock, in nanoseconds.
    pub clock_ns: u64,
    /// Linear memory size.
    pub memory_bytes: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Non-zero chunks in the map.
    pub chunks: u64,
    /// Distinct chunk bodies (after deduplication).
    pub unique_chunks: u64,
    /// Bytes of memory in non-zero chunks.
    pub nonzero_bytes: u64,
    /// Compressed size of the chunk bodies.
    pub compressed_bytes: u64,
    /// Mutable globals, as the snapshot holds them.
    pub globals: Vec<String>,
    /// Size of every table.
    pub tables: Vec<usize>,
}

/// `roam snapshot inspect FILE`: decodes and summarises a snapshot.
pub fn inspect(path: &Path) -> Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let snapshot = Snapshot::decode(&bytes, &roam_snapshot::DecodeLimits::default())
        .with_context(|| format!("{} is not a valid snapshot", path.display()))?;
    let stats = snapshot.stats();
    let m = &snapshot.manifest;
    Ok(Inspection {
        file_bytes: bytes.len() as u64,
        module_hash: hex::encode(m.module_hash),
        last_seq: m.last_seq,
        clock_ns: m.clock_ns,
        memory_bytes: m.memory_size,
        chunk_size: m.chunk_size,
        chunks: stats.chunks,
        unique_chunks: stats.unique_chunks,
        nonzero_bytes: stats.nonzero_bytes,
        compressed_bytes: stats.compressed_bytes,
        globals: m.globals.iter().map(|g| format!("{g:?}")).collect(),
        tables: m.tables.iter().map(|t| t.elements.len()).collect(),
    })
}

/// Prints an inspection for people.
pub fn print_inspection(i: &Inspection, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "snapshot       {} bytes", i.file_bytes)?;
    writeln!(out, "module         sha256:{}", i.module_hash)?;
    writeln!(out, "messages       {} handled", i.last_seq)?;
    writeln!(out, "clock          {:.3} s", i.clock_ns as f64 / 1e9)?;
    writeln!(
        out,
        "memory         {} bytes ({} non-zero in {} chunks of {} bytes, {} distinct)",
        i.memory_bytes, i.nonzero_bytes, i.chunks, i.chunk_size, i.unique_chunks
    )?;
    writeln!(out, "compressed     {} bytes", i.compressed_bytes)?;
    writeln!(out, "globals        {}", i.globals.join(", "))?;
    writeln!(
        out,
        "tables         {}",
        i.tables
            .iter()
            .map(|n| format!("{n} elements"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(())
}

/// Parses sizes such as `64MiB`, `1GiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("`{text}` is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => bail!("`{other}` is not a size unit (use B, KiB, MiB or GiB)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("`{text}` is too large"))
}
