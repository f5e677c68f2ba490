//! `roam demo --cloud URL --edge URL --edge URL`: the physics worker keeps simulating while
//! the client takes it local → edge A → edge B → cloud → local, and one line per move says
//! where from and to, the stall the application saw, and the bytes on the wire.
//!
//! The stall is the longest gap between two consecutive replies around the move, minus the
//! worker's steady-state time per frame (BENCH.md). Bytes on the wire are what every node's
//! `/metrics` counted, plus what the client sent and received itself.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use roam_client::{Place, WorkerHandle, WorkerOptions};

use crate::node_metrics::node_bytes;
use crate::workloads::{physics_init, physics_step};

/// Frames of simulation between two moves.
const FRAMES_PER_LEG: usize = 60;

/// The frame bytes every node has counted, in and out. A byte between two nodes is counted
/// twice (by its sender and its receiver), a byte between a node and the client once, so
/// the bytes on the wire are (node count + client count) / 2.
fn wire_bytes(nodes: &[&str]) -> Result<u64> {
    let mut sum = 0;
    for n in nodes {
        sum += node_bytes(n)?;
    }
    Ok(sum)
}

/// Runs the tour and prints one line per move.
pub fn run(
    workers_dir: &Path,
    cloud: &str,
    edge_a: &str,
    edge_b: &str,
    cubes: u32,
    out: &mut dyn Write,
) -> Result<()> {
    let path = workers_dir.join("physics.wasm");
    let wasm = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let nodes = [cloud, edge_a, edge_b];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut worker = WorkerHandle::start(&wasm, WorkerOptions::default())?;
        worker.post(physics_init(cubes, 11)).await?;
        worker.drain().await?;
        worker.take_replies();

        // Steady state: the handler's time per frame, locally.
        let started = Instant::now();
        for _ in 0..20 {
            worker.post(physics_step(1)).await?;
        }
        worker.drain().await?;
        worker.take_replies();
        let frame_time = started.elapsed() / 20;
        writeln!(
            out,
            "physics worker, {cubes} cubes: {:.2} ms per frame locally",
            frame_time.as_secs_f64() * 1e3
        )?;
        writeln!(
            out,
            "  {:<9} {:<26} {:<26} {:>9} {:>9} {:>12}",
            "move", "from", "to", "stall", "settle", "wire bytes"
        )?;

        let legs = [
            Place::Node(edge_a.to_string()),
            Place::Node(edge_b.to_string()),
            Place::Node(cloud.to_string()),
            Place::Local,
        ];
        for to in legs {
            // Keep frames flowing right up to the move, then right after it.
            for _ in 0..8 {
                worker.post(physics_step(1)).await?;
            }
            let mut arrivals = vec![Instant::now()];
            let bytes_before = wire_bytes(&nodes)?;
            let report = worker
                .move_to(to.clone())
                .await?
                .context("every leg of the tour moves the worker")?;
            let bytes = (wire_bytes(&nodes)? - bytes_before + report.client_bytes) / 2;
            for _ in 0..FRAMES_PER_LEG {
                worker.post(physics_step(1)).await?;
                if !worker.take_replies().is_empty() {
                    arrivals.push(Instant::now());
                }
            }
            while worker.next_reply().await?.is_some() {
                arrivals.push(Instant::now());
            }
            let longest_gap = arrivals
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            let stall = longest_gap.saturating_sub(frame_time);
            writeln!(
                out,
                "  {:<9} {:<26} {:<26} {:>6.1} ms {:>6.1} ms {:>12}",
                report.kind.to_string(),
                report.from,
                report.to,
                stall.as_secs_f64() * 1e3,
                report.duration.as_secs_f64() * 1e3,
                bytes
            )?;
        }
        ensure!(worker.pending() == 0, "messages left unhandled");
        Ok(())
    })
}
