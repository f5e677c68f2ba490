//! `roam demo`: the physics worker runs a falling-cubes scene and, every few frames, is
//! captured, encoded, and restored into a fresh worker in a fresh engine — a move without the
//! network. It checks that the app saw exactly the frames of an uninterrupted run.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use roam_runtime::{Runtime, WorkerLimits};

use crate::commands::{checkpoint, config_with_cache};
use crate::workloads::{physics_init, physics_positions, physics_step};

/// Settings of the demo run.
pub struct DemoOptions {
    /// Cubes in the scene.
    pub cubes: u32,
    /// Frames (one step of 1/60 s each) to simulate.
    pub frames: u32,
    /// Frames between two capture/restore cycles.
    pub move_every: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            cubes: 400,
            frames: 240,
            move_every: 30,
        }
    }
}

fn mean_height(reply: &[u8]) -> f32 {
    let poses = physics_positions(reply).unwrap_or_default();
    poses.iter().map(|p| p[1]).sum::<f32>() / poses.len().max(1) as f32
}

/// Runs the demo with the physics worker found in `workers_dir`.
pub fn run(workers_dir: &Path, options: &DemoOptions, out: &mut dyn std::io::Write) -> Result<()> {
    let path = workers_dir.join("physics.wasm");
    let wasm = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (build the workers with `cargo xtask build-workers`)",
            path.display()
        )
    })?;
    let cache = tempfile::tempdir().context("cannot create a directory for compiled modules")?;
    let config = config_with_cache(WorkerLimits::default(), cache.path());
    let init = physics_init(options.cubes, 7);
    let step = physics_step(1);

    writeln!(
        out,
        "physics worker ({} KiB of wasm): {} cubes falling, {} frames of 1/60 s",
        wasm.len() / 1024,
        options.cubes,
        options.frames
    )?;

    // The reference: one worker, never moved.
    let runtime = Runtime::new(config.clone())?;
    let module = runtime.load(&wasm)?;
    let mut worker = runtime.start(&module)?;
    let started = Instant::now();
    let mut reference = Vec::with_capacity(options.frames as usize + 1);
    reference.push(single_reply(worker.deliver(&init)?)?);
    for _ in 0..options.frames {
        reference.push(single_reply(worker.deliver(&step)?)?);
    }
    let straight = started.elapsed();
    writeln!(
        out,
        "  uninterrupted run: {:.1} ms per frame; mean cube height {:.2} m -> {:.2} m",
        straight.as_secs_f64() * 1e3 / options.frames as f64,
        mean_height(&reference[0]),
        mean_height(reference.last().expect("frames")),
    )?;
    drop(worker);

    // The same scene, moved every few frames into a fresh engine.
    writeln!(
        out,
        "  now the same run, captured and restored into a fresh engine every {} frames:",
        options.move_every
    )?;
    let mut runtime = runtime;
    let mut worker = runtime.start(&module)?;
    let mut replies = vec![single_reply(worker.deliver(&init)?)?];
    let mut moves = 0;
    for frame in 1..=options.frames {
        replies.push(single_reply(worker.deliver(&step)?)?);
        if frame % options.move_every == 0 && frame < options.frames {
            let (next_runtime, next_worker, cost) = checkpoint(&mut worker, &wasm, &config)?;
            runtime = next_runtime;
            worker = next_worker;
            moves += 1;
            writeln!(
                out,
                "    frame {frame:>4}: memory {:>5} KiB -> snapshot {:>5} KiB; capture+encode {:>5.2} ms | fresh engine, cached module {:>5.2} ms | decode+restore {:>5.2} ms; mean height {:.2} m",
                cost.memory_bytes / 1024,
                cost.snapshot_bytes / 1024,
                cost.capture.as_secs_f64() * 1e3,
                cost.load.as_secs_f64() * 1e3,
                cost.restore.as_secs_f64() * 1e3,
                mean_height(replies.last().expect("frames")),
            )?;
        }
    }
    drop(worker);
    drop(runtime);
    ensure!(
        replies == reference,
        "the moved worker's frames differ from the uninterrupted run"
    );
    writeln!(
        out,
        "  {moves} moves; all {} replies byte-identical to the uninterrupted run",
        replies.len()
    )?;
    Ok(())
}

fn single_reply(mut replies: roam_runtime::Replies<'_>) -> Result<Vec<u8>> {
    let first = replies.next().context("the worker posted no reply")?;
    ensure!(
        replies.next().is_none(),
        "the worker posted more than one reply"
    );
    Ok(first.to_vec())
}
