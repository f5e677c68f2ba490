//! Automatic placement: an [`AutoPlacer`] watches a worker's messages and the links to
//! every place it could run, and moves the worker where its messages are answered soonest.
//!
//! The decision is `roam_place`'s [`Planner`]; this module feeds it. Background tasks
//! keep one probe per candidate node: its round trip every [`AutoOptions::probe_every`]
//! (`GET /healthz`), and its bandwidth each way (`GET` and `POST /probe`) when the last
//! sample is over 10 s old and the worker's own messages are not using that link. The
//! cloud is asked for its edges every [`AutoOptions::discover_every`]. What the handle saw
//! of each message (the handler's time here, the response time at a node, the sizes)
//! goes into the worker's profile on every [`AutoPlacer::tick`], which then decides and,
//! when a move pays, begins it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roam_place::{Candidate, Direction, LinkEstimator, PlaceKind, Planner, PlannerSettings, LOCAL};
use roam_proto::{Frame, NodeRole};

use crate::connection::{dial_url, Connection};
use crate::error::ClientError;
use crate::probe::Prober;
use crate::worker::{MoveMode, Place, WorkerHandle, WorkerOptions};

/// What an application requires of placement; always honoured.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    /// Places predicted to answer a message later than this are not chosen (unless none
    /// is predicted to meet it, when the fastest is).
    pub latency_budget: Option<Duration>,
    /// Moves predicted to pause the worker longer than this are not made, except to get
    /// away from a place that can no longer be reached.
    pub max_move_stall: Option<Duration>,
    /// Whether the worker may run on the cloud.
    pub allow_cloud: bool,
    /// The worker never leaves the device.
    pub stay_local: bool,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            latency_budget: None,
            max_move_stall: None,
            allow_cloud: true,
            stay_local: false,
        }
    }
}

/// Settings of an [`AutoPlacer`].
#[derive(Clone, Debug)]
pub struct AutoOptions {
    /// The cloud: a candidate itself (unless [`Requirements::allow_cloud`] is false), and
    /// where the edges that registered are listed.
    pub cloud: Option<String>,
    /// Edges to consider besides those the cloud lists.
    pub edges: Vec<String>,
    /// What the application requires.
    pub requirements: Requirements,
    /// Dial routes, as in [`crate::WorkerOptions::routes`].
    pub routes: BTreeMap<String, String>,
    /// How often each candidate's round trip is measured. Default 500 ms.
    pub probe_every: Duration,
    /// How often the cloud is asked for its edges. Default 5 s.
    pub discover_every: Duration,
    /// A directory where the placer remembers, per module, how much work a message takes
    /// (see [`Memory`]): a run starts from what the last one on this device learnt, so a
    /// worker known to be heavy leaves before its first heavy messages. `None` (the
    /// default): nothing is remembered.
    pub memory: Option<std::path::PathBuf>,
}

impl Default for AutoOptions {
    fn default() -> Self {
        AutoOptions {
            cloud: None,
            edges: Vec::new(),
            requirements: Requirements::default(),
            routes: BTreeMap::new(),
            probe_every: Duration::from_millis(500),
            discover_every: Duration::from_secs(5),
            memory: None,
        }
    }
}

/// What a placer remembers of a module from one run to the next, in a file of
/// [`AutoOptions::memory`] named after the module's SHA-256 (`<hex>.json`).
///
/// The work is counted in seconds of the reference core (the handler's time × the speed
/// of the place it ran on), so it holds whether the last run ended on the device or on a
/// node, and on a device whose speed changed since.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Memory {
    /// Reference-core seconds a message took where the worker ran last, one standard
    /// deviation above the mean: its heavier stretches, by which a device that must keep
    /// up with all of them is judged (as a return is).
    pub work_per_message_s: f64,
}

/// A remembered handler time counts as this many runs: the first few of a new run (a
/// scene just dropped is light) do not outweigh what a whole earlier run showed.
const MEMORY_WEIGHT_RUNS: u64 = 20;

impl Memory {
    fn path(dir: &std::path::Path, module: &[u8; 32]) -> std::path::PathBuf {
        let hex: String = module.iter().map(|b| format!("{b:02x}")).collect();
        dir.join(format!("{hex}.json"))
    }

    /// What `dir` remembers of `module`, if anything readable.
    pub fn load(dir: &std::path::Path, module: &[u8; 32]) -> Option<Memory> {
        let path = Memory::path(dir, module);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<Memory>(&text) {
            Ok(m) if m.work_per_message_s.is_finite() && m.work_per_message_s > 0.0 => Some(m),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(path = %path.display(), "placement memory unreadable, ignored: {e}");
                None
            }
        }
    }

    /// Writes it for `module` into `dir` (created if missing).
    pub fn save(&self, dir: &std::path::Path, module: &[u8; 32]) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = Memory::path(dir, module);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }
}

/// A move the placer began, and why.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Where the worker goes.
    pub to: Place,
    /// Why, in words, with the predictions that made it.
    pub reason: String,
}

/// What the placer knows of a node it could use.
#[derive(Clone, Debug)]
pub struct CandidateView {
    /// The node's URL.
    pub url: String,
    /// Whether it is the cloud.
    pub cloud: bool,
    /// Its round trip, when it can be reached.
    pub rtt: Option<Duration>,
    /// Its bandwidth up and down in bytes per second, when measured.
    pub bandwidth: Option<(f64, f64)>,
    /// Its calibrated speed relative to the reference core, when it reported one.
    pub speed: Option<f64>,
}

/// Bytes of the bandwidth probes: enough to take some tens of milliseconds on a mobile
/// link, little against the traffic of a worker worth moving.
const PROBE_DOWN: usize = 256 << 10;
const PROBE_UP: usize = 128 << 10;

/// A round trip that looks faded is measured again this many times sooner: a fade is
/// judged from the lowest of a few samples, and a tunnel leaves little time to get home.
const SUSPECT_PROBE_FASTER: u32 = 5;

/// How often a node that lacks the worker's module is asked again.
const MODULE_ASK_EVERY: Duration = Duration::from_secs(10);

/// Compressed state per byte of non-zero memory, before a move has shown the real ratio.
const COMPRESSION_GUESS: f64 = 0.6;

/// How often the worker's memory is scanned for its size while it runs here; each scan
/// is followed by a second one [`SCAN_PAIR`] later, which tells how fast it is rewritten.
const SCAN_EVERY: Duration = Duration::from_secs(5);
const SCAN_PAIR: Duration = Duration::from_millis(500);

/// After a move, the messages that waited through it are answered first: the place is
/// judged from messages posted once they are (at most this long after the move ended).
const SETTLE_AT_MOST: Duration = Duration::from_secs(3);

/// How often the worker's state is copied back while its node's link fades.
const FADING_CHECKPOINT_EVERY: Duration = Duration::from_secs(2);

/// An offload or a return pauses the worker from the start when pre-copy's first round
/// would take long enough for the worker to rewrite at least this share of its state
/// meanwhile: the next round would be about as large, so running on through the rounds
/// only makes the move longer.
const REWRITE_FOR_STOP_AND_COPY: f64 = 0.5;

/// One candidate node, shared between its probe task and the placer.
#[derive(Debug)]
struct Probed {
    cloud: bool,
    speed: Option<f64>,
    link: LinkEstimator,
    /// The worker runs there: its messages use the link, so no bandwidth probe does.
    carrying: bool,
    /// The node said it holds the worker's module.
    holds_module: bool,
}

type Shared = Arc<Mutex<BTreeMap<String, Probed>>>;

/// The placer's background tasks, aborted when it is dropped.
type Tasks = Arc<Mutex<Vec<tokio::task::AbortHandle>>>;

/// The thread the placer measures on: a runtime of its own, so that a probe's answer is
/// read when it arrives, not once the worker's handler lets the device's thread go.
///
/// On a phone the worker runs on a thread of its own (a Web Worker) and the page's
/// networking elsewhere; a client that ran its probes on the worker's thread would time
/// each handler into the round trips, and a busy device would look like a fading link.
/// The thread is started from the caller's, so it shares whatever limits that thread has
/// (a CPU quota: the benchmark's slow device).
struct Measuring {
    handle: tokio::runtime::Handle,
    /// Dropped to stop the thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Measuring {
    fn start() -> std::io::Result<Measuring> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("roam-placement".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Measuring {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Measuring {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Decides where a worker runs and moves it there.
///
/// Measuring runs in the background (tasks on a thread of the placer's own, started on
/// the first [`tick`] and stopped when the placer is dropped); [`tick`] only reads the
/// measurements, decides, and begins a move when one pays.
///
/// [`tick`]: AutoPlacer::tick
pub struct AutoPlacer {
    options: AutoOptions,
    planner: Planner,
    /// The worker's module, which each node is asked whether it holds.
    module: Option<[u8; 32]>,
    origin: Instant,
    nodes: Shared,
    tasks: Tasks,
    /// Where the probes run; `None` until the first tick (or when no thread could be
    /// started: then on the caller's runtime).
    measuring: Option<Measuring>,
    started: bool,
    /// This device's calibrated speed (measured on the first tick, on its thread).
    device_speed: f64,
    /// When the worker arrived where it is: messages posted before are not its runs there.
    arrived_at: Instant,
    /// A move ended then, and the messages that waited through it are still being answered.
    settling: Option<Instant>,
    /// A move was under way at the last tick.
    was_moving: bool,
    /// When the worker's memory was last scanned, and whether the next scan is the second
    /// of a pair.
    scanned_at: Option<Instant>,
    scan_second: bool,
    /// How fast the worker rewrites its memory here, bytes per second (uncompressed).
    rewrite_rate: Option<f64>,
    last_decision: Option<String>,
    /// The handle's checkpoint interval before the placer changed it.
    usual_checkpoint_every: Option<Option<Duration>>,
    /// When the last message seen was handled.
    last_handled: Option<Instant>,
    /// The move under way (or just ended) whose pause is being measured.
    watching: Option<Watching>,
}

/// A move the placer began, watched for the longest gap between two handled messages: its
/// pause as the application felt it.
#[derive(Debug)]
struct Watching {
    kind: roam_place::MoveKind,
    /// Where the move goes: one that ends elsewhere failed, and says nothing of its kind.
    to: String,
    modelled: f64,
    /// [`WorkerHandle::recoveries`] when it began.
    recoveries: u64,
    started: Instant,
    ended: Option<Instant>,
    longest_gap: Duration,
}

impl AutoPlacer {
    /// A placer; its measurements start on the first [`AutoPlacer::tick`].
    pub fn new(options: AutoOptions) -> AutoPlacer {
        let requirements = roam_place::Requirements {
            latency_budget: options.requirements.latency_budget.map(|d| d.as_secs_f64()),
            max_move_stall: options.requirements.max_move_stall.map(|d| d.as_secs_f64()),
            allow_cloud: options.requirements.allow_cloud,
            stay_local: options.requirements.stay_local,
        };
        AutoPlacer {
            planner: Planner::new(PlannerSettings::default(), requirements),
            module: None,
            options,
            origin: Instant::now(),
            nodes: Arc::default(),
            tasks: Arc::default(),
            measuring: None,
            started: false,
            device_speed: 1.0,
            arrived_at: Instant::now(),
            settling: None,
            was_moving: false,
            scanned_at: None,
            scan_second: false,
            rewrite_rate: None,
            last_decision: None,
            usual_checkpoint_every: None,
            last_handled: None,
            watching: None,
        }
    }

    /// The settings.
    pub fn options(&self) -> &AutoOptions {
        &self.options
    }

    /// The nodes known, with what was measured of them.
    pub fn candidates(&self) -> Vec<CandidateView> {
        let now = self.now();
        let nodes = self.nodes.lock().expect("placer nodes");
        nodes
            .iter()
            .map(|(url, probed)| {
                let estimate = probed.link.estimate(now);
                CandidateView {
                    url: url.clone(),
                    cloud: probed.cloud,
                    rtt: estimate.map(|e| Duration::from_secs_f64(e.rtt)),
                    bandwidth: estimate
                        .filter(|e| e.bandwidth_measured)
                        .map(|e| (e.up, e.down)),
                    speed: probed.speed,
                }
            })
            .collect()
    }

    /// Why the last decision was made (a move or staying), for logs.
    pub fn last_reason(&self) -> Option<&str> {
        self.last_decision.as_deref()
    }

    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Takes in what `handle` saw since the last call, and begins a move on it
    /// ([`WorkerHandle::begin_move`]) when one pays. Returns quickly; call it after each
    /// post and at least every 100 ms. Does not take the move's result: that stays for
    /// [`WorkerHandle::take_move_result`].
    pub async fn tick(
        &mut self,
        handle: &mut WorkerHandle,
    ) -> Result<Option<Decision>, ClientError> {
        if !self.started {
            self.module = Some(handle.module_hash());
            self.start();
            self.planner
                .profile_mut()
                .set_module_bytes(handle.module_bytes());
            self.recall();
        }
        // Where no thread of its own could be started, the probes run on this runtime,
        // maybe on this very thread, beside an application that may never wait on
        // anything while its worker runs here (a device that cannot keep up posts back to
        // back): let them have their turn, or the links' estimates go stale and every node
        // looks unreachable.
        tokio::task::yield_now().await;
        let now = self.now();
        self.take_in(handle, now);
        if handle.moving() {
            self.was_moving = true;
            return Ok(None);
        }
        if let Some(watching) = &mut self.watching {
            watching.ended.get_or_insert_with(Instant::now);
        }
        let here = place_id(&handle.place());
        if self
            .watching
            .as_ref()
            .is_some_and(|w| w.to != here || w.recoveries != handle.recoveries())
        {
            // Elsewhere, or where it was going but by a recovery from a lost node.
            tracing::debug!(to = %self.watching.as_ref().map_or("", |w| w.to.as_str()), "the move did not end there: its pause is not learned");
            self.watching = None;
        }
        if self.was_moving || here != self.planner.current() {
            // A move ended, or the handle took the worker back from a node it lost.
            self.was_moving = false;
            self.planner.arrived(now, &here);
            self.arrived_at = Instant::now();
            self.settling = Some(Instant::now());
        }
        if let Some(since) = self.settling {
            // The backlog is answered (or has had its time): from now on, what messages
            // take is what this place gives.
            if handle.pending() <= 1 || since.elapsed() >= SETTLE_AT_MOST {
                self.settling = None;
                self.arrived_at = Instant::now();
            }
        }
        let candidates = self.candidates_at(now, &here);
        let decision = self.planner.decide(now, &candidates);
        self.insure(handle, &decision, &here);
        if self.last_decision.as_deref() != Some(decision.reason()) {
            tracing::debug!(at_s = now, "placement: {}", decision.reason());
        }
        self.last_decision = Some(decision.reason().to_string());
        let Some(to) = decision.target() else {
            return Ok(None);
        };
        let place = if to == LOCAL {
            Place::Local
        } else {
            Place::Node(to.to_string())
        };
        tracing::info!(worker = %format!("{:032x}", handle.id()), to = %place, "{}", decision.reason());
        let kind = roam_place::MoveKind::between(self.planner.current(), to);
        let modelled = decision
            .predictions()
            .iter()
            .find(|p| p.id == to)
            .map_or(0.0, |p| p.stall_modelled);
        self.watching = kind.map(|kind| Watching {
            kind,
            to: to.to_string(),
            modelled,
            recoveries: handle.recoveries(),
            started: Instant::now(),
            ended: None,
            longest_gap: Duration::ZERO,
        });
        let mode = match kind {
            // Light messages: the worker runs on here while its state crosses, and the
            // node catches up on them.
            Some(roam_place::MoveKind::Offload) if handle.light_messages() => MoveMode::CatchUp,
            Some(roam_place::MoveKind::Offload) => self.state_mode(now, to, Direction::Up),
            Some(roam_place::MoveKind::Return) => {
                let from = self.planner.current().to_string();
                self.state_mode(now, &from, Direction::Down)
            }
            _ => MoveMode::PreCopy,
        };
        handle.begin_move_with(place.clone(), mode).await?;
        // Where it is now (a move that completes at once) or will be; the next tick looks
        // at the handle again.
        self.planner.moved(now, to);
        self.arrived_at = Instant::now();
        self.was_moving = true;
        Ok(Some(Decision {
            to: place,
            reason: decision.reason().to_string(),
        }))
    }

    /// Starts the worker's profile from what [`AutoOptions::memory`] holds of its module.
    fn recall(&mut self) {
        let (Some(dir), Some(module)) = (&self.options.memory, &self.module) else {
            return;
        };
        if let Some(memory) = Memory::load(dir, module) {
            let here = memory.work_per_message_s / self.device_speed.max(1e-6);
            tracing::debug!(
                handler_ms = here * 1e3,
                "placement memory: a message's handler time here"
            );
            self.planner
                .profile_mut()
                .recall_local_handler(here, MEMORY_WEIGHT_RUNS);
        }
    }

    /// What this run learnt of the module, for the next one: the work a message takes
    /// where it ran last (on a node, once enough runs were seen there).
    fn remember(&self) {
        let (Some(dir), Some(module)) = (&self.options.memory, &self.module) else {
            return;
        };
        let nodes = self.nodes.lock().expect("placer nodes");
        let device = self.device_speed.max(1e-6);
        let relative = |id: &str| {
            nodes
                .get(id)
                .and_then(|p| p.speed)
                .map_or(1.0, |s| s / device)
        };
        let profile = self.planner.profile();
        let here = if profile.runs_here() {
            profile.heavy_local_handler()
        } else {
            profile.local_handler_now(&relative)
        };
        let Some(here) = here else {
            return;
        };
        let memory = Memory {
            work_per_message_s: here * device,
        };
        if let Err(e) = memory.save(dir, module) {
            tracing::warn!(dir = %dir.display(), "placement memory not saved: {e}");
        }
    }

    /// While the link to the worker's node fades, takes copies of its state more often
    /// ([`FADING_CHECKPOINT_EVERY`]): should the node be lost, the device then handles
    /// again a few seconds of messages instead of up to the usual interval's.
    fn insure(&mut self, handle: &mut WorkerHandle, decision: &roam_place::Decision, here: &str) {
        let usual = *self
            .usual_checkpoint_every
            .get_or_insert_with(|| handle.checkpoint_every());
        let fading = here != LOCAL
            && decision
                .predictions()
                .iter()
                .any(|p| p.id == here && p.loss_risk > 0.0);
        let every = match usual {
            Some(usual) if fading => Some(usual.min(FADING_CHECKPOINT_EVERY)),
            _ => usual,
        };
        if handle.checkpoint_every() != every {
            tracing::debug!(?every, fading, "checkpoints");
            handle.set_checkpoint_every(every);
        }
    }

    /// How an offload to `node` (state going `Up`) or a return from it (`Down`) should
    /// send the state: paused from the start when the worker would rewrite much of it
    /// while the first round crosses the link.
    fn state_mode(&self, now: f64, node: &str, direction: Direction) -> MoveMode {
        let state = self.planner.profile().state_bytes() as f64;
        let bandwidth = self
            .nodes
            .lock()
            .expect("placer nodes")
            .get(node)
            .and_then(|p| p.link.estimate(now))
            .map(|e| match direction {
                Direction::Up => e.up,
                Direction::Down => e.down,
            });
        let (Some(rate), Some(bandwidth)) = (self.rewrite_rate, bandwidth) else {
            tracing::debug!(rate = ?self.rewrite_rate, ?bandwidth, ?direction, "move mode: pre-copy, nothing measured");
            return MoveMode::PreCopy;
        };
        let first_round = state / bandwidth.max(1.0);
        let rewritten = (rate * COMPRESSION_GUESS * first_round).min(state);
        let mode = if state > 0.0 && rewritten >= REWRITE_FOR_STOP_AND_COPY * state {
            MoveMode::StopAndCopy
        } else {
            MoveMode::PreCopy
        };
        tracing::debug!(
            state_bytes = state,
            first_round_s = first_round,
            rewritten_bytes = rewritten,
            ?direction,
            ?mode,
            "move mode"
        );
        mode
    }

    /// The device's speed, the first probes and the discovery of edges.
    fn start(&mut self) {
        self.started = true;
        match roam_runtime::calibrate(2) {
            Ok(c) => self.device_speed = c.speed,
            Err(e) => tracing::warn!("{e}; taking this device's speed as 1"),
        }
        match Measuring::start() {
            Ok(measuring) => self.measuring = Some(measuring),
            Err(e) => tracing::warn!("{e}; probing on the worker's thread"),
        }
        if let Some(cloud) = self.options.cloud.clone() {
            self.watch(&cloud, true);
            let task = self.runtime().spawn(discover(
                cloud,
                self.module,
                self.options.clone(),
                self.nodes.clone(),
                self.tasks.clone(),
                self.origin,
            ));
            self.tasks
                .lock()
                .expect("placer tasks")
                .push(task.abort_handle());
        }
        for edge in self.options.edges.clone() {
            self.watch(&edge, false);
        }
    }

    /// Starts probing `url` unless it already is.
    fn watch(&mut self, url: &str, cloud: bool) {
        watch(
            &self.runtime(),
            url,
            cloud,
            self.module,
            &self.options,
            &self.nodes,
            &self.tasks,
            self.origin,
        );
    }

    /// The runtime the placer measures on.
    fn runtime(&self) -> tokio::runtime::Handle {
        self.measuring
            .as_ref()
            .map_or_else(tokio::runtime::Handle::current, |m| m.handle.clone())
    }

    /// Feeds what the handle saw into the worker's profile.
    fn take_in(&mut self, handle: &mut WorkerHandle, now: f64) {
        let mut observations = handle.take_observations();
        observations.sort_by_key(|seen| seen.posted_at + seen.response);
        self.watch_gaps(&observations);
        let nodes = self.nodes.lock().expect("placer nodes");
        for seen in observations {
            let posted = seen
                .posted_at
                .saturating_duration_since(self.origin)
                .as_secs_f64();
            let profile = self.planner.profile_mut();
            profile.on_post(posted, seen.request_bytes);
            if seen.posted_at < self.arrived_at {
                // Waited through a move: says nothing of the place.
                continue;
            }
            match &seen.node {
                None => profile.on_local_run(seen.response.as_secs_f64(), seen.reply_bytes),
                Some(url) => {
                    if let Some(link) = nodes.get(url).and_then(|p| p.link.estimate(now)) {
                        profile.on_node_reply(
                            url,
                            Some(posted + seen.response.as_secs_f64()),
                            seen.response.as_secs_f64(),
                            seen.request_bytes,
                            seen.reply_bytes,
                            &link,
                        );
                    }
                }
            }
        }
        drop(nodes);
        // State that crossed a link is traffic already flowing: its bandwidth, less the
        // round trip the timing includes.
        let mut nodes = self.nodes.lock().expect("placer nodes");
        for transfer in handle.take_transfers() {
            if let Some(probed) = nodes.get_mut(&transfer.node) {
                let rtt = probed.link.estimate(now).map_or(0.0, |e| e.rtt);
                let direction = if transfer.up {
                    Direction::Up
                } else {
                    Direction::Down
                };
                let seconds = (transfer.seconds - rtt).max(1e-4);
                probed
                    .link
                    .on_transfer(now, direction, transfer.bytes, seconds);
            }
        }
        drop(nodes);
        let wait = if self.scan_second {
            SCAN_PAIR
        } else {
            SCAN_EVERY
        };
        if self.scanned_at.is_none_or(|at| at.elapsed() >= wait) {
            match handle.scan_local_state() {
                Some(scan) => {
                    let compressed = (scan.nonzero as f64 * COMPRESSION_GUESS) as u64;
                    self.planner.profile_mut().set_state_bytes(compressed);
                    if let (true, Some((bytes, over))) = (self.scan_second, scan.changed) {
                        self.rewrite_rate = Some(bytes as f64 / over.as_secs_f64().max(1e-3));
                    }
                    self.scan_second = !self.scan_second;
                    self.scanned_at = Some(Instant::now());
                }
                // Not here: the next scan starts a new pair.
                None => self.scan_second = false,
            }
        }
    }

    /// Follows the gaps between handled messages across the move being watched; once a
    /// message handled after the move's end shows up, the longest gap less the interval
    /// between messages is the pause the move caused, which the planner learns from.
    fn watch_gaps(&mut self, observations: &[crate::worker::Observation]) {
        for seen in observations {
            let handled = seen.posted_at + seen.response;
            if let (Some(watching), Some(last)) = (&mut self.watching, self.last_handled) {
                if handled > watching.started {
                    let gap = handled.saturating_duration_since(last.max(watching.started));
                    watching.longest_gap = watching.longest_gap.max(gap);
                }
                if watching.ended.is_some_and(|ended| handled > ended) {
                    let interval = self.planner.profile().interval().unwrap_or(0.0);
                    let pause = (watching.longest_gap.as_secs_f64() - interval).max(0.0);
                    tracing::debug!(
                        kind = ?watching.kind,
                        modelled_ms = watching.modelled * 1e3,
                        pause_ms = pause * 1e3,
                        "a move's pause, as the messages felt it"
                    );
                    self.planner
                        .on_move_observed(watching.kind, watching.modelled, pause);
                    self.watching = None;
                }
            }
            self.last_handled = Some(handled);
        }
    }

    /// The device and every node, each with its link as measured now.
    fn candidates_at(&mut self, now: f64, here: &str) -> Vec<Candidate> {
        if here != LOCAL {
            // Placed there by someone else: measure it too.
            self.watch(here, false);
        }
        let mut nodes = self.nodes.lock().expect("placer nodes");
        let mut candidates = vec![Candidate::local()];
        for (url, probed) in nodes.iter_mut() {
            probed.carrying = url == here;
            let kind = if probed.cloud {
                PlaceKind::Cloud
            } else {
                PlaceKind::Edge
            };
            let speed = probed.speed.unwrap_or(1.0) / self.device_speed.max(1e-6);
            candidates.push(
                Candidate::node(url, kind, probed.link.estimate(now), speed)
                    .with_module(probed.holds_module),
            );
        }
        candidates
    }
}

impl Drop for AutoPlacer {
    fn drop(&mut self) {
        if self.started {
            self.remember();
        }
        for task in self.tasks.lock().expect("placer tasks").iter() {
            task.abort();
        }
        // Then the thread they ran on stops (`measuring` is dropped after this).
    }
}

/// The candidate id of a place.
fn place_id(place: &Place) -> String {
    match place {
        Place::Local => LOCAL.to_string(),
        Place::Node(url) => url.clone(),
        Place::Relay { to, .. } => to.clone(),
    }
}

/// Adds `url` to the nodes and starts probing it on `runtime`, unless it is there
/// already.
#[allow(clippy::too_many_arguments)]
fn watch(
    runtime: &tokio::runtime::Handle,
    url: &str,
    cloud: bool,
    module: Option<[u8; 32]>,
    options: &AutoOptions,
    nodes: &Shared,
    tasks: &Tasks,
    origin: Instant,
) {
    let mut known = nodes.lock().expect("placer nodes");
    if known.contains_key(url) {
        return;
    }
    let prober = match Prober::new(dial_url(&options.routes, url), Duration::from_secs(2)) {
        Ok(prober) => prober,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    known.insert(
        url.to_string(),
        Probed {
            cloud,
            speed: None,
            link: LinkEstimator::default(),
            carrying: false,
            holds_module: false,
        },
    );
    let task = runtime.spawn(probe(
        url.to_string(),
        prober,
        module,
        options.probe_every,
        nodes.clone(),
        origin,
    ));
    tasks
        .lock()
        .expect("placer tasks")
        .push(task.abort_handle());
}

/// Measures one node until aborted.
async fn probe(
    url: String,
    mut prober: Prober,
    module: Option<[u8; 32]>,
    every: Duration,
    nodes: Shared,
    origin: Instant,
) {
    let now = || origin.elapsed().as_secs_f64();
    let mut module_asked: Option<Instant> = None;
    let mut module_held = false;
    loop {
        let mut next = every;
        match prober.health().await {
            Ok((rtt, health)) => {
                let mut nodes = nodes.lock().expect("placer nodes");
                if let Some(probed) = nodes.get_mut(&url) {
                    probed.link.on_round_trip(now(), rtt.as_secs_f64());
                    probed.speed = health.speed.or(probed.speed);
                    probed.cloud |= health.role == "cloud";
                    if probed.link.suspects_fade() {
                        next = every / SUSPECT_PROBE_FASTER;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%url, "probe: {e}");
                if let Some(probed) = nodes.lock().expect("placer nodes").get_mut(&url) {
                    probed.link.on_failure(now());
                }
                tokio::time::sleep(every).await;
                continue;
            }
        }
        // Whether the node holds the module: asked at first, then every 10 s until it does
        // (another worker of the module, or this one, may bring it).
        if let (Some(hash), false) = (&module, module_held) {
            if module_asked.is_none_or(|at| at.elapsed() >= MODULE_ASK_EVERY) {
                module_asked = Some(Instant::now());
                match prober.holds_module(hash).await {
                    Ok(held) => {
                        module_held = held;
                        if let Some(probed) = nodes.lock().expect("placer nodes").get_mut(&url) {
                            probed.holds_module = held;
                        }
                    }
                    Err(e) => tracing::debug!(%url, "module probe: {e}"),
                }
            }
        }
        for direction in [Direction::Down, Direction::Up] {
            let due = {
                let nodes = nodes.lock().expect("placer nodes");
                nodes.get(&url).and_then(|p| {
                    let rtt = p.link.estimate(now())?.rtt;
                    (!p.carrying && p.link.needs_bandwidth_sample(now(), direction)).then_some(rtt)
                })
            };
            let Some(rtt) = due else { continue };
            let (bytes, took) = match direction {
                Direction::Down => (PROBE_DOWN, prober.down(PROBE_DOWN).await),
                Direction::Up => (PROBE_UP, prober.up(PROBE_UP).await),
            };
            let mut nodes = nodes.lock().expect("placer nodes");
            let Some(probed) = nodes.get_mut(&url) else {
                return;
            };
            match took {
                Ok(took) => {
                    let seconds = (took.as_secs_f64() - rtt).max(1e-4);
                    probed
                        .link
                        .on_transfer(now(), direction, bytes as u64, seconds);
                }
                Err(e) => {
                    tracing::debug!(%url, "bandwidth probe: {e}");
                    probed.link.on_failure(now());
                }
            }
        }
        tokio::time::sleep(next).await;
    }
}

/// Asks the cloud for its edges every `options.discover_every` and probes each new one.
async fn discover(
    cloud: String,
    module: Option<[u8; 32]>,
    options: AutoOptions,
    nodes: Shared,
    tasks: Tasks,
    origin: Instant,
) {
    let connect = WorkerOptions {
        routes: options.routes.clone(),
        client_name: "roam-client placement".into(),
        ..WorkerOptions::default()
    };
    loop {
        match list_edges(&cloud, &connect).await {
            Ok(edges) => {
                for url in edges {
                    watch(
                        &tokio::runtime::Handle::current(),
                        &url,
                        false,
                        module,
                        &options,
                        &nodes,
                        &tasks,
                        origin,
                    );
                }
            }
            Err(e) => tracing::debug!(%cloud, "cannot list the edges: {e}"),
        }
        tokio::time::sleep(options.discover_every).await;
    }
}

/// The URLs of the edges registered with `cloud`.
async fn list_edges(cloud: &str, options: &WorkerOptions) -> Result<Vec<String>, ClientError> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), Connection::open(cloud, options))
        .await
        .map_err(|_| ClientError::Connect {
            url: cloud.to_string(),
            reason: "no answer within 5 s".into(),
        })??;
    conn.send(&Frame::ListNodes).await?;
    let frame = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .map_err(|_| ClientError::Connect {
            url: cloud.to_string(),
            reason: "no node list within 5 s".into(),
        })??;
    let edges = match frame {
        Frame::Nodes { nodes } => nodes
            .into_iter()
            .filter(|n| n.node.role == NodeRole::Edge)
            .map(|n| n.node.url)
            .collect(),
        other => return Err(conn.unexpected(&other, "Nodes")),
    };
    conn.close().await;
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "roam-memory-{name}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_module_is_remembered_apart_from_others_and_bad_files_are_ignored() {
        let dir = scratch("modules");
        let (heavy, other) = ([7u8; 32], [8u8; 32]);
        assert_eq!(Memory::load(&dir, &heavy), None);
        let memory = Memory {
            work_per_message_s: 0.012,
        };
        memory.save(&dir, &heavy).unwrap();
        assert_eq!(Memory::load(&dir, &heavy), Some(memory));
        assert_eq!(Memory::load(&dir, &other), None);
        // Named after the module's hash, as the documentation says.
        let hex: String = heavy.iter().map(|b| format!("{b:02x}")).collect();
        assert!(dir.join(format!("{hex}.json")).is_file());
        // A damaged or nonsensical file is ignored, not trusted.
        std::fs::write(dir.join(format!("{hex}.json")), b"{ not json").unwrap();
        assert_eq!(Memory::load(&dir, &heavy), None);
        std::fs::write(
            dir.join(format!("{hex}.json")),
            br#"{ "work_per_message_s": -1.0 }"#,
        )
        .unwrap();
        assert_eq!(Memory::load(&dir, &heavy), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
