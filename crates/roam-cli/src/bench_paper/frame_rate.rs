//! The physics frame rate for 100 to 2,000 cubes: on the slow device, and offloaded to
//! edge A over the device ↔ edge link with a window of frames in flight. One frame is one
//! step message; frames per second are replies per second as the application receives them.

use std::time::Instant;

use anyhow::{Context, Result};
use roam_client::{Place, WorkerHandle, WorkerOptions};
use serde::Serialize;

use super::slow_device::slow_down_this_thread;
use crate::bench::median;
use crate::workloads::{physics_init, physics_step};

/// The slow device's share of one core.
pub const DEVICE_SHARE: f64 = 0.25;
/// Frames in flight when offloaded.
pub const WINDOW: usize = 8;
/// Frames before the timed ones, at each place.
pub const WARMUP_FRAMES: usize = 30;
/// Frames timed per run: two seconds of simulated time. A fixed count, not a fixed time,
/// so both places simulate the same steps: cubes that have come to rest fall asleep and
/// cost next to nothing, and a faster place would otherwise reach them sooner.
pub const FRAMES: u64 = 120;

/// The frame rate for one scene size.
#[derive(Serialize, Clone, Debug)]
pub struct FrameRateRow {
    /// Cubes in the scene.
    pub cubes: u32,
    /// Bytes of one reply (every cube's pose).
    pub reply_bytes: u64,
    /// Median frames per second on the device.
    pub local_fps: f64,
    /// Median frames per second offloaded to edge A.
    pub offloaded_fps: f64,
    /// Every run on the device.
    pub local_runs: Vec<f64>,
    /// Every run offloaded.
    pub offloaded_runs: Vec<f64>,
}

/// What the frame-rate part measured.
#[derive(Serialize, Clone, Debug)]
pub struct FrameRate {
    /// How the device was slowed (or why it could not be).
    pub device: String,
    /// Frames in flight when offloaded.
    pub window: usize,
    /// Frames timed per run.
    pub frames: u64,
    /// One row per scene size.
    pub rows: Vec<FrameRateRow>,
}

/// Frames per second of `handle` over `frames` steps, a window of frames in flight.
async fn frames_per_second(handle: &mut WorkerHandle, frames: u64) -> Result<(f64, u64)> {
    let step = physics_step(1);
    for _ in 0..WARMUP_FRAMES {
        handle.post(step.clone()).await?;
    }
    while handle.next_reply().await?.is_some() {}
    let started = Instant::now();
    let mut reply_bytes = 0;
    for _ in 0..frames {
        handle.post(step.clone()).await?;
    }
    while let Some(reply) = handle.next_reply().await? {
        reply_bytes = reply.payload.len() as u64;
    }
    // From the first step posted to the last reply received.
    Ok((frames as f64 / started.elapsed().as_secs_f64(), reply_bytes))
}

/// One run: a fresh worker with `cubes` cubes, on the device or on `edge`.
async fn run_once(
    physics: &[u8],
    options: &WorkerOptions,
    cubes: u32,
    edge: Option<&str>,
    frames: u64,
) -> Result<(f64, u64)> {
    let mut handle = WorkerHandle::start(physics, options.clone())?;
    if let Some(edge) = edge {
        // The empty worker travels; the scene is built on the edge.
        handle.move_to(Place::Node(edge.to_string())).await?;
    }
    handle.post(physics_init(cubes, 7)).await?;
    while handle.next_reply().await?.is_some() {}
    frames_per_second(&mut handle, frames).await
}

/// Measures every scene size, `runs` times each, on a thread slowed to [`DEVICE_SHARE`].
pub fn measure(
    physics: &[u8],
    options: &WorkerOptions,
    edge: &str,
    cubes: &[u32],
    runs: usize,
    frames: u64,
    progress: &(dyn Fn(String) + Sync),
) -> Result<FrameRate> {
    let options = WorkerOptions {
        window: WINDOW,
        ..options.clone()
    };
    // Compiled here, at full speed, into the client's cache: the slow thread loads it.
    drop(WorkerHandle::start(physics, options.clone())?);
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<FrameRate> {
                let slow = slow_down_this_thread(DEVICE_SHARE);
                let device = match &slow {
                    Ok(slow) => format!("slow device: {}", slow.description),
                    Err(e) => format!("full speed: the CPU quota could not be set ({e:#})"),
                };
                progress(device.clone());
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let mut rows = Vec::new();
                for &n in cubes {
                    let mut local_runs = Vec::new();
                    let mut offloaded_runs = Vec::new();
                    let mut reply_bytes = 0;
                    for _ in 0..runs {
                        let (fps, bytes) =
                            rt.block_on(run_once(physics, &options, n, None, frames))?;
                        local_runs.push(fps);
                        reply_bytes = bytes;
                        let (fps, _) =
                            rt.block_on(run_once(physics, &options, n, Some(edge), frames))?;
                        offloaded_runs.push(fps);
                    }
                    let row = FrameRateRow {
                        cubes: n,
                        reply_bytes,
                        local_fps: median(local_runs.clone()),
                        offloaded_fps: median(offloaded_runs.clone()),
                        local_runs,
                        offloaded_runs,
                    };
                    progress(format!(
                        "physics {n} cubes: {:.1} frames/s on the device, {:.1} offloaded",
                        row.local_fps, row.offloaded_fps
                    ));
                    rows.push(row);
                }
                drop(slow);
                Ok(FrameRate {
                    device,
                    window: WINDOW,
                    frames,
                    rows,
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the frame-rate thread panicked"))?
    })
    .context("physics frame rate")
}

/// Frames per second the paper's server reached with about 1,000 cubes.
pub const PAPER_FPS: (f64, f64) = (30.0, 60.0);

/// A frame-rate target's threshold: offloaded physics at 1,000 cubes.
pub const TARGET_FPS: f64 = 60.0;

/// Frames timed per run.
pub fn frames(quick: bool) -> u64 {
    if quick {
        20
    } else {
        FRAMES
    }
}
