//! Automatic placement for the browser SDK: `roam-place`'s [`Planner`] behind a handle, with
//! a [`LinkEstimator`] per candidate node, so the page decides with the very code the
//! native client runs. The SDK measures (the worker's messages, `/healthz` round trips,
//! `/probe` transfers, the device's speed) and carries out the moves; this side only keeps
//! the estimates and decides.
//!
//! All times are seconds on one clock of the SDK's choosing (`performance.now() / 1000`);
//! sizes are bytes; speeds are relative to the reference core of
//! `roam_runtime::calibrate`, whose loop [`CALIBRATION_MODULE`] is. The operations:
//!
//! - `plan_new {device_speed, requirements: {latency_budget?, max_move_stall?,
//!   allow_cloud?, stay_local?}}` → `{planner}`;
//! - `plan_feed {planner, now, events: [...]}` → `{nodes: [...]}`: applies measurements
//!   (all checked before any is applied) and answers what is known of every node, with
//!   whether a bandwidth sample is due each way;
//! - `plan_decide {planner, now}` → `{move, to, reason, current, predictions}`;
//! - `plan_drop {planner}`;
//! - `calibration` → `{steps, reference_seconds}` and the loop's module as blob 0.
//!
//! Events, each `{"type": ..., fields}`: `node {url, kind: "edge"|"cloud", speed?}` (a
//! candidate, or news of it: a cloud stays a cloud), `round_trip {url, at, rtt}`,
//! `transfer {url, at, direction: "up"|"down", bytes, seconds}`, `failure {url, at}`,
//! `post {at, bytes}`, `local_run {seconds, reply_bytes}`, `node_reply {url, at, response,
//! request_bytes, reply_bytes}` (learnt against the link's estimate at `at`; ignored while
//! the link is unknown), `state_bytes {bytes}`, `device_speed {speed}` (the device was
//! slowed or sped up) and `moved {at, place}`.

use std::collections::BTreeMap;

use roam_place::{
    Candidate, Decision, Direction, LinkEstimator, PlaceKind, Planner, PlannerSettings,
    Requirements, LOCAL,
};
use serde_json::{json, Value};

use crate::json::{field, str_arg, u32_arg, u64_arg};
use crate::ops::{Answer, Request};
use crate::store::Store;

/// The calibration loop of `roam_runtime::calibrate`, assembled: `spin(n)` runs `n` steps
/// of a xorshift chain. The browser times the same bytes its engine compiles, so a node's
/// speed and the device's compare.
pub const CALIBRATION_MODULE: [u8; 133] = [
    0, 97, 115, 109, 1, 0, 0, 0, 1, 6, 1, 96, 1, 127, 1, 127, 3, 2, 1, 0, 7, 8, 1, 4, 115, 112,
    105, 110, 0, 0, 10, 66, 1, 64, 1, 1, 127, 65, 162, 153, 218, 150, 121, 33, 1, 2, 64, 3, 64, 32,
    0, 69, 13, 1, 32, 1, 32, 1, 65, 13, 116, 115, 33, 1, 32, 1, 32, 1, 65, 17, 118, 115, 33, 1, 32,
    1, 32, 1, 65, 5, 116, 115, 33, 1, 32, 0, 65, 1, 107, 33, 0, 12, 0, 11, 11, 32, 1, 11, 0, 33, 4,
    110, 97, 109, 101, 2, 9, 1, 0, 2, 0, 1, 110, 1, 1, 120, 3, 15, 1, 0, 2, 0, 4, 100, 111, 110,
    101, 1, 4, 110, 101, 120, 116,
];

/// Steps of one timed calibration run.
pub const CALIBRATION_STEPS: u32 = 20_000_000;

/// One run on the reference core, in seconds: speed = this / the device's fastest run.
pub const CALIBRATION_REFERENCE: f64 = 0.0338;

/// Candidate nodes a planner keeps at most: discovery cannot grow it without bound.
const MAX_NODES: usize = 64;

/// One worker's planner and what is known of the nodes it could run on.
pub struct Plan {
    planner: Planner,
    device_speed: f64,
    nodes: BTreeMap<String, PlanNode>,
}

struct PlanNode {
    kind: PlaceKind,
    /// The node's calibrated speed, once it said.
    speed: Option<f64>,
    link: LinkEstimator,
}

/// A measurement, checked.
enum Event {
    Node {
        url: String,
        kind: PlaceKind,
        speed: Option<f64>,
    },
    RoundTrip {
        url: String,
        at: f64,
        rtt: f64,
    },
    Transfer {
        url: String,
        at: f64,
        direction: Direction,
        bytes: u64,
        seconds: f64,
    },
    Failure {
        url: String,
        at: f64,
    },
    Post {
        at: f64,
        bytes: u64,
    },
    LocalRun {
        seconds: f64,
        reply_bytes: u64,
    },
    NodeReply {
        url: String,
        at: f64,
        response: f64,
        request_bytes: u64,
        reply_bytes: u64,
    },
    StateBytes(u64),
    DeviceSpeed(f64),
    Moved {
        at: f64,
        place: String,
    },
}

/// Runs the planning operation `op`.
pub fn call(store: &mut Store, op: &str, request: &Request<'_>) -> Result<Answer, String> {
    let args = &request.args;
    match op {
        "plan_new" => {
            let plan = new_plan(args)?;
            let id = store.handle();
            store.plans.insert(id, plan);
            Ok(Answer::json(json!({ "planner": id })))
        }
        "calibration" => Ok(Answer {
            json: json!({
                "steps": CALIBRATION_STEPS,
                "reference_seconds": CALIBRATION_REFERENCE,
            }),
            blobs: vec![CALIBRATION_MODULE.to_vec()],
        }),
        _ => {
            let id = u32_arg(args, "planner")?;
            let plan = store
                .plans
                .get_mut(&id)
                .ok_or_else(|| format!("no planner {id}"))?;
            match op {
                "plan_feed" => {
                    let now = time_arg(args, "now")?;
                    let events = field(args, "events")?
                        .as_array()
                        .ok_or("`events` must be a list")?
                        .iter()
                        .enumerate()
                        .map(|(i, e)| Event::parse(e).map_err(|why| format!("event {i}: {why}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    plan.apply(events)?;
                    Ok(Answer::json(json!({ "nodes": plan.nodes_view(now) })))
                }
                "plan_decide" => {
                    let now = time_arg(args, "now")?;
                    Ok(Answer::json(plan.decide(now)))
                }
                _ => {
                    store.plans.remove(&id);
                    Ok(Answer::json(Value::Null))
                }
            }
        }
    }
}

fn new_plan(args: &Value) -> Result<Plan, String> {
    let device_speed = positive(args, "device_speed")?;
    let wanted = field(args, "requirements")?;
    if !wanted.is_object() {
        return Err("`requirements` must be an object".into());
    }
    let optional_seconds = |name: &str| match wanted.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => positive(wanted, name).map(Some),
    };
    let flag = |name: &str, default: bool| match wanted.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("`{name}` must be true or false")),
    };
    let requirements = Requirements {
        latency_budget: optional_seconds("latency_budget")?,
        max_move_stall: optional_seconds("max_move_stall")?,
        allow_cloud: flag("allow_cloud", true)?,
        stay_local: flag("stay_local", false)?,
    };
    Ok(Plan {
        planner: Planner::new(PlannerSettings::default(), requirements),
        device_speed,
        nodes: BTreeMap::new(),
    })
}

/// A finite number argument.
fn number(args: &Value, name: &str) -> Result<f64, String> {
    field(args, name)?
        .as_f64()
        .filter(|x| x.is_finite())
        .ok_or_else(|| format!("`{name}` must be a finite number"))
}

/// A time or duration in seconds: finite and not negative.
fn time_arg(args: &Value, name: &str) -> Result<f64, String> {
    let x = number(args, name)?;
    if x < 0.0 {
        return Err(format!("`{name}` must not be negative"));
    }
    Ok(x)
}

/// A finite number above zero.
fn positive(args: &Value, name: &str) -> Result<f64, String> {
    let x = number(args, name)?;
    if x <= 0.0 {
        return Err(format!("`{name}` must be above zero"));
    }
    Ok(x)
}

/// The node URL in `url`.
fn url_arg(args: &Value) -> Result<String, String> {
    node_url("url", str_arg(args, "url")?)
}

/// A node's URL: `ws://` or `wss://`, and short.
fn node_url(name: &str, url: &str) -> Result<String, String> {
    if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() > 2048 {
        return Err(format!(
            "`{name}` must be a ws:// or wss:// URL, not {url:?}"
        ));
    }
    Ok(url.to_owned())
}

impl Event {
    fn parse(e: &Value) -> Result<Event, String> {
        if !e.is_object() {
            return Err("an event must be an object".into());
        }
        Ok(match str_arg(e, "type")? {
            "node" => Event::Node {
                url: url_arg(e)?,
                kind: match str_arg(e, "kind")? {
                    "edge" => PlaceKind::Edge,
                    "cloud" => PlaceKind::Cloud,
                    other => return Err(format!("`kind` is edge or cloud, not {other:?}")),
                },
                speed: match e.get("speed") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(positive(e, "speed")?),
                },
            },
            "round_trip" => Event::RoundTrip {
                url: url_arg(e)?,
                at: time_arg(e, "at")?,
                rtt: time_arg(e, "rtt")?,
            },
            "transfer" => Event::Transfer {
                url: url_arg(e)?,
                at: time_arg(e, "at")?,
                direction: match str_arg(e, "direction")? {
                    "up" => Direction::Up,
                    "down" => Direction::Down,
                    other => return Err(format!("`direction` is up or down, not {other:?}")),
                },
                bytes: u64_arg(e, "bytes")?,
                seconds: positive(e, "seconds")?,
            },
            "failure" => Event::Failure {
                url: url_arg(e)?,
                at: time_arg(e, "at")?,
            },
            "post" => Event::Post {
                at: time_arg(e, "at")?,
                bytes: u64_arg(e, "bytes")?,
            },
            "local_run" => Event::LocalRun {
                seconds: time_arg(e, "seconds")?,
                reply_bytes: u64_arg(e, "reply_bytes")?,
            },
            "node_reply" => Event::NodeReply {
                url: url_arg(e)?,
                at: time_arg(e, "at")?,
                response: time_arg(e, "response")?,
                request_bytes: u64_arg(e, "request_bytes")?,
                reply_bytes: u64_arg(e, "reply_bytes")?,
            },
            "state_bytes" => Event::StateBytes(u64_arg(e, "bytes")?),
            "device_speed" => Event::DeviceSpeed(positive(e, "speed")?),
            "moved" => Event::Moved {
                at: time_arg(e, "at")?,
                place: match str_arg(e, "place")? {
                    LOCAL => LOCAL.to_owned(),
                    url => node_url("place", url)?,
                },
            },
            other => return Err(format!("unknown event type {other:?}")),
        })
    }
}

impl Plan {
    /// The node `url`, which must be known.
    fn node(&mut self, url: &str) -> Result<&mut PlanNode, String> {
        self.nodes
            .get_mut(url)
            .ok_or_else(|| format!("{url} is not a candidate: give a `node` event first"))
    }

    fn apply(&mut self, events: Vec<Event>) -> Result<(), String> {
        // Every event names a known node, or the `node` event before it: check them all
        // before anything changes, so a bad batch leaves the planner as it was.
        let mut known: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
        for event in &events {
            match event {
                Event::Node { url, .. } => known.push(url),
                Event::RoundTrip { url, .. }
                | Event::Transfer { url, .. }
                | Event::Failure { url, .. }
                | Event::NodeReply { url, .. }
                    if !known.contains(&url.as_str()) =>
                {
                    return Err(format!(
                        "{url} is not a candidate: give a `node` event first"
                    ));
                }
                _ => {}
            }
        }
        known.sort_unstable();
        known.dedup();
        if known.len() > MAX_NODES {
            return Err(format!("a planner keeps at most {MAX_NODES} nodes"));
        }
        for event in events {
            match event {
                Event::Node { url, kind, speed } => {
                    let node = self.nodes.entry(url).or_insert(PlanNode {
                        kind,
                        speed: None,
                        link: LinkEstimator::default(),
                    });
                    if kind == PlaceKind::Cloud {
                        node.kind = kind;
                    }
                    node.speed = speed.or(node.speed);
                }
                Event::RoundTrip { url, at, rtt } => self.node(&url)?.link.on_round_trip(at, rtt),
                Event::Transfer {
                    url,
                    at,
                    direction,
                    bytes,
                    seconds,
                } => self
                    .node(&url)?
                    .link
                    .on_transfer(at, direction, bytes, seconds),
                Event::Failure { url, at } => self.node(&url)?.link.on_failure(at),
                Event::Post { at, bytes } => self.planner.profile_mut().on_post(at, bytes),
                Event::LocalRun {
                    seconds,
                    reply_bytes,
                } => self
                    .planner
                    .profile_mut()
                    .on_local_run(seconds, reply_bytes),
                Event::NodeReply {
                    url,
                    at,
                    response,
                    request_bytes,
                    reply_bytes,
                } => {
                    if let Some(link) = self.node(&url)?.link.estimate(at) {
                        self.planner.profile_mut().on_node_reply(
                            &url,
                            Some(at),
                            response,
                            request_bytes,
                            reply_bytes,
                            &link,
                        );
                    }
                }
                Event::StateBytes(bytes) => self.planner.profile_mut().set_state_bytes(bytes),
                Event::DeviceSpeed(speed) => self.device_speed = speed,
                Event::Moved { at, place } => self.planner.moved(at, &place),
            }
        }
        Ok(())
    }

    /// What is known of each node at `now`.
    fn nodes_view(&self, now: f64) -> Vec<Value> {
        self.nodes
            .iter()
            .map(|(url, node)| {
                let estimate = node.link.estimate(now);
                json!({
                    "url": url,
                    "kind": kind_name(node.kind),
                    "speed": node.speed,
                    "reachable": estimate.is_some(),
                    "rtt": estimate.map(|e| e.rtt),
                    "up": estimate.filter(|e| e.bandwidth_measured).map(|e| e.up),
                    "down": estimate.filter(|e| e.bandwidth_measured).map(|e| e.down),
                    "up_due": node.link.needs_bandwidth_sample(now, Direction::Up),
                    "down_due": node.link.needs_bandwidth_sample(now, Direction::Down),
                })
            })
            .collect()
    }

    /// The device and every node as candidates at `now`: a node's speed relative to this
    /// device is its calibrated speed over the device's (1 until it said).
    fn candidates(&self, now: f64) -> Vec<Candidate> {
        let mut candidates = vec![Candidate::local()];
        for (url, node) in &self.nodes {
            candidates.push(Candidate::node(
                url,
                node.kind,
                node.link.estimate(now),
                node.speed.unwrap_or(self.device_speed) / self.device_speed,
            ));
        }
        candidates
    }

    fn decide(&self, now: f64) -> Value {
        let decision = self.planner.decide(now, &self.candidates(now));
        let predictions: Vec<Value> = decision
            .predictions()
            .iter()
            .map(|p| {
                json!({
                    "id": p.id,
                    "latency": p.latency,
                    "handler": p.handler,
                    "utilisation": p.utilisation,
                    "stall": p.stall,
                })
            })
            .collect();
        json!({
            "move": matches!(decision, Decision::Move { .. }),
            "to": decision.target(),
            "reason": decision.reason(),
            "current": self.planner.current(),
            "predictions": predictions,
        })
    }
}

fn kind_name(kind: PlaceKind) -> &'static str {
    match kind {
        PlaceKind::Local => "local",
        PlaceKind::Edge => "edge",
        PlaceKind::Cloud => "cloud",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::call as run;

    fn op(store: &mut Store, args: Value) -> Result<Value, String> {
        run(
            store,
            Request {
                args,
                blobs: Vec::new(),
            },
        )
        .map(|a| a.json)
    }

    #[test]
    fn the_calibration_module_is_the_runtimes_loop() {
        // The loop's text as the runtime compiles it, read from its source so the two
        // cannot drift apart (roam-runtime needs wasmtime, which this crate must not).
        let source = include_str!("../../roam-runtime/src/calibrate.rs");
        let after = &source[source.find("const LOOP: &str = r#\"").unwrap()..];
        let wat = &after[after.find('"').unwrap() + 1..after.find("\"#;").unwrap()];
        assert_eq!(wat::parse_str(wat).unwrap(), CALIBRATION_MODULE.to_vec());
        assert!(source.contains("const STEPS: i32 = 20_000_000;"));
        assert!(source.contains("Duration::from_micros(33_800)"));
        assert_eq!(CALIBRATION_STEPS, 20_000_000);
        assert_eq!(CALIBRATION_REFERENCE, 0.0338);
    }

    /// A worker taking 40 ms a message here, one every 50 ms; an edge 2 ms away that says
    /// it is 100 times as fast as the reference core, on a device at the reference speed.
    fn busy(store: &mut Store, requirements: Value) -> u64 {
        let planner = op(
            store,
            json!({ "op": "plan_new", "device_speed": 1.0, "requirements": requirements }),
        )
        .unwrap()["planner"]
            .as_u64()
            .unwrap();
        let mut events = vec![
            json!({ "type": "node", "url": "ws://edge", "kind": "edge", "speed": 100.0 }),
            json!({ "type": "node", "url": "ws://cloud", "kind": "cloud" }),
            json!({ "type": "state_bytes", "bytes": 1_000_000 }),
        ];
        for i in 0..40 {
            let at = f64::from(i) * 0.05;
            events.push(json!({ "type": "post", "at": at, "bytes": 5 }));
            events.push(json!({ "type": "local_run", "seconds": 0.040, "reply_bytes": 6000 }));
        }
        for (url, rtt) in [("ws://edge", 0.002), ("ws://cloud", 0.030)] {
            events.push(json!({ "type": "round_trip", "url": url, "at": 1.9, "rtt": rtt }));
            for direction in ["up", "down"] {
                events.push(json!({ "type": "transfer", "url": url, "at": 1.9,
                    "direction": direction, "bytes": 1_000_000, "seconds": 0.1 }));
            }
        }
        let fed = op(
            store,
            json!({ "op": "plan_feed", "planner": planner, "now": 2.0, "events": events }),
        )
        .unwrap();
        let edge = &fed["nodes"][1];
        assert_eq!(edge["url"], "ws://edge");
        assert_eq!(edge["rtt"], 0.002);
        assert_eq!(edge["up_due"], false);
        planner
    }

    #[test]
    fn a_slow_worker_is_sent_to_the_fast_edge_unless_it_must_stay() {
        let mut store = Store::default();
        let planner = busy(&mut store, json!({}));
        let decision = op(
            &mut store,
            json!({ "op": "plan_decide", "planner": planner, "now": 2.0 }),
        )
        .unwrap();
        assert_eq!(decision["move"], true, "{decision}");
        assert_eq!(decision["to"], "ws://edge");
        assert!(decision["reason"].as_str().unwrap().contains("ws://edge"));

        let stays = busy(&mut store, json!({ "stay_local": true }));
        let decision = op(
            &mut store,
            json!({ "op": "plan_decide", "planner": stays, "now": 2.0 }),
        )
        .unwrap();
        assert_eq!(decision["move"], false, "{decision}");
        assert_eq!(decision["current"], "local");

        op(&mut store, json!({ "op": "plan_drop", "planner": planner })).unwrap();
        assert!(op(
            &mut store,
            json!({ "op": "plan_decide", "planner": planner, "now": 2.0 })
        )
        .is_err());
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let mut store = Store::default();
        for (args, expected) in [
            (
                json!({ "op": "plan_new", "device_speed": 0, "requirements": {} }),
                "above zero",
            ),
            (
                json!({ "op": "plan_new", "device_speed": 1, "requirements": { "stay_local": "yes" } }),
                "true or false",
            ),
            (
                json!({ "op": "plan_new", "device_speed": 1, "requirements": { "latency_budget": -1 } }),
                "above zero",
            ),
            (
                json!({ "op": "plan_decide", "planner": 99, "now": 1 }),
                "no planner",
            ),
        ] {
            let error = op(&mut store, args.clone()).unwrap_err();
            assert!(error.contains(expected), "{args}: {error}");
        }
        let planner = busy(&mut store, json!({}));
        let before = op(
            &mut store,
            json!({ "op": "plan_decide", "planner": planner, "now": 2.0 }),
        )
        .unwrap();
        for events in [
            json!([{ "type": "post", "at": 2.1, "bytes": 5 }, { "type": "round_trip", "url": "ws://nobody", "at": 1, "rtt": 0.1 }]),
            json!([{ "type": "post", "at": 2.1, "bytes": 5 }, { "type": "post", "at": "soon", "bytes": 5 }]),
            json!([{ "type": "round_trip", "url": "http://edge", "at": 1, "rtt": 0.1 }]),
            json!([{ "type": "transfer", "url": "ws://edge", "at": 1, "direction": "sideways", "bytes": 1, "seconds": 1 }]),
            json!([{ "type": "local_run", "seconds": -1, "reply_bytes": 1 }]),
            json!([{ "type": "moved", "at": 1, "place": "mars" }]),
            json!([{ "type": "device_speed", "speed": 0 }]),
            json!([{ "type": "launch" }]),
            json!([7]),
            json!("events"),
        ] {
            let args =
                json!({ "op": "plan_feed", "planner": planner, "now": 2.0, "events": events });
            assert!(op(&mut store, args.clone()).is_err(), "{args}");
        }
        let after = op(
            &mut store,
            json!({ "op": "plan_decide", "planner": planner, "now": 2.0 }),
        )
        .unwrap();
        assert_eq!(before, after);
        // Discovery cannot grow a planner without bound.
        let many: Vec<Value> = (0..=MAX_NODES)
            .map(|i| json!({ "type": "node", "url": format!("ws://edge-{i}"), "kind": "edge" }))
            .collect();
        let args = json!({ "op": "plan_feed", "planner": planner, "now": 2.0, "events": many });
        assert!(op(&mut store, args).unwrap_err().contains("at most"));
    }
}
