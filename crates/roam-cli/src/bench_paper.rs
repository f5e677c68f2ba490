//! `roam bench paper`: the evaluation of the SoCC 2019 paper (Web Worker migration to edge
//! clouds), reproduced on this machine with emulated links, so Roam's figures stand beside
//! the paper's. Settings, workloads and metrics are those of `BENCH.md`; how each figure
//! is measured is in `docs/benchmarks.md`.
//!
//! Three parts, each written to `paper.json`, tables in `paper.md` and SVG plots:
//! - the moves: physics (1,000 cubes), facedetect and blur × offload, handoff, fallback and
//!   return, on a cloud and two edges that reach each other through emulated links;
//! - the memory sweep: a worker of 1 MiB … 1 GiB handed off edge to edge;
//! - the physics frame rate on a slow device versus offloaded.

mod frame_rate;
mod moves;
mod plots;
pub(crate) mod report;
pub(crate) mod slow_device;
mod sweep;
pub(crate) mod topology;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use roam_client::WorkerOptions;
use roam_runtime::RuntimeConfig;
use serde::Serialize;

pub use frame_rate::{FrameRate, FrameRateRow};
pub use moves::MoveSample;
pub use sweep::{Sweep, SweepRow};

use crate::bench::{machine_description, median};
use crate::workloads;
use moves::{App, PhaseTimes};
use topology::{bench_link, Site, Topology};

/// How much to run.
#[derive(Clone, Debug)]
pub struct PaperOptions {
    /// A smoke run of a few seconds: links 100 times faster, small scenes, one run each
    /// (whatever `runs` says).
    pub quick: bool,
    /// Rounds per application (each a cold and a warm one), handoffs per memory size, and
    /// runs per scene size.
    pub runs: usize,
}

/// One row of the moves table: the medians of one move of one application.
#[derive(Serialize, Clone, Debug)]
pub struct MoveRow {
    /// The application.
    pub app: String,
    /// offload, handoff, fallback or return.
    pub kind: String,
    /// Where the worker was.
    pub from: String,
    /// Where it went.
    pub to: String,
    /// The link its state crossed.
    pub link: String,
    /// Whether the destination had never seen the module.
    pub cold: bool,
    /// Moves measured.
    pub runs: usize,
    /// Median settle time, ms.
    pub settle_ms: f64,
    /// Median stall: the most a gap between two replies around the move exceeded the
    /// steady-state time per message of the place that answered the second one (the
    /// source for a message the moved state had handled, else the destination), ms.
    pub stall_ms: f64,
    /// Steady-state time between two replies at the destination (median over every phase
    /// there in the application's rounds), ms.
    pub steady_ms: f64,
    /// The handler's own time per message at the destination, ms.
    pub handler_ms: f64,
    /// Median bytes on the wire for the move.
    pub wire_bytes: u64,
    /// Of which the module.
    pub module_bytes: u64,
    /// Of which the state.
    pub state_bytes: u64,
    /// Of which the protocol.
    pub protocol_bytes: u64,
    /// The worker's linear memory.
    pub memory_bytes: u64,
    /// Its non-zero chunks.
    pub nonzero_bytes: u64,
    /// One round trip + bytes on the wire / bandwidth, ms (median).
    pub limit_ms: f64,
    /// Median of settle / limit, each move against its own limit.
    pub settle_over_limit: f64,
    /// The paper's migration time for the application, s.
    pub paper_s: (f64, f64),
    /// As the paper states it.
    pub paper_text: String,
    /// Median messages in flight when the move started.
    pub in_flight: u64,
    /// Median messages resent to the destination.
    pub replayed: u64,
    /// Replies the application never received, all runs together.
    pub replies_lost: u64,
    /// Stall target: handler + 2 × round trip + 30 ms, ms.
    pub stall_target_ms: f64,
    /// Bytes on the wire / the state's compressed non-zero bytes.
    pub bytes_over_state: f64,
    /// Every run's settle time, ms.
    pub settle_ms_runs: Vec<f64>,
    /// Every run's stall, ms.
    pub stall_ms_runs: Vec<f64>,
}

/// The links of the topology.
#[derive(Serialize, Clone, Debug)]
pub struct LinkRow {
    /// Its name in `BENCH.md`.
    pub name: String,
    /// Device's upload (or either way), bit/s.
    pub up_bps: u64,
    /// Device's download, bit/s.
    pub down_bps: u64,
    /// Round trip, ms.
    pub rtt_ms: f64,
}

/// One application's settings.
#[derive(Serialize, Clone, Debug)]
pub struct AppRow {
    /// Its name.
    pub app: String,
    /// One message.
    pub workload: String,
    /// The module's size.
    pub module_bytes: u64,
    /// One message's size.
    pub message_bytes: u64,
    /// Messages in flight at most.
    pub window: usize,
    /// Messages posted at each place.
    pub phase: usize,
}

/// How busy the machine was.
#[derive(Serialize, Clone, Debug)]
pub struct Load {
    /// Cores.
    pub cores: usize,
    /// The 1-minute load average at each sample (start, each part, end).
    pub load_average: Vec<f64>,
    /// Share of all cores busy over the whole run, every process counted (/proc/stat), %.
    pub busy_percent: f64,
}

/// Everything `roam bench paper` measures.
#[derive(Serialize, Clone, Debug)]
pub struct PaperResults {
    /// The CPU.
    pub machine: String,
    /// How busy it was.
    pub load: Load,
    /// A smoke run (`--quick`): not comparable with the paper.
    pub quick: bool,
    /// Rounds per application.
    pub runs: usize,
    /// Every bandwidth multiplied by this (1 unless quick).
    pub link_scale: u64,
    /// The links.
    pub links: Vec<LinkRow>,
    /// The applications.
    pub apps: Vec<AppRow>,
    /// Medians per application, move and cold/warm.
    pub moves: Vec<MoveRow>,
    /// Every move measured.
    pub samples: Vec<MoveSample>,
    /// The memory sweep.
    pub sweep: Sweep,
    /// The physics frame rate.
    pub frame_rate: FrameRate,
    /// How long the benchmark took, s.
    pub total_s: f64,
}

/// Busy and total jiffies of all cores so far.
fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The example worker `name` from `dir`, or an error saying how to build the workers.
pub(crate) fn read_worker(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (build the workers with `cargo xtask build-workers`)",
            path.display()
        )
    })
}

/// The three applications of `BENCH.md`.
fn apps(workers: &Path, quick: bool) -> Result<Vec<App>> {
    let cubes = if quick { 100 } else { 1000 };
    Ok(vec![
        App {
            name: "physics",
            wasm: read_worker(workers, "physics")?,
            setup: vec![workloads::physics_init(cubes, 1)],
            message: workloads::physics_step(1),
            workload: format!("{cubes} cubes, one step of 1/60 s"),
            window: 8,
            phase: if quick { 10 } else { 30 },
            paper_s: (1.0, 3.0),
            paper_text: "1–3 s",
        },
        App {
            name: "facedetect",
            wasm: read_worker(workers, "facedetect")?,
            setup: Vec::new(),
            message: workloads::facedetect_message(1666, 1136, 1),
            workload: "one 1666×1136 grey picture".into(),
            window: 2,
            phase: if quick { 2 } else { 4 },
            paper_s: (3.8, 11.9),
            paper_text: "3.8–11.9 s",
        },
        App {
            name: "blur",
            wasm: read_worker(workers, "blur")?,
            setup: Vec::new(),
            message: workloads::blur_message(1920, 1080, 3.0, 1),
            workload: "one 1920×1080 RGBA picture, sigma 3".into(),
            window: 2,
            phase: if quick { 2 } else { 3 },
            paper_s: (0.1, 0.5),
            paper_text: "a few hundred ms",
        },
    ])
}

/// Medians of the samples of one move.
fn summarize(
    app: &App,
    samples: &[&MoveSample],
    phases: &BTreeMap<Site, PhaseTimes>,
    handlers: &BTreeMap<Site, f64>,
    site: Site,
) -> MoveRow {
    let first = samples[0];
    let times = phases.get(&site).cloned().unwrap_or_default();
    let steady_ms = if times.gaps_ms.is_empty() {
        0.0
    } else {
        median(times.gaps_ms.clone())
    };
    let handler_ms = match handlers.get(&site) {
        Some(&ms) => ms,
        None if !times.handler_ms.is_empty() => median(times.handler_ms.clone()),
        None => 0.0,
    };
    let med = |f: &dyn Fn(&MoveSample) -> f64| median(samples.iter().map(|s| f(s)).collect());
    let medu = |f: &dyn Fn(&MoveSample) -> u64| med(&|s| f(s) as f64).round() as u64;
    let limit =
        |s: &MoveSample| s.rtt_ms + s.wire_bytes as f64 * 8.0 / s.bandwidth_bps as f64 * 1e3;
    // A gap that ends in a reply from the source is measured against the source's pace,
    // one that ends in a reply from the destination against the destination's: a return
    // from a node the application could only feed a picture every 1.5 s to a device that
    // answers every 0.3 s would otherwise count the node's own pace as the move's.
    let source_steady_ms = phases
        .get(&site_named(&first.from))
        .filter(|t| !t.gaps_ms.is_empty())
        .map_or(steady_ms, |t| median(t.gaps_ms.clone()));
    let stall = |s: &MoveSample| {
        (s.longest_gap_source_ms - source_steady_ms)
            .max(s.longest_gap_destination_ms - steady_ms)
            .max(0.0)
    };
    // The round trip the user waits on: the state's link, or the device's to the destination.
    let from_device = if site == Site::Device {
        0.0
    } else {
        bench_link(Site::Device, site).1.rtt.as_secs_f64() * 1e3
    };
    let rtt = first.rtt_ms.max(from_device);
    let wire_bytes = medu(&|s| s.wire_bytes);
    let state_bytes = medu(&|s| s.state_bytes);
    MoveRow {
        app: app.name.into(),
        kind: first.kind.clone(),
        from: first.from.clone(),
        to: first.to.clone(),
        link: first.link.clone(),
        cold: first.cold,
        runs: samples.len(),
        settle_ms: med(&|s| s.settle_ms),
        stall_ms: med(&stall),
        steady_ms,
        handler_ms,
        wire_bytes,
        module_bytes: medu(&|s| s.module_bytes),
        state_bytes,
        protocol_bytes: medu(&|s| s.protocol_bytes),
        memory_bytes: medu(&|s| s.memory_bytes),
        nonzero_bytes: medu(&|s| s.nonzero_bytes),
        limit_ms: med(&limit),
        settle_over_limit: med(&|s| s.settle_ms / limit(s)),
        paper_s: app.paper_s,
        paper_text: app.paper_text.into(),
        in_flight: medu(&|s| s.in_flight),
        replayed: medu(&|s| s.replayed),
        replies_lost: samples.iter().map(|s| s.replies_lost).sum(),
        stall_target_ms: handler_ms + 2.0 * rtt + 30.0,
        bytes_over_state: wire_bytes as f64 / state_bytes.max(1) as f64,
        settle_ms_runs: samples.iter().map(|s| s.settle_ms).collect(),
        stall_ms_runs: samples.iter().map(|s| stall(s)).collect(),
    }
}

/// Each node's handler time so far: (sum in seconds, messages).
fn node_handler_totals(topo: &Topology) -> Result<BTreeMap<Site, (f64, u64)>> {
    Site::NODES
        .iter()
        .map(|&site| Ok((site, crate::node_metrics::handler_totals(topo.url(site))?)))
        .collect()
}

fn site_named(name: &str) -> Site {
    [Site::Device, Site::EdgeA, Site::EdgeB, Site::Cloud]
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or(Site::Device)
}

/// Runs the benchmark with `roam` as the node binary, the workers in `workers`, and
/// writes `paper.json`, `paper.md` and the plots into `out_dir`.
pub fn paper(
    roam: &Path,
    workers: &Path,
    out_dir: &Path,
    options: &PaperOptions,
) -> Result<PaperResults> {
    let started = Instant::now();
    let jiffies = cpu_jiffies();
    let mut load = vec![load_average()];
    let say = |line: String| eprintln!("[{:>6.1} s] {line}", started.elapsed().as_secs_f64());
    let scale = if options.quick { 100 } else { 1 };
    let runs = if options.quick {
        1
    } else {
        options.runs.max(1)
    };
    let mut apps = apps(workers, options.quick)?;
    // ROAM_PAPER_APPS=blur,physics: only those applications' moves (a quicker look at one).
    if let Ok(only) = std::env::var("ROAM_PAPER_APPS") {
        let names: Vec<&str> = only.split(',').map(str::trim).collect();
        apps.retain(|app| names.contains(&app.name));
        ensure!(
            !apps.is_empty(),
            "ROAM_PAPER_APPS={only} names no application (physics, facedetect, blur)"
        );
    }
    let cache = tempfile::tempdir()?;
    let client_runtime = RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..RuntimeConfig::default()
    };

    say(format!(
        "starting a cloud and edges A and B, nine emulated links{}",
        if scale > 1 {
            format!(" ({scale}× the bandwidth of BENCH.md: quick run)")
        } else {
            String::new()
        }
    ));
    let topo = Topology::start(roam, scale)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::new();
    let mut rows = Vec::new();
    for (a, app) in apps.iter().enumerate() {
        load.push(load_average());
        let options = WorkerOptions {
            window: app.window,
            routes: topo.device_routes(),
            runtime: client_runtime.clone(),
            ..WorkerOptions::default()
        };
        let mut phases: BTreeMap<Site, PhaseTimes> = BTreeMap::new();
        let mut app_samples = Vec::new();
        let handled_before = node_handler_totals(&topo)?;
        for r in 0..runs {
            let nonce = (std::process::id() as u64) << 16 | (a * 100 + r) as u64;
            let wasm = moves::module_variant(&app.wasm, nonce);
            for cold in [true, false] {
                say(format!(
                    "{}: round {}/{runs}, {}",
                    app.name,
                    r + 1,
                    if cold { "module cold" } else { "module warm" }
                ));
                let result = rt.block_on(moves::round(
                    &topo,
                    app,
                    &wasm,
                    &options,
                    cold,
                    r,
                    &mut |s| {
                        say(format!(
                            "  {} {} {} → {}: settle {:.0} ms, longest gap {:.0} ms, {:.2} MiB on the wire, {} in flight, {} replayed",
                            s.app,
                            s.kind,
                            s.from,
                            s.to,
                            s.settle_ms,
                            s.longest_gap_ms,
                            s.wire_bytes as f64 / (1 << 20) as f64,
                            s.in_flight,
                            s.replayed
                        ))
                    },
                ))?;
                for (site, times) in result.phases {
                    let pooled = phases.entry(site).or_default();
                    pooled.gaps_ms.extend(times.gaps_ms);
                    pooled.handler_ms.extend(times.handler_ms);
                }
                app_samples.extend(result.moves);
            }
        }
        // Every message this application's workers handled on each node.
        let handled_after = node_handler_totals(&topo)?;
        let handlers: BTreeMap<Site, f64> = handled_after
            .iter()
            .filter_map(|(site, (sum, n))| {
                let (sum0, n0) = handled_before[site];
                (*n > n0).then(|| (*site, (sum - sum0) / (n - n0) as f64 * 1e3))
            })
            .collect();
        let mut groups: BTreeMap<(bool, usize), Vec<&MoveSample>> = BTreeMap::new();
        for s in &app_samples {
            let order = ["offload", "handoff", "fallback", "return"]
                .iter()
                .position(|k| *k == s.kind)
                .unwrap_or(0)
                * 10
                + usize::from(s.from == "cloud");
            groups.entry((!s.cold, order)).or_default().push(s);
        }
        for group in groups.values() {
            let row = summarize(app, group, &phases, &handlers, site_named(&group[0].to));
            say(format!(
                "{} {} {} → {} ({}): settle {:.0} ms (limit {:.0} ms), stall {:.0} ms, {:.2} MiB",
                row.app,
                row.kind,
                row.from,
                row.to,
                if row.cold { "cold" } else { "warm" },
                row.settle_ms,
                row.limit_ms,
                row.stall_ms,
                row.wire_bytes as f64 / (1 << 20) as f64
            ));
            rows.push(row);
        }
        samples.extend(app_samples);
    }

    load.push(load_average());
    say("physics frame rate: slow device versus offloaded to A".into());
    let physics = &apps[0];
    let fps_options = WorkerOptions {
        routes: topo.device_routes(),
        runtime: client_runtime.clone(),
        ..WorkerOptions::default()
    };
    let cubes: &[u32] = if options.quick {
        &[100, 250]
    } else {
        &[100, 250, 500, 1000, 2000]
    };
    let frame_rate = frame_rate::measure(
        &physics.wasm,
        &fps_options,
        topo.url(Site::EdgeA),
        cubes,
        if options.quick { 1 } else { runs },
        frame_rate::frames(options.quick),
        &say,
    )?;
    let links = LinkRowList::from(&topo);
    let app_rows = apps
        .iter()
        .map(|a| AppRow {
            app: a.name.into(),
            workload: a.workload.clone(),
            module_bytes: a.wasm.len() as u64,
            message_bytes: a.message.len() as u64,
            window: a.window,
            phase: a.phase,
        })
        .collect();
    drop(topo);

    load.push(load_average());
    say(format!(
        "memory sweep: handoffs A → B over {} Mbit/s, {} ms",
        sweep::SWEEP_LINK.up_bps / 1_000_000,
        sweep::SWEEP_LINK.rtt.as_millis()
    ));
    let mut sizes: Vec<u32> = if options.quick {
        vec![1, 4]
    } else {
        vec![1, 4, 16, 64, 256, 1024]
    };
    // ROAM_PAPER_SWEEP=1024: only those memory sizes, in MiB (a quicker look at one).
    if let Ok(only) = std::env::var("ROAM_PAPER_SWEEP") {
        sizes = only
            .split(',')
            .map(|s| s.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|s: &Vec<u32>| !s.is_empty() && s.iter().all(|&m| (1..=4096).contains(&m)))
            .with_context(|| {
                format!("ROAM_PAPER_SWEEP={only}: expected sizes in MiB from 1 to 4096, comma-separated")
            })?;
    }
    let sweep = sweep::sweep(
        roam,
        &WorkerOptions {
            runtime: client_runtime,
            ..WorkerOptions::default()
        },
        &sizes,
        if options.quick { 1 } else { runs },
        &say,
    )?;

    load.push(load_average());
    let (busy1, total1) = cpu_jiffies();
    let results = PaperResults {
        machine: machine_description(),
        load: Load {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_average: load,
            busy_percent: (busy1 - jiffies.0) as f64 / (total1 - jiffies.1).max(1) as f64 * 100.0,
        },
        quick: options.quick,
        runs,
        link_scale: scale,
        links: links.0,
        apps: app_rows,
        moves: rows,
        samples,
        sweep,
        frame_rate,
        total_s: started.elapsed().as_secs_f64(),
    };
    write(&results, out_dir)?;
    say(format!("results written to {}", out_dir.display()));
    Ok(results)
}

/// The link rows of a topology.
struct LinkRowList(Vec<LinkRow>);

impl From<&Topology> for LinkRowList {
    fn from(topo: &Topology) -> Self {
        let mut seen = Vec::new();
        let mut rows = Vec::new();
        for hop in &topo.hops {
            if seen.contains(&hop.name) {
                continue;
            }
            seen.push(hop.name);
            let spec = hop.link.spec();
            rows.push(LinkRow {
                name: hop.name.into(),
                up_bps: spec.up_bps,
                down_bps: spec.down_bps,
                rtt_ms: spec.rtt.as_secs_f64() * 1e3,
            });
        }
        LinkRowList(rows)
    }
}

/// Writes `paper.json`, `paper.md` and the SVG plots into `out_dir`.
fn write(results: &PaperResults, out_dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let files = [
        ("paper.json", serde_json::to_string_pretty(results)? + "\n"),
        ("paper.md", report::markdown(results)),
        ("paper-moves.svg", plots::moves(results)),
        ("paper-sweep.svg", plots::sweep(&results.sweep)),
        (
            "paper-frame-rate.svg",
            plots::frame_rate(&results.frame_rate),
        ),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// The markdown report of results read back from `paper.json`.
pub fn markdown(results: &PaperResults) -> String {
    report::markdown(results)
}
