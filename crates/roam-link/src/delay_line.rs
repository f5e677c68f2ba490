//! The timing of one direction of a link, kept apart from any socket so it can be tested
//! with made-up clocks: a token bucket that puts batches on the wire at the direction's
//! bandwidth, then a delay line that holds each batch for the one-way delay.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::serialization_time;

/// Bytes read from one side in one go, stamped with the moment they were read. An empty
/// batch stands for the end of the stream (the sender closed its side).
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) arrived: Instant,
}

/// One direction's bottleneck and propagation.
///
/// The bucket holds no tokens ahead of time (depth zero): a batch starts onto the wire
/// when it has arrived and the previous batch has left, and leaves `len × 8 / bps` later,
/// as on a real link. Then it propagates for the one-way delay. The bandwidth is read when
/// a batch starts onto the wire and the delay when it leaves, so a changed spec applies to
/// every byte not yet sent. All times are computed from the stamps, never from when this
/// code happened to run, so a late wake-up delays a batch but does not slow the link.
#[derive(Debug, Default)]
pub(crate) struct DelayLine {
    /// The batch on the wire and the moment its last bit leaves.
    serializing: Option<(Vec<u8>, Instant)>,
    /// Batches that have left, with the moment they reach the far side.
    propagating: VecDeque<(Vec<u8>, Instant)>,
    /// When the wire is free for the next batch.
    wire_free: Option<Instant>,
}

impl DelayLine {
    /// Moves batches from `arrivals` through the bucket up to `now`, with the direction's
    /// current bandwidth and one-way delay. The last batch goes on to the delay line at
    /// once, even if still on the wire, with the delay in force now.
    pub(crate) fn advance(
        &mut self,
        now: Instant,
        arrivals: &mut VecDeque<Batch>,
        bps: u64,
        delay: Duration,
    ) {
        loop {
            if self.serializing.is_none() {
                let Some(batch) = arrivals.pop_front() else {
                    return;
                };
                let start = match self.wire_free {
                    Some(free) => free.max(batch.arrived),
                    None => batch.arrived,
                };
                let finish = start + serialization_time(batch.bytes.len() as u64, bps);
                self.serializing = Some((batch.bytes, finish));
            }
            let Some((_, finish)) = &self.serializing else {
                return;
            };
            // With nothing behind it, a batch still on the wire can be scheduled to
            // arrive now: waking at its last bit only to do so would add a wake-up's
            // lateness to every lone message.
            if *finish > now && !arrivals.is_empty() {
                return;
            }
            let Some((bytes, finish)) = self.serializing.take() else {
                return;
            };
            self.wire_free = Some(finish);
            self.propagating.push_back((bytes, finish + delay));
        }
    }

    /// Takes the batches that have reached the far side by `now`, in order. A batch waits
    /// for the ones before it even if a shorter delay was set meanwhile: a byte stream
    /// stays in order.
    pub(crate) fn take_ready(&mut self, now: Instant) -> Vec<Vec<u8>> {
        let mut ready = Vec::new();
        while let Some((_, release)) = self.propagating.front() {
            if *release > now {
                break;
            }
            if let Some((bytes, _)) = self.propagating.pop_front() {
                ready.push(bytes);
            }
        }
        ready
    }

    /// The next moment something happens, or `None` when the line is empty.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        let finish = self.serializing.as_ref().map(|(_, finish)| *finish);
        let release = self.propagating.front().map(|(_, release)| *release);
        match (finish, release) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the line holds a single batch: a message on its own rather than part of
    /// a stream.
    pub(crate) fn is_lone(&self) -> bool {
        self.serializing.is_none() && self.propagating.len() == 1
    }

    /// The receiving side refused bytes until `until`: the wire does not count that time
    /// as free, as a real sender would have stopped on a closed receive window.
    pub(crate) fn hold(&mut self, until: Instant) {
        self.wire_free = Some(self.wire_free.map_or(until, |free| free.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn batch(len: usize, arrived: Instant) -> Batch {
        Batch {
            bytes: vec![7; len],
            arrived,
        }
    }

    #[test]
    fn bandwidth_then_delay() {
        let t0 = Instant::now();
        let mut line = DelayLine::default();
        // 1250 bytes at 10 Mbit/s take 1 ms on the wire; the delay is 5 ms.
        let mut arrivals: VecDeque<Batch> = (0..3).map(|_| batch(1250, t0)).collect();
        line.advance(t0, &mut arrivals, 10_000_000, ms(5));
        assert_eq!(line.next_event(), Some(t0 + ms(1)));
        assert_eq!(arrivals.len(), 2);
        line.advance(t0 + ms(10), &mut arrivals, 10_000_000, ms(5));
        assert!(arrivals.is_empty());
        assert_eq!(line.take_ready(t0 + ms(6)).len(), 1);
        assert_eq!(line.take_ready(t0 + ms(7)).len(), 1);
        assert_eq!(line.next_event(), Some(t0 + ms(8)));
        assert_eq!(line.take_ready(t0 + ms(8)).len(), 1);
        assert_eq!(line.next_event(), None);
    }

    #[test]
    fn an_idle_wire_does_not_bank_tokens() {
        let t0 = Instant::now();
        let mut line = DelayLine::default();
        let mut arrivals = VecDeque::from([batch(1250, t0)]);
        line.advance(t0 + ms(1), &mut arrivals, 10_000_000, ms(0));
        // A batch arriving long after still takes its full time on the wire.
        arrivals.push_back(batch(1250, t0 + ms(100)));
        line.advance(t0 + ms(100), &mut arrivals, 10_000_000, ms(0));
        assert_eq!(line.next_event(), Some(t0 + ms(1)));
        line.take_ready(t0 + ms(1));
        assert_eq!(line.next_event(), Some(t0 + ms(101)));
    }

    #[test]
    fn a_new_rate_applies_to_bytes_not_yet_on_the_wire() {
        let t0 = Instant::now();
        let mut line = DelayLine::default();
        let mut arrivals: VecDeque<Batch> = (0..2).map(|_| batch(1250, t0)).collect();
        line.advance(t0, &mut arrivals, 10_000_000, ms(0));
        // The first batch is on the wire at 10 Mbit/s; the second starts at 1 Mbit/s.
        line.advance(t0 + ms(1), &mut arrivals, 1_000_000, ms(0));
        assert_eq!(line.take_ready(t0 + ms(1)).len(), 1);
        assert_eq!(line.next_event(), Some(t0 + ms(11)));
    }

    #[test]
    fn a_held_wire_starts_again_from_the_hold() {
        let t0 = Instant::now();
        let mut line = DelayLine::default();
        line.hold(t0 + ms(50));
        let mut arrivals = VecDeque::from([batch(1250, t0)]);
        line.advance(t0, &mut arrivals, 10_000_000, ms(0));
        assert_eq!(line.next_event(), Some(t0 + ms(51)));
    }
}
