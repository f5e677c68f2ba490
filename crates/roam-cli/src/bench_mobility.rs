//! `roam bench mobility`: a device on the move. Each trace (a walk between two edges, a
//! commute across five with a tunnel, a crowded edge) is replayed in real time on emulated
//! links to real nodes while the device — slowed to a quarter of a core — posts a physics
//! step every 50 ms, under each placement policy in turn: never move, always the cloud,
//! the SoCC 2019 rule, an oracle that knows the trace, and Roam's automatic placement.
//! The figure of merit is the reply latency the application sees; no message may be lost
//! or answered twice. Traces, policies and metrics are described in `docs/benchmarks.md`.

mod network;
mod policy;
mod report;
mod run;
pub mod trace;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use roam_client::WorkerOptions;
use roam_runtime::RuntimeConfig;
use serde::{Deserialize, Serialize};

pub use policy::{Calibration, POLICIES};
pub use run::{MoveRecord, RunRecord, Sample};
pub use trace::Trace;

use crate::bench::machine_description;
use network::Network;

/// What to run.
#[derive(Clone, Debug)]
pub struct MobilityOptions {
    /// The traces to replay.
    pub traces: Vec<Trace>,
    /// The policies to compare, in this order.
    pub policies: Vec<String>,
    /// A smoke run: the traces compressed to a quarter of their time, a short calibration.
    pub quick: bool,
}

/// How much of its time a trace is played in on a quick run.
pub const QUICK_FACTOR: f64 = 0.25;

/// The policies of a quick run.
pub const QUICK_POLICIES: [&str; 2] = ["local", "auto"];

/// Parses a comma-separated list of policies.
pub fn parse_policies(text: &str) -> Result<Vec<String>> {
    let mut list = Vec::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !POLICIES.contains(&name) {
            bail!("unknown policy `{name}` (known: {})", POLICIES.join(", "));
        }
        if !list.iter().any(|p| p == name) {
            list.push(name.to_string());
        }
    }
    if list.is_empty() {
        bail!("no policy given (known: {})", POLICIES.join(", "));
    }
    Ok(list)
}

/// Latency figures of one run, over the messages answered.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Latency {
    /// Mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// The moves of one kind in a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct MoveKindRow {
    /// How many.
    pub count: usize,
    /// Each one's duration, ms.
    pub durations_ms: Vec<f64>,
}

/// One trace × policy.
#[derive(Serialize, Clone, Debug)]
pub struct RunResult {
    /// The trace's name.
    pub trace: String,
    /// The policy.
    pub policy: String,
    /// Messages posted.
    pub posted: usize,
    /// Messages answered (at least once).
    pub answered: usize,
    /// Posted − answered.
    pub lost: usize,
    /// Messages answered more than once.
    pub duplicated: usize,
    /// Replies for messages never posted.
    pub stray_replies: u64,
    /// Latency over the answered messages.
    pub latency: Latency,
    /// Moves by kind.
    pub moves: BTreeMap<String, MoveKindRow>,
    /// Mean latency / the oracle's on the same trace (when the oracle ran).
    pub over_oracle: Option<f64>,
    /// Wall time of the run, nodes started to nodes stopped, s.
    pub wall_s: f64,
    /// CPU shares the trace asked for that could not be applied.
    pub cpu_problems: Vec<String>,
    /// Every message and move.
    pub record: RunRecord,
}

/// One of the targets on one trace.
#[derive(Serialize, Clone, Debug)]
pub struct Target {
    /// The trace.
    pub trace: String,
    /// What is checked.
    pub what: String,
    /// Met or not.
    pub met: bool,
    /// The figures.
    pub detail: String,
}

/// Everything `roam bench mobility` measures.
#[derive(Serialize, Clone, Debug)]
pub struct MobilityResults {
    /// The CPU.
    pub machine: String,
    /// A smoke run: traces compressed, fewer policies.
    pub quick: bool,
    /// How the device was slowed.
    pub device: String,
    /// The fixed links between nodes, and the device links' base settings.
    pub links: String,
    /// What the oracle plans with (when it ran).
    pub calibration: Option<Calibration>,
    /// The traces as replayed.
    pub traces: Vec<Trace>,
    /// The policies, in order.
    pub policies: Vec<String>,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// The targets.
    pub targets: Vec<Target>,
    /// How long the benchmark took, s.
    pub total_s: f64,
}

/// The options of the command line: the trace files given, or every `*.json` in `dir`
/// (a quick run: only `walk.json` there); the policies given, or all of them (a quick run:
/// `local` and `auto`).
pub fn load_mobility_options(
    dir: &Path,
    files: &[PathBuf],
    policies: Option<&str>,
    quick: bool,
) -> Result<MobilityOptions> {
    let traces = match (files.is_empty(), quick) {
        (false, _) => files
            .iter()
            .map(|f| Trace::load(f).map_err(anyhow::Error::from))
            .collect::<Result<_>>()?,
        (true, true) => vec![Trace::load(&dir.join("walk.json"))?],
        (true, false) => trace::load_dir(dir)?,
    };
    let policies = match (policies, quick) {
        (Some(list), _) => parse_policies(list)?,
        (None, true) => QUICK_POLICIES.map(String::from).to_vec(),
        (None, false) => POLICIES.map(String::from).to_vec(),
    };
    Ok(MobilityOptions {
        traces,
        policies,
        quick,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The figures of one run's record.
fn summarize(
    trace: &str,
    policy: &str,
    record: RunRecord,
    wall_s: f64,
    cpu: Vec<String>,
) -> RunResult {
    let mut latencies: Vec<f64> = record.samples.iter().filter_map(|s| s.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let answered = latencies.len();
    let latency = Latency {
        mean_ms: latencies.iter().sum::<f64>() / answered.max(1) as f64,
        p50_ms: percentile(&latencies, 0.5),
        p95_ms: percentile(&latencies, 0.95),
        max_ms: latencies.last().copied().unwrap_or(0.0),
    };
    let mut moves: BTreeMap<String, MoveKindRow> = BTreeMap::new();
    for m in &record.moves {
        let row = moves.entry(m.kind.clone()).or_default();
        row.count += 1;
        row.durations_ms.push(m.duration_ms);
    }
    RunResult {
        trace: trace.into(),
        policy: policy.into(),
        posted: record.samples.len(),
        answered,
        lost: record.samples.len() - answered,
        duplicated: record.samples.iter().filter(|s| s.replies > 1).count(),
        stray_replies: record.stray_replies,
        latency,
        moves,
        over_oracle: None,
        wall_s,
        cpu_problems: cpu,
        record,
    }
}

/// The targets, checked on every trace.
fn targets(runs: &[RunResult], traces: &[Trace]) -> Vec<Target> {
    let mut out = Vec::new();
    for trace in traces {
        let of = |p: &str| runs.iter().find(|r| r.trace == trace.name && r.policy == p);
        let here: Vec<&RunResult> = runs.iter().filter(|r| r.trace == trace.name).collect();
        let bad: Vec<String> = here
            .iter()
            .filter(|r| r.lost > 0 || r.duplicated > 0 || r.stray_replies > 0)
            .map(|r| {
                format!(
                    "{}: {} lost, {} duplicated, {} stray",
                    r.policy, r.lost, r.duplicated, r.stray_replies
                )
            })
            .collect();
        out.push(Target {
            trace: trace.name.clone(),
            what: "every message answered exactly once, under every policy".into(),
            met: bad.is_empty(),
            detail: if bad.is_empty() {
                format!("{} runs, 0 lost, 0 duplicated", here.len())
            } else {
                bad.join("; ")
            },
        });
        let Some(auto) = of("auto") else { continue };
        if let Some(oracle) = of("oracle") {
            let ratio = auto.latency.mean_ms / oracle.latency.mean_ms.max(1e-9);
            out.push(Target {
                trace: trace.name.clone(),
                what: "auto's mean latency within 10 % of the oracle's".into(),
                met: ratio <= 1.1,
                detail: format!(
                    "auto {:.1} ms, oracle {:.1} ms: {ratio:.2} ×",
                    auto.latency.mean_ms, oracle.latency.mean_ms
                ),
            });
        }
        let others: Vec<&&RunResult> = here
            .iter()
            .filter(|r| ["local", "cloud", "paper"].contains(&r.policy.as_str()))
            .collect();
        if !others.is_empty() {
            let beaten = others
                .iter()
                .all(|r| auto.latency.mean_ms < r.latency.mean_ms);
            out.push(Target {
                trace: trace.name.clone(),
                what: format!(
                    "auto's mean latency below {}'s",
                    others
                        .iter()
                        .map(|r| r.policy.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                met: beaten,
                detail: std::iter::once(format!("auto {:.1} ms", auto.latency.mean_ms))
                    .chain(
                        others
                            .iter()
                            .map(|r| format!("{} {:.1} ms", r.policy, r.latency.mean_ms)),
                    )
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    out
}

/// Runs the benchmark with `roam` as the node binary and the workers in `workers`, and
/// writes `mobility.json`, `mobility.md` and a plot per trace into `out_dir`.
pub fn mobility(
    roam: &Path,
    workers: &Path,
    out_dir: &Path,
    options: &MobilityOptions,
) -> Result<MobilityResults> {
    let started = Instant::now();
    let say = |line: String| eprintln!("[{:>6.1} s] {line}", started.elapsed().as_secs_f64());
    let wasm = crate::bench_paper::read_worker(workers, "physics")?;
    let traces: Vec<Trace> = if options.quick {
        options
            .traces
            .iter()
            .map(|t| t.compressed(QUICK_FACTOR))
            .collect()
    } else {
        options.traces.clone()
    };
    let cache = tempfile::tempdir()?;
    let client = WorkerOptions {
        // Open loop: posts are never held back by replies.
        window: 64,
        runtime: RuntimeConfig {
            cache_dir: Some(cache.path().to_path_buf()),
            ..RuntimeConfig::default()
        },
        ..WorkerOptions::default()
    };
    // Compiled here, at full speed, into the client's cache: the slow device loads it.
    drop(roam_client::WorkerHandle::start(&wasm, client.clone())?);

    let calibration = if options.policies.iter().any(|p| p == "oracle") {
        say("calibration: the handler on the slow device and on an edge, an offload, a handoff and a return".into());
        let paced = if options.quick { 10 } else { 40 };
        let c = run::calibrate(roam, &wasm, &client, paced, &say)?;
        say(format!(
            "calibration: handler {:.1} ms on the device, {:.1} ms on an edge; offload {:.0} ms, handoff {:.0} ms, return {:.0} ms; {:.1} ms per reply on the edge; moves cost {:.1} / {:.1} / {:.1} s of latency",
            c.local_handler_ms, c.node_handler_ms, c.offload_ms, c.handoff_ms, c.return_ms, c.edge_latency_ms, c.penalty_s[0], c.penalty_s[1], c.penalty_s[2]
        ));
        Some(c)
    } else {
        None
    };
    let memory = tempfile::tempdir()?;
    if options.policies.iter().any(|p| p == "auto") {
        say(
            "the device's first run of the application: a whole scene here, which `auto` remembers"
                .into(),
        );
        run::remember_on_device(&wasm, &client, memory.path())?;
    }
    // The other policies never read it.
    let plan = calibration.clone().unwrap_or(Calibration {
        local_handler_ms: 0.0,
        local_latency_ms: 0.0,
        node_handler_ms: 0.0,
        request_bytes: 0,
        reply_bytes: 0,
        offload_ms: 0.0,
        offload_bytes: 0,
        handoff_ms: 0.0,
        return_ms: 0.0,
        return_bytes: 0,
        edge_latency_ms: 0.0,
        penalty_s: [0.0; 3],
    });

    let mut runs = Vec::new();
    let mut device = String::new();
    for trace in &traces {
        for policy in &options.policies {
            say(format!(
                "{} ({:.0} s, {}) under `{policy}`: starting {} nodes",
                trace.name,
                trace.duration_s,
                trace.places.join(", "),
                trace.places.len()
            ));
            let run_started = Instant::now();
            let mut network = Network::start(roam, &trace.places)?;
            network.warm(&wasm)?;
            let record = run::run(
                &mut network,
                &run::RunSetup {
                    wasm: &wasm,
                    options: client.clone(),
                    trace,
                    policy,
                    calibration: &plan,
                    memory: memory.path(),
                    progress: &say,
                },
            )
            .with_context(|| format!("{} under `{policy}`", trace.name))?;
            let cpu = std::mem::take(&mut network.cpu_problems);
            drop(network);
            device = record.device.clone();
            let result = summarize(
                &trace.name,
                policy,
                record,
                run_started.elapsed().as_secs_f64(),
                cpu,
            );
            say(format!(
                "{} / {policy}: {} posted, {} answered, {} lost, {} duplicated; latency mean {:.1} ms, p50 {:.1}, p95 {:.1}, max {:.1}; moves: {}",
                trace.name,
                result.posted,
                result.answered,
                result.lost,
                result.duplicated,
                result.latency.mean_ms,
                result.latency.p50_ms,
                result.latency.p95_ms,
                result.latency.max_ms,
                report::moves_text(&result.moves)
            ));
            runs.push(result);
        }
    }
    for i in 0..runs.len() {
        let oracle = runs
            .iter()
            .find(|r| r.trace == runs[i].trace && r.policy == "oracle")
            .map(|r| r.latency.mean_ms);
        runs[i].over_oracle = oracle.map(|o| runs[i].latency.mean_ms / o.max(1e-9));
    }
    let targets = targets(&runs, &traces);
    for t in &targets {
        say(format!(
            "target, {}: {} — {} ({})",
            t.trace,
            t.what,
            if t.met { "met" } else { "NOT MET" },
            t.detail
        ));
    }
    let results = MobilityResults {
        machine: machine_description(),
        quick: options.quick,
        device,
        links: "device links replayed from each trace (BENCH.md's device ↔ edge 10/36 Mbit/s 10 ms and device ↔ cloud 10/36 Mbit/s 50 ms until the trace says otherwise); edge ↔ edge 42 Mbit/s 10 ms and edge ↔ cloud 118 Mbit/s 40 ms fixed".into(),
        calibration,
        traces,
        policies: options.policies.clone(),
        runs,
        targets,
        total_s: started.elapsed().as_secs_f64(),
    };
    write(&results, out_dir)?;
    say(format!("results written to {}", out_dir.display()));
    Ok(results)
}

/// Writes `mobility.json`, `mobility.md` and `mobility-TRACE.svg` into `out_dir`.
fn write(results: &MobilityResults, out_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut files = vec![
        (
            "mobility.json".to_string(),
            serde_json::to_string_pretty(results)? + "\n",
        ),
        ("mobility.md".to_string(), report::markdown(results)),
    ];
    for trace in &results.traces {
        files.push((
            format!("mobility-{}.svg", trace.name),
            report::latency_plot(results, trace),
        ));
    }
    for (name, text) in files {
        let path = out_dir.join(&name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The markdown report.
pub fn markdown(results: &MobilityResults) -> String {
    report::markdown(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_unknown_ones_are_named() {
        assert_eq!(
            parse_policies("local, auto,local").unwrap(),
            ["local", "auto"]
        );
        let e = parse_policies("local,smart").unwrap_err().to_string();
        assert!(e.contains("`smart`") && e.contains("oracle"), "{e}");
        assert!(parse_policies(" , ").is_err());
    }

    #[test]
    fn percentiles_pick_ranks() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
