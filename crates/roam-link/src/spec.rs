//! What a link is: its bandwidth in each direction and its round trip, with the four
//! links of the benchmark settings (`BENCH.md`) as constants.

use std::time::Duration;

use thiserror::Error;

/// Bits per second in one Mbit/s (decimal, as link speeds are quoted).
const MBIT: u64 = 1_000_000;

/// Which way bytes travel through a [`Link`](crate::Link).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client that connected to the link towards the target (a device's upload).
    Up,
    /// From the target back to the client (a device's download).
    Down,
}

impl Direction {
    /// Both directions, up first.
    pub const BOTH: [Direction; 2] = [Direction::Up, Direction::Down];

    /// `"up"` or `"down"`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The settings of an emulated link.
///
/// "Up" is the direction from the client (the side that connects to the link) to the
/// target, so a device connecting to an edge server through [`LinkSpec::DEVICE_EDGE`]
/// uploads at 10 Mbit/s and downloads at 36 Mbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// Bandwidth from the client to the target, in bits per second.
    pub up_bps: u64,
    /// Bandwidth from the target to the client, in bits per second.
    pub down_bps: u64,
    /// Round trip; each direction delays its bytes by half of it.
    pub rtt: Duration,
}

/// A [`LinkSpec`] the emulator cannot apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InvalidSpecError {
    /// a link needs a bandwidth above zero in both directions
    #[error("a link needs a bandwidth above zero in both directions")]
    ZeroBandwidth,
    /// the round trip is above the emulator's limit of one minute
    #[error("the round trip is above the emulator's limit of one minute")]
    RoundTripTooLong,
}

impl LinkSpec {
    /// Device ↔ edge: 10 Mbit/s up, 36 Mbit/s down, 10 ms round trip.
    pub const DEVICE_EDGE: LinkSpec =
        LinkSpec::new(10 * MBIT, 36 * MBIT, Duration::from_millis(10));
    /// Edge ↔ edge: 42 Mbit/s each way, 10 ms round trip.
    pub const EDGE_EDGE: LinkSpec = LinkSpec::new(42 * MBIT, 42 * MBIT, Duration::from_millis(10));
    /// Edge ↔ cloud: 118 Mbit/s each way, 40 ms round trip.
    pub const EDGE_CLOUD: LinkSpec =
        LinkSpec::new(118 * MBIT, 118 * MBIT, Duration::from_millis(40));
    /// Device ↔ cloud: 10 Mbit/s up, 36 Mbit/s down, 50 ms round trip.
    pub const DEVICE_CLOUD: LinkSpec =
        LinkSpec::new(10 * MBIT, 36 * MBIT, Duration::from_millis(50));

    /// The four links of the benchmark settings, with their names.
    pub const BENCH: [(&'static str, LinkSpec); 4] = [
        ("device ↔ edge", LinkSpec::DEVICE_EDGE),
        ("edge ↔ edge", LinkSpec::EDGE_EDGE),
        ("edge ↔ cloud", LinkSpec::EDGE_CLOUD),
        ("device ↔ cloud", LinkSpec::DEVICE_CLOUD),
    ];

    /// A link with these bandwidths (bits per second) and round trip.
    pub const fn new(up_bps: u64, down_bps: u64, rtt: Duration) -> LinkSpec {
        LinkSpec {
            up_bps,
            down_bps,
            rtt,
        }
    }

    /// A link with the same bandwidth both ways.
    pub const fn symmetric(bps: u64, rtt: Duration) -> LinkSpec {
        LinkSpec::new(bps, bps, rtt)
    }

    /// The same link seen from the other end: up and down swapped. An edge server that
    /// connects to a device would use `LinkSpec::DEVICE_EDGE.reversed()`.
    pub const fn reversed(self) -> LinkSpec {
        LinkSpec::new(self.down_bps, self.up_bps, self.rtt)
    }

    /// The bandwidth of one direction, in bits per second.
    pub const fn bps(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Up => self.up_bps,
            Direction::Down => self.down_bps,
        }
    }

    /// The delay each direction adds: half the round trip.
    pub fn one_way_delay(&self) -> Duration {
        self.rtt / 2
    }

    /// How long `bytes` take to cross the link one way when it is idle: the time to put
    /// them on the wire at the direction's bandwidth plus the one-way delay.
    pub fn transfer_time(&self, direction: Direction, bytes: u64) -> Duration {
        serialization_time(bytes, self.bps(direction)) + self.one_way_delay()
    }

    /// Bytes one direction holds in flight over a whole round trip (its bandwidth-delay
    /// product).
    pub fn bdp_bytes(&self, direction: Direction) -> u64 {
        let bits = u128::from(self.bps(direction)) * self.rtt.as_nanos() / 1_000_000_000;
        u64::try_from(bits / 8).unwrap_or(u64::MAX)
    }

    /// Checks that the emulator can apply this spec.
    pub fn validate(&self) -> Result<(), InvalidSpecError> {
        if self.up_bps == 0 || self.down_bps == 0 {
            return Err(InvalidSpecError::ZeroBandwidth);
        }
        if self.rtt > Duration::from_secs(60) {
            return Err(InvalidSpecError::RoundTripTooLong);
        }
        Ok(())
    }
}

/// Time to put `bytes` on a wire of `bps` bits per second (`bps` > 0).
pub(crate) fn serialization_time(bytes: u64, bps: u64) -> Duration {
    let nanos = u128::from(bytes) * 8 * 1_000_000_000 / u128::from(bps.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_links_match_the_settings() {
        assert_eq!(LinkSpec::DEVICE_EDGE.up_bps, 10_000_000);
        assert_eq!(LinkSpec::DEVICE_CLOUD.down_bps, 36_000_000);
        assert_eq!(LinkSpec::EDGE_CLOUD.rtt, Duration::from_millis(40));
        assert_eq!(LinkSpec::DEVICE_EDGE.reversed().up_bps, 36_000_000);
        // 118 Mbit/s over 40 ms holds 590 kB.
        assert_eq!(LinkSpec::EDGE_CLOUD.bdp_bytes(Direction::Up), 590_000);
        // 1.25 MB at 10 Mbit/s take one second, plus 5 ms of delay.
        assert_eq!(
            LinkSpec::DEVICE_EDGE.transfer_time(Direction::Up, 1_250_000),
            Duration::from_millis(1005)
        );
    }

    #[test]
    fn zero_bandwidth_is_refused() {
        let spec = LinkSpec::new(0, 1, Duration::ZERO);
        assert_eq!(spec.validate(), Err(InvalidSpecError::ZeroBandwidth));
        assert!(LinkSpec::symmetric(1, Duration::from_secs(61))
            .validate()
            .is_err());
        for (_, spec) in LinkSpec::BENCH {
            spec.validate().unwrap();
        }
    }
}
