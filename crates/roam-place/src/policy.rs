//! The decision: stay, or move to the candidate whose gain over the horizon most exceeds
//! the pause the move costs.
//!
//! Gain and cost are both counted in seconds of latency summed over the messages they
//! touch. Moving to a place `d` seconds faster per message gains `d · horizon / interval`;
//! a move that pauses the worker `s` seconds delays the `s / interval` messages that
//! arrive meanwhile by `s / 2` on average, `s² / (2 · interval)` in all. Hysteresis keeps
//! a worker from bouncing: a move must also be [`PlannerSettings::margin`] faster than
//! staying, and none is made within [`PlannerSettings::dwell`] seconds of the last.

use crate::estimate::{Direction, Ewma, LinkEstimate};
use crate::model::{
    queue_wait, Candidate, PlaceKind, Prediction, WorkerProfile, LOCAL, SATURATION,
};

/// Bytes of wasm a node compiles per second, for a first move to a node that lacks the
/// module (Cranelift on the reference core compiles the 2 MB physics worker in about a
/// second).
const COMPILE_BYTES_PER_SECOND: f64 = 2.0e6;

/// The risk of losing every node, when all links fade at once, from which the worker
/// goes home (see [`Planner::decide`]).
const COVERAGE_LOST: f64 = 0.5;

/// Seconds a fading link is watched before the worker leaves it for another node: long
/// enough for the other links' probes to show whether they fade too.
const FADE_CONFIRM: f64 = 1.5;

/// Seconds for which a node the worker left is predicted no faster than it was then.
const DEPARTURE_REMEMBERED: f64 = 30.0;

/// The overload assumed of a device whose handler runs [`SATURATION`] of the time between
/// posts or more.
const SATURATION_OVERLOAD: f64 = 0.1;

/// What an application requires of placement; always honoured.
#[derive(Clone, Debug, PartialEq)]
pub struct Requirements {
    /// Seconds: places predicted to answer later are not chosen, unless none is predicted
    /// to meet it (then the fastest is).
    pub latency_budget: Option<f64>,
    /// Seconds: moves predicted to pause the worker longer are not made, except away from
    /// a place that cannot be reached or is not allowed.
    pub max_move_stall: Option<f64>,
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

/// How the planner weighs gains against moves.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannerSettings {
    /// Seconds ahead over which a faster place's gain is counted. Default 30.
    pub horizon: f64,
    /// A move must make messages at least this fraction faster. Default 0.15.
    pub margin: f64,
    /// And at least this many seconds faster. Default 0.002.
    pub min_gain: f64,
    /// Seconds after a move during which no other is made (unless the worker's place
    /// cannot be reached). Default 3.
    pub dwell: f64,
    /// Bytes per second assumed between two nodes, which the device cannot measure.
    /// Default 5 MB/s (40 Mbit/s).
    pub node_to_node: f64,
    /// Runs seen at a node before they replace the prediction from its speed. Default 3.
    pub min_samples: u64,
    /// A worker without a message for this many seconds is idle and not moved. Default 10.
    pub idle_after: f64,
    /// Seconds between the recovery points the client takes of a worker on a node (its
    /// checkpoints): a node lost takes the worker back to the last one, and the messages
    /// since are handled again on the device. Default 10.
    pub recovery_every: f64,
    /// Seconds before a lost node is known to be lost (a silent probe). Default 2.
    pub loss_detection: f64,
}

impl Default for PlannerSettings {
    fn default() -> Self {
        PlannerSettings {
            horizon: 30.0,
            margin: 0.15,
            min_gain: 0.002,
            dwell: 3.0,
            node_to_node: 5.0e6,
            min_samples: 3,
            idle_after: 10.0,
            recovery_every: 10.0,
            loss_detection: 2.0,
        }
    }
}

/// What the planner decided, with the predictions it decided from.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The worker stays where it is.
    Stay {
        /// Why.
        reason: String,
        /// Every candidate it could predict.
        predictions: Vec<Prediction>,
    },
    /// The worker should move.
    Move {
        /// The candidate's id.
        to: String,
        /// Why.
        reason: String,
        /// Every candidate it could predict.
        predictions: Vec<Prediction>,
    },
}

impl Decision {
    /// Where to move, if anywhere.
    pub fn target(&self) -> Option<&str> {
        match self {
            Decision::Move { to, .. } => Some(to),
            Decision::Stay { .. } => None,
        }
    }

    /// Why, in words.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Stay { reason, .. } | Decision::Move { reason, .. } => reason,
        }
    }

    /// The predictions it was made from.
    pub fn predictions(&self) -> &[Prediction] {
        match self {
            Decision::Stay { predictions, .. } | Decision::Move { predictions, .. } => predictions,
        }
    }
}

/// Decides where one worker runs. See the module's documentation for the rule.
#[derive(Clone, Debug)]
pub struct Planner {
    settings: PlannerSettings,
    requirements: Requirements,
    profile: WorkerProfile,
    current: String,
    last_move_at: Option<f64>,
    /// Nodes the worker ran on: they hold its module, compiled.
    visited: std::collections::BTreeSet<String>,
    /// Observed over modelled pause, per [`MoveKind`].
    stall_factor: [Ewma; 3],
    /// Nodes the worker left: when, and the response time it had there then.
    departures: std::collections::BTreeMap<String, (f64, f64)>,
}

/// The kinds of move whose pause the planner learns apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoveKind {
    /// Device to node.
    Offload = 0,
    /// Node to node.
    Handoff = 1,
    /// Node to device.
    Return = 2,
}

impl MoveKind {
    /// The kind of a move from `from` to `to` (candidate ids), if it is a move.
    pub fn between(from: &str, to: &str) -> Option<MoveKind> {
        match (from == LOCAL, to == LOCAL) {
            _ if from == to => None,
            (true, false) => Some(MoveKind::Offload),
            (false, true) => Some(MoveKind::Return),
            (false, false) => Some(MoveKind::Handoff),
            (true, true) => None,
        }
    }
}

impl Planner {
    /// A planner for a worker that runs on the device.
    pub fn new(settings: PlannerSettings, requirements: Requirements) -> Planner {
        Planner {
            settings,
            requirements,
            profile: WorkerProfile::default(),
            current: LOCAL.to_string(),
            last_move_at: None,
            visited: Default::default(),
            stall_factor: [Ewma::new(0.5); 3],
            departures: Default::default(),
        }
    }

    /// What is known of the worker.
    pub fn profile(&self) -> &WorkerProfile {
        &self.profile
    }

    /// Where measurements go.
    pub fn profile_mut(&mut self) -> &mut WorkerProfile {
        &mut self.profile
    }

    /// The requirements.
    pub fn requirements(&self) -> &Requirements {
        &self.requirements
    }

    /// Where the worker runs, as far as the planner knows.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// The worker runs at `place` since `now` (a move ended, or the client took it back
    /// from a node it lost).
    pub fn moved(&mut self, now: f64, place: &str) {
        if place != self.current && self.current != LOCAL {
            if let Some((response, n)) = self.profile.node_response(&self.current) {
                if n >= self.settings.min_samples {
                    self.departures
                        .insert(self.current.clone(), (now, response));
                }
            }
        }
        if place != self.current {
            self.current = place.to_string();
            self.last_move_at = Some(now);
        }
        if place != LOCAL {
            self.visited.insert(place.to_string());
        }
    }

    /// A move ended at `now` with the worker at `place`: the dwell time counts from here
    /// (a move can take longer than the dwell time itself).
    pub fn arrived(&mut self, now: f64, place: &str) {
        self.current = place.to_string();
        self.last_move_at = Some(now);
        if place != LOCAL {
            self.visited.insert(place.to_string());
        }
    }

    /// The prediction for `candidate` with the worker at `current` (`None` when the
    /// current place is not among the candidates or cannot be reached), or `None` when
    /// nothing is known yet of the handler's time.
    pub fn predict(
        &self,
        candidate: &Candidate,
        current: Option<&Candidate>,
        candidates: &[Candidate],
    ) -> Option<Prediction> {
        let speed_of = |id: &str| {
            candidates
                .iter()
                .find(|c| c.id == id)
                .map_or(1.0, |c| c.speed)
        };
        let local = self.profile.local_handler(&speed_of);
        let handler = match candidate.kind {
            PlaceKind::Local => self.profile.local_handler_now(&speed_of)?,
            _ => match self.profile.node_handler(&candidate.id) {
                // Seen there, but the node may have slowed down since (crowded: it says
                // so in its speed); where it runs now, its response time tells.
                Some((h, n)) if n >= self.settings.min_samples => {
                    h.max(local.map_or(0.0, |l| l / candidate.speed))
                }
                _ => local? / candidate.speed,
            },
        };
        let request = self.profile.request_bytes();
        let reply = self.profile.reply_bytes();
        let (network, up, down) = match &candidate.link {
            Some(link) => {
                let up = link.transfer(Direction::Up, request);
                let down = link.transfer(Direction::Down, reply);
                (link.rtt + up + down, up, down)
            }
            None => (0.0, 0.0, 0.0),
        };
        let service = handler.max(up).max(down);
        let mut utilisation = self.profile.interval().map_or(0.0, |i| service / i);
        if candidate.kind == PlaceKind::Local && self.profile.runs_here() {
            // A device that cannot keep up holds the application's messages back, and the
            // time between posts shrinks to the handler's: what shows it is the share of
            // the time it runs the handler.
            // How much the application holds back cannot be seen: a device busy nearly all
            // the time is taken as overloaded by a tenth, whose backlog over the horizon
            // is about a second.
            let busy = self.profile.local_busy().unwrap_or(0.0);
            if busy >= SATURATION {
                utilisation = utilisation.max(busy + SATURATION_OVERLOAD);
            }
        }
        let mut latency = network
            + handler
            + queue_wait(
                service,
                utilisation,
                self.profile.variability(),
                self.settings.horizon,
            );
        let here = candidate.id == self.current;
        if here && candidate.kind != PlaceKind::Local {
            // What the messages take there now is measured, queueing and all.
            if let Some((seen, n)) = self.profile.node_response(&candidate.id) {
                if n >= self.settings.min_samples {
                    latency = seen;
                }
            }
        }
        let (stall, stall_modelled) = if here {
            (0.0, 0.0)
        } else {
            self.stall(candidate, current)
        };
        Some(Prediction {
            id: candidate.id.clone(),
            latency,
            handler,
            utilisation,
            stall,
            stall_modelled,
            loss_risk: 0.0,
        })
    }

    /// Charges each node whose link fades with what losing it would cost, weighted by how
    /// likely that is ([`LinkEstimate::loss_risk`]); returns the risk when every node's
    /// link fades at once.
    ///
    /// A node lost with the worker on it costs two things. The messages wait while the
    /// loss is detected and the device handles again those since the last recovery point
    /// (half of [`PlannerSettings::recovery_every`] on average): a stall `s`, which costs
    /// `s² / (2 · interval)` over the horizon like a move's pause. And the messages after
    /// it run on the device until the worker can leave again (the stall and the dwell
    /// time) at the device's latency instead of the node's.
    ///
    /// When every node's link fades at once, the device itself is losing coverage (a
    /// tunnel, a lift), not moving from one cell to the next: each node is then taken to
    /// be as much at risk as the most faded one.
    fn charge_loss_risk(&self, predictions: &mut [Prediction], candidates: &[Candidate]) -> f64 {
        let risk_of = |id: &str| {
            candidates
                .iter()
                .find(|c| c.id == id)
                .and_then(|c| c.link.as_ref())
                .map(LinkEstimate::loss_risk)
        };
        let risks: Vec<Option<f64>> = predictions.iter().map(|p| risk_of(&p.id)).collect();
        let nodes = risks.iter().flatten().count();
        let all_fading = nodes >= 2 && risks.iter().flatten().all(|r| *r > 0.0);
        let worst = risks.iter().flatten().fold(0.0_f64, |a, b| a.max(*b));
        let (Some(local), Some(interval)) = (
            predictions.iter().find(|p| p.id == LOCAL).cloned(),
            self.profile.interval(),
        ) else {
            return 0.0;
        };
        let replayed = self.settings.recovery_every / 2.0 / interval * local.handler;
        let stall = self.settings.loss_detection + replayed;
        let stall_cost = stall * stall / (2.0 * self.settings.horizon);
        let on_device =
            (stall + self.settings.dwell).min(self.settings.horizon) / self.settings.horizon;
        for (p, risk) in predictions.iter_mut().zip(risks) {
            let Some(risk) = risk else { continue };
            let risk = if all_fading { worst } else { risk };
            if risk <= 0.0 {
                continue;
            }
            let after = (local.latency - p.latency).max(0.0) * on_device;
            p.loss_risk = risk;
            p.latency += risk * (stall_cost + after);
        }
        if all_fading {
            worst
        } else {
            0.0
        }
    }

    /// Seconds a move from `current` to `to` pauses the worker: its state crosses the
    /// slowest link on the way once (pre-copy sends most of it while the worker runs, but
    /// a busy worker dirties it again), plus the round trips to stop and start it.
    /// Also returns the model's figure before the correction learned from moves seen.
    fn stall(&self, to: &Candidate, current: Option<&Candidate>) -> (f64, f64) {
        let state = self.profile.state_bytes() as f64;
        // A node the worker never ran on may lack its module: it travels, and compiles.
        let (module, compile) =
            if to.kind != PlaceKind::Local && !to.holds_module && !self.visited.contains(&to.id) {
                let bytes = self.profile.module_bytes() as f64;
                (bytes, bytes / COMPILE_BYTES_PER_SECOND)
            } else {
                (0.0, 0.0)
            };
        let from_link = current.map(|c| c.link.as_ref());
        match (from_link, &to.link) {
            // From the device, or from a place that is gone (the client has it back).
            (None | Some(None), Some(link)) => self.scaled(
                MoveKind::Offload,
                link.rtt + link.transfer(Direction::Up, state + module) + compile,
            ),
            (Some(Some(link)), None) => self.scaled(
                MoveKind::Return,
                link.rtt + link.transfer(Direction::Down, state),
            ),
            (Some(Some(a)), Some(b)) => self.scaled(
                MoveKind::Handoff,
                a.rtt + (state + module) / self.settings.node_to_node + compile + b.rtt,
            ),
            (_, None) => (0.0, 0.0),
        }
    }

    /// `modelled` seconds of pause, corrected by what moves of `kind` were seen to cost,
    /// and as modelled.
    fn scaled(&self, kind: MoveKind, modelled: f64) -> (f64, f64) {
        let factor = self.stall_factor[kind as usize].mean().unwrap_or(1.0);
        (modelled * factor, modelled)
    }

    /// A move of `kind`, modelled to pause the worker `modelled` seconds
    /// ([`Prediction::stall_modelled`]), paused it `observed`: later predictions of that
    /// kind of move follow what is seen (the model cannot know how much pre-copy hides,
    /// which depends on how fast the worker dirties its state where it runs).
    pub fn on_move_observed(&mut self, kind: MoveKind, modelled: f64, observed: f64) {
        if modelled > 1e-3 && observed.is_finite() && observed >= 0.0 {
            let factor = (observed / modelled).clamp(0.1, 3.0);
            self.stall_factor[kind as usize].add(factor);
        }
    }

    /// Decides, at `now`, among `candidates` (which should include the device, and the
    /// current place even when it cannot be reached).
    pub fn decide(&self, now: f64, candidates: &[Candidate]) -> Decision {
        let allowed = |c: &Candidate| {
            c.is_reachable()
                && (self.requirements.allow_cloud || c.kind != PlaceKind::Cloud)
                && (!self.requirements.stay_local || c.kind == PlaceKind::Local)
        };
        let current = candidates
            .iter()
            .find(|c| c.id == self.current)
            .filter(|c| allowed(c));
        let mut predictions: Vec<Prediction> = candidates
            .iter()
            .filter(|c| allowed(c))
            .filter_map(|c| self.predict(c, current, candidates))
            .collect();
        let coverage_fading = self.charge_loss_risk(&mut predictions, candidates);
        for p in predictions.iter_mut().filter(|p| p.id != self.current) {
            // A node just left is taken to answer as it did when the worker left it,
            // until [`DEPARTURE_REMEMBERED`] has passed: what made the worker leave (a
            // crowded CPU, a fading link) shows in its speed and its probes only later,
            // and moving straight back would be undone at once.
            if let Some((at, response)) = self.departures.get(&p.id) {
                if now - at < DEPARTURE_REMEMBERED {
                    p.latency = p.latency.max(*response);
                }
            }
        }
        let stay = |reason: String| Decision::Stay {
            reason,
            predictions: predictions.clone(),
        };
        let go = |to: &str, reason: String| Decision::Move {
            to: to.to_string(),
            reason,
            predictions: predictions.clone(),
        };

        let Some(current) = current else {
            // Not allowed here any more, or unreachable: leave for the best place allowed,
            // the device if nothing is known.
            let why = format!("{} is not reachable or not allowed", self.current);
            let best = self.best_within_budget(&predictions);
            return match best {
                Some(p) => go(
                    &p.id,
                    format!("{why}; {} is predicted at {}", p.id, ms(p.latency)),
                ),
                None if self.current != LOCAL => go(LOCAL, why),
                None => stay(why),
            };
        };
        let Some(interval) = self.profile.interval() else {
            return stay("too few messages yet to predict".into());
        };
        if self
            .profile
            .idle_for(now)
            .is_some_and(|idle| idle > self.settings.idle_after.max(20.0 * interval))
        {
            return stay("the worker is idle".into());
        }
        let Some(here) = predictions.iter().find(|p| p.id == current.id) else {
            return stay("nothing is known yet of the handler's time".into());
        };
        if coverage_fading >= COVERAGE_LOST && here.id != LOCAL {
            // The device is about to lose every node: home while the state can still
            // come back, dwell time or not. (A worker at home is not held there: a busy
            // device reads its probes late, which can look like every link fading; the
            // risk charged to each node weighs a real fade.)
            let why = format!(
                "every node's link fades at once (loss risk {:.0} %): the device is losing coverage",
                coverage_fading * 100.0
            );
            let local = predictions.iter().find(|p| p.id == LOCAL);
            let stall_allowed = |p: &Prediction| {
                self.requirements
                    .max_move_stall
                    .is_none_or(|max| p.stall <= max)
            };
            return match local {
                Some(local) if stall_allowed(local) => go(
                    LOCAL,
                    format!("{why}; home before it does (a {} pause)", ms(local.stall)),
                ),
                _ => stay(why),
            };
        }
        if self
            .last_move_at
            .is_some_and(|at| now - at < self.settings.dwell)
        {
            return stay(format!("moved less than {} s ago", self.settings.dwell));
        }
        if let Some(fading_for) = current
            .link
            .as_ref()
            .filter(|l| l.loss_risk() > 0.0 && l.fading_for < FADE_CONFIRM)
            .map(|l| l.fading_for)
        {
            // Whether the others fade too shows a probe or two later: moving to one of
            // them now could be moving to a link about to go as well.
            return stay(format!(
                "the link here began to fade {} ago; waiting to see whether the others do",
                ms(fading_for)
            ));
        }

        let budget = self.requirements.latency_budget;
        let any_meets_budget = budget.is_some_and(|b| predictions.iter().any(|p| p.latency <= b));
        let over_budget = budget.is_some_and(|b| here.latency > b) && any_meets_budget;
        let mut best: Option<(&Prediction, f64)> = None;
        for p in predictions.iter().filter(|p| p.id != here.id) {
            if any_meets_budget && budget.is_some_and(|b| p.latency > b) {
                continue;
            }
            if self
                .requirements
                .max_move_stall
                .is_some_and(|max| p.stall > max)
            {
                continue;
            }
            let faster = here.latency - p.latency;
            let gain = faster * self.settings.horizon / interval;
            let cost = p.stall * p.stall / (2.0 * interval);
            let net = gain - cost;
            let clear = faster >= self.settings.min_gain
                && p.latency <= here.latency * (1.0 - self.settings.margin)
                && net > 0.0;
            if (clear || over_budget) && best.is_none_or(|(_, n)| net > n) {
                best = Some((p, net));
            }
        }
        match best {
            Some((p, net)) => go(
                &p.id,
                format!(
                    "{} is predicted at {} a message against {} here{}; the move pauses it about {} ({} s of latency saved over {} s)",
                    p.id,
                    ms(p.latency),
                    ms(here.latency),
                    if here.loss_risk > 0.0 {
                        format!(" (its link fading: loss risk {:.0} %)", here.loss_risk * 100.0)
                    } else {
                        String::new()
                    },
                    ms(p.stall),
                    (net * 10.0).round() / 10.0,
                    self.settings.horizon
                ),
            ),
            None => {
                let others: Vec<String> = predictions
                    .iter()
                    .filter(|p| p.id != here.id)
                    .map(|p| {
                        let fading = if p.loss_risk > 0.0 {
                            format!(", its link fading: loss risk {:.0} %", p.loss_risk * 100.0)
                        } else {
                            String::new()
                        };
                        format!("{} {} (a {} pause{fading})", p.id, ms(p.latency), ms(p.stall))
                    })
                    .collect();
                stay(format!(
                    "{} a message here; no move pays{}{}",
                    ms(here.latency),
                    if others.is_empty() { "" } else { ": " },
                    others.join(", ")
                ))
            }
        }
    }

    /// The fastest prediction within the latency budget, or the fastest if none meets it.
    fn best_within_budget<'p>(&self, predictions: &'p [Prediction]) -> Option<&'p Prediction> {
        let fastest = |ps: &mut dyn Iterator<Item = &'p Prediction>| {
            ps.min_by(|a, b| a.latency.total_cmp(&b.latency))
        };
        let within = self
            .requirements
            .latency_budget
            .and_then(|b| fastest(&mut predictions.iter().filter(|p| p.latency <= b)));
        within.or_else(|| fastest(&mut predictions.iter()))
    }
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EDGE: &str = "ws://edge";
    const CLOUD: &str = "ws://cloud";

    /// A device 4× slower than the nodes, a worker taking 80 ms here, a message every
    /// 100 ms for 10 s, 28 KB replies and 1 MB of state.
    fn busy_planner(requirements: Requirements) -> Planner {
        let mut planner = Planner::new(PlannerSettings::default(), requirements);
        for i in 0..100 {
            planner.profile_mut().on_post(i as f64 * 0.1, 64);
            // The quota a slow device runs under makes its handler's time vary.
            let handler = if i % 2 == 0 { 0.060 } else { 0.100 };
            planner.profile_mut().on_local_run(handler, 28_000);
        }
        planner.profile_mut().set_state_bytes(1 << 20);
        planner
    }

    fn edge(rtt: f64) -> Candidate {
        Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(rtt, 1.25e6, 4.5e6)),
            4.0,
        )
    }

    fn cloud() -> Candidate {
        Candidate::node(
            CLOUD,
            PlaceKind::Cloud,
            Some(LinkEstimate::known(0.050, 1.25e6, 4.5e6)),
            4.0,
        )
    }

    #[test]
    fn a_slow_worker_goes_to_the_near_edge_and_not_to_the_far_cloud() {
        let planner = busy_planner(Requirements::default());
        let d = planner.decide(10.0, &[Candidate::local(), edge(0.010), cloud()]);
        assert_eq!(d.target(), Some(EDGE), "{d:?}");
        let p = |id: &str| d.predictions().iter().find(|p| p.id == id).unwrap().clone();
        // 10 ms + 64 B up + 28 KB down (6.2 ms) + 20 ms, a little queueing.
        assert!((p(EDGE).latency - 0.0378).abs() < 0.002, "{:?}", p(EDGE));
        assert!(p(CLOUD).latency > p(EDGE).latency + 0.039);
        // 1 MiB at 1.25 MB/s, and the round trip.
        assert!((p(EDGE).stall - 0.849).abs() < 0.01, "{:?}", p(EDGE));
    }

    #[test]
    fn requirements_are_honoured() {
        let stay_local = busy_planner(Requirements {
            stay_local: true,
            ..Requirements::default()
        });
        assert_eq!(
            stay_local
                .decide(10.0, &[Candidate::local(), edge(0.010), cloud()])
                .target(),
            None
        );
        // Only the cloud is reachable, and it is not allowed.
        let no_cloud = busy_planner(Requirements {
            allow_cloud: false,
            ..Requirements::default()
        });
        assert_eq!(
            no_cloud
                .decide(10.0, &[Candidate::local(), cloud()])
                .target(),
            None
        );
        let allowed = busy_planner(Requirements::default());
        assert_eq!(
            allowed
                .decide(10.0, &[Candidate::local(), cloud()])
                .target(),
            Some(CLOUD)
        );
        // A move that would pause the worker longer than allowed is not made.
        let short_stalls = busy_planner(Requirements {
            max_move_stall: Some(0.5),
            ..Requirements::default()
        });
        assert_eq!(
            short_stalls
                .decide(10.0, &[Candidate::local(), edge(0.010)])
                .target(),
            None
        );
    }

    #[test]
    fn a_latency_budget_rules_out_places_that_miss_it() {
        // An edge on a poor uplink: fast once there, but its move does not pay.
        let poor_uplink = Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.010, 0.1e6, 4.5e6)),
            4.0,
        );
        let candidates = [Candidate::local(), cloud(), poor_uplink];
        let free = busy_planner(Requirements::default());
        assert_eq!(free.decide(10.0, &candidates).target(), Some(CLOUD));
        // The cloud misses a 50 ms budget and the edge meets it.
        let budget = busy_planner(Requirements {
            latency_budget: Some(0.050),
            ..Requirements::default()
        });
        let d = budget.decide(10.0, &candidates);
        assert_eq!(d.target(), Some(EDGE), "{d:?}");
        // Nothing meets 10 ms: the fastest place that pays is chosen.
        let impossible = busy_planner(Requirements {
            latency_budget: Some(0.010),
            ..Requirements::default()
        });
        assert_eq!(impossible.decide(10.0, &candidates).target(), Some(CLOUD));
    }

    #[test]
    fn a_small_gain_does_not_pay_for_a_large_state() {
        let mut planner = busy_planner(Requirements::default());
        // 50 MB at 1.25 MB/s is a 40 s pause for 40 ms a message.
        planner.profile_mut().set_state_bytes(50_000_000);
        assert_eq!(
            planner
                .decide(10.0, &[Candidate::local(), edge(0.010)])
                .target(),
            None
        );
    }

    #[test]
    fn hysteresis_keeps_the_worker_from_bouncing() {
        let mut planner = busy_planner(Requirements::default());
        planner.moved(10.0, EDGE);
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        for _ in 0..10 {
            planner
                .profile_mut()
                .on_node_reply(EDGE, None, 0.040, 64, 28_000, &link);
        }
        // Another edge 5 % faster: not worth a move.
        let twin = Candidate::node(
            "ws://twin",
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.008, 1.25e6, 4.5e6)),
            4.0,
        );
        let d = planner.decide(14.0, &[Candidate::local(), edge(0.010), twin.clone()]);
        assert_eq!(d.target(), None, "{d:?}");
        // Just after a move, even a much better place waits for the dwell time.
        let near = Candidate::node(
            "ws://near",
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.001, 1.25e6, 40e6)),
            8.0,
        );
        let candidates = [Candidate::local(), edge(0.010), near];
        assert_eq!(planner.decide(11.0, &candidates).target(), None);
        assert_eq!(
            planner.decide(14.0, &candidates).target(),
            Some("ws://near")
        );
    }

    #[test]
    fn an_unreachable_place_is_left_for_the_best_one() {
        let mut planner = busy_planner(Requirements::default());
        planner.moved(10.0, EDGE);
        let gone = Candidate::node(EDGE, PlaceKind::Edge, None, 4.0);
        // Within the dwell time, too: the worker cannot stay where nothing reaches it.
        let d = planner.decide(10.5, &[Candidate::local(), gone.clone(), cloud()]);
        assert_eq!(d.target(), Some(CLOUD), "{d:?}");
        let d = planner.decide(10.5, &[Candidate::local(), gone]);
        assert_eq!(d.target(), Some(LOCAL), "{d:?}");
    }

    #[test]
    fn a_crowded_node_is_seen_in_its_replies_and_left() {
        let mut planner = busy_planner(Requirements::default());
        planner.moved(10.0, EDGE);
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        for _ in 0..30 {
            // The edge slowed down: 150 ms a message, slower than this device's 80.
            planner
                .profile_mut()
                .on_node_reply(EDGE, None, 0.166, 64, 28_000, &link);
        }
        let d = planner.decide(14.0, &[Candidate::local(), edge(0.010), cloud()]);
        assert_eq!(d.target(), Some(CLOUD), "{d:?}");
    }

    #[test]
    fn a_device_that_cannot_keep_up_is_seen_as_saturated() {
        let mut planner = Planner::new(PlannerSettings::default(), Requirements::default());
        // The application posts as soon as the last post returns: every 40 ms, the
        // handler's own time. Its messages wait before they are posted.
        for i in 0..60 {
            planner.profile_mut().on_post(i as f64 * 0.040, 64);
            planner.profile_mut().on_local_run(0.039, 28_000);
        }
        planner.profile_mut().set_state_bytes(1 << 20);
        let d = planner.decide(2.4, &[Candidate::local(), edge(0.010)]);
        let local = &d.predictions()[0];
        assert!(local.utilisation > 0.95, "{local:?}");
        assert!(local.latency > 1.0, "{local:?}");
        assert_eq!(d.target(), Some(EDGE), "{d:?}");
    }

    #[test]
    fn work_that_grew_on_a_node_is_not_brought_back_to_the_device() {
        let mut planner = Planner::new(PlannerSettings::default(), Requirements::default());
        // Cheap messages here at first (10 ms every 100 ms)...
        for i in 0..50 {
            planner.profile_mut().on_post(i as f64 * 0.1, 64);
            planner.profile_mut().on_local_run(0.010, 28_000);
        }
        planner.profile_mut().set_state_bytes(1 << 20);
        planner.moved(5.0, EDGE);
        // ...then, on the edge (4× this device), 24 ms each: 96 ms here, nearly all the
        // time between messages. The edge's link fades to 60 ms.
        let faded = Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.060, 1.25e6, 4.5e6)),
            4.0,
        );
        let link = LinkEstimate::known(0.060, 1.25e6, 4.5e6);
        for i in 50..150 {
            planner.profile_mut().on_post(i as f64 * 0.1, 64);
            planner.profile_mut().on_node_reply(
                EDGE,
                None,
                0.060 + 0.024 + 0.007,
                64,
                28_000,
                &link,
            );
        }
        let d = planner.decide(20.0, &[Candidate::local(), faded]);
        let local = &d.predictions()[0];
        assert!(local.handler > 0.090, "{local:?}");
        assert_eq!(d.target(), None, "{d:?}");
    }

    #[test]
    fn a_move_kind_seen_to_pause_less_is_predicted_to_pause_less() {
        let mut planner = busy_planner(Requirements::default());
        planner.profile_mut().set_state_bytes(20_000_000);
        let candidates = [Candidate::local(), edge(0.010)];
        let d = planner.decide(10.0, &candidates);
        assert_eq!(d.target(), None, "16 s of pause does not pay: {d:?}");
        let predicted = d.predictions()[1].stall;
        assert_eq!(predicted, d.predictions()[1].stall_modelled);
        // Offloads were seen to pause the worker a tenth of what the model said.
        for _ in 0..4 {
            planner.on_move_observed(MoveKind::Offload, predicted, predicted / 10.0);
        }
        let d = planner.decide(10.0, &candidates);
        assert!((d.predictions()[1].stall - predicted / 10.0).abs() < predicted / 50.0);
        assert_eq!(d.target(), Some(EDGE), "{d:?}");
        // Returns are learned apart.
        assert_eq!(planner.stall_factor[MoveKind::Return as usize].samples(), 0);
        assert_eq!(MoveKind::between(LOCAL, EDGE), Some(MoveKind::Offload));
        assert_eq!(MoveKind::between(EDGE, "ws://b"), Some(MoveKind::Handoff));
        assert_eq!(MoveKind::between(EDGE, LOCAL), Some(MoveKind::Return));
        assert_eq!(MoveKind::between(EDGE, EDGE), None);
    }

    #[test]
    fn a_first_move_to_a_node_counts_the_module_it_lacks() {
        let mut planner = busy_planner(Requirements::default());
        planner.profile_mut().set_module_bytes(2_000_000);
        let candidates = [Candidate::local(), edge(0.010)];
        let first = planner.decide(10.0, &candidates).predictions()[1].stall;
        // 1 MiB of state and 2 MB of module at 1.25 MB/s, and a second of compiling.
        assert!(
            (first - (0.010 + 3_048_576.0 / 1.25e6 + 1.0)).abs() < 1e-6,
            "{first}"
        );
        planner.moved(10.0, EDGE);
        planner.moved(11.0, LOCAL);
        let again = planner.decide(20.0, &candidates).predictions()[1].stall;
        assert!(
            (again - (0.010 + 1_048_576.0 / 1.25e6)).abs() < 1e-6,
            "{again}"
        );
    }

    #[test]
    fn an_idle_worker_stays() {
        let planner = busy_planner(Requirements::default());
        assert_eq!(
            planner
                .decide(60.0, &[Candidate::local(), edge(0.010)])
                .target(),
            None
        );
    }

    /// The busy planner, on the edge since `at` with 40 ms responses there.
    fn on_edge(at: f64) -> Planner {
        let mut planner = busy_planner(Requirements::default());
        planner.moved(at, EDGE);
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        for _ in 0..10 {
            planner
                .profile_mut()
                .on_node_reply(EDGE, None, 0.040, 64, 28_000, &link);
        }
        planner
    }

    #[test]
    fn a_fading_edge_is_left_for_one_that_is_not() {
        let planner = on_edge(5.0);
        // The next cell's edge: slower than this one was, and not fading.
        let next = Candidate::node(
            "ws://next",
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.035, 0.5e6, 1.5e6)),
            4.0,
        );
        let steady = Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.012, 1.25e6, 4.5e6)),
            4.0,
        );
        let d = planner.decide(12.0, &[Candidate::local(), steady, next.clone()]);
        assert_eq!(d.target(), None, "{d:?}");
        // The edge's round trip tripled 2 s ago: it is about to be lost.
        let faded = |for_s: f64| {
            Candidate::node(
                EDGE,
                PlaceKind::Edge,
                Some(LinkEstimate::known(0.030, 0.6e6, 2.2e6).faded_from(0.010, for_s)),
                4.0,
            )
        };
        let d = planner.decide(12.0, &[Candidate::local(), faded(2.0), next.clone()]);
        assert_eq!(d.target(), Some("ws://next"), "{d:?}");
        assert!(d.reason().contains("loss risk"), "{d:?}");
        let here = d.predictions().iter().find(|p| p.id == EDGE).unwrap();
        assert!(here.loss_risk > 0.9, "{here:?}");
        // Just after the fade began, it waits to see whether the next one fades too.
        let d = planner.decide(12.0, &[Candidate::local(), faded(0.5), next]);
        assert_eq!(d.target(), None, "{d:?}");
        assert!(d.reason().contains("waiting"), "{d:?}");
    }

    #[test]
    fn a_device_losing_coverage_takes_its_worker_home() {
        // Moved half a second ago: the dwell time does not hold it there.
        let planner = on_edge(11.5);
        let edge_faded = Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.050, 0.4e6, 1.2e6).faded_from(0.010, 1.0)),
            4.0,
        );
        // The cloud fades too, if less.
        let cloud_faded = Candidate::node(
            CLOUD,
            PlaceKind::Cloud,
            Some(LinkEstimate::known(0.075, 0.4e6, 1.2e6).faded_from(0.050, 0.5)),
            4.0,
        );
        let candidates = [Candidate::local(), edge_faded.clone(), cloud_faded.clone()];
        let d = planner.decide(12.0, &candidates);
        assert_eq!(d.target(), Some(LOCAL), "{d:?}");
        assert!(d.reason().contains("losing coverage"), "{d:?}");
        // Only the edge fading is a move between cells, not a loss of coverage: the
        // worker goes to the steady cloud.
        let settled = on_edge(5.0);
        let edge_faded_long = Candidate::node(
            EDGE,
            PlaceKind::Edge,
            Some(LinkEstimate::known(0.050, 0.4e6, 1.2e6).faded_from(0.010, 2.0)),
            4.0,
        );
        let d = settled.decide(12.0, &[Candidate::local(), edge_faded_long, cloud()]);
        assert_eq!(d.target(), Some(CLOUD), "{d:?}");
        // At home meanwhile, it does not leave for a node that fades.
        let home = busy_planner(Requirements::default());
        let d = home.decide(12.0, &candidates);
        assert_eq!(d.target(), None, "{d:?}");
    }

    #[test]
    fn a_node_just_left_is_not_gone_back_to_before_it_says_it_recovered() {
        let mut planner = busy_planner(Requirements::default());
        planner.moved(5.0, EDGE);
        let link = LinkEstimate::known(0.010, 1.25e6, 4.5e6);
        for _ in 0..200 {
            planner
                .profile_mut()
                .on_node_reply(EDGE, None, 0.025, 64, 28_000, &link);
        }
        // The edge got crowded: its replies slowed to 400 ms, and the worker left for
        // the cloud. The edge has not measured its speed again yet.
        for _ in 0..10 {
            planner
                .profile_mut()
                .on_node_reply(EDGE, None, 0.400, 64, 28_000, &link);
        }
        planner.moved(8.0, CLOUD);
        planner.arrived(8.5, CLOUD);
        let cloud_link = LinkEstimate::known(0.050, 1.25e6, 4.5e6);
        for _ in 0..20 {
            planner
                .profile_mut()
                .on_node_reply(CLOUD, None, 0.075, 64, 28_000, &cloud_link);
        }
        let candidates = [Candidate::local(), edge(0.010), cloud()];
        let d = planner.decide(12.0, &candidates);
        let at_edge = d.predictions().iter().find(|p| p.id == EDGE).unwrap();
        assert!(at_edge.latency >= 0.3, "{at_edge:?}");
        assert_eq!(d.target(), None, "{d:?}");
    }

    #[test]
    fn a_worker_remembered_as_heavy_leaves_before_its_heavy_messages() {
        let start = |remembered: Option<f64>| {
            let mut planner = Planner::new(PlannerSettings::default(), Requirements::default());
            if let Some(seconds) = remembered {
                planner.profile_mut().recall_local_handler(seconds, 20);
            }
            // The first messages of a run are light (a scene just dropped).
            for i in 0..5 {
                planner.profile_mut().on_post(i as f64 * 0.050, 64);
                planner.profile_mut().on_local_run(0.005, 28_000);
            }
            planner.profile_mut().set_state_bytes(1 << 20);
            planner.decide(0.25, &[Candidate::local(), edge(0.010)])
        };
        assert_eq!(start(None).target(), None);
        let d = start(Some(0.060));
        assert_eq!(d.target(), Some(EDGE), "{d:?}");
        // The memory is a prior: as many new runs outweigh it.
        let mut planner = Planner::new(PlannerSettings::default(), Requirements::default());
        planner.profile_mut().recall_local_handler(0.060, 20);
        for _ in 0..20 {
            planner.profile_mut().on_local_run(0.010, 28_000);
        }
        let here = planner.profile().local_handler(&|_| 1.0).unwrap();
        assert!((here - 0.035).abs() < 1e-9, "{here}");
    }
}
