//! The memory sweep: a worker of 1 MiB to 1 GiB of memory, 10 % of it rewritten by every
//! message, handed off from edge A to edge B while the device keeps posting. How settle
//! time and stall grow with the memory.
//!
//! The worker is written here in WebAssembly text. Its first message fills every page with
//! heap-like records (a random word, a small integer, a pointer into the page, a type tag,
//! then zeros, 32 bytes each), which lz4 compresses about as well as a real program's heap;
//! the ratio is measured and reported. Every later message rewrites the next 10 % of the
//! pages, round robin, with fresh records.
//!
//! Its own two edge nodes: A dials B through a link of [`SWEEP_LINK`]; the device reaches
//! both directly on loopback, so the stall is the move's own and the offload before each
//! handoff (up to 1 GiB) takes seconds, not the minutes the device link would.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use roam_client::{Place, WorkerHandle, WorkerOptions};
use roam_link::{Link, LinkSpec};
use roam_runtime::{Runtime, RuntimeConfig};
use serde::Serialize;

use super::topology::{free_addr, NodeProcess};
use crate::bench::median;

/// The link the sweep's handoffs cross: 1 Gbit/s each way, 10 ms round trip, a metro link
/// between two edge sites. At edge ↔ edge's 42 Mbit/s one handoff of 1 GiB would take
/// minutes; this keeps the sweep to about a minute while the network still dominates.
pub const SWEEP_LINK: LinkSpec = LinkSpec::symmetric(1_000_000_000, Duration::from_millis(10));

/// Share of the memory each message rewrites, percent.
pub const REWRITE_PERCENT: u32 = 10;

/// Messages streamed before the handoff and after it.
const STREAM: usize = 12;

/// The sweep worker (see the module's documentation).
pub const SWEEP_WAT: &str = r#"
(module
  (import "roam" "post_message" (func $post (param i32 i32)))
  (memory (export "memory") 1)
  (global $cursor (mut i32) (i32.const 1))
  (func (export "roam_alloc") (param i32) (result i32) (i32.const 16))
  (func $fill_page (param $page i32) (param $x i32) (result i32)
    (local $addr i32) (local $end i32)
    (local.set $addr (i32.shl (local.get $page) (i32.const 16)))
    (local.set $end (i32.add (local.get $addr) (i32.const 65536)))
    (loop $record
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 13))))
      (local.set $x (i32.xor (local.get $x) (i32.shr_u (local.get $x) (i32.const 17))))
      (local.set $x (i32.xor (local.get $x) (i32.shl (local.get $x) (i32.const 5))))
      (i32.store (local.get $addr) (local.get $x))
      (i32.store offset=4 (local.get $addr) (i32.and (local.get $x) (i32.const 255)))
      (i32.store offset=8 (local.get $addr)
        (i32.add (local.get $addr) (i32.and (i32.shr_u (local.get $x) (i32.const 8)) (i32.const 4064))))
      (i32.store offset=12 (local.get $addr) (i32.const 65602))
      (i64.store offset=16 (local.get $addr) (i64.const 0))
      (i64.store offset=24 (local.get $addr) (i64.const 0))
      (local.set $addr (i32.add (local.get $addr) (i32.const 32)))
      (br_if $record (i32.lt_u (local.get $addr) (local.get $end))))
    (local.get $x))
  (func (export "roam_on_message") (param $ptr i32) (param $len i32)
    (local $pages i32) (local $pct i32) (local $x i32) (local $n i32)
    (local.set $pages (i32.load (local.get $ptr)))
    (local.set $pct (i32.load offset=4 (local.get $ptr)))
    (local.set $x (i32.or (i32.load offset=8 (local.get $ptr)) (i32.const 1)))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then (drop (memory.grow (i32.sub (local.get $pages) (memory.size))))))
    (local.set $n (i32.div_u (i32.mul (i32.sub (local.get $pages) (i32.const 1)) (local.get $pct)) (i32.const 100)))
    (if (i32.eqz (local.get $n)) (then (local.set $n (i32.const 1))))
    (loop $page
      (if (i32.ge_u (global.get $cursor) (local.get $pages)) (then (global.set $cursor (i32.const 1))))
      (local.set $x (call $fill_page (global.get $cursor) (local.get $x)))
      (global.set $cursor (i32.add (global.get $cursor) (i32.const 1)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $page (i32.gt_u (local.get $n) (i32.const 0))))
    (call $post (local.get $ptr) (i32.const 0))))
"#;

/// A sweep message: grow to `pages`, rewrite `percent` % of them, from `seed`.
pub fn sweep_message(pages: u32, percent: u32, seed: u32) -> Vec<u8> {
    [pages, percent, seed]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// One memory size.
#[derive(Serialize, Clone, Debug)]
pub struct SweepRow {
    /// The worker's memory.
    pub memory_bytes: u64,
    /// Bytes in its non-zero chunks.
    pub nonzero_bytes: u64,
    /// Its snapshot's manifest and encoded chunk bodies (a replica's capture).
    pub state_bytes: u64,
    /// Non-zero bytes / compressed bodies.
    pub compression_ratio: f64,
    /// Handoffs measured.
    pub runs: usize,
    /// Median steady-state time between two replies before the move, ms.
    pub message_ms: f64,
    /// Median settle time, ms.
    pub settle_ms: f64,
    /// Median stall (longest gap around the move minus the steady-state time), ms.
    pub stall_ms: f64,
    /// Median bytes through the A → B link during the move.
    pub wire_bytes: u64,
    /// One round trip + bytes / bandwidth, ms.
    pub limit_ms: f64,
    /// Settle over limit.
    pub settle_over_limit: f64,
    /// Every run's settle time, ms.
    pub settle_ms_runs: Vec<f64>,
    /// Every run's stall, ms.
    pub stall_ms_runs: Vec<f64>,
}

/// What the sweep measured.
#[derive(Serialize, Clone, Debug)]
pub struct Sweep {
    /// The link of the handoffs.
    pub link: String,
    /// Share of the memory each message rewrites, percent.
    pub rewrite_percent: u32,
    /// Messages in flight at most.
    pub window: usize,
    /// One row per memory size.
    pub rows: Vec<SweepRow>,
}

/// Stats of the worker's state after the fill and [`STREAM`] messages: (non-zero, state).
fn replica_state(wasm: &[u8], pages: u32) -> Result<(u64, u64, u64)> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let module = runtime.load(wasm)?;
    let mut worker = runtime.start(&module)?;
    worker
        .deliver(&sweep_message(pages, 100, 1))?
        .for_each(drop);
    for i in 0..STREAM {
        worker
            .deliver(&sweep_message(pages, REWRITE_PERCENT, 100 + i as u32))?
            .for_each(drop);
    }
    let snapshot = worker.capture()?;
    let stats = snapshot.stats();
    let state = snapshot.manifest.encoded_len() as u64
        + snapshot
            .bodies()
            .iter()
            .map(|b| b.encoded_len() as u64)
            .sum::<u64>();
    Ok((stats.memory_size, stats.nonzero_bytes, state))
}

/// Posts `n` messages with a window in flight; stamps each reply's arrival.
async fn stream(
    handle: &mut WorkerHandle,
    pages: u32,
    n: usize,
    seed: u32,
    arrivals: &mut Vec<Instant>,
) -> Result<()> {
    for i in 0..n {
        handle
            .post(sweep_message(pages, REWRITE_PERCENT, seed + i as u32))
            .await?;
        let now = Instant::now();
        arrivals.extend(handle.take_replies().iter().map(|_| now));
    }
    Ok(())
}

fn gaps_ms(arrivals: &[Instant]) -> Vec<f64> {
    arrivals
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect()
}

/// Runs the sweep over `sizes_mib`, `runs` handoffs each.
pub fn sweep(
    roam: &std::path::Path,
    options: &WorkerOptions,
    sizes_mib: &[u32],
    runs: usize,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Sweep> {
    let wasm = wat::parse_str(SWEEP_WAT).context("the sweep worker")?;
    let (addr_a, addr_b) = (free_addr()?, free_addr()?);
    let link = Link::start(SWEEP_LINK, addr_b)?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let b = NodeProcess::start(
        roam,
        addr_b,
        dir_b.path(),
        &["--role".into(), "edge".into()],
    )?;
    let route = format!("{}={}", b.url, link.url());
    let a = NodeProcess::start(
        roam,
        addr_a,
        dir_a.path(),
        &["--role".into(), "edge".into(), "--route".into(), route],
    )?;
    let options = WorkerOptions {
        routes: Default::default(),
        ..options.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for &mib in sizes_mib {
        let pages = mib * 16;
        let (memory_bytes, nonzero_bytes, state_bytes) = replica_state(&wasm, pages)?;
        let mut settle = Vec::new();
        let mut stalls = Vec::new();
        let mut wire = Vec::new();
        let mut steady = Vec::new();
        for run in 0..runs {
            let seed = 1000 * (run as u32 + 1);
            let (settle_ms, stall_ms, bytes, message_ms) = rt.block_on(async {
                let mut handle = WorkerHandle::start(&wasm, options.clone())?;
                handle.post(sweep_message(pages, 100, seed)).await?;
                handle.drain().await?;
                handle.take_replies();
                handle.move_to(Place::Node(a.url.clone())).await?;
                let mut arrivals = Vec::new();
                stream(&mut handle, pages, STREAM, seed + 1, &mut arrivals).await?;
                ensure!(arrivals.len() > 2, "too few replies before the handoff");
                let message_ms = median(gaps_ms(&arrivals[1..]));
                let first = arrivals.len();
                let before = link.stats();
                let watch = crate::node_metrics::HandoffWatch::start(&a.url, &b.url)?;
                let asked = Instant::now();
                // The application keeps posting while the worker moves, a window of
                // messages at most unanswered, as in a stay: the worker goes on rewriting
                // its memory at the source, and the stall is the move's pause, not the
                // whole move.
                handle.begin_move(Place::Node(b.url.clone())).await?;
                let mut seed_during = seed + 50;
                // Replies are stamped in `arrivals` from the first message after the
                // offload on, one a message.
                let mut posted = STREAM;
                while handle.moving() {
                    if posted.saturating_sub(arrivals.len()) < options.window {
                        handle
                            .post(sweep_message(pages, REWRITE_PERCENT, seed_during))
                            .await?;
                        seed_during += 1;
                        posted += 1;
                        let now = Instant::now();
                        arrivals.extend(handle.take_replies().iter().map(|_| now));
                    } else if handle.next_reply().await?.is_some() {
                        arrivals.push(Instant::now());
                    }
                }
                let report = handle
                    .take_move_result()
                    .context("the move reports its outcome")??;
                let now = Instant::now();
                arrivals.extend(handle.take_replies().iter().map(|_| now));
                stream(&mut handle, pages, STREAM, seed + 100, &mut arrivals).await?;
                while handle.next_reply().await?.is_some() {
                    arrivals.push(Instant::now());
                }
                let longest = gaps_ms(&arrivals[first - 1..])
                    .into_iter()
                    .fold(0.0, f64::max);
                // A post-copy handoff settles when B holds every chunk, after Moved; the
                // bytes are counted to then.
                let settle = match watch.post_copy_end()? {
                    Some(end) => report.duration.max(end - asked),
                    None => report.duration,
                };
                tokio::time::sleep(Duration::from_millis(50)).await;
                let after = link.stats();
                // The worker comes home so B does not keep a gigabyte per run.
                handle.move_to(Place::Local).await?;
                let bytes =
                    (after.up_bytes + after.down_bytes) - (before.up_bytes + before.down_bytes);
                Ok::<_, anyhow::Error>((
                    settle.as_secs_f64() * 1e3,
                    (longest - message_ms).max(0.0),
                    bytes,
                    message_ms,
                ))
            })?;
            settle.push(settle_ms);
            stalls.push(stall_ms);
            wire.push(bytes as f64);
            steady.push(message_ms);
        }
        let wire_bytes = median(wire) as u64;
        let limit_ms = SWEEP_LINK.rtt.as_secs_f64() * 1e3
            + wire_bytes as f64 * 8.0 / SWEEP_LINK.up_bps as f64 * 1e3;
        let row = SweepRow {
            memory_bytes,
            nonzero_bytes,
            state_bytes,
            compression_ratio: nonzero_bytes as f64 / state_bytes.max(1) as f64,
            runs,
            message_ms: median(steady),
            settle_ms: median(settle.clone()),
            stall_ms: median(stalls.clone()),
            wire_bytes,
            limit_ms,
            settle_over_limit: median(settle.clone()) / limit_ms,
            settle_ms_runs: settle,
            stall_ms_runs: stalls,
        };
        progress(format!(
            "sweep {mib} MiB: settle {:.0} ms, stall {:.0} ms, {:.1} MiB on the wire, limit {:.0} ms",
            row.settle_ms,
            row.stall_ms,
            row.wire_bytes as f64 / (1 << 20) as f64,
            row.limit_ms
        ));
        rows.push(row);
    }
    Ok(Sweep {
        link: format!(
            "{} Mbit/s each way, {} ms round trip",
            SWEEP_LINK.up_bps / 1_000_000,
            SWEEP_LINK.rtt.as_millis()
        ),
        rewrite_percent: REWRITE_PERCENT,
        window: options.window,
        rows,
    })
}
