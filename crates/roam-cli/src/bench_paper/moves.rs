//! The four moves of the paper's evaluation, for one application, on the emulated network:
//! offload device → A, handoff A → B while the device keeps posting, fallback (the device
//! loses B, the cloud takes the worker from B), and return A → device.
//!
//! One *round* is a fresh worker going through the moves with messages flowing: a phase
//! of messages at each place, each move started with the phase's messages still in flight.
//! A *cold* round runs a module no node has seen (a copy of the worker with its own custom
//! section, so its hash is new): offload, handoff and fallback each reach a node that must
//! fetch and compile the module. The *warm* round that follows runs the same module again,
//! now in every node's cache, through all of the moves:
//!
//! ```text
//! cold: local ─offload→ A ─handoff→ B ─fallback (device ↔ B cut)→ cloud
//! warm: local ─offload→ A ─handoff→ B ─fallback (device ↔ B cut)→ cloud ─handoff→ A ─return→ local
//! ```
//!
//! The fallback is taken from B, the edge the worker is on after the handoff; B's links
//! have the same settings as A's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use roam_client::{MoveKind, Place, Reply, WorkerHandle, WorkerOptions};
use roam_runtime::{Runtime, RuntimeConfig};
use serde::Serialize;

use super::topology::{bench_link, state_bps, Site, Topology};

/// One application of the evaluation.
pub struct App {
    /// Its name in the tables.
    pub name: &'static str,
    /// The worker's module.
    pub wasm: Vec<u8>,
    /// Messages handled locally before the first phase (the physics scene's init).
    pub setup: Vec<Vec<u8>>,
    /// The message the application posts over and over.
    pub message: Vec<u8>,
    /// What one message is, for the tables.
    pub workload: String,
    /// Messages in flight at most.
    pub window: usize,
    /// Messages posted at each place between two moves.
    pub phase: usize,
    /// The paper's migration time for this application, seconds (low, high).
    pub paper_s: (f64, f64),
    /// How the paper states it.
    pub paper_text: &'static str,
}

/// One step of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    kind: MoveKind,
    from: Site,
    to: Site,
}

const STEPS: [Step; 5] = [
    Step {
        kind: MoveKind::Offload,
        from: Site::Device,
        to: Site::EdgeA,
    },
    Step {
        kind: MoveKind::Handoff,
        from: Site::EdgeA,
        to: Site::EdgeB,
    },
    Step {
        kind: MoveKind::Fallback,
        from: Site::EdgeB,
        to: Site::Cloud,
    },
    Step {
        kind: MoveKind::Handoff,
        from: Site::Cloud,
        to: Site::EdgeA,
    },
    Step {
        kind: MoveKind::Return,
        from: Site::EdgeA,
        to: Site::Device,
    },
];

/// Moves of a cold round: the ones that reach a node for the first time.
const COLD_STEPS: usize = 3;

/// One measured move.
#[derive(Serialize, Clone, Debug)]
pub struct MoveSample {
    /// The application.
    pub app: String,
    /// offload, handoff, fallback or return.
    pub kind: String,
    /// Where the worker was.
    pub from: String,
    /// Where it went.
    pub to: String,
    /// The link its state crossed (`BENCH.md`'s name).
    pub link: String,
    /// Whether the destination had never seen the module.
    pub cold: bool,
    /// Which round (0-based) of this application.
    pub round: usize,
    /// The client's move report: from the request until the worker runs at the
    /// destination with all of its state, ms.
    pub settle_ms: f64,
    /// The longest gap between two consecutive replies the application saw around the
    /// move, ms (the steady-state time per message is subtracted in the summary).
    pub longest_gap_ms: f64,
    /// The longest of those gaps that ended in a reply of a message the moved state had
    /// handled (at the source), ms: the source's pace is subtracted from it.
    pub longest_gap_source_ms: f64,
    /// The longest of those gaps that ended in a reply of a message handled after the
    /// move (at the destination), ms: the destination's pace is subtracted from it.
    pub longest_gap_destination_ms: f64,
    /// Messages posted and not yet answered when the move started.
    pub in_flight: u64,
    /// Messages the client resent to the destination.
    pub replayed: u64,
    /// Messages handled but whose reply never reached the application.
    pub replies_lost: u64,
    /// The last message the moved state had handled.
    pub last_seq: u64,
    /// Bytes both ways through the link the state crossed, during the move (for a
    /// return, less the replies that came down the same connection).
    pub wire_bytes: u64,
    /// The replies subtracted from a return's count.
    pub app_bytes: u64,
    /// The module's bytes, when the destination did not have it.
    pub module_bytes: u64,
    /// The snapshot's manifest and encoded chunk bodies (from a capture of a replica).
    pub state_bytes: u64,
    /// The rest: frame and WebSocket headers, the HTTP upgrade, Hello and Welcome, the
    /// StateNeed chunk list, StateAdopted, Goodbye.
    pub protocol_bytes: u64,
    /// The worker's linear memory.
    pub memory_bytes: u64,
    /// Bytes in its non-zero chunks.
    pub nonzero_bytes: u64,
    /// One round trip of the state's link, ms.
    pub rtt_ms: f64,
    /// The state's link's bandwidth in the state's direction, bit/s.
    pub bandwidth_bps: u64,
}

/// Reply arrivals as the application saw them.
struct Arrival {
    at: Instant,
    seq: u64,
    len: usize,
}

/// The time per message at one place in one phase.
#[derive(Clone, Debug, Default)]
pub struct PhaseTimes {
    /// Gaps between consecutive replies inside the phase (not the first one after a move), ms.
    pub gaps_ms: Vec<f64>,
    /// The handler's own time per message on the device, ms (each local post timed).
    pub handler_ms: Vec<f64>,
}

/// What a round measured.
pub struct RoundResult {
    /// Every move.
    pub moves: Vec<MoveSample>,
    /// Steady-state times by place.
    pub phases: BTreeMap<Site, PhaseTimes>,
}

/// The client side of a round: the worker handle and every reply's arrival.
struct Device<'t> {
    topo: &'t Topology,
    handle: WorkerHandle,
    app: &'t App,
    arrivals: Vec<Arrival>,
    posted: u64,
    site: Site,
}

/// A copy of `wasm` with a custom section holding `nonce`: the same worker, a new module
/// hash, so no node has it cached.
pub fn module_variant(wasm: &[u8], nonce: u64) -> Vec<u8> {
    let name = b"roam-bench-variant";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(&nonce.to_le_bytes());
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

fn place(topo: &Topology, site: Site) -> Place {
    match site {
        Site::Device => Place::Local,
        node => Place::Node(topo.url(node).to_string()),
    }
}

/// WebSocket header bytes of a binary message of `len` bytes; a client's are masked.
fn ws_header(len: usize, from_client: bool) -> u64 {
    let base = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if from_client { 4 } else { 0 }
}

/// Wire bytes of a Reply frame carrying `len` bytes, and of the Handled that follows it.
fn reply_wire(len: usize) -> u64 {
    let reply = 8 + 16 + 8 + 4 + 4 + len;
    let handled = 8 + 16 + 8 + 4;
    reply as u64 + ws_header(reply, false) + handled as u64 + ws_header(handled, false)
}

/// Wire bytes of a Post frame carrying `len` bytes.
fn post_wire(len: usize) -> u64 {
    let post = 8 + 16 + 8 + 4 + len;
    post as u64 + ws_header(post, true)
}

impl<'t> Device<'t> {
    fn stamp(&mut self, replies: Vec<Reply>, at: Instant) {
        for r in replies {
            self.arrivals.push(Arrival {
                at,
                seq: r.seq,
                len: r.payload.len(),
            });
        }
    }

    /// Messages posted whose reply has not arrived (each message has one reply). The
    /// handle's own count lags behind: a message leaves it at its Handled frame, which
    /// follows the reply.
    fn unanswered(&self) -> u64 {
        let answered = self.arrivals.last().map_or(0, |a| a.seq);
        self.posted.saturating_sub(answered)
    }

    async fn post(&mut self, message: Vec<u8>) -> Result<()> {
        self.handle.post(message).await?;
        self.posted += 1;
        let replies = self.handle.take_replies();
        self.stamp(replies, Instant::now());
        Ok(())
    }

    /// Posts the phase's messages at the current place, at most a window in flight,
    /// stamping each reply as it comes. The last ones stay in flight for the next move.
    async fn phase(&mut self, messages: usize, times: &mut PhaseTimes) -> Result<()> {
        let first = self.arrivals.len();
        let mut local_ms = Vec::new();
        for _ in 0..messages {
            while self.site != Site::Device && self.unanswered() >= self.app.window as u64 {
                match self.handle.next_reply().await? {
                    Some(reply) => self.stamp(vec![reply], Instant::now()),
                    None => break,
                }
            }
            // A post on the device runs the handler, unless messages a return left wait
            // to run first (the post then only queues its message behind them).
            let runs_here = self.site == Site::Device && self.handle.backlog() == 0;
            let started = Instant::now();
            self.post(self.app.message.clone()).await?;
            if runs_here {
                local_ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        // At least one reply of the stay, so the move after it starts after the first
        // reply that followed the one before; half a window stays in flight.
        while self.unanswered() > self.app.window as u64 / 2 {
            match self.handle.next_reply().await? {
                Some(reply) => self.stamp(vec![reply], Instant::now()),
                None => break,
            }
        }
        // The move before the phase was drained: every gap inside it is a steady one.
        let inside = &self.arrivals[first..];
        if inside.len() >= 2 {
            times.gaps_ms.extend(
                inside
                    .windows(2)
                    .map(|w| (w[1].at - w[0].at).as_secs_f64() * 1e3),
            );
        }
        times.handler_ms.extend(local_ms);
        Ok(())
    }

    /// Makes one move with the phase's messages in flight and measures it.
    /// Also returns the range of arrivals around the move: from the last reply before it
    /// to the first one after it (which may come in the next phase).
    async fn make_move(
        &mut self,
        step: Step,
        cold: bool,
        round: usize,
    ) -> Result<(MoveSample, (usize, usize))> {
        ensure!(
            self.site == step.from,
            "the worker is not where the move starts"
        );
        let topo = self.topo;
        // What the device posted is on the node and no reply is half-way across before the
        // move starts, so the state link's count during the move is the move's; replies
        // that already arrived are taken now, as the application would.
        if self.site != Site::Device {
            topo.wait_quiet(
                self.site,
                Duration::from_millis(3),
                Duration::from_millis(3),
                Duration::from_secs(60),
            )
            .await;
            while self.unanswered() > 0 {
                let next = self.handle.next_reply();
                match tokio::time::timeout(Duration::from_millis(2), next).await {
                    // None: the last message's Handled came after its reply.
                    Ok(reply) => match reply? {
                        Some(reply) => self.stamp(vec![reply], Instant::now()),
                        None => break,
                    },
                    Err(_) => break,
                }
            }
        }
        let in_flight = self.unanswered();
        let posted = self.posted;
        let first = self.arrivals.len();
        let cut =
            (step.kind == MoveKind::Fallback).then(|| &topo.hop(Site::Device, step.from).link);
        let target = match step.kind {
            MoveKind::Fallback => Place::Relay {
                cloud: self.topo.url(Site::Cloud).to_string(),
                to: self.topo.url(step.to).to_string(),
            },
            _ => place(self.topo, step.to),
        };
        let state_link = match step.kind {
            MoveKind::Offload => topo.hop(Site::Device, step.to),
            MoveKind::Return => topo.hop(Site::Device, step.from),
            MoveKind::Fallback => topo.hop(step.to, step.from),
            _ => topo.hop(step.from, step.to),
        };
        let links_before = state_link.link.stats();
        if let Some(link) = cut {
            link.set_down(true);
        }
        // The application keeps going while the worker moves: it posts whenever fewer
        // than a window of messages are unanswered, as in a stay. Offload, handoff and
        // return run in the background (pre-copy); a fallback completes in begin_move.
        let context = || format!("{} {:?} → {:?}", step.kind, step.from, step.to);
        let watch = match step.kind {
            MoveKind::Handoff => Some(crate::node_metrics::HandoffWatch::start(
                self.topo.url(step.from),
                self.topo.url(step.to),
            )?),
            _ => None,
        };
        let asked = Instant::now();
        self.handle.begin_move(target).await.with_context(context)?;
        let mut posted_during = 0u64;
        while self.handle.moving() {
            if self.unanswered() < self.app.window as u64 {
                self.post(self.app.message.clone()).await?;
                posted_during += 1;
            } else if let Some(reply) = self.handle.next_reply().await? {
                self.stamp(vec![reply], Instant::now());
            }
        }
        let report = self
            .handle
            .take_move_result()
            .context("the move reports its outcome")?
            .with_context(context)?;
        let arrived = Instant::now();
        ensure!(
            report.kind == step.kind,
            "expected a {} and the client made a {} ({} → {})",
            step.kind,
            report.kind,
            report.from,
            report.to
        );
        self.site = step.to;
        let replies = self.handle.take_replies();
        self.stamp(replies, arrived);
        while let Some(reply) = self.handle.next_reply().await? {
            self.stamp(vec![reply], Instant::now());
        }
        if let Some(link) = cut {
            link.set_down(false);
        }
        // A post-copy handoff settles when the destination holds every chunk, after Moved.
        let mut settle = report.duration;
        if let Some(watch) = watch {
            if let Some(end) = watch.post_copy_end()? {
                settle = settle.max(end - asked);
            }
        }
        // The last frames of the move (StateAdopted, Goodbye, close) cross the links.
        tokio::time::sleep(Duration::from_millis(80)).await;
        let links_after = state_link.link.stats();

        // Every message posted by now was handled by the state that moved, or was sent to
        // the destination after it.
        let last_seq = self.posted - report.replayed;
        let during = &self.arrivals[first..];
        // An offload and a return share their link with the application; a handoff and a
        // fallback move the state between nodes.
        let app_bytes: u64 = match step.kind {
            // The replies of the messages the node handled before sending the state come
            // down the same connection, and the messages posted meanwhile go up it.
            MoveKind::Return => {
                let replies: u64 = during
                    .iter()
                    .filter(|a| a.seq <= last_seq)
                    .map(|a| reply_wire(a.len))
                    .sum();
                replies + posted_during * post_wire(self.app.message.len())
            }
            // The messages the node handles after the move (sent to it then: they would
            // have crossed anyway) go up, and their replies come down.
            MoveKind::Offload => {
                let answered_there: Vec<&Arrival> = during
                    .iter()
                    .filter(|a| a.seq > last_seq && a.at >= arrived)
                    .collect();
                let messages: std::collections::BTreeSet<u64> =
                    answered_there.iter().map(|a| a.seq).collect();
                answered_there
                    .iter()
                    .map(|a| reply_wire(a.len))
                    .sum::<u64>()
                    + messages.len() as u64 * post_wire(self.app.message.len())
            }
            _ => 0,
        };
        let answered = self
            .arrivals
            .iter()
            .filter(|a| a.seq + in_flight > posted)
            .map(|a| a.seq)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        let after = self.arrivals.len();
        let around = (first.saturating_sub(1), after.saturating_sub(1).max(first));
        let (link, spec) = bench_link(step.from, step.to);
        let carried = (links_after.up_bytes + links_after.down_bytes)
            - (links_before.up_bytes + links_before.down_bytes);
        let wire = carried.saturating_sub(app_bytes);
        let sample = MoveSample {
            app: self.app.name.into(),
            kind: step.kind.to_string(),
            from: step.from.name().into(),
            to: step.to.name().into(),
            link: link.into(),
            cold,
            round,
            settle_ms: settle.as_secs_f64() * 1e3,
            longest_gap_ms: 0.0,
            longest_gap_source_ms: 0.0,
            longest_gap_destination_ms: 0.0,
            in_flight,
            replayed: report.replayed,
            replies_lost: in_flight.saturating_sub(answered),
            last_seq,
            wire_bytes: wire,
            app_bytes,
            module_bytes: 0,
            state_bytes: 0,
            protocol_bytes: 0,
            memory_bytes: 0,
            nonzero_bytes: 0,
            rtt_ms: spec.rtt.as_secs_f64() * 1e3,
            bandwidth_bps: state_bps(step.from, step.to, self.topo.scale),
        };
        Ok((sample, around))
    }
}

/// The longest gap between consecutive arrivals, ms, of those whose second arrival
/// passes `ends`.
fn longest_gap(arrivals: &[Arrival], ends: impl Fn(&Arrival) -> bool) -> f64 {
    arrivals
        .windows(2)
        .filter(|w| ends(&w[1]))
        .map(|w| (w[1].at - w[0].at).as_secs_f64() * 1e3)
        .fold(0.0, f64::max)
}

/// Runs one round of `app` with the module `wasm` (a variant no node has seen when `cold`).
pub async fn round(
    topo: &Topology,
    app: &App,
    wasm: &[u8],
    options: &WorkerOptions,
    cold: bool,
    round: usize,
    progress: &mut dyn FnMut(&MoveSample),
) -> Result<RoundResult> {
    let handle = WorkerHandle::start(wasm, options.clone())?;
    let mut device = Device {
        topo,
        handle,
        app,
        arrivals: Vec::new(),
        posted: 0,
        site: Site::Device,
    };
    for m in &app.setup {
        device.post(m.clone()).await?;
    }
    let mut phases: BTreeMap<Site, PhaseTimes> = BTreeMap::new();
    device
        .phase(app.phase, phases.entry(Site::Device).or_default())
        .await?;
    let steps = if cold {
        &STEPS[..COLD_STEPS]
    } else {
        &STEPS[..]
    };
    let mut moves = Vec::new();
    let mut windows = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let (sample, around) = device.make_move(*step, cold, round).await?;
        moves.push(sample);
        windows.push(around);
        // A cold round, and the stay at A before the return (A's pace is measured after
        // the offload), post just enough to have a window in flight at the next move.
        let short = cold || i + 2 >= STEPS.len();
        let messages = if short { app.window } else { app.phase };
        device
            .phase(messages, phases.entry(step.to).or_default())
            .await?;
        // The range ends at the first reply from the destination, which may be the
        // phase's first (replies that came during the move may all be the source's, or
        // made again here after a fallback).
        let (lo, hi) = windows[i];
        let sample = moves.last_mut().expect("just pushed");
        let last_seq = sample.last_seq;
        let first_there = device.arrivals[lo..]
            .iter()
            .position(|a| a.seq > last_seq)
            .map_or(hi, |p| lo + p);
        let hi = hi
            .max(first_there)
            .min(device.arrivals.len().saturating_sub(1));
        let around = &device.arrivals[lo..=hi.max(lo)];
        sample.longest_gap_ms = longest_gap(around, |_| true);
        sample.longest_gap_source_ms = longest_gap(around, |a| a.seq <= last_seq);
        sample.longest_gap_destination_ms = longest_gap(around, |a| a.seq > last_seq);
        progress(sample);
    }
    while let Some(reply) = device.handle.next_reply().await? {
        device.stamp(vec![reply], Instant::now());
    }
    let setup = app.setup.len() as u64;
    fill_state(app, wasm, setup, &mut moves)?;
    Ok(RoundResult { moves, phases })
}

/// Fills in the state of each move from a replica: the same module handling the same
/// messages in this process, captured at each move's `last_seq`. The workers depend only
/// on their messages, so the replica's memory is the moved worker's.
fn fill_state(app: &App, wasm: &[u8], setup: u64, moves: &mut [MoveSample]) -> Result<()> {
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let module = runtime.load(wasm)?;
    let module_len = module.bytes().len() as u64;
    let mut replica = runtime.start(&module)?;
    let mut handled = 0u64;
    for sample in moves.iter_mut() {
        while handled < sample.last_seq {
            let message = if handled < setup {
                &app.setup[handled as usize]
            } else {
                &app.message
            };
            replica.deliver(message)?.for_each(drop);
            handled += 1;
        }
        let snapshot = replica.capture()?;
        let stats = snapshot.stats();
        let state = snapshot.manifest.encoded_len() as u64
            + snapshot
                .bodies()
                .iter()
                .map(|b| b.encoded_len() as u64)
                .sum::<u64>();
        sample.module_bytes = if sample.cold && sample.to != Site::Device.name() {
            module_len
        } else {
            0
        };
        sample.state_bytes = state;
        sample.memory_bytes = stats.memory_size;
        sample.nonzero_bytes = stats.nonzero_bytes;
        sample.protocol_bytes = sample
            .wire_bytes
            .saturating_sub(sample.module_bytes + sample.state_bytes);
    }
    Ok(())
}
