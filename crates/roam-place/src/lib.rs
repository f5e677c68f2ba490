//! Where should a worker run? This crate answers from measurements: the round trip and
//! bandwidth of every link ([`LinkEstimator`]), the worker's handler time and message
//! sizes ([`WorkerProfile`]), and each node's speed learned from the runs seen there. A
//! [`Planner`] predicts every candidate place's latency per message, weighs the gain over
//! a horizon against the pause a move costs, and moves only when the gain is clear
//! (hysteresis), within the application's [`Requirements`].
//!
//! The crate has no I/O and reads no clock: every call takes the time, in seconds from
//! any fixed origin. The native client and the browser SDK (compiled to wasm) feed it
//! their own measurements and carry out its decisions.
//!
//! ```
//! use roam_place::{Candidate, LinkEstimator, PlaceKind, Planner, PlannerSettings, Requirements};
//!
//! let mut planner = Planner::new(PlannerSettings::default(), Requirements::default());
//! // The worker runs here and takes 80 ms per message, one message every 100 ms.
//! for i in 0..20 {
//!     let now = i as f64 * 0.1;
//!     planner.profile_mut().on_post(now, 64);
//!     planner.profile_mut().on_local_run(0.080, 28_000);
//! }
//! planner.profile_mut().set_state_bytes(1 << 20);
//! // An edge 10 ms away, 10 Mbit/s up and 36 down, as fast as this device.
//! let mut link = LinkEstimator::default();
//! link.on_round_trip(2.0, 0.010);
//! link.on_transfer(2.0, roam_place::Direction::Up, 125_000, 0.100);
//! link.on_transfer(2.0, roam_place::Direction::Down, 450_000, 0.100);
//! let edge = Candidate::node("ws://edge", PlaceKind::Edge, link.estimate(2.0), 4.0);
//! let decision = planner.decide(2.0, &[Candidate::local(), edge]);
//! assert_eq!(decision.target(), Some("ws://edge"));
//! ```
#![deny(missing_docs)]

mod estimate;
mod model;
mod policy;

pub use estimate::{Direction, Ewma, LinkEstimate, LinkEstimator};
pub use model::{Candidate, PlaceKind, Prediction, WorkerProfile, LOCAL};
pub use policy::{Decision, Planner, PlannerSettings, Requirements};
