//! Mobility traces: what the device's link to every place is, and how fast every node's
//! CPU runs, at each moment of a walk, a commute or a crowded cell. A trace is a JSON file
//! (format in `docs/benchmarks.md`) that the benchmark replays in real time on the
//! emulated links and the nodes' CPU quotas, and that the oracle and the paper's rule read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use roam_link::LinkSpec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The place name of the cloud; every other place is an edge.
pub const CLOUD: &str = "cloud";

/// A device link: bandwidths in Mbit/s and the round trip in ms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkSetting {
    /// The device's upload, Mbit/s.
    pub up_mbps: f64,
    /// The device's download, Mbit/s.
    pub down_mbps: f64,
    /// Round trip, ms.
    pub rtt_ms: f64,
}

impl LinkSetting {
    /// The emulator's spec of this setting.
    pub fn spec(&self) -> LinkSpec {
        LinkSpec::new(
            (self.up_mbps * 1e6).round() as u64,
            (self.down_mbps * 1e6).round() as u64,
            Duration::from_secs_f64(self.rtt_ms / 1e3),
        )
    }

    /// The setting of `BENCH.md` for the device's link to `place`.
    pub fn bench(place: &str) -> LinkSetting {
        let spec = if place == CLOUD {
            LinkSpec::DEVICE_CLOUD
        } else {
            LinkSpec::DEVICE_EDGE
        };
        LinkSetting {
            up_mbps: spec.up_bps as f64 / 1e6,
            down_mbps: spec.down_bps as f64 / 1e6,
            rtt_ms: spec.rtt.as_secs_f64() * 1e3,
        }
    }

    /// Seconds for a message of `up` bytes to reach the place and its reply of `down`
    /// bytes to come back, on an idle link.
    pub fn exchange_s(&self, up: u64, down: u64) -> f64 {
        self.rtt_ms / 1e3
            + up as f64 * 8.0 / (self.up_mbps * 1e6)
            + down as f64 * 8.0 / (self.down_mbps * 1e6)
    }
}

/// One change of the trace at one moment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Seconds from the trace's start.
    pub at_s: f64,
    /// The device's link to each place named: a setting, or `null` when the place cannot
    /// be reached. Places not named keep their link.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, Option<LinkSetting>>,
    /// The share of its CPU each node named runs at (1 = full speed). Nodes not named
    /// keep theirs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu: BTreeMap<String, f64>,
}

/// A validated trace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Trace {
    /// A short name: the results are filed under it.
    pub name: String,
    /// What the trace plays out.
    pub description: String,
    /// How long it lasts, s.
    pub duration_s: f64,
    /// The places: edges by name, and `cloud`.
    pub places: Vec<String>,
    /// The changes, in time order.
    pub events: Vec<Event>,
}

/// What one place is like at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlaceState {
    /// The device's link to it, `None` when it cannot be reached.
    pub link: Option<LinkSetting>,
    /// Its CPU share.
    pub cpu: f64,
}

/// A trace file that cannot be used.
#[derive(Debug, Error)]
pub enum LoadTraceError {
    /// the file cannot be read
    #[error("cannot read the trace {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// the file is not a trace in JSON
    #[error("{}: not a valid trace: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: serde_json::Error,
    },
    /// the trace's content is wrong
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: InvalidTraceError,
    },
}

/// What is wrong with a trace's content.
#[derive(Debug, Error, PartialEq)]
pub enum InvalidTraceError {
    /// the trace has no name
    #[error("the trace has no name")]
    NoName,
    /// the duration is not a positive number of seconds
    #[error("duration_s must be a positive number of seconds, not {0}")]
    Duration(f64),
    /// no cloud among the places
    #[error("the places must include `cloud` (every run has a cloud node)")]
    NoCloud,
    /// a place is named twice
    #[error("the place `{0}` is listed twice")]
    DuplicatePlace(String),
    /// a place has a name the benchmark uses for something else
    #[error("`{0}` cannot name an edge (a name of letters, digits, `-` or `_`, not `device` or `local`)")]
    BadPlaceName(String),
    /// an event's time is wrong
    #[error("event {index}: at_s = {at_s} must be at least 0, below duration_s ({duration_s}) and after the previous event's")]
    EventTime {
        /// The event's position, from 1.
        index: usize,
        /// Its time.
        at_s: f64,
        /// The trace's duration.
        duration_s: f64,
    },
    /// an event names a place the trace does not list
    #[error("event {index} (at {at_s} s): unknown place `{place}` (the places are: {known})")]
    UnknownPlace {
        /// The event's position, from 1.
        index: usize,
        /// Its time.
        at_s: f64,
        /// The name.
        place: String,
        /// The places listed.
        known: String,
    },
    /// a link setting is wrong
    #[error("event {index} (at {at_s} s): the link to `{place}` needs bandwidths above 0 Mbit/s and a round trip of 0 to 60000 ms, not {setting:?}")]
    BadLink {
        /// The event's position, from 1.
        index: usize,
        /// Its time.
        at_s: f64,
        /// The place.
        place: String,
        /// The setting.
        setting: LinkSetting,
    },
    /// a CPU share is wrong
    #[error("event {index} (at {at_s} s): the CPU share of `{place}` must be above 0 and at most 1, not {share}")]
    BadShare {
        /// The event's position, from 1.
        index: usize,
        /// Its time.
        at_s: f64,
        /// The place.
        place: String,
        /// The share.
        share: f64,
    },
    /// an event changes nothing
    #[error("event {index} (at {at_s} s) changes no link and no CPU share")]
    EmptyEvent {
        /// The event's position, from 1.
        index: usize,
        /// Its time.
        at_s: f64,
    },
}

impl Trace {
    /// Reads and validates the trace in `path`.
    pub fn load(path: &Path) -> Result<Trace, LoadTraceError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadTraceError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Trace::parse(&text).map_err(|e| match e {
            ParseTraceError::Json(source) => LoadTraceError::Parse {
                path: path.to_path_buf(),
                source,
            },
            ParseTraceError::Invalid(problem) => LoadTraceError::Invalid {
                path: path.to_path_buf(),
                problem,
            },
        })
    }

    /// Parses and validates a trace from its JSON text.
    pub fn parse(text: &str) -> Result<Trace, ParseTraceError> {
        let trace: Trace = serde_json::from_str(text).map_err(ParseTraceError::Json)?;
        trace.validate().map_err(ParseTraceError::Invalid)?;
        Ok(trace)
    }

    /// Checks everything the benchmark relies on.
    pub fn validate(&self) -> Result<(), InvalidTraceError> {
        if self.name.trim().is_empty() {
            return Err(InvalidTraceError::NoName);
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0) {
            return Err(InvalidTraceError::Duration(self.duration_s));
        }
        for (i, place) in self.places.iter().enumerate() {
            if self.places[..i].contains(place) {
                return Err(InvalidTraceError::DuplicatePlace(place.clone()));
            }
            let word = !place.is_empty()
                && place
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !word || place == "device" || place == "local" {
                return Err(InvalidTraceError::BadPlaceName(place.clone()));
            }
        }
        if !self.places.iter().any(|p| p == CLOUD) {
            return Err(InvalidTraceError::NoCloud);
        }
        let mut previous = None;
        for (i, event) in self.events.iter().enumerate() {
            let (index, at_s) = (i + 1, event.at_s);
            let in_order = previous.is_none_or(|p| at_s > p);
            if !(at_s.is_finite() && at_s >= 0.0 && at_s < self.duration_s && in_order) {
                return Err(InvalidTraceError::EventTime {
                    index,
                    at_s,
                    duration_s: self.duration_s,
                });
            }
            previous = Some(at_s);
            if event.links.is_empty() && event.cpu.is_empty() {
                return Err(InvalidTraceError::EmptyEvent { index, at_s });
            }
            for place in event.links.keys().chain(event.cpu.keys()) {
                if !self.places.contains(place) {
                    return Err(InvalidTraceError::UnknownPlace {
                        index,
                        at_s,
                        place: place.clone(),
                        known: self.places.join(", "),
                    });
                }
            }
            for (place, setting) in &event.links {
                let Some(setting) = setting else { continue };
                let positive = |v: f64| v.is_finite() && v > 0.0;
                let ok = positive(setting.up_mbps)
                    && positive(setting.down_mbps)
                    && setting.rtt_ms.is_finite()
                    && (0.0..=60_000.0).contains(&setting.rtt_ms)
                    && setting.spec().validate().is_ok();
                if !ok {
                    return Err(InvalidTraceError::BadLink {
                        index,
                        at_s,
                        place: place.clone(),
                        setting: *setting,
                    });
                }
            }
            for (place, &share) in &event.cpu {
                if !(share.is_finite() && share > 0.0 && share <= 1.0) {
                    return Err(InvalidTraceError::BadShare {
                        index,
                        at_s,
                        place: place.clone(),
                        share,
                    });
                }
            }
        }
        Ok(())
    }

    /// The edges, in the order listed.
    pub fn edges(&self) -> Vec<&str> {
        self.places
            .iter()
            .map(String::as_str)
            .filter(|p| *p != CLOUD)
            .collect()
    }

    /// Every place at `at_s` seconds: `BENCH.md`'s link and full speed until an event
    /// says otherwise.
    pub fn state_at(&self, at_s: f64) -> BTreeMap<String, PlaceState> {
        let mut state: BTreeMap<String, PlaceState> = self
            .places
            .iter()
            .map(|p| {
                let initial = PlaceState {
                    link: Some(LinkSetting::bench(p)),
                    cpu: 1.0,
                };
                (p.clone(), initial)
            })
            .collect();
        for event in self.events.iter().take_while(|e| e.at_s <= at_s) {
            for (place, link) in &event.links {
                if let Some(s) = state.get_mut(place) {
                    s.link = *link;
                }
            }
            for (place, &cpu) in &event.cpu {
                if let Some(s) = state.get_mut(place) {
                    s.cpu = cpu;
                }
            }
        }
        state
    }

    /// The times at which something changes, after `at_s`.
    pub fn changes_after(&self, at_s: f64) -> impl Iterator<Item = f64> + '_ {
        self.events
            .iter()
            .map(|e| e.at_s)
            .filter(move |&t| t > at_s)
    }

    /// The same trace played `factor` times as fast (0.3: a 60 s walk in 18 s).
    pub fn compressed(&self, factor: f64) -> Trace {
        Trace {
            name: self.name.clone(),
            description: format!(
                "{} (played in {:.0} % of the time)",
                self.description,
                factor * 100.0
            ),
            duration_s: self.duration_s * factor,
            places: self.places.clone(),
            events: self
                .events
                .iter()
                .map(|e| Event {
                    at_s: e.at_s * factor,
                    ..e.clone()
                })
                .collect(),
        }
    }
}

/// Why a trace's text is not a trace.
#[derive(Debug, Error)]
pub enum ParseTraceError {
    /// not JSON of the trace's shape
    #[error("{0}")]
    Json(serde_json::Error),
    /// JSON of the right shape with content that cannot be used
    #[error("{0}")]
    Invalid(InvalidTraceError),
}

/// Every `*.json` trace in `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> anyhow::Result<Vec<Trace>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list the traces in {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no *.json trace in {}", dir.display());
    paths
        .iter()
        .map(|p| Trace::load(p).map_err(anyhow::Error::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "name": "t",
        "description": "two edges",
        "duration_s": 10,
        "places": ["A", "B", "cloud"],
        "events": [
            {"at_s": 0, "links": {"B": null}},
            {"at_s": 4, "links": {"A": {"up_mbps": 2, "down_mbps": 5, "rtt_ms": 30},
                                  "B": {"up_mbps": 10, "down_mbps": 36, "rtt_ms": 10}},
             "cpu": {"cloud": 0.5}},
            {"at_s": 8, "links": {"A": null}}
        ]
    }"#;

    fn invalid(text: &str) -> InvalidTraceError {
        match Trace::parse(text) {
            Err(ParseTraceError::Invalid(e)) => e,
            other => panic!("expected an invalid trace, got {other:?}"),
        }
    }

    fn with(field: &str, value: &str) -> String {
        let mut json: serde_json::Value = serde_json::from_str(GOOD).unwrap();
        json[field] = serde_json::from_str(value).unwrap();
        json.to_string()
    }

    #[test]
    fn a_trace_replays_links_and_shares_over_time() {
        let trace = Trace::parse(GOOD).unwrap();
        assert_eq!(trace.edges(), ["A", "B"]);
        let start = trace.state_at(0.0);
        assert_eq!(start["A"].link, Some(LinkSetting::bench("A")));
        assert_eq!(start["B"].link, None);
        assert_eq!(start["cloud"].link.unwrap().rtt_ms, 50.0);
        let mid = trace.state_at(5.0);
        assert_eq!(mid["A"].link.unwrap().up_mbps, 2.0);
        assert_eq!(mid["B"].link.unwrap().rtt_ms, 10.0);
        assert_eq!(mid["cloud"].cpu, 0.5);
        assert_eq!(trace.state_at(9.0)["A"].link, None);
        assert_eq!(trace.state_at(9.0)["B"].link.unwrap().down_mbps, 36.0);
        assert_eq!(trace.changes_after(4.0).collect::<Vec<_>>(), [8.0]);
    }

    #[test]
    fn a_compressed_trace_keeps_its_order() {
        let trace = Trace::parse(GOOD).unwrap().compressed(0.5);
        assert_eq!(trace.duration_s, 5.0);
        assert_eq!(trace.events[2].at_s, 4.0);
        trace.validate().unwrap();
    }

    #[test]
    fn bad_traces_say_what_is_wrong() {
        assert!(matches!(
            invalid(&with("duration_s", "0")),
            InvalidTraceError::Duration(_)
        ));
        assert_eq!(
            invalid(&with("places", r#"["A", "B"]"#)),
            InvalidTraceError::NoCloud
        );
        assert_eq!(
            invalid(&with("places", r#"["A", "A", "cloud"]"#)),
            InvalidTraceError::DuplicatePlace("A".into())
        );
        assert_eq!(
            invalid(&with("places", r#"["device", "cloud"]"#)),
            InvalidTraceError::BadPlaceName("device".into())
        );
        let e = invalid(&with(
            "events",
            r#"[{"at_s": 3, "links": {"A": null}}, {"at_s": 3, "links": {"B": null}}]"#,
        ));
        assert!(
            matches!(e, InvalidTraceError::EventTime { index: 2, .. }),
            "{e}"
        );
        let e = invalid(&with("events", r#"[{"at_s": 12, "links": {"A": null}}]"#));
        assert!(
            matches!(e, InvalidTraceError::EventTime { index: 1, .. }),
            "{e}"
        );
        let e = invalid(&with("events", r#"[{"at_s": 1, "links": {"C": null}}]"#));
        assert_eq!(
            e.to_string(),
            "event 1 (at 1 s): unknown place `C` (the places are: A, B, cloud)"
        );
        let e = invalid(&with(
            "events",
            r#"[{"at_s": 1, "links": {"A": {"up_mbps": 0, "down_mbps": 5, "rtt_ms": 3}}}]"#,
        ));
        assert!(matches!(e, InvalidTraceError::BadLink { .. }), "{e}");
        let e = invalid(&with(
            "events",
            r#"[{"at_s": 1, "links": {"A": {"up_mbps": 1, "down_mbps": 5, "rtt_ms": -3}}}]"#,
        ));
        assert!(matches!(e, InvalidTraceError::BadLink { .. }), "{e}");
        for share in ["0", "1.5", "-1"] {
            let e = invalid(&with(
                "events",
                &format!(r#"[{{"at_s": 1, "cpu": {{"A": {share}}}}}]"#),
            ));
            assert!(matches!(e, InvalidTraceError::BadShare { .. }), "{e}");
        }
        let e = invalid(&with("events", r#"[{"at_s": 1}]"#));
        assert_eq!(
            e,
            InvalidTraceError::EmptyEvent {
                index: 1,
                at_s: 1.0
            }
        );
    }

    #[test]
    fn malformed_json_and_typos_are_refused() {
        assert!(matches!(Trace::parse("{"), Err(ParseTraceError::Json(_))));
        // A misspelt field is an error, not a silently ignored setting.
        let typo = GOOD.replace("\"rtt_ms\": 30", "\"rtt\": 30");
        let e = Trace::parse(&typo).unwrap_err();
        assert!(e.to_string().contains("rtt"), "{e}");
        assert!(matches!(
            Trace::parse(&with("duration_s", "\"long\"")),
            Err(ParseTraceError::Json(_))
        ));
    }

    #[test]
    fn loading_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        std::fs::write(&path, with("places", r#"["A"]"#)).unwrap();
        let e = Trace::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(e.contains("cloud"), "{e}");
        let missing = dir.path().join("missing.json");
        let e = Trace::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn the_committed_traces_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/traces");
        let traces = load_dir(&dir).unwrap();
        let names: Vec<&str> = traces.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["commute", "crowded", "walk"]);
    }
}
