//! Link estimates: a smoothed round trip and bandwidth per direction, with their spread,
//! from the samples the client takes — pings, the messages already flowing, and probes
//! only when nothing flows.

/// A direction of a link, seen from the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the device to the node.
    Up,
    /// From the node to the device.
    Down,
}

/// An exponentially weighted mean and variance.
///
/// Each sample moves the mean by `alpha` of its distance from it; the variance is the
/// exponentially weighted variance of the same samples. Until there are `1 / alpha`
/// samples, each weighs as much as the ones before (the plain mean).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    alpha: f64,
    mean: f64,
    variance: f64,
    samples: u64,
}

impl Ewma {
    /// An empty average whose samples weigh `alpha` (clamped to `(0, 1]`).
    pub fn new(alpha: f64) -> Ewma {
        let alpha = if alpha.is_finite() {
            alpha.clamp(f64::MIN_POSITIVE, 1.0)
        } else {
            1.0
        };
        Ewma {
            alpha,
            mean: 0.0,
            variance: 0.0,
            samples: 0,
        }
    }

    /// Takes a sample; a sample that is not finite is ignored.
    pub fn add(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        if self.samples == 0 {
            self.mean = x;
            self.variance = 0.0;
        } else {
            // The plain mean until there are enough samples for the weight to apply, so
            // the first sample does not linger.
            let alpha = self.alpha.max(1.0 / (self.samples + 1) as f64);
            let diff = x - self.mean;
            let step = alpha * diff;
            self.mean += step;
            self.variance = (1.0 - alpha) * (self.variance + diff * step);
        }
        self.samples += 1;
    }

    /// Starts from `mean` as if it were the average of `samples` samples (of no spread):
    /// a prior, which the samples that follow outweigh once there are more of them.
    pub fn prime(&mut self, mean: f64, samples: u64) {
        if mean.is_finite() && samples > 0 {
            self.mean = mean;
            self.variance = 0.0;
            self.samples = samples;
        }
    }

    /// The mean, once there is a sample.
    pub fn mean(&self) -> Option<f64> {
        (self.samples > 0).then_some(self.mean)
    }

    /// The standard deviation (0 with fewer than two samples).
    pub fn std_dev(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }

    /// How many samples it has taken.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

/// Transfers shorter than this say more about the round trip than the bandwidth.
const MIN_BANDWIDTH_SAMPLE_BYTES: u64 = 16 * 1024;

/// A round trip up to this many times its baseline is taken as noise, not fading.
pub const FADE_FROM: f64 = 1.3;
/// A round trip this many times its baseline is taken as a link about to be lost.
pub const FADE_LOST_AT: f64 = 3.0;
/// Seconds a round trip must have grown by before it counts as fading (a link of a few
/// milliseconds doubles with any jitter).
pub const FADE_MIN_GROWTH: f64 = 0.010;

/// What a [`LinkEstimator`] knows of its link now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkEstimate {
    /// Smoothed round trip, in seconds.
    pub rtt: f64,
    /// The round trip's standard deviation, in seconds.
    pub rtt_sd: f64,
    /// Bytes per second from the device to the node.
    pub up: f64,
    /// Bytes per second from the node to the device.
    pub down: f64,
    /// Whether both bandwidths come from samples (otherwise a cautious guess stands in).
    pub bandwidth_measured: bool,
    /// The lowest [`LinkEstimate::rtt_floor`] of the last
    /// [`LinkEstimator::BASELINE_WINDOW`] seconds: what the link gave before it faded, if
    /// it did.
    pub rtt_baseline: f64,
    /// Seconds since the link began to fade ([`LinkEstimate::loss_risk`] above 0), or 0.
    pub fading_for: f64,
    /// The lowest of the last few round trips: what fading is judged by. A busy device
    /// reads some probes' answers late, which raises single samples; a fading link raises
    /// them all.
    pub rtt_floor: f64,
}

impl LinkEstimate {
    /// A link with these settings, as if measured: for tests and for planning with known
    /// links.
    pub fn known(rtt: f64, up: f64, down: f64) -> LinkEstimate {
        LinkEstimate {
            rtt,
            rtt_sd: 0.0,
            up,
            down,
            bandwidth_measured: true,
            rtt_baseline: rtt,
            fading_for: 0.0,
            rtt_floor: rtt,
        }
    }

    /// The same link, whose round trip was `baseline` seconds a while ago.
    pub fn faded_from(self, baseline: f64, seconds_ago: f64) -> LinkEstimate {
        LinkEstimate {
            rtt_baseline: baseline,
            fading_for: seconds_ago,
            ..self
        }
    }

    /// How likely the link is to be lost soon, from 0 to 1, judged by how far its round
    /// trip has grown past the lowest of the last [`LinkEstimator::BASELINE_WINDOW`]
    /// seconds. A radio link fades before it goes: the round trip grows as the signal
    /// weakens and the link layer retransmits. Up to [`FADE_FROM`] times the baseline
    /// (or less than [`FADE_MIN_GROWTH`] more) is noise, and the risk is 0; it grows in
    /// proportion to 1 at [`FADE_LOST_AT`] times.
    pub fn loss_risk(&self) -> f64 {
        let baseline = self.rtt_baseline.max(1e-4);
        let grown = self.rtt_floor - baseline;
        // Not finite, or too little to tell from jitter.
        if grown.is_nan() || grown < FADE_MIN_GROWTH {
            return 0.0;
        }
        ((self.rtt_floor / baseline - FADE_FROM) / (FADE_LOST_AT - FADE_FROM)).clamp(0.0, 1.0)
    }

    /// Seconds for `bytes` to cross the link one way, not counting the delay.
    pub fn transfer(&self, direction: Direction, bytes: f64) -> f64 {
        let rate = match direction {
            Direction::Up => self.up,
            Direction::Down => self.down,
        };
        if rate > 0.0 {
            bytes / rate
        } else {
            f64::INFINITY
        }
    }
}

/// Smooths the samples of one link from the device to a node.
///
/// A link is *reachable* from its first round trip until a failure is reported, and again
/// from the next round trip. An estimate whose last round trip is older than
/// [`LinkEstimator::STALE_AFTER`] seconds is not trusted.
#[derive(Clone, Debug)]
pub struct LinkEstimator {
    rtt: Ewma,
    up: Ewma,
    down: Ewma,
    last_rtt_at: Option<f64>,
    last_up_at: Option<f64>,
    last_down_at: Option<f64>,
    failed_at: Option<f64>,
    /// The smoothed round trip after each sample of the last
    /// [`LinkEstimator::BASELINE_WINDOW`] seconds, with its time, oldest first.
    recent: std::collections::VecDeque<(f64, f64)>,
    /// When the link began to fade, if it fades.
    fading_since: Option<f64>,
    /// When it last looked faded.
    faded_at: Option<f64>,
    /// The last [`FLOOR_OF`] round trips, newest last.
    raw: std::collections::VecDeque<f64>,
}

/// Whether a round trip of `rtt` seconds, against a baseline of `baseline`, is past the
/// noise ([`LinkEstimate::loss_risk`] above 0).
fn looks_faded(rtt: f64, baseline: f64) -> bool {
    LinkEstimate::known(rtt, 0.0, 0.0)
        .faded_from(baseline, 0.0)
        .loss_risk()
        > 0.0
}

/// Round trips whose lowest is the link's floor ([`LinkEstimate::rtt_floor`]).
const FLOOR_OF: usize = 3;

impl Default for LinkEstimator {
    fn default() -> Self {
        LinkEstimator {
            rtt: Ewma::new(0.25),
            up: Ewma::new(0.3),
            down: Ewma::new(0.3),
            last_rtt_at: None,
            last_up_at: None,
            last_down_at: None,
            failed_at: None,
            recent: Default::default(),
            fading_since: None,
            faded_at: None,
            raw: Default::default(),
        }
    }
}

impl LinkEstimator {
    /// Seconds without a round trip after which the link is taken as unknown.
    pub const STALE_AFTER: f64 = 5.0;
    /// Seconds after which a bandwidth sample is old enough to take a new one.
    pub const BANDWIDTH_FRESH_FOR: f64 = 10.0;
    /// The bandwidth assumed before any sample: 1 MB/s (8 Mbit/s), below a typical
    /// mobile uplink, so an unmeasured link is not preferred.
    pub const GUESSED_BANDWIDTH: f64 = 1.0e6;
    /// Seconds over which the lowest smoothed round trip is remembered as the link's
    /// baseline: a link that got slower and stayed so this long is a slower link, no
    /// longer a fading one.
    pub const BASELINE_WINDOW: f64 = 30.0;
    /// Seconds a link must not look faded for its fade to be over.
    pub const FADE_ENDS_AFTER: f64 = 5.0;

    /// A round trip of `rtt` seconds measured at `now`.
    pub fn on_round_trip(&mut self, now: f64, rtt: f64) {
        if !(rtt.is_finite() && rtt >= 0.0) {
            return;
        }
        self.rtt.add(rtt);
        self.last_rtt_at = Some(now);
        if self.raw.len() == FLOOR_OF {
            self.raw.pop_front();
        }
        self.raw.push_back(rtt);
        let floor = self.floor();
        {
            while self
                .recent
                .front()
                .is_some_and(|(at, _)| now - at > Self::BASELINE_WINDOW)
            {
                self.recent.pop_front();
            }
            self.recent.push_back((now, floor));
            let fading = looks_faded(floor, self.baseline(floor));
            // A fade that comes and goes is one fade: it ends only once the link has not
            // looked faded for a while, so the time it has lasted keeps growing.
            if fading {
                self.fading_since.get_or_insert(now);
                self.faded_at = Some(now);
            } else if self
                .faded_at
                .is_none_or(|at| now - at >= Self::FADE_ENDS_AFTER)
            {
                self.fading_since = None;
            }
        }
        if self.failed_at.is_some_and(|at| at <= now) {
            self.failed_at = None;
        }
    }

    /// `bytes` crossed the link in `direction` in `seconds`, not counting the link's delay
    /// (the caller takes the round trip off). Small transfers are ignored.
    pub fn on_transfer(&mut self, now: f64, direction: Direction, bytes: u64, seconds: f64) {
        if bytes < MIN_BANDWIDTH_SAMPLE_BYTES || !(seconds.is_finite() && seconds > 0.0) {
            return;
        }
        let rate = bytes as f64 / seconds;
        match direction {
            Direction::Up => {
                self.up.add(rate);
                self.last_up_at = Some(now);
            }
            Direction::Down => {
                self.down.add(rate);
                self.last_down_at = Some(now);
            }
        }
    }

    /// The node could not be reached at `now` (a connection refused, reset or timed out).
    pub fn on_failure(&mut self, now: f64) {
        self.failed_at = Some(now);
    }

    /// Whether the node answered since the last failure.
    pub fn is_reachable(&self, now: f64) -> bool {
        self.failed_at.is_none()
            && self
                .last_rtt_at
                .is_some_and(|at| now - at <= Self::STALE_AFTER)
    }

    /// Whether a bandwidth sample in `direction` is due: none yet, or the last one is
    /// older than [`LinkEstimator::BANDWIDTH_FRESH_FOR`].
    pub fn needs_bandwidth_sample(&self, now: f64, direction: Direction) -> bool {
        let last = match direction {
            Direction::Up => self.last_up_at,
            Direction::Down => self.last_down_at,
        };
        last.is_none_or(|at| now - at > Self::BANDWIDTH_FRESH_FOR)
    }

    /// Whether the last round trip alone looks faded: too little to judge the link by (a
    /// busy device or a lost packet raises one sample), enough to measure it again
    /// sooner, so a real fade is confirmed within a few samples' time.
    pub fn suspects_fade(&self) -> bool {
        let Some(&last) = self.raw.back() else {
            return false;
        };
        looks_faded(last, self.baseline(self.floor()))
    }

    /// The lowest floor of the window, `floor` included.
    fn baseline(&self, floor: f64) -> f64 {
        self.recent.iter().map(|(_, r)| *r).fold(floor, f64::min)
    }

    /// The lowest of the last few round trips.
    fn floor(&self) -> f64 {
        self.raw.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The estimate at `now`, or `None` when the node is unreachable or not measured.
    pub fn estimate(&self, now: f64) -> Option<LinkEstimate> {
        if !self.is_reachable(now) {
            return None;
        }
        let rtt = self.rtt.mean()?;
        let up = self.up.mean();
        let down = self.down.mean();
        let floor = self.floor();
        Some(LinkEstimate {
            rtt,
            rtt_floor: floor,
            rtt_baseline: self.baseline(floor),
            fading_for: self.fading_since.map_or(0.0, |at| (now - at).max(0.0)),
            rtt_sd: self.rtt.std_dev(),
            up: up.unwrap_or(Self::GUESSED_BANDWIDTH),
            down: down.unwrap_or(Self::GUESSED_BANDWIDTH),
            bandwidth_measured: up.is_some() && down.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_follows_a_step_and_reports_its_spread() {
        let mut e = Ewma::new(0.25);
        assert_eq!(e.mean(), None);
        for _ in 0..50 {
            e.add(10.0);
        }
        assert_eq!(e.mean(), Some(10.0));
        assert_eq!(e.std_dev(), 0.0);
        for _ in 0..50 {
            e.add(20.0);
        }
        assert!((e.mean().unwrap() - 20.0).abs() < 0.01);
        let mut noisy = Ewma::new(0.1);
        for i in 0..1000 {
            noisy.add(if i % 2 == 0 { 9.0 } else { 11.0 });
        }
        assert!((noisy.mean().unwrap() - 10.0).abs() < 0.2);
        assert!((noisy.std_dev() - 1.0).abs() < 0.2, "{}", noisy.std_dev());
        noisy.add(f64::NAN);
        assert!(noisy.mean().unwrap().is_finite());
    }

    #[test]
    fn a_link_is_unknown_until_measured_and_unreachable_after_a_failure() {
        let mut link = LinkEstimator::default();
        assert_eq!(link.estimate(0.0), None);
        link.on_round_trip(1.0, 0.010);
        let e = link.estimate(1.0).unwrap();
        assert_eq!(e.rtt, 0.010);
        assert!(!e.bandwidth_measured);
        assert_eq!(e.up, LinkEstimator::GUESSED_BANDWIDTH);
        link.on_failure(2.0);
        assert_eq!(link.estimate(2.0), None);
        link.on_round_trip(3.0, 0.012);
        assert!(link.estimate(3.0).is_some());
        // Not heard from for too long.
        assert_eq!(link.estimate(3.0 + LinkEstimator::STALE_AFTER + 0.1), None);
    }

    #[test]
    fn bandwidth_comes_from_large_transfers_only() {
        let mut link = LinkEstimator::default();
        link.on_round_trip(0.0, 0.010);
        assert!(link.needs_bandwidth_sample(0.0, Direction::Up));
        link.on_transfer(0.0, Direction::Up, 1000, 0.001);
        assert!(link.needs_bandwidth_sample(0.0, Direction::Up));
        link.on_transfer(0.0, Direction::Up, 1_250_000, 1.0);
        link.on_transfer(0.0, Direction::Down, 4_500_000, 1.0);
        let e = link.estimate(0.5).unwrap();
        assert_eq!((e.up, e.down), (1_250_000.0, 4_500_000.0));
        assert!(e.bandwidth_measured);
        assert!(!link.needs_bandwidth_sample(5.0, Direction::Up));
        assert!(link.needs_bandwidth_sample(10.5, Direction::Up));
        assert!((e.transfer(Direction::Up, 125_000.0) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn a_link_whose_round_trip_grows_is_fading_until_that_is_its_new_normal() {
        let mut link = LinkEstimator::default();
        // 10 ms with a little jitter for 20 s: noise, not fading.
        for i in 0..40 {
            let jitter = if i % 3 == 0 { 0.004 } else { 0.0 };
            link.on_round_trip(i as f64 * 0.5, 0.010 + jitter);
            let e = link.estimate(i as f64 * 0.5).unwrap();
            assert_eq!(e.loss_risk(), 0.0, "{e:?}");
        }
        assert!(!link.suspects_fade());
        // A busy device reads one answer late: not fading, but worth measuring again soon.
        link.on_round_trip(20.0, 0.060);
        assert_eq!(link.estimate(20.0).unwrap().loss_risk(), 0.0);
        assert!(link.suspects_fade());
        link.on_round_trip(20.5, 0.010);
        assert!(!link.suspects_fade());
        // Then 50 ms: once the last few round trips all say so, the link is at risk.
        for i in 2..4 {
            link.on_round_trip(20.0 + i as f64 * 0.5, 0.050);
        }
        assert_eq!(link.estimate(21.5).unwrap().loss_risk(), 0.0);
        link.on_round_trip(22.0, 0.050);
        let first = link.estimate(22.0).unwrap();
        assert_eq!(first.loss_risk(), 1.0, "{first:?}");
        assert_eq!(first.fading_for, 0.0);
        link.on_round_trip(22.5, 0.050);
        let later = link.estimate(24.5).unwrap();
        assert!((later.fading_for - 2.5).abs() < 1e-9, "{later:?}");
        assert!((later.rtt_baseline - 0.010).abs() < 1e-9, "{later:?}");
        // Still 50 ms 40 s on: a slower link, no longer a fading one.
        for i in 6..90 {
            link.on_round_trip(20.0 + i as f64 * 0.5, 0.050);
        }
        let settled = link.estimate(64.5).unwrap();
        assert!((settled.rtt_floor - 0.050).abs() < 1e-9, "{settled:?}");
        assert_eq!(settled.loss_risk(), 0.0, "{settled:?}");
        assert_eq!(settled.fading_for, 0.0);
        // A cloud from 50 to 90 ms fades less than an edge from 10 to 50.
        let cloud = LinkEstimate::known(0.090, 1e6, 1e6).faded_from(0.050, 1.0);
        assert!(
            cloud.loss_risk() > 0.0 && cloud.loss_risk() < 0.5,
            "{cloud:?}"
        );
        // A few milliseconds more on a very short link is jitter.
        let lan = LinkEstimate::known(0.004, 1e6, 1e6).faded_from(0.001, 1.0);
        assert_eq!(lan.loss_risk(), 0.0);
    }

    #[test]
    fn a_fade_that_comes_and_goes_is_one_fade() {
        let mut link = LinkEstimator::default();
        for i in 0..20 {
            link.on_round_trip(i as f64 * 0.5, 0.010);
        }
        // A crowded node answers its probes late, and now and then in time: the fade
        // does not start afresh each time it looks over.
        let mut t = 10.0;
        for _ in 0..5 {
            for _ in 0..3 {
                link.on_round_trip(t, 0.080);
                t += 0.5;
            }
            link.on_round_trip(t, 0.010);
            t += 0.5;
        }
        let e = link.estimate(t).unwrap();
        assert!(e.fading_for >= 8.0, "{e:?}");
    }
}
