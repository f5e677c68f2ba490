//! `roam bench moves`: what moving workers between nodes costs, on loopback. Message round
//! trips through a node, the handoff of a worker with a large memory while messages keep
//! flowing, and the resident memory a node spends per idle worker. Writes `moves.json` and
//! `moves.md` into the results directory.
//!
//! Every node is a separate `roam serve` process on 127.0.0.1, port 0, killed at the end.
//! No link is emulated: these figures are the software's own cost, the floor under any
//! network's.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use roam_client::{Place, WorkerHandle, WorkerOptions};
use roam_runtime::{Runtime, RuntimeConfig};
use serde::Serialize;

use crate::bench::{filler_message, machine_description, median, mib, ms, FILLER_WAT};
use crate::node_metrics::{metrics, node_bytes, series_sum};
use crate::workloads;

/// Round trips timed per place, after [`ROUND_TRIP_WARMUP`] untimed ones.
const ROUND_TRIPS: usize = 20_000;
const ROUND_TRIP_WARMUP: usize = 1_000;
/// Handoffs per memory size.
const HANDOFF_RUNS: usize = 5;
/// Messages streamed before a handoff (the first [`STREAM_WARMUP`] are not timed) and after.
const STREAM_BEFORE: usize = 2_000;
const STREAM_WARMUP: usize = 500;
const STREAM_AFTER: usize = 2_000;
/// Counter workers hosted at once by one node.
const IDLE_COUNTERS: usize = 1_000;
/// Physics workers hosted at once by one node, and the size of each one's scene.
const IDLE_PHYSICS: usize = 100;
const PHYSICS_CUBES: u32 = 1_000;

/// Round-trip latency of one message, sent alone (a window of one).
#[derive(Serialize)]
pub struct RoundTripRow {
    /// Where the worker ran.
    pub place: String,
    /// The worker.
    pub worker: String,
    /// Bytes per message.
    pub message_bytes: u64,
    /// Untimed round trips before the timed ones.
    pub warmup: u64,
    /// Timed round trips.
    pub messages: u64,
    /// Median round trip, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest round trip, µs.
    pub max_us: f64,
}

/// Handoffs edge A → edge B of a worker with a filled memory, messages flowing.
#[derive(Serialize)]
pub struct HandoffRow {
    /// The worker's linear memory size.
    pub memory_bytes: u64,
    /// Bytes in its non-zero chunks (all of them incompressible).
    pub nonzero_bytes: u64,
    /// Handoffs measured.
    pub runs: usize,
    /// Messages in flight at most while streaming.
    pub window: usize,
    /// Median steady-state time between two replies before the move, µs.
    pub message_us: f64,
    /// Median settle time: from the move's request until the worker runs at B with all of
    /// its state, as the client's move report gives it, ms.
    pub settle_ms: f64,
    /// Median stall: the longest gap between two consecutive replies the application saw
    /// around the move, minus the steady-state time per message, ms.
    pub stall_ms: f64,
    /// Median bytes on the wire for the move, every connection counted once.
    pub wire_bytes: u64,
    /// Median of those bytes that passed through the client.
    pub client_bytes: u64,
    /// Median messages the client resent to B after the move.
    pub replayed: u64,
    /// Median time of the offload local → A that preceded each handoff, ms.
    pub offload_ms: f64,
    /// Median time of the return B → local that followed it, ms.
    pub return_ms: f64,
    /// Every run's settle time, ms.
    pub settle_ms_runs: Vec<f64>,
    /// Every run's stall, ms.
    pub stall_ms_runs: Vec<f64>,
    /// Every run's bytes on the wire.
    pub wire_bytes_runs: Vec<u64>,
}

/// Resident memory of one node process hosting many idle workers.
#[derive(Serialize)]
pub struct IdleRow {
    /// The worker.
    pub worker: String,
    /// What each worker handled before going idle.
    pub workload: String,
    /// Workers hosted at once.
    pub workers: u64,
    /// Workers the node's `/metrics` reported hosting at the end.
    pub hosted_reported: u64,
    /// The node's VmRSS before the first worker, KiB.
    pub rss_before_kib: u64,
    /// Its VmRSS with one worker, KiB (includes the module, loaded once).
    pub rss_first_kib: u64,
    /// Its VmRSS with every worker, KiB.
    pub rss_after_kib: u64,
    /// Its VmRSS after every client disconnected (the workers stay hosted), KiB. Memory
    /// the node's allocator keeps after a connection closes still counts here.
    pub rss_disconnected_kib: u64,
    /// (after − before) / workers, KiB.
    pub per_worker_kib: f64,
    /// (after − first) / (workers − 1): what one more worker costs, KiB.
    pub marginal_per_worker_kib: f64,
    /// The benchmark client's own VmRSS with every worker's handle alive, KiB.
    pub client_rss_kib: u64,
    /// Time to start and offload every worker, s.
    pub offload_s: f64,
}

/// Everything `roam bench moves` measures.
#[derive(Serialize)]
pub struct MovesResults {
    /// The CPU it ran on.
    pub machine: String,
    /// The network: loopback, no emulated link.
    pub network: String,
    /// Round trips through a node and, for comparison, locally.
    pub round_trip: Vec<RoundTripRow>,
    /// Handoffs of a worker with a large memory.
    pub handoff: Vec<HandoffRow>,
    /// Idle workers hosted by one node.
    pub idle: Vec<IdleRow>,
    /// How long the whole benchmark took, s.
    pub total_s: f64,
}

/// A `roam serve --role edge` process on 127.0.0.1 port 0, killed when dropped — also
/// when the benchmark fails halfway.
struct NodeProcess {
    child: Child,
    url: String,
}

impl NodeProcess {
    /// Starts a node keeping its files in `data_dir`.
    fn start(roam: &Path, data_dir: &Path) -> Result<NodeProcess> {
        let child = Command::new(roam)
            .args([
                "serve",
                "--role",
                "edge",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", roam.display()))?;
        // From here on the guard kills the process whatever happens.
        let mut node = NodeProcess {
            child,
            url: String::new(),
        };
        let stdout = node.child.stdout.take().context("the node's stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        node.url = line
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .with_context(|| format!("no ws:// URL in the node's first line `{}`", line.trim()))?
            .to_string();
        // Keep reading so a chatty node never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(node)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// The value at quantile `q` of sorted samples (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median_u64(xs: &[u64]) -> u64 {
    median(xs.iter().map(|&x| x as f64).collect()).round() as u64
}

/// Client-side runtime settings: compiled modules cached on disk, so that starting many
/// handles (each with its own engine) compiles each module once.
fn client_options(cache: &Path) -> WorkerOptions {
    WorkerOptions {
        runtime: RuntimeConfig {
            cache_dir: Some(cache.to_path_buf()),
            ..RuntimeConfig::default()
        },
        ..WorkerOptions::default()
    }
}

/// Runs the moves benchmark with `roam_binary` as the node, and writes `moves.json` and
/// `moves.md` into `out_dir`.
pub fn moves(roam_binary: &Path, workers_dir: &Path, out_dir: &Path) -> Result<MovesResults> {
    let started = Instant::now();
    let counter_path = workers_dir.join("counter.wasm");
    let counter = std::fs::read(&counter_path)
        .with_context(|| format!("cannot read {}", counter_path.display()))?;
    let physics_path = workers_dir.join("physics.wasm");
    let physics = std::fs::read(&physics_path).ok();
    let filler = wat::parse_str(FILLER_WAT)?;
    let cache = tempfile::tempdir()?;
    let options = client_options(cache.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut round_trip = Vec::new();
    {
        eprintln!("  round trip: starting a node");
        let dir = tempfile::tempdir()?;
        let node = NodeProcess::start(roam_binary, dir.path())?;
        let (local, remote) = rt.block_on(round_trips(&counter, &options, &node.url))?;
        round_trip.push(local);
        round_trip.push(remote);
    }

    let mut handoff = Vec::new();
    {
        eprintln!("  handoff: starting nodes A and B");
        let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
        let a = NodeProcess::start(roam_binary, dir_a.path())?;
        let b = NodeProcess::start(roam_binary, dir_b.path())?;
        rt.block_on(warm(&filler, &options, &[&a.url, &b.url]))?;
        for pages in [1024u32, 256] {
            handoff.push(rt.block_on(handoffs(&filler, &options, &a.url, &b.url, pages))?);
        }
    }

    // Idle handles only need their engine's epoch for local time limits, which they never
    // use once offloaded: a slow tick keeps a thousand of them from busying the CPU.
    let idle_options = WorkerOptions {
        runtime: RuntimeConfig {
            epoch_tick: Duration::from_secs(1),
            ..options.runtime.clone()
        },
        ..options.clone()
    };
    let mut idle = Vec::new();
    let message = [7u8; 16].to_vec();
    idle.push(rt.block_on(idle_workers(
        roam_binary,
        &counter,
        &idle_options,
        "counter",
        "one 16-byte message",
        IDLE_COUNTERS,
        &[],
        &message,
    ))?);
    match &physics {
        Some(wasm) => idle.push(rt.block_on(idle_workers(
            roam_binary,
            wasm,
            &idle_options,
            "physics",
            &format!("{PHYSICS_CUBES} cubes, one step"),
            IDLE_PHYSICS,
            &[workloads::physics_init(PHYSICS_CUBES, 1)],
            &workloads::physics_step(1),
        ))?),
        None => eprintln!(
            "  (skipping physics: {} is missing)",
            physics_path.display()
        ),
    }

    let results = MovesResults {
        machine: machine_description(),
        network: "loopback (127.0.0.1), no link emulation; every node a separate process".into(),
        round_trip,
        handoff,
        idle,
        total_s: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(out_dir)?;
    std::fs::write(
        out_dir.join("moves.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    std::fs::write(out_dir.join("moves.md"), markdown(&results))?;
    Ok(results)
}

/// Posts one message at a time and waits for its reply; the timed round trips, µs.
async fn time_round_trips(worker: &mut WorkerHandle, message: &[u8]) -> Result<Vec<f64>> {
    for _ in 0..ROUND_TRIP_WARMUP {
        worker.post(message.to_vec()).await?;
        worker.next_reply().await?.context("the counter replies")?;
    }
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        worker.post(message.to_vec()).await?;
        let reply = worker.next_reply().await?.context("the counter replies")?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        ensure!(reply.payload.len() == 16, "the counter replies 16 bytes");
    }
    worker.drain().await?;
    Ok(samples)
}

fn round_trip_row(place: &str, message: &[u8], mut samples: Vec<f64>) -> RoundTripRow {
    samples.sort_by(f64::total_cmp);
    RoundTripRow {
        place: place.into(),
        worker: "counter".into(),
        message_bytes: message.len() as u64,
        warmup: ROUND_TRIP_WARMUP as u64,
        messages: samples.len() as u64,
        p50_us: quantile(&samples, 0.5),
        p90_us: quantile(&samples, 0.9),
        p99_us: quantile(&samples, 0.99),
        max_us: *samples.last().expect("samples"),
    }
}

/// The counter's round trips locally, then on the node, with the same handle.
async fn round_trips(
    counter: &[u8],
    options: &WorkerOptions,
    url: &str,
) -> Result<(RoundTripRow, RoundTripRow)> {
    let message = [7u8; 16];
    let mut worker = WorkerHandle::start(counter, options.clone())?;
    eprintln!("  round trip: {ROUND_TRIPS} messages locally");
    let local = time_round_trips(&mut worker, &message).await?;
    worker.move_to(Place::Node(url.to_string())).await?;
    eprintln!("  round trip: {ROUND_TRIPS} messages through the node");
    let remote = time_round_trips(&mut worker, &message).await?;
    let total = (ROUND_TRIP_WARMUP + ROUND_TRIPS) as u64 * 2;
    let check = worker_count(&mut worker).await?;
    ensure!(
        check == total + 1,
        "the counter saw {check} messages, expected {}",
        total + 1
    );
    Ok((
        round_trip_row("local (in the client process)", &message, local),
        round_trip_row("edge node (loopback, separate process)", &message, remote),
    ))
}

/// Posts one more message to a counter and returns the count it replies.
async fn worker_count(worker: &mut WorkerHandle) -> Result<u64> {
    worker.post(b"count".to_vec()).await?;
    let reply = worker.next_reply().await?.context("the counter replies")?;
    Ok(u64::from_le_bytes(reply.payload[..8].try_into()?))
}

/// Sends the module to every node once: a throwaway worker goes local → each node in turn
/// → local, so that what follows finds the module compiled in every node's cache.
async fn warm(wasm: &[u8], options: &WorkerOptions, nodes: &[&str]) -> Result<()> {
    eprintln!(
        "  warming the module cache of {} node(s) with a throwaway worker",
        nodes.len()
    );
    let mut worker = WorkerHandle::start(wasm, options.clone())?;
    let places = nodes.iter().map(|n| Place::Node(n.to_string()));
    for place in places.chain([Place::Local]) {
        worker.move_to(place).await?;
    }
    Ok(())
}

/// Posts `n` of the cheapest filler message (one page: the fill loop does nothing, the
/// reply is empty), stamping the moment the application sees each reply.
async fn stream(worker: &mut WorkerHandle, n: usize, arrivals: &mut Vec<Instant>) -> Result<()> {
    for i in 0..n {
        worker.post(filler_message(1, 0, i as u32)).await?;
        let now = Instant::now();
        arrivals.extend(worker.take_replies().iter().map(|_| now));
    }
    Ok(())
}

/// Bytes in non-zero chunks of a filler worker's memory, measured with a local capture.
fn filler_nonzero(filler: &[u8], pages: u32) -> Result<(u64, u64)> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let module = runtime.load(filler)?;
    let mut worker = runtime.start(&module)?;
    worker.deliver(&filler_message(pages, 100, 1))?;
    let stats = worker.capture()?.stats();
    Ok((worker.memory().len() as u64, stats.nonzero_bytes))
}

/// Handoffs A → B of a filler worker of `pages` pages, every page written.
async fn handoffs(
    filler: &[u8],
    options: &WorkerOptions,
    a: &str,
    b: &str,
    pages: u32,
) -> Result<HandoffRow> {
    let (memory_bytes, nonzero_bytes) = filler_nonzero(filler, pages)?;
    let mib = memory_bytes >> 20;
    let mut settle = Vec::new();
    let mut stalls = Vec::new();
    let mut wire = Vec::new();
    let mut client = Vec::new();
    let mut replayed = Vec::new();
    let mut steady = Vec::new();
    let mut offloads = Vec::new();
    let mut returns = Vec::new();
    for run in 0..HANDOFF_RUNS {
        // A fresh worker and fresh contents each run: nothing of an earlier run can help.
        let mut worker = WorkerHandle::start(filler, options.clone())?;
        worker
            .post(filler_message(pages, 100, 1000 + run as u32))
            .await?;
        worker.drain().await?;
        worker.take_replies();
        let offload = worker
            .move_to(Place::Node(a.into()))
            .await?
            .context("the worker offloads")?;
        offloads.push(ms(offload.duration));

        let mut arrivals = Vec::with_capacity(STREAM_BEFORE + STREAM_AFTER);
        stream(&mut worker, STREAM_BEFORE, &mut arrivals).await?;
        let timed = &arrivals[STREAM_WARMUP.min(arrivals.len())..];
        ensure!(timed.len() > 1, "too few replies before the move");
        let message_time = (timed[timed.len() - 1] - timed[0]) / (timed.len() - 1) as u32;
        let first_after = arrivals.len();

        let before = node_bytes(a)? + node_bytes(b)?;
        // The handoff runs in pre-copy rounds while the application keeps posting.
        worker.begin_move(Place::Node(b.into())).await?;
        let mut during = 0;
        while worker.moving() {
            worker.post(filler_message(1, 0, during as u32)).await?;
            during += 1;
            let now = Instant::now();
            arrivals.extend(worker.take_replies().iter().map(|_| now));
        }
        let report = worker
            .take_move_result()
            .context("the handoff reports its outcome")??;
        let after = node_bytes(a)? + node_bytes(b)?;
        // A byte between the nodes is counted by both; one between a node and the client
        // by the node alone, and the client's own count supplies the other half.
        let bytes = (after - before + report.client_bytes) / 2;

        let now = Instant::now();
        arrivals.extend(worker.take_replies().iter().map(|_| now));
        stream(&mut worker, STREAM_AFTER, &mut arrivals).await?;
        while worker.next_reply().await?.is_some() {
            arrivals.push(Instant::now());
        }
        ensure!(
            arrivals.len() == STREAM_BEFORE + during + STREAM_AFTER,
            "{} replies to {} messages",
            arrivals.len(),
            STREAM_BEFORE + during + STREAM_AFTER
        );
        // The gaps around the move: from a little before it to the end of the stream.
        let around = &arrivals[first_after.saturating_sub(50)..];
        let longest = around
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        let stall = longest.saturating_sub(message_time);

        let back = worker
            .move_to(Place::Local)
            .await?
            .context("the worker returns")?;
        returns.push(ms(back.duration));

        eprintln!(
            "  handoff {mib} MiB, run {}/{HANDOFF_RUNS}: settle {:.1} ms, stall {:.1} ms, {} bytes on the wire ({:.1} µs per message before)",
            run + 1,
            ms(report.duration),
            ms(stall),
            bytes,
            message_time.as_secs_f64() * 1e6
        );
        settle.push(ms(report.duration));
        stalls.push(ms(stall));
        wire.push(bytes);
        client.push(report.client_bytes);
        replayed.push(report.replayed);
        steady.push(message_time.as_secs_f64() * 1e6);
    }
    Ok(HandoffRow {
        memory_bytes,
        nonzero_bytes,
        runs: HANDOFF_RUNS,
        window: options.window,
        message_us: median(steady),
        settle_ms: median(settle.clone()),
        stall_ms: median(stalls.clone()),
        wire_bytes: median_u64(&wire),
        client_bytes: median_u64(&client),
        replayed: median_u64(&replayed),
        offload_ms: median(offloads),
        return_ms: median(returns),
        settle_ms_runs: settle,
        stall_ms_runs: stalls,
        wire_bytes_runs: wire,
    })
}

/// Offloads `n` workers of one module to a fresh node, each after `setup` locally, posts
/// `message` to each there, and compares the node's resident memory before and after. Every
/// handle stays alive, connected, until the figures are taken.
///
/// The node finds the module compiled in its disk cache (a first node process received
/// and compiled it, then stopped), so the compiler's working memory is not counted.
#[allow(clippy::too_many_arguments)]
async fn idle_workers(
    roam: &Path,
    wasm: &[u8],
    options: &WorkerOptions,
    name: &str,
    workload: &str,
    n: usize,
    setup: &[Vec<u8>],
    message: &[u8],
) -> Result<IdleRow> {
    ensure!(n > 1, "at least two workers");
    let dir = tempfile::tempdir()?;
    {
        let first = NodeProcess::start(roam, dir.path())?;
        warm(wasm, options, &[&first.url]).await?;
    }
    eprintln!("  idle {name}: starting a node for {n} workers");
    let node = NodeProcess::start(roam, dir.path())?;
    let pid = node.pid().to_string();
    // Let the node finish starting up before the first reading.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before_kib = rss_kib(&pid)?;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let mut rss_first_kib = 0;
    for i in 0..n {
        let mut worker = WorkerHandle::start(wasm, options.clone())?;
        for m in setup {
            worker.post(m.clone()).await?;
        }
        worker.drain().await?;
        worker.take_replies();
        worker.move_to(Place::Node(node.url.clone())).await?;
        worker.post(message.to_vec()).await?;
        worker.drain().await?;
        worker.take_replies();
        handles.push(worker);
        if i == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            rss_first_kib = rss_kib(&pid)?;
        }
        if (i + 1) % 100 == 0 {
            eprintln!("  idle {name}: {} workers on the node", i + 1);
        }
    }
    let offload_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after_kib = rss_kib(&pid)?;
    let hosted_reported = series_sum(&metrics(&node.url)?, "roam_workers_hosted");
    let client_rss_kib = rss_kib("self")?;
    if hosted_reported != n as u64 {
        bail!("the node reports {hosted_reported} workers hosted, expected {n}");
    }
    drop(handles);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_disconnected_kib = rss_kib(&pid)?;
    let still_hosted = series_sum(&metrics(&node.url)?, "roam_workers_hosted");
    ensure!(
        still_hosted == n as u64,
        "the node hosts {still_hosted} workers once their clients left, expected {n}"
    );
    let row = IdleRow {
        worker: name.into(),
        workload: workload.into(),
        workers: n as u64,
        hosted_reported,
        rss_before_kib,
        rss_first_kib,
        rss_after_kib,
        rss_disconnected_kib,
        per_worker_kib: rss_after_kib.saturating_sub(rss_before_kib) as f64 / n as f64,
        marginal_per_worker_kib: rss_after_kib.saturating_sub(rss_first_kib) as f64
            / (n - 1) as f64,
        client_rss_kib,
        offload_s,
    };
    eprintln!(
        "  idle {name}: node RSS {} → {} KiB ({} KiB once the clients left), {:.0} KiB per worker ({:.0} KiB marginal), {:.1} s to offload",
        row.rss_before_kib,
        row.rss_after_kib,
        row.rss_disconnected_kib,
        row.per_worker_kib,
        row.marginal_per_worker_kib,
        row.offload_s
    );
    Ok(row)
}

/// The results as markdown tables.
pub fn markdown(r: &MovesResults) -> String {
    let mut s = String::new();
    s += &format!(
        "# Moves benchmark\n\nMachine: {}. Network: {}. The whole benchmark took {:.0} s.\n\n",
        r.machine, r.network, r.total_s
    );
    s += "## Message round trip, counter worker\n\nOne message at a time: post, then wait for its reply.\n\n| where | message | warm-up | timed | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|---|\n";
    for t in &r.round_trip {
        s += &format!(
            "| {} | {} bytes | {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} µs |\n",
            t.place, t.message_bytes, t.warmup, t.messages, t.p50_us, t.p90_us, t.p99_us, t.max_us
        );
    }
    s += "\nTarget: p50 ≤ 150 µs through a node.\n";
    s += "\n## Handoff edge A → edge B while messages flow\n\n";
    s +=
        "A filler worker with every page written with incompressible words is offloaded to A; the \
          client streams the cheapest message (the fill loop does nothing, the reply is empty) \
          with a window of messages in flight, moves the worker to B, and streams on. Both \
          nodes received and compiled the module before the first run (a throwaway worker went \
          local → A → B → local), so no compile time is measured. Each run uses a fresh worker \
          with fresh contents. Settle: the client's move report, from the request until the \
          worker runs at B with all of its state. Stall: the longest gap between two replies \
          the application saw around the move, minus the steady-state time per message. Bytes \
          on the wire: every connection counted once ((both nodes' frame bytes + the client's) \
          / 2).\n\n";
    s += "| memory | non-zero | runs | window | time per message | settle | stall | bytes on the wire | through the client | replayed | offload local → A | return B → local |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for h in &r.handoff {
        s += &format!(
            "| {} | {} | {} | {} | {:.1} µs | {:.1} ms | {:.1} ms | {} | {} bytes | {} | {:.1} ms | {:.1} ms |\n",
            mib(h.memory_bytes),
            mib(h.nonzero_bytes),
            h.runs,
            h.window,
            h.message_us,
            h.settle_ms,
            h.stall_ms,
            mib(h.wire_bytes),
            h.client_bytes,
            h.replayed,
            h.offload_ms,
            h.return_ms
        );
    }
    s += "\nMedians. Every run:\n\n| memory | settle (ms) | stall (ms) |\n|---|---|---|\n";
    for h in &r.handoff {
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s += &format!(
            "| {} | {} | {} |\n",
            mib(h.memory_bytes),
            list(&h.settle_ms_runs),
            list(&h.stall_ms_runs)
        );
    }
    s += "\n## Idle workers hosted by one node\n\n";
    s += "One fresh node process per row, started on a data directory whose module cache already \
          holds the compiled module (so the compiler's working memory is not counted). Each worker is started in the client, handles its \
          workload there, is offloaded to the node and handles one message there; every \
          handle stays alive with its connection open while the node's VmRSS \
          (`/proc/PID/status`) is read. Per worker: (after − before) / workers; marginal: \
          (after − with one worker) / (workers − 1), which leaves out the module loaded once. \
          Then every client disconnects (the node keeps hosting the workers) and VmRSS is read \
          again: the difference is roughly what the connections cost (memory the allocator \
          keeps is still counted).\n\n";
    s += "| worker | workload | workers | node RSS before | with one | with all | clients gone | per worker | marginal per worker | client RSS | time to offload all |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for i in &r.idle {
        s += &format!(
            "| {} | {} | {} | {} KiB | {} KiB | {} KiB | {} KiB | {:.0} KiB | {:.0} KiB | {} KiB | {:.1} s |\n",
            i.worker,
            i.workload,
            i.workers,
            i.rss_before_kib,
            i.rss_first_kib,
            i.rss_after_kib,
            i.rss_disconnected_kib,
            i.per_worker_kib,
            i.marginal_per_worker_kib,
            i.client_rss_kib,
            i.offload_s
        );
    }
    s
}
