//! The mobility benchmark's report: a table per trace, the targets, how the device and
//! the links were made; and a plot per trace of each policy's reply latency over time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{MobilityResults, MoveKindRow, Trace};
use crate::bench_paper::report::seconds_or_ms as ms;
use crate::svg::{x_axis, y_axis, Axis, Svg};

/// `2 offload (3.4 s), 1 handoff (1.1 s)`: count and mean duration per kind.
pub fn moves_text(moves: &BTreeMap<String, MoveKindRow>) -> String {
    if moves.is_empty() {
        return "none".into();
    }
    moves
        .iter()
        .map(|(kind, row)| {
            let timed: Vec<f64> = row
                .durations_ms
                .iter()
                .copied()
                .filter(|d| *d > 0.0)
                .collect();
            if timed.is_empty() {
                format!("{} {kind}", row.count)
            } else {
                let mean = timed.iter().sum::<f64>() / timed.len() as f64;
                format!("{} {kind} ({})", row.count, ms(mean))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The markdown report.
pub fn markdown(r: &MobilityResults) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Mobility: a device on the move\n");
    if r.quick {
        let _ = writeln!(
            md,
            "**Quick run**: traces played in {:.0} % of their time, not comparable with a full run.\n",
            super::QUICK_FACTOR * 100.0
        );
    }
    let _ = writeln!(
        md,
        "Machine: {}. The whole benchmark took {:.0} s. How every figure is measured: [docs/benchmarks.md](../../docs/benchmarks.md).\n",
        r.machine, r.total_s
    );
    let _ = writeln!(
        md,
        "- Device: {}; the client (worker, policy, reply stamping) runs on that thread.",
        r.device
    );
    let _ = writeln!(md, "- Links: {}.", r.links);
    let _ = writeln!(md, "- Nodes: a `roam serve` process per place (edges registered with the cloud), started afresh for every trace × policy; a crowded node's process is put under a CPU quota of the trace's share of one core.");
    let _ = writeln!(md, "- Workload: the physics worker at {} cubes, one message posted every {} ms whatever the replies (open loop): a step of 1/60 s, and every {}th a fresh drop of the cubes (a settled scene costs next to nothing); latency = reply arrival − the time the message was due. Every node holds the module, compiled, before the trace starts (a deployment serving this application would).",
        super::run::CUBES,
        super::run::POST_EVERY.as_millis(),
        super::run::SCENE_EVERY);
    if let Some(c) = &r.calibration {
        let _ = writeln!(
            md,
            "- Calibration (what the oracle plans with): one message takes {:.1} ms on the slow device (a reply at the run's pace {:.1} ms, queueing included) and {:.1} ms on an edge; a reply on an edge took {:.1} ms; offload {}, handoff {}, return {}, costing the messages posted meanwhile {:.1}, {:.1} and {:.1} s of latency in all.",
            c.local_handler_ms,
            c.local_latency_ms,
            c.node_handler_ms,
            c.edge_latency_ms,
            ms(c.offload_ms),
            ms(c.handoff_ms),
            ms(c.return_ms),
            c.penalty_s[0],
            c.penalty_s[1],
            c.penalty_s[2]
        );
    }
    let _ = writeln!(md);
    for trace in &r.traces {
        let _ = writeln!(md, "## {} ({:.0} s)\n", trace.name, trace.duration_s);
        let _ = writeln!(md, "{}\n", trace.description);
        let _ = writeln!(
            md,
            "| policy | posted | answered | lost | duplicated | mean | p50 | p95 | max | mean / oracle's | moves |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for run in r.runs.iter().filter(|run| run.trace == trace.name) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                run.policy,
                run.posted,
                run.answered,
                run.lost,
                run.duplicated,
                ms(run.latency.mean_ms),
                ms(run.latency.p50_ms),
                ms(run.latency.p95_ms),
                ms(run.latency.max_ms),
                run.over_oracle.map_or("–".into(), |v| format!("{v:.2}")),
                moves_text(&run.moves)
            );
        }
        let problems: Vec<&String> = r
            .runs
            .iter()
            .filter(|run| run.trace == trace.name)
            .flat_map(|run| &run.cpu_problems)
            .collect();
        if !problems.is_empty() {
            let _ = writeln!(
                md,
                "\nCPU shares that could not be applied: {}.",
                problems
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let _ = writeln!(md, "\nPlot: `mobility-{}.svg`.\n", trace.name);
    }
    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| trace | target | | figures |");
    let _ = writeln!(md, "|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            t.trace,
            t.what,
            if t.met { "met" } else { "**not met**" },
            t.detail
        );
    }
    md
}

/// One colour per policy, in [`super::POLICIES`]' order.
fn colour(policy: &str) -> &'static str {
    match policy {
        "local" => "#7f7f7f",
        "cloud" => "#1f77b4",
        "paper" => "#ff7f0e",
        "oracle" => "#2ca02c",
        _ => "#d62728",
    }
}

/// Reply latency over the trace's time, a line per policy (log scale), with the trace's
/// events marked.
pub fn latency_plot(r: &MobilityResults, trace: &Trace) -> String {
    let (w, h) = (900.0, 420.0);
    let (left, right, top, bottom) = (70.0, w - 20.0, 40.0, h - 60.0);
    let mut svg = Svg::new(w, h);
    svg.text(
        w / 2.0,
        20.0,
        &format!("{}: reply latency per policy", trace.name),
        13.0,
        "middle",
        0.0,
    );
    let runs: Vec<_> = r
        .runs
        .iter()
        .filter(|run| run.trace == trace.name)
        .collect();
    let all = runs
        .iter()
        .flat_map(|run| run.record.samples.iter().filter_map(|s| s.latency_ms));
    let y = Axis::log_covering(all, bottom, top);
    let x = Axis {
        min: 0.0,
        max: trace.duration_s.max(1.0),
        log: false,
        from: left,
        to: right,
    };
    y_axis(&mut svg, &y, left, right, "latency (ms)");
    x_axis(&mut svg, &x, bottom, "time (s)", &|v| format!("{v:.0}"));
    for event in &trace.events {
        let px = x.map(event.at_s);
        svg.line((px, top), (px, bottom), "#bbbbbb", 1.0, Some("3 3"));
    }
    for run in &runs {
        let points: Vec<(f64, f64)> = run
            .record
            .samples
            .iter()
            .filter_map(|s| Some((x.map(s.at_s), y.map(s.latency_ms?))))
            .collect();
        if !points.is_empty() {
            svg.polyline(&points, colour(&run.policy), 1.2, None);
        }
    }
    let legend: Vec<(&str, &str)> = runs
        .iter()
        .map(|run| (colour(&run.policy), run.policy.as_str()))
        .collect();
    svg.legend(left, h - 10.0, &legend);
    svg.finish()
}
