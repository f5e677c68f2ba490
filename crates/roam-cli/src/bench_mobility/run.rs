//! One run: a trace replayed on a fresh network while the device, slowed to a quarter of
//! a core, posts a physics step every 50 ms under one policy and stamps every reply; and
//! the calibration that measures the handler times and move times the oracle plans with.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use roam_client::{AutoOptions, AutoPlacer, Place, Requirements, WorkerHandle, WorkerOptions};
use serde::Serialize;

use super::network::Network;
use super::policy::{Calibration, Policy, View};
use super::trace::{Trace, CLOUD};
use crate::bench_paper::slow_device::slow_down_this_thread;
use crate::node_metrics::handler_totals;
use crate::workloads::{physics_init, physics_step};

/// The slow device's share of one core (as `roam bench paper`'s).
pub const DEVICE_SHARE: f64 = 0.25;
/// One step is posted every this often.
pub const POST_EVERY: Duration = Duration::from_millis(50);
/// Cubes in the scene: enough that the slow device cannot quite keep up with a step every
/// [`POST_EVERY`] (about 50 ms a step there with the SIMD build of the worker; 1,000
/// cubes, the scene before it, take about 32 ms and leave nothing worth offloading).
pub const CUBES: u32 = 1500;
/// A fresh scene (a new drop of the cubes, another seed) every this many messages: cubes
/// that have come to rest fall asleep, and a settled scene costs next to nothing to step
/// (here about 200 steps after the drop), which would leave nothing worth offloading.
pub const SCENE_EVERY: usize = 200;
/// After the trace ends, the run waits for the last replies while they still come: it
/// stops once this long passes without one (what is unanswered then is lost)...
const QUIET: Duration = Duration::from_secs(30);
/// ...or this long after the trace, whatever still comes (a backlog that takes longer to
/// work off is reported as unanswered).
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// Policies are asked at least this often.
const TICK_EVERY: Duration = Duration::from_millis(100);

/// One message of a run.
#[derive(Serialize, Clone, Debug)]
pub struct Sample {
    /// When it was due to be posted, s from the trace's start.
    pub at_s: f64,
    /// Reply arrival − due time, ms; `None` when no reply came.
    pub latency_ms: Option<f64>,
    /// Replies that came for it (1 when all is well).
    pub replies: u32,
    /// Where the worker was when it was posted.
    pub place: String,
}

/// One move of a run.
#[derive(Serialize, Clone, Debug)]
pub struct MoveRecord {
    /// offload, handoff, fallback, return, recovery, or `lost` (the worker's node
    /// became unreachable and the client recovered it from its last snapshot).
    pub kind: String,
    /// From (place name).
    pub from: String,
    /// To.
    pub to: String,
    /// When it ended (or failed), s from the trace's start.
    pub at_s: f64,
    /// Its duration as the client measured it, ms (0 for `lost`).
    pub duration_ms: f64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Everything one run recorded.
#[derive(Serialize, Clone, Debug)]
pub struct RunRecord {
    /// Every message posted, in order.
    pub samples: Vec<Sample>,
    /// Every move and recovery.
    pub moves: Vec<MoveRecord>,
    /// Replies whose sequence number was never posted (must be none).
    pub stray_replies: u64,
    /// How the device was slowed (or why it could not be).
    pub device: String,
}

/// What a run needs besides the network.
pub struct RunSetup<'a> {
    /// The physics worker.
    pub wasm: &'a [u8],
    /// The client's settings (routes filled in by the run).
    pub options: WorkerOptions,
    /// The trace.
    pub trace: &'a Trace,
    /// The policy's name.
    pub policy: &'a str,
    /// The calibration.
    pub calibration: &'a Calibration,
    /// Where `auto` remembers the module across runs ([`remember_on_device`]).
    pub memory: &'a Path,
    /// Progress lines.
    pub progress: &'a (dyn Fn(String) + Sync),
}

/// Replays `setup.trace` on `network` while the device runs `setup.policy`.
pub fn run(network: &mut Network, setup: &RunSetup<'_>) -> Result<RunRecord> {
    let places = setup.trace.places.clone();
    let urls: BTreeMap<String, String> = places
        .iter()
        .map(|p| (p.clone(), network.url(p).to_string()))
        .collect();
    let routes = network.device_routes();
    let options = WorkerOptions {
        routes: routes.clone(),
        ..setup.options.clone()
    };
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    std::thread::scope(|scope| {
        let (ready_tx, start_rx) = (ready_tx, start_rx);
        let (urls, routes, options) = (&urls, &routes, &options);
        let device = scope.spawn(move || -> Result<RunRecord> {
            let slow = slow_down_this_thread(DEVICE_SHARE);
            let description = match &slow {
                Ok(slow) => slow.description.clone(),
                Err(e) => format!("full speed: the CPU quota could not be set ({e:#})"),
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let result = rt.block_on(async {
                let mut handle = WorkerHandle::start(setup.wasm, options.clone())?;
                handle.post(physics_init(CUBES, 7)).await?;
                handle.drain().await?;
                handle.take_replies();
                let policy = Policy::new(setup.policy, urls, routes, setup.memory)?;
                let _ = ready_tx.send(());
                let t0 = start_rx.recv().context("the trace's start")?;
                tokio::time::sleep_until(t0.into()).await;
                drive(handle, policy, setup, urls, t0).await
            });
            drop(slow);
            result.map(|mut r| {
                r.device = description;
                r
            })
        });
        // The trace starts once the device has its scene; events replay from here.
        if ready_rx.recv().is_err() {
            return device
                .join()
                .map_err(|_| anyhow!("the device thread panicked"))?;
        }
        let t0 = Instant::now() + Duration::from_millis(200);
        let _ = start_tx.send(t0);
        for event in &setup.trace.events {
            let due = t0 + Duration::from_secs_f64(event.at_s);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            network.apply(event)?;
        }
        device
            .join()
            .map_err(|_| anyhow!("the device thread panicked"))?
    })
}

/// The `index`th message of a run (from 0; the first scene is built before): a step, or
/// every [`SCENE_EVERY`] messages a fresh scene.
pub fn message(index: usize) -> Vec<u8> {
    if index > 0 && index.is_multiple_of(SCENE_EVERY) {
        physics_init(CUBES, 7 + (index / SCENE_EVERY) as u32)
    } else {
        physics_step(1)
    }
}

/// The device's loop: post on time, stamp replies, ask the policy, record moves.
async fn drive(
    mut handle: WorkerHandle,
    mut policy: Policy,
    setup: &RunSetup<'_>,
    urls: &BTreeMap<String, String>,
    t0: Instant,
) -> Result<RunRecord> {
    let trace = setup.trace;
    let total = (trace.duration_s / POST_EVERY.as_secs_f64()).floor() as usize;
    let name_of = |place: &Place| -> String {
        match place {
            Place::Node(url) => urls
                .iter()
                .find(|(_, u)| *u == url)
                .map_or(url.clone(), |(p, _)| p.clone()),
            Place::Relay { to, .. } => urls
                .iter()
                .find(|(_, u)| *u == to)
                .map_or(to.clone(), |(p, _)| p.clone()),
            Place::Local => "local".into(),
        }
    };
    let since = |at: Instant| at.saturating_duration_since(t0).as_secs_f64();
    let mut samples: Vec<Sample> = Vec::with_capacity(total);
    // Sequence number of each sample: the init message was 1.
    let mut first_seq = None;
    let mut moves = Vec::new();
    let mut stray = 0u64;
    let mut last_tick = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_answer = Instant::now();
    let mut answered_before = 0;
    let mut place = name_of(&handle.place());
    let end = t0 + Duration::from_secs_f64(trace.duration_s);

    let mut stamp = |samples: &mut Vec<Sample>, first: Option<u64>, seq: u64, at: Instant| {
        let index = first.and_then(|f| seq.checked_sub(f)).map(|i| i as usize);
        match index.and_then(|i| samples.get_mut(i)) {
            Some(s) => {
                s.replies += 1;
                if s.replies == 1 {
                    s.latency_ms = Some((since(at) - s.at_s) * 1e3);
                }
            }
            None => stray += 1,
        }
    };

    loop {
        let now = Instant::now();
        let due_post = (samples.len() < total).then(|| t0 + POST_EVERY * samples.len() as u32);
        let posted = match due_post.filter(|d| *d <= now) {
            Some(due) => {
                let here = name_of(&handle.place());
                // A post here runs the handler, unless messages a return left wait first.
                let local = here == "local" && !handle.moving() && handle.backlog() == 0;
                let started = Instant::now();
                let seq = handle.post(message(samples.len())).await.context("post")?;
                if local {
                    policy.local_handler(started.elapsed().as_secs_f64() * 1e3);
                }
                first_seq.get_or_insert(seq);
                samples.push(Sample {
                    at_s: since(due),
                    latency_ms: None,
                    replies: 0,
                    place: here,
                });
                let arrived = Instant::now();
                for r in handle.take_replies() {
                    stamp(&mut samples, first_seq, r.seq, arrived);
                }
                true
            }
            None => false,
        };
        let answered = samples.iter().filter(|s| s.replies > 0).count();
        if answered > answered_before {
            answered_before = answered;
            last_answer = now;
        }
        if due_post.is_none()
            && (answered == total
                || now >= end + DRAIN_LIMIT
                || (now >= end && last_answer.elapsed() >= QUIET))
        {
            break;
        }
        if posted || last_tick.elapsed() >= TICK_EVERY {
            let now_place = tick(
                &mut policy,
                &mut handle,
                setup,
                urls,
                t0,
                &mut moves,
                &place,
                &name_of,
            )
            .await?;
            place = now_place;
            last_tick = Instant::now();
        }
        if posted {
            continue;
        }
        if last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            (setup.progress)(format!(
                "  {} / {}: {:.0} s of {:.0}, {} posted, {} answered, at {}",
                trace.name,
                setup.policy,
                since(now),
                trace.duration_s,
                samples.len(),
                answered,
                place
            ));
        }
        let mut wake = last_tick + TICK_EVERY;
        if let Some(due) = due_post {
            wake = wake.min(due);
        }
        let wait = wake.saturating_duration_since(Instant::now());
        // Stops only while waiting, never half-way through a move's switch-over.
        match handle
            .next_reply_within(wait)
            .await
            .context("waiting for replies")?
        {
            Some(r) => stamp(&mut samples, first_seq, r.seq, Instant::now()),
            // Time is up, or nothing is due (all handled, or the worker is here).
            None => tokio::time::sleep_until(wake.into()).await,
        }
        let arrived = Instant::now();
        for r in handle.take_replies() {
            stamp(&mut samples, first_seq, r.seq, arrived);
        }
    }
    // A move still under way is not part of the trace.
    if handle.moving() {
        let _ = tokio::time::timeout(Duration::from_secs(30), handle.finish_move()).await;
    }
    Ok(RunRecord {
        samples,
        moves,
        stray_replies: stray,
        device: String::new(),
    })
}

/// Records what happened to the worker since `place` (a move that ended, or a recovery
/// the handle made by itself), asks the policy, and records again (a move that completes
/// as it begins); returns where the worker is now.
#[allow(clippy::too_many_arguments)]
async fn tick(
    policy: &mut Policy,
    handle: &mut WorkerHandle,
    setup: &RunSetup<'_>,
    urls: &BTreeMap<String, String>,
    t0: Instant,
    moves: &mut Vec<MoveRecord>,
    place: &str,
    name_of: &dyn Fn(&Place) -> String,
) -> Result<String> {
    let now_s = t0.elapsed().as_secs_f64();
    let place = record(handle, policy, moves, place, now_s, name_of);
    let view = View {
        trace: setup.trace,
        now_s,
        urls,
        calibration: setup.calibration,
    };
    match policy.tick(handle, &view).await {
        Ok(Some(to)) => (setup.progress)(format!(
            "  {} / {} at {now_s:.1} s: {place} → {to}",
            setup.trace.name, setup.policy
        )),
        Ok(None) => {}
        // A move that could not even begin (its destination unreachable, say).
        Err(e) => {
            policy.move_failed();
            moves.push(MoveRecord {
                kind: "failed".into(),
                from: place.clone(),
                to: String::new(),
                at_s: now_s,
                duration_ms: 0.0,
                error: Some(format!("{e:#}")),
            });
        }
    }
    Ok(record(handle, policy, moves, &place, now_s, name_of))
}

/// Records a move that ended, or a change of place no move explains (the worker's node
/// became unreachable and the handle recovered the worker here); returns the place now.
fn record(
    handle: &mut WorkerHandle,
    policy: &mut Policy,
    moves: &mut Vec<MoveRecord>,
    place: &str,
    now_s: f64,
    name_of: &dyn Fn(&Place) -> String,
) -> String {
    let now_place = name_of(&handle.place());
    match handle.take_move_result() {
        Some(Ok(report)) => moves.push(MoveRecord {
            kind: report.kind.to_string(),
            from: name_of(&url_place(&report.from)),
            to: name_of(&url_place(&report.to)),
            at_s: now_s,
            duration_ms: report.duration.as_secs_f64() * 1e3,
            error: None,
        }),
        Some(Err(e)) => {
            policy.move_failed();
            moves.push(MoveRecord {
                kind: "failed".into(),
                from: place.to_string(),
                to: now_place.clone(),
                at_s: now_s,
                duration_ms: 0.0,
                error: Some(e.to_string()),
            });
        }
        None if now_place != place && !handle.moving() => moves.push(MoveRecord {
            kind: "lost".into(),
            from: place.to_string(),
            to: now_place.clone(),
            at_s: now_s,
            duration_ms: 0.0,
            error: None,
        }),
        None => {}
    }
    now_place
}

/// A place as a move report names it (`local` or a URL).
fn url_place(text: &str) -> Place {
    if text == "local" {
        Place::Local
    } else {
        Place::Node(text.to_string())
    }
}

/// The device runs the application once before the traces, as a device that used it
/// before would have: a whole scene on the slow device, under a placer that keeps the
/// worker here and remembers in `memory` how heavy its messages are. `auto` starts every
/// trace from that, and from what the traces before taught it.
pub fn remember_on_device(wasm: &[u8], options: &WorkerOptions, memory: &Path) -> Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                let _slow = slow_down_this_thread(DEVICE_SHARE);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let mut handle = WorkerHandle::start(wasm, options.clone())?;
                    handle.post(physics_init(CUBES, 7)).await?;
                    handle.take_replies();
                    let mut placer = AutoPlacer::new(AutoOptions {
                        requirements: Requirements {
                            stay_local: true,
                            ..Requirements::default()
                        },
                        memory: Some(memory.to_path_buf()),
                        ..AutoOptions::default()
                    });
                    for i in 0..SCENE_EVERY {
                        handle.post(message(i)).await?;
                        handle.take_replies();
                        placer.tick(&mut handle).await?;
                    }
                    // Dropping the placer writes what it learnt.
                    drop(placer);
                    anyhow::ensure!(
                        std::fs::read_dir(memory)?.next().is_some(),
                        "the placer remembered nothing of a whole scene"
                    );
                    Ok(())
                })
            })
            .join()
            .map_err(|_| anyhow!("the device's first run panicked"))?
    })
}

/// Measures the handler on the slow device and on an edge over a whole cycle of scenes,
/// an offload, a handoff and a return, and `paced` replies on the edge at the run's
/// pace, on a network of two edges and a cloud at `BENCH.md`'s settings.
pub fn calibrate(
    roam: &Path,
    wasm: &[u8],
    options: &WorkerOptions,
    paced: usize,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Calibration> {
    let places: Vec<String> = ["A", "B", CLOUD].map(String::from).to_vec();
    let network = Network::start(roam, &places)?;
    network.warm(wasm)?;
    let options = WorkerOptions {
        routes: network.device_routes(),
        ..options.clone()
    };
    let (a, b) = (network.url("A").to_string(), network.url("B").to_string());
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Calibration> {
                let slow = slow_down_this_thread(DEVICE_SHARE);
                if let Err(e) = &slow {
                    progress(format!("the device runs at full speed: {e:#}"));
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(calibrate_on(&a, &b, wasm, &options, paced))
            })
            .join()
            .map_err(|_| anyhow!("the calibration thread panicked"))?
    })
}

/// Moves the worker to `to` while posting a message every [`POST_EVERY`] (from message
/// `*next` on), until 2 s after the move ended and everything posted is answered; returns
/// the move's report and the latency of every message posted meanwhile, ms.
async fn paced_move(
    handle: &mut WorkerHandle,
    to: Place,
    next: &mut usize,
) -> Result<(roam_client::MoveReport, Vec<f64>)> {
    let context = format!("calibration: the move to {to}");
    handle.begin_move(to).await.context(context.clone())?;
    let started = Instant::now();
    let mut due: Vec<Instant> = Vec::new();
    let mut first_seq = None;
    let mut latencies: BTreeMap<u64, f64> = BTreeMap::new();
    let mut report = None;
    let mut ended: Option<Instant> = None;
    let mut waited = Vec::new();
    loop {
        if report.is_none() {
            if let Some(result) = handle.take_move_result() {
                report = Some(result.context(context.clone())?);
                ended = Some(Instant::now());
            }
        }
        let settled = ended.is_some_and(|t| t.elapsed() >= Duration::from_secs(2));
        if settled && latencies.len() == due.len() {
            break;
        }
        let next_due = started + POST_EVERY * due.len() as u32;
        if !settled && Instant::now() >= next_due {
            let seq = handle.post(message(*next)).await?;
            *next += 1;
            first_seq.get_or_insert(seq);
            due.push(next_due);
        } else {
            let wait = next_due.saturating_duration_since(Instant::now());
            let wait = wait.max(Duration::from_millis(1)).min(POST_EVERY);
            match handle.next_reply_within(wait).await? {
                Some(reply) => waited.push(reply),
                None if !handle.moving() => tokio::time::sleep(wait).await,
                None => {}
            }
        }
        let now = Instant::now();
        waited.extend(handle.take_replies());
        for r in waited.drain(..) {
            let index = first_seq.map_or(0, |f| r.seq.saturating_sub(f) as usize);
            if let Some(d) = due.get(index) {
                latencies
                    .entry(r.seq)
                    .or_insert_with(|| now.saturating_duration_since(*d).as_secs_f64() * 1e3);
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "{context}: not settled after two minutes"
        );
    }
    Ok((
        report.context("the move reports")?,
        latencies.into_values().collect(),
    ))
}

async fn calibrate_on(
    a: &str,
    b: &str,
    wasm: &[u8],
    options: &WorkerOptions,
    paced: usize,
) -> Result<Calibration> {
    let mut handle = WorkerHandle::start(wasm, options.clone())?;
    // Locally, a whole scene from its drop: the post runs the handler.
    let mut local = Vec::new();
    let mut reply_bytes = 0;
    for i in SCENE_EVERY..2 * SCENE_EVERY {
        let started = Instant::now();
        handle.post(message(i)).await?;
        local.push(started.elapsed().as_secs_f64() * 1e3);
        if let Some(r) = handle.take_replies().pop() {
            reply_bytes = r.payload.len() as u64;
        }
    }
    // Locally at the run's pace, open loop, over a whole scene: the handler runs inside
    // the post, so a late post is a late reply.
    let mut local_paced = Vec::new();
    let t0 = tokio::time::Instant::now();
    for (k, i) in (6 * SCENE_EVERY..7 * SCENE_EVERY).enumerate() {
        let due = t0 + POST_EVERY * k as u32;
        tokio::time::sleep_until(due).await;
        handle.post(message(i)).await?;
        local_paced.push(due.elapsed().as_secs_f64() * 1e3);
        handle.take_replies();
    }
    let mut next = 2 * SCENE_EVERY;
    let (offload, offload_latencies) =
        paced_move(&mut handle, Place::Node(a.to_string()), &mut next).await?;
    handle.drain().await?;
    handle.take_replies();
    // On the edge, a whole scene (a window in flight), timed by the node itself.
    let before = handler_totals(a)?;
    for i in 3 * SCENE_EVERY..4 * SCENE_EVERY {
        handle.post(message(i)).await?;
    }
    handle.drain().await?;
    handle.take_replies();
    let after = handler_totals(a)?;
    // Replies at the run's pace, from a fresh drop.
    let mut latencies = Vec::new();
    for i in 4 * SCENE_EVERY..4 * SCENE_EVERY + paced {
        let started = Instant::now();
        handle.post(message(i)).await?;
        handle
            .next_reply()
            .await?
            .context("calibration: a reply on the edge")?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(POST_EVERY.saturating_sub(started.elapsed())).await;
    }
    handle.drain().await?;
    handle.take_replies();
    let mut next = 5 * SCENE_EVERY;
    let (handoff, handoff_latencies) =
        paced_move(&mut handle, Place::Node(b.to_string()), &mut next).await?;
    let (ret, return_latencies) = paced_move(&mut handle, Place::Local, &mut next).await?;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (local_ms, edge_ms) = (mean(&local), mean(&latencies));
    let penalty = |latencies: &[f64], base_ms: f64| -> f64 {
        latencies
            .iter()
            .map(|l| (l - base_ms).max(0.0))
            .sum::<f64>()
            / 1e3
    };
    Ok(Calibration {
        local_handler_ms: local_ms,
        local_latency_ms: mean(&local_paced),
        node_handler_ms: (after.0 - before.0) / (after.1 - before.1).max(1) as f64 * 1e3,
        request_bytes: physics_step(1).len() as u64,
        reply_bytes,
        offload_ms: offload.duration.as_secs_f64() * 1e3,
        offload_bytes: offload.client_bytes,
        handoff_ms: handoff.duration.as_secs_f64() * 1e3,
        return_ms: ret.duration.as_secs_f64() * 1e3,
        return_bytes: ret.client_bytes,
        edge_latency_ms: edge_ms,
        penalty_s: [
            penalty(&offload_latencies, edge_ms),
            penalty(&handoff_latencies, edge_ms),
            penalty(&return_latencies, local_ms),
        ],
    })
}
