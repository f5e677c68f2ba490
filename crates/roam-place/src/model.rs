//! The cost model: what a worker's messages cost where it runs now, and what they would
//! cost anywhere else.
//!
//! A message at a node takes the round trip, the request up, the handler, and the reply
//! down; locally it takes only the handler. The handler's time at a node is what was seen
//! there (response minus the link's share) or, before that, the local time divided by the
//! node's speed relative to this device. Messages arrive every `interval` seconds; a place
//! whose busiest stage (handler, uplink or downlink) is near that interval makes messages
//! queue, as a queue with steady service does.

use std::collections::BTreeMap;

use crate::estimate::{Direction, Ewma, LinkEstimate};

/// The name of the device itself among the candidates.
pub const LOCAL: &str = "local";

/// What kind of place a candidate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlaceKind {
    /// The device.
    Local,
    /// An edge node.
    Edge,
    /// The cloud node.
    Cloud,
}

/// A place the worker could run.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// [`LOCAL`], or the node's URL.
    pub id: String,
    /// What it is.
    pub kind: PlaceKind,
    /// The device's link to it; `None` for the device itself, and for a node that cannot
    /// be reached now.
    pub link: Option<LinkEstimate>,
    /// How many times faster than the device it runs a handler, before any run there was
    /// seen (from the node's calibration and the device's).
    pub speed: f64,
    /// The node is known to hold the worker's module: a move there sends no module and
    /// compiles nothing (otherwise that is assumed for a node the worker never ran on).
    pub holds_module: bool,
}

impl Candidate {
    /// The device.
    pub fn local() -> Candidate {
        Candidate {
            id: LOCAL.to_string(),
            kind: PlaceKind::Local,
            link: None,
            speed: 1.0,
            holds_module: true,
        }
    }

    /// A node; `link` is `None` when it cannot be reached.
    pub fn node(
        id: impl Into<String>,
        kind: PlaceKind,
        link: Option<LinkEstimate>,
        speed: f64,
    ) -> Candidate {
        Candidate {
            id: id.into(),
            kind,
            link,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
            holds_module: false,
        }
    }

    /// The same, known to hold the worker's module (or not).
    pub fn with_module(mut self, held: bool) -> Candidate {
        self.holds_module = held;
        self
    }

    /// Whether the worker could run there now.
    pub fn is_reachable(&self) -> bool {
        self.kind == PlaceKind::Local || self.link.is_some()
    }
}

/// What was seen of the worker at one node.
#[derive(Clone, Debug)]
struct AtNode {
    /// Seconds from post to the last reply.
    response: Ewma,
    /// The handler's share of it.
    handler: Ewma,
}

/// Handler times are taken as at least this (a message that crosses a link is never free).
const MIN_HANDLER: f64 = 1e-4;

/// The weight of one run in the handler's average time: about a hundred runs, because the
/// work a message takes swings (a scene drops and settles) and a move made on the last
/// few would be undone on the next few.
const HANDLER_WEIGHT: f64 = 0.01;

/// Runs seen on a node before the device's time is derived from them.
const RUNS_FOR_RETURN: u64 = 40;

/// What is known of one worker: how often it gets messages, how large they and its replies
/// are, how long its handler runs here and at each node, and how large its state is.
#[derive(Clone, Debug)]
pub struct WorkerProfile {
    interval: Ewma,
    last_post: Option<f64>,
    /// The time between the last two posts.
    last_gap: Option<f64>,
    request: Ewma,
    reply: Ewma,
    local_handler: Ewma,
    /// The share of the time between posts the handler ran here, over the last few runs:
    /// near 1, this device cannot keep up (the application's messages wait before they
    /// are even posted, where no interval shows it).
    local_busy: Ewma,
    at_node: BTreeMap<String, AtNode>,
    /// The node of the latest run seen, `None` when it ran here.
    latest_node: Option<String>,
    /// The node of the latest reply seen from one, and when it came.
    last_node_reply: Option<(String, f64)>,
    state_bytes: u64,
    module_bytes: u64,
}

impl Default for WorkerProfile {
    fn default() -> Self {
        WorkerProfile {
            interval: Ewma::new(0.1),
            last_post: None,
            last_gap: None,
            request: Ewma::new(0.2),
            reply: Ewma::new(0.2),
            local_handler: Ewma::new(HANDLER_WEIGHT),
            local_busy: Ewma::new(0.2),
            at_node: BTreeMap::new(),
            latest_node: None,
            last_node_reply: None,
            state_bytes: 0,
            module_bytes: 0,
        }
    }
}

impl WorkerProfile {
    /// The application posted a message of `bytes` at `now`.
    pub fn on_post(&mut self, now: f64, bytes: u64) {
        self.last_gap = None;
        if let Some(last) = self.last_post {
            if now >= last {
                self.interval.add(now - last);
                self.last_gap = Some(now - last);
            }
        }
        self.last_post = Some(now);
        self.request.add(bytes as f64);
    }

    /// The handler ran here for `seconds` (for the message posted last) and replied
    /// `reply_bytes` in all.
    pub fn on_local_run(&mut self, seconds: f64, reply_bytes: u64) {
        self.local_handler.add(seconds.max(MIN_HANDLER));
        if let Some(gap) = self.last_gap.filter(|g| *g > 0.0) {
            self.local_busy.add((seconds / gap).min(2.0));
        }
        self.reply.add(reply_bytes as f64);
        self.latest_node = None;
        self.last_node_reply = None;
    }

    /// A message to the node `id` was answered `response` seconds after it was posted,
    /// with `reply_bytes` in all, over `link`: the link's share is taken off to learn the
    /// handler's time there.
    ///
    /// `done` is when its last reply came (on the clock of [`WorkerProfile::on_post`]), if
    /// known. A message that arrived while the node still ran the one before waited for
    /// it, and its response holds that wait: the node began it as the one before ended,
    /// so the time between their last replies is its handler's (the smaller of the two
    /// figures is taken). Without it a crowded node's backlog would be taken for work, and
    /// every other place predicted from that work as well.
    pub fn on_node_reply(
        &mut self,
        id: &str,
        done: Option<f64>,
        response: f64,
        request_bytes: u64,
        reply_bytes: u64,
        link: &LinkEstimate,
    ) {
        if !(response.is_finite() && response >= 0.0) {
            return;
        }
        self.reply.add(reply_bytes as f64);
        let network = link.rtt
            + link.transfer(Direction::Up, request_bytes as f64)
            + link.transfer(Direction::Down, reply_bytes as f64);
        let mut handler = response - network;
        if let (Some(done), Some((last_id, last_done))) = (done, &self.last_node_reply) {
            if last_id == id && done >= *last_done {
                handler = handler.min(done - last_done);
            }
        }
        self.last_node_reply = done.map(|d| (id.to_string(), d));
        let at = self
            .at_node
            .entry(id.to_string())
            .or_insert_with(|| AtNode {
                response: Ewma::new(0.3),
                handler: Ewma::new(HANDLER_WEIGHT),
            });
        at.response.add(response);
        at.handler.add(handler.max(MIN_HANDLER));
        if self.latest_node.as_deref() != Some(id) {
            self.latest_node = Some(id.to_string());
        }
    }

    /// The handler's time here, one standard deviation above its mean: its heavier
    /// stretches, by which a device is judged when it must keep up with all of them.
    pub fn heavy_local_handler(&self) -> Option<f64> {
        Some(self.local_handler.mean()? + self.local_handler.std_dev())
    }

    /// The handler took about `seconds` here in an earlier run of the same module (what
    /// the device remembers of it): taken as the average of `runs` runs until as many
    /// new ones outweigh it, so a worker known to be heavy can leave before its first
    /// heavy messages are measured.
    pub fn recall_local_handler(&mut self, seconds: f64, runs: u64) {
        if self.local_handler.samples() == 0 && seconds.is_finite() && seconds > 0.0 {
            self.local_handler.prime(seconds.max(MIN_HANDLER), runs);
        }
    }

    /// The worker's state is `bytes` large as it travels (compressed, zero chunks left out).
    pub fn set_state_bytes(&mut self, bytes: u64) {
        self.state_bytes = bytes;
    }

    /// The state's size as it travels.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes
    }

    /// The worker's module is `bytes` large: a node that never ran the worker may need it
    /// sent and compiled.
    pub fn set_module_bytes(&mut self, bytes: u64) {
        self.module_bytes = bytes;
    }

    /// The module's size.
    pub fn module_bytes(&self) -> u64 {
        self.module_bytes
    }

    /// Seconds between two messages, once two were posted.
    pub fn interval(&self) -> Option<f64> {
        self.interval.mean().filter(|i| *i > 0.0)
    }

    /// Half the squared coefficient of variation of the time between posts plus that of
    /// the handler's time here: how bursty the work is (0 for a metronome).
    pub fn variability(&self) -> f64 {
        let cv2 = |e: &Ewma| match e.mean() {
            Some(m) if m > 0.0 => (e.std_dev() / m).powi(2),
            _ => 1.0,
        };
        ((cv2(&self.interval) + cv2(&self.local_handler)) / 2.0).min(4.0)
    }

    /// The share of the time between posts the handler ran here lately (while the worker
    /// ran here).
    pub fn local_busy(&self) -> Option<f64> {
        self.local_busy.mean()
    }

    /// Whether the latest run seen was here.
    pub fn runs_here(&self) -> bool {
        self.latest_node.is_none()
    }

    /// Seconds since the last post, at `now`.
    pub fn idle_for(&self, now: f64) -> Option<f64> {
        self.last_post.map(|last| (now - last).max(0.0))
    }

    /// The handler's time here, measured or (when it never ran here) derived from a node's
    /// time and speed (`speeds(id)`: how many times faster than this device). What other
    /// nodes are predicted from: a node that slows down (crowded) does not make the work
    /// look larger.
    pub fn local_handler(&self, speeds: &dyn Fn(&str) -> f64) -> Option<f64> {
        self.local_handler.mean().or_else(|| {
            self.at_node
                .iter()
                .filter_map(|(id, at)| Some(at.handler.mean()? * speeds(id)))
                .next()
        })
    }

    /// The handler's time here if the worker came back now: while it runs on a node,
    /// derived from that node's time and speed, because the work a message takes changes
    /// as the worker goes on (a scene fills, a document grows) and the time measured here
    /// before it left grows stale. (A node that slowed down makes coming back look worse
    /// than it is; other nodes are predicted from [`WorkerProfile::local_handler`].)
    ///
    /// The node's time is taken one standard deviation above its mean: a worker whose work
    /// swings (a scene drops and settles) comes back only if this slower device would keep
    /// up with its heavier stretches too, which a mean over a light one hides. For the same
    /// reason every node the worker ran on long enough counts, and the heaviest says: a
    /// handoff starts the new node's average afresh, and a light stretch there alone
    /// would bring the worker back just before the next heavy one.
    pub fn local_handler_now(&self, speeds: &dyn Fn(&str) -> f64) -> Option<f64> {
        if self.latest_node.is_none() {
            return self.local_handler(speeds);
        }
        let derived = self
            .at_node
            .iter()
            // A few runs just after a move say little of the work.
            .filter(|(_, at)| at.handler.samples() >= RUNS_FOR_RETURN)
            .filter_map(|(id, at)| Some((at.handler.mean()? + at.handler.std_dev()) * speeds(id)))
            .reduce(f64::max);
        derived.or_else(|| self.local_handler(speeds))
    }

    /// The handler's time seen at node `id`, with how many samples.
    pub fn node_handler(&self, id: &str) -> Option<(f64, u64)> {
        let at = self.at_node.get(id)?;
        Some((at.handler.mean()?, at.handler.samples()))
    }

    /// The response time seen at node `id` (post to reply), with how many samples.
    pub fn node_response(&self, id: &str) -> Option<(f64, u64)> {
        let at = self.at_node.get(id)?;
        Some((at.response.mean()?, at.response.samples()))
    }

    /// Average request bytes.
    pub fn request_bytes(&self) -> f64 {
        self.request.mean().unwrap_or(0.0)
    }

    /// Average reply bytes (all replies of one message).
    pub fn reply_bytes(&self) -> f64 {
        self.reply.mean().unwrap_or(0.0)
    }
}

/// What the model predicts for one candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// The candidate.
    pub id: String,
    /// Seconds from post to reply, queueing included.
    pub latency: f64,
    /// The handler's seconds there.
    pub handler: f64,
    /// The busiest stage's share of the time between messages (1 or more: messages pile up).
    pub utilisation: f64,
    /// Seconds a move there would pause the worker (0 where it runs now).
    pub stall: f64,
    /// The same before the correction learned from the moves seen
    /// ([`crate::Planner::on_move_observed`]).
    pub stall_modelled: f64,
    /// How likely the link there is to be lost soon (0 to 1), and charged for in
    /// `latency`; 0 for the device.
    pub loss_risk: f64,
}

/// The mean wait in a queue whose busiest stage takes `service` seconds at utilisation
/// `rho`, where `variability` is half the sum of the squared coefficients of variation of
/// the arrivals and the service (Kingman's approximation: 0 for a metronome, 1 for
/// random arrivals and service). From [`SATURATION`] on, messages pile up: the wait grows with the
/// backlog a horizon of `horizon` seconds would build, so an overloaded place still
/// compares by how overloaded it is.
pub(crate) fn queue_wait(service: f64, rho: f64, variability: f64, horizon: f64) -> f64 {
    let kingman = |rho: f64| service * rho / (1.0 - rho) * variability;
    if rho < SATURATION {
        kingman(rho)
    } else {
        kingman(SATURATION)
            + service * 10.0 * (rho - SATURATION)
            + (1.0 - 1.0 / rho).max(0.0) * horizon / 2.0
    }
}

/// The utilisation from which a place is taken as not keeping up: the queueing model
/// leaves Kingman's curve there ([`queue_wait`]), and a device whose handler runs this
/// share of the time between posts is taken as overloaded.
pub(crate) const SATURATION: f64 = 0.95;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_handler_time_is_its_response_less_the_link() {
        let mut profile = WorkerProfile::default();
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        for _ in 0..10 {
            // 10 ms round trip, 12.5 KB up (10 ms), 45 KB down (10 ms), 20 ms handler.
            profile.on_node_reply("ws://a", None, 0.050, 12_500, 45_000, &link);
        }
        let (handler, samples) = profile.node_handler("ws://a").unwrap();
        assert!((handler - 0.020).abs() < 1e-9, "{handler}");
        assert_eq!(samples, 10);
        // Never ran here: the local time follows from the node's speed.
        assert!((profile.local_handler(&|_| 4.0).unwrap() - 0.080).abs() < 1e-9);
        profile.on_local_run(0.070, 45_000);
        assert_eq!(profile.local_handler(&|_| 4.0), Some(0.070));
        // Back on the node, whose runs now take longer: coming back is predicted from
        // them (once there are enough), other nodes still from the time measured here.
        for _ in 0..40 {
            profile.on_node_reply("ws://a", None, 0.070, 12_500, 45_000, &link);
        }
        let now = profile.local_handler_now(&|_| 4.0).unwrap();
        assert!(now > 0.100, "{now}");
        assert_eq!(profile.local_handler(&|_| 4.0), Some(0.070));
    }

    #[test]
    fn a_backlog_at_a_node_is_not_taken_for_work() {
        // A crowded node takes 74 ms a message and gets one every 50 ms: each waits
        // longer than the one before, and its response grows by 24 ms a message.
        let mut profile = WorkerProfile::default();
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        let network = link.rtt
            + link.transfer(Direction::Up, 64.0)
            + link.transfer(Direction::Down, 28_000.0);
        let mut free_at = 0.0_f64;
        let mut last_response = 0.0;
        for i in 0..200 {
            let posted = i as f64 * 0.050;
            profile.on_post(posted, 64);
            free_at = free_at.max(posted + network) + 0.074;
            let done = free_at;
            last_response = done - posted;
            profile.on_node_reply("ws://a", Some(done), done - posted, 64, 28_000, &link);
        }
        assert!(last_response > 4.0, "{last_response}");
        let (handler, _) = profile.node_handler("ws://a").unwrap();
        assert!((handler - 0.074).abs() < 0.002, "{handler}");
        // Without the times of the replies, the wait is counted as the handler's.
        let mut blind = WorkerProfile::default();
        let mut free_at = 0.0_f64;
        for i in 0..200 {
            let posted = i as f64 * 0.050;
            free_at = free_at.max(posted + network) + 0.074;
            blind.on_node_reply("ws://a", None, free_at - posted, 64, 28_000, &link);
        }
        assert!(blind.node_handler("ws://a").unwrap().0 > 1.0);
    }

    #[test]
    fn the_interval_is_the_time_between_posts() {
        let mut profile = WorkerProfile::default();
        assert_eq!(profile.interval(), None);
        for i in 0..30 {
            profile.on_post(i as f64 * 0.05, 100);
        }
        assert!((profile.interval().unwrap() - 0.05).abs() < 1e-9);
        assert_eq!(profile.request_bytes(), 100.0);
        assert!((profile.idle_for(2.0).unwrap() - (2.0 - 29.0 * 0.05)).abs() < 1e-9);
    }

    #[test]
    fn waiting_grows_without_bound_as_a_place_saturates() {
        assert_eq!(queue_wait(0.01, 0.0, 1.0, 30.0), 0.0);
        assert!((queue_wait(0.01, 0.5, 1.0, 30.0) - 0.01).abs() < 1e-12);
        // Steady arrivals and service hardly wait below saturation.
        assert!(queue_wait(0.01, 0.5, 0.01, 30.0) < 0.001);
        let mut last = 0.0;
        for rho in [0.6, 0.8, 0.9, 0.95, 1.0, 1.5, 3.0] {
            let wait = queue_wait(0.01, rho, 0.01, 30.0);
            assert!(wait > last, "{rho}: {wait} <= {last}");
            last = wait;
        }
        // Twice the load it can take: half the messages of a 30 s horizon pile up.
        assert!(queue_wait(0.01, 2.0, 0.0, 30.0) > 7.0);
    }
}
