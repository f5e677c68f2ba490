//! The placement policies the mobility benchmark compares. Each is asked, after every post
//! and at least every 100 ms, whether to begin a move; none waits for one to end.
//!
//! - `local` never moves;
//! - `cloud` offloads to the cloud whenever the cloud is reachable and the worker is
//!   local (when the cloud is cut the worker comes home by itself);
//! - `paper` is the SoCC 2019 rule: the device is attached to the edge with the best link;
//!   offload there when the handler's measured local time exceeds a threshold, and hand
//!   off to the attached edge when it changes; never the cloud;
//! - `oracle` knows the trace and the handler times measured in the calibration: it runs
//!   where the expected latency is lowest and leaves a place ahead of a known loss;
//! - `auto` is `roam_client::AutoPlacer` with default requirements.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::Result;
use roam_client::{AutoOptions, AutoPlacer, Place, WorkerHandle};
use serde::Serialize;

use super::trace::{LinkSetting, PlaceState, Trace, CLOUD};

/// The policies, in the order the tables list them.
pub const POLICIES: [&str; 5] = ["local", "cloud", "paper", "oracle", "auto"];

/// The paper's threshold on the handler's local time.
pub const PAPER_THRESHOLD_MS: f64 = 30.0;

/// What the calibration measured, which the oracle plans with.
#[derive(Serialize, Clone, Debug)]
pub struct Calibration {
    /// One step's handler time on the slow device (the post's duration), mean, ms.
    pub local_handler_ms: f64,
    /// Mean reply latency on the slow device at the run's pace, open loop, over a whole
    /// scene, ms: the handler and the queue a busy device builds.
    pub local_latency_ms: f64,
    /// One step's handler time on an edge at full speed (the node's own metric), mean, ms.
    pub node_handler_ms: f64,
    /// One step message, bytes.
    pub request_bytes: u64,
    /// One reply, bytes.
    pub reply_bytes: u64,
    /// The offload local → edge over `BENCH.md`'s device ↔ edge link, ms.
    pub offload_ms: f64,
    /// Frame bytes the offload moved over the device link.
    pub offload_bytes: u64,
    /// The handoff edge → edge, ms.
    pub handoff_ms: f64,
    /// The return edge → local, ms.
    pub return_ms: f64,
    /// Frame bytes the return moved over the device link.
    pub return_bytes: u64,
    /// Mean reply latency on the edge during the calibration, ms (what the model predicts
    /// is `rtt + transfers + node handler`).
    pub edge_latency_ms: f64,
    /// What each kind of move costs the application: the latency, summed over the
    /// messages posted from the move's start until 2 s after its end, above what they
    /// would have taken at the destination, s. Offload, handoff, return.
    pub penalty_s: [f64; 3],
}

impl Calibration {
    /// The expected reply latency at `place` in state `state`, s; `None` when it cannot be
    /// reached.
    pub fn expected_s(&self, place: &str, state: &BTreeMap<String, PlaceState>) -> Option<f64> {
        if place == "local" {
            return Some(self.local_latency_ms / 1e3);
        }
        let s = state.get(place)?;
        let link = s.link?;
        // A node slower than the messages come builds a queue that grows for as long as
        // the worker stays: on average half of what 30 s would pile up.
        let service = self.node_handler_ms / 1e3 / s.cpu;
        let interval = super::run::POST_EVERY.as_secs_f64();
        let backlog = (1.0 - interval / service).max(0.0) * 30.0 / 2.0;
        Some(link.exchange_s(self.request_bytes, self.reply_bytes) + service + backlog)
    }

    /// The cost of a move from `from` to `to` (see [`Calibration::penalty_s`]), s.
    fn penalty(&self, from: &str, to: &str) -> f64 {
        match (from, to) {
            ("local", "local") => 0.0,
            ("local", _) => self.penalty_s[0],
            (_, "local") => self.penalty_s[2],
            _ => self.penalty_s[1],
        }
    }

    /// The expected time of a move from `from` to `to` when the device's links are
    /// `links` (the worst each will be during the move), s.
    fn move_s(&self, from: &str, to: &str, links: &BTreeMap<String, Option<LinkSetting>>) -> f64 {
        let over = |place: &str, bytes: u64, down: bool| -> f64 {
            match links.get(place).copied().flatten() {
                Some(l) => {
                    let bps = if down { l.down_mbps } else { l.up_mbps } * 1e6;
                    l.rtt_ms / 1e3 * 3.0 + bytes as f64 * 8.0 / bps
                }
                None => f64::INFINITY,
            }
        };
        match (from, to) {
            ("local", "local") => 0.0,
            ("local", to) => over(to, self.offload_bytes, false),
            (from, "local") => over(from, self.return_bytes, true),
            _ => self.handoff_ms / 1e3,
        }
    }
}

/// A policy's state during one run.
pub enum Policy {
    /// Never moves.
    Local,
    /// Offloads to the cloud whenever it can.
    Cloud {
        /// When the last move failed: wait a second before the next try.
        failed_at: Option<Instant>,
    },
    /// The SoCC 2019 rule.
    Paper {
        /// The last local handler times, ms.
        local_ms: VecDeque<f64>,
        /// When the last move failed.
        failed_at: Option<Instant>,
    },
    /// Knows the future.
    Oracle {
        /// When the last move failed.
        failed_at: Option<Instant>,
    },
    /// The client's automatic placement.
    Auto(Box<AutoPlacer>),
}

/// What a policy may look at.
pub struct View<'a> {
    /// The trace being replayed.
    pub trace: &'a Trace,
    /// Seconds since the trace started.
    pub now_s: f64,
    /// Node URLs by place.
    pub urls: &'a BTreeMap<String, String>,
    /// The calibration.
    pub calibration: &'a Calibration,
}

impl View<'_> {
    fn place_of(&self, handle: &WorkerHandle) -> String {
        match handle.place() {
            Place::Node(url) => self
                .urls
                .iter()
                .find(|(_, u)| **u == url)
                .map_or(url, |(p, _)| p.clone()),
            _ => "local".into(),
        }
    }

    fn node(&self, place: &str) -> Place {
        if place == "local" {
            Place::Local
        } else {
            Place::Node(self.urls[place].clone())
        }
    }
}

/// A second between a failed move and the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn may_retry(failed_at: Option<Instant>) -> bool {
    failed_at.is_none_or(|t| t.elapsed() >= RETRY_AFTER)
}

impl Policy {
    /// The policy called `name`, for a run on a network whose cloud and edges are at
    /// `urls`, dialled through `routes`.
    pub fn new(
        name: &str,
        urls: &BTreeMap<String, String>,
        routes: &BTreeMap<String, String>,
        memory: &std::path::Path,
    ) -> Result<Policy> {
        Ok(match name {
            "local" => Policy::Local,
            "cloud" => Policy::Cloud { failed_at: None },
            "paper" => Policy::Paper {
                local_ms: VecDeque::new(),
                failed_at: None,
            },
            "oracle" => Policy::Oracle { failed_at: None },
            "auto" => Policy::Auto(Box::new(AutoPlacer::new(AutoOptions {
                cloud: urls.get(CLOUD).cloned(),
                edges: urls
                    .iter()
                    .filter(|(p, _)| *p != CLOUD)
                    .map(|(_, u)| u.clone())
                    .collect(),
                routes: routes.clone(),
                memory: Some(memory.to_path_buf()),
                ..AutoOptions::default()
            }))),
            other => anyhow::bail!("unknown policy `{other}` (known: {})", POLICIES.join(", ")),
        })
    }

    /// Takes in the duration of a post that ran the handler on the device.
    pub fn local_handler(&mut self, ms: f64) {
        if let Policy::Paper { local_ms, .. } = self {
            local_ms.push_back(ms);
            if local_ms.len() > 10 {
                local_ms.pop_front();
            }
        }
    }

    /// A move this policy began failed.
    pub fn move_failed(&mut self) {
        match self {
            Policy::Cloud { failed_at }
            | Policy::Paper { failed_at, .. }
            | Policy::Oracle { failed_at } => *failed_at = Some(Instant::now()),
            Policy::Local | Policy::Auto(_) => {}
        }
    }

    /// Looks at the world and begins a move when the policy wants one. Returns where to,
    /// for the log.
    pub async fn tick(
        &mut self,
        handle: &mut WorkerHandle,
        view: &View<'_>,
    ) -> Result<Option<String>> {
        if let Policy::Auto(placer) = self {
            let decision = placer.tick(handle).await?;
            return Ok(decision.map(|d| format!("{} ({})", d.to, d.reason)));
        }
        if handle.moving() {
            return Ok(None);
        }
        let here = view.place_of(handle);
        let target = match self {
            Policy::Local | Policy::Auto(_) => None,
            Policy::Cloud { failed_at } => {
                let state = view.trace.state_at(view.now_s);
                let reachable = state.get(CLOUD).is_some_and(|s| s.link.is_some());
                (here == "local" && reachable && may_retry(*failed_at)).then(|| CLOUD.to_string())
            }
            Policy::Paper {
                local_ms,
                failed_at,
            } => {
                let state = view.trace.state_at(view.now_s);
                let attached = attached_edge(view.trace, &state);
                let slow = !local_ms.is_empty()
                    && local_ms.iter().sum::<f64>() / local_ms.len() as f64 > PAPER_THRESHOLD_MS;
                match attached {
                    Some(edge) if may_retry(*failed_at) => {
                        let go = if here == "local" { slow } else { here != edge };
                        go.then_some(edge)
                    }
                    _ => None,
                }
            }
            Policy::Oracle { failed_at } => {
                if may_retry(*failed_at) {
                    oracle_choice(view, &here)
                } else {
                    None
                }
            }
        };
        let Some(target) = target.filter(|t| *t != here) else {
            return Ok(None);
        };
        handle.begin_move(view.node(&target)).await?;
        Ok(Some(target))
    }
}

/// The edge whose device link is best now (the shortest exchange of a small message),
/// as the paper's device would be attached to.
fn attached_edge(trace: &Trace, state: &BTreeMap<String, PlaceState>) -> Option<String> {
    trace
        .edges()
        .into_iter()
        .filter_map(|e| Some((e, state.get(e)?.link?.exchange_s(64, 28 << 10))))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(e, _)| e.to_string())
}

/// Where the oracle wants the worker now, if not where it is.
///
/// Every candidate (the device, every edge, the cloud) is scored by the latency expected
/// there at the moment a move there would end (so a move begins ahead of a change by the
/// time it takes), plus the move's cost to the application (calibrated) spread over the
/// messages of the stay that follows: until the candidate is lost or the trace ends. A
/// place that will be lost before the worker could get there and pay for the move is
/// out, and so is any node (the current one too) that will be lost before the way home
/// from it ends: going there would only be followed by going home.
/// The worker moves when the best candidate beats staying by a tenth.
fn oracle_choice(view: &View<'_>, here: &str) -> Option<String> {
    let trace = view.trace;
    let cal = view.calibration;
    let now = view.now_s;
    let state = trace.state_at(now);
    let mut candidates: Vec<String> = vec!["local".into()];
    candidates.extend(trace.places.iter().cloned());
    // The worst link of each place from now until `until`, `None` if lost at any point.
    let worst = |until: f64| -> BTreeMap<String, Option<LinkSetting>> {
        let mut states = vec![state.clone()];
        states.extend(
            trace
                .changes_after(now)
                .take_while(|t| *t <= until)
                .map(|t| trace.state_at(t)),
        );
        trace
            .places
            .iter()
            .map(|p| {
                let mut worst: Option<LinkSetting> = states[0][p].link;
                for s in &states {
                    worst = match (worst, s[p].link) {
                        (Some(a), Some(b)) => Some(LinkSetting {
                            up_mbps: a.up_mbps.min(b.up_mbps),
                            down_mbps: a.down_mbps.min(b.down_mbps),
                            rtt_ms: a.rtt_ms.max(b.rtt_ms),
                        }),
                        _ => None,
                    };
                }
                (p.clone(), worst)
            })
            .collect()
    };
    // How long a place stays reachable from now (past the trace's end if it does).
    let reachable_for = |place: &str| -> f64 {
        if place == "local" {
            return f64::INFINITY;
        }
        trace
            .changes_after(now)
            .find(|&t| trace.state_at(t)[place].link.is_none())
            .map_or(f64::INFINITY, |t| t - now)
    };
    // The time to get from `from` to `to`, starting `after` seconds from now, with the
    // links as bad as they get meanwhile.
    let move_between = |from: &str, to: &str, after: f64| -> f64 {
        let guess = cal.move_s(from, to, &worst(now + after));
        cal.move_s(from, to, &worst(now + after + guess * 1.5 + 2.0))
    };
    let move_time = |to: &str| move_between(here, to, 0.0);
    // Whether a node, reached `arrival` seconds from now, is lost before the way home
    // from it could end: the worker would only have to leave it again at once (or be
    // lost with it).
    let lost_soon = |place: &str, arrival: f64| -> bool {
        place != "local"
            && reachable_for(place) <= arrival + move_between(place, "local", arrival) * 1.5 + 1.0
    };
    let messages_per_s = 1.0 / super::run::POST_EVERY.as_secs_f64();
    let left = trace.duration_s - now;
    let score = |c: &str| -> f64 {
        if c == here {
            if lost_soon(here, 0.0) {
                return f64::INFINITY;
            }
            let arrival = trace.state_at(now + move_time("local").min(5.0));
            return cal.expected_s(here, &arrival).unwrap_or(f64::INFINITY);
        }
        let travel = move_time(c);
        let stay = reachable_for(c).min(left) - travel;
        if c != "local" && (stay <= travel * 2.0 + 2.0 || lost_soon(c, travel)) {
            return f64::INFINITY;
        }
        let arrival = trace.state_at(now + travel);
        let Some(there) = cal.expected_s(c, &arrival) else {
            return f64::INFINITY;
        };
        there + cal.penalty(here, c) / (stay.max(0.1) * messages_per_s)
    };
    let staying = score(here);
    let best = candidates
        .iter()
        .filter(|c| c.as_str() != here)
        .map(|c| (c.clone(), score(c)))
        .filter(|(_, s)| s.is_finite())
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some((c, s)) if s < staying * 0.9 => Some(c),
        // Nowhere to go but the current place is lost soon: home.
        None if staying.is_infinite() && here != "local" => Some("local".into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the committed run's calibration measured.
    fn calibration() -> Calibration {
        Calibration {
            local_handler_ms: 33.6,
            local_latency_ms: 49.7,
            node_handler_ms: 8.3,
            request_bytes: 5,
            reply_bytes: 28_004,
            offload_ms: 3140.0,
            offload_bytes: 4326,
            handoff_ms: 1273.0,
            return_ms: 1583.0,
            return_bytes: 6_546_869,
            edge_latency_ms: 22.0,
            penalty_s: [3.1, 0.9, 41.9],
        }
    }

    /// An edge and the cloud, both good until 24 s, weak until a tunnel at 30 s takes them
    /// both (as in the commute trace).
    fn tunnel() -> Trace {
        Trace::parse(
            r#"{ "name": "tunnel", "description": "both go at 30 s", "duration_s": 60,
                 "places": ["E1", "cloud"],
                 "events": [
                   { "at_s": 0, "links": {
                       "E1": { "up_mbps": 10, "down_mbps": 36, "rtt_ms": 10 },
                       "cloud": { "up_mbps": 10, "down_mbps": 36, "rtt_ms": 50 } } },
                   { "at_s": 24, "links": {
                       "E1": { "up_mbps": 3, "down_mbps": 10, "rtt_ms": 50 },
                       "cloud": { "up_mbps": 3, "down_mbps": 10, "rtt_ms": 90 } } },
                   { "at_s": 30, "links": { "E1": null, "cloud": null } } ] }"#,
        )
        .unwrap()
    }

    fn choice(trace: &Trace, now_s: f64, here: &str) -> Option<String> {
        let urls = BTreeMap::new();
        let calibration = calibration();
        let view = View {
            trace,
            now_s,
            urls: &urls,
            calibration: &calibration,
        };
        oracle_choice(&view, here)
    }

    #[test]
    fn the_oracle_offloads_while_coverage_lasts_and_goes_home_ahead_of_the_tunnel() {
        let trace = tunnel();
        assert_eq!(choice(&trace, 1.0, "local").as_deref(), Some("E1"));
        assert_eq!(choice(&trace, 10.0, "E1"), None);
        // Too close to the tunnel for the state to come home over the weak links later:
        // home now, and not to the cloud, which is lost at the same moment (from either
        // node: the two would take turns).
        assert_eq!(choice(&trace, 22.0, "E1").as_deref(), Some("local"));
        assert_eq!(choice(&trace, 22.0, "cloud").as_deref(), Some("local"));
        // And once home it stays there.
        assert_eq!(choice(&trace, 22.0, "local"), None);
    }
}
