//! A userspace link emulator for Roam's tests and benchmarks.
//!
//! Roam moves workers between a device, edge servers and the cloud, and how fast a move
//! goes depends on the link it crosses. This crate puts such a link between two
//! processes on one machine: a [`Link`] listens on loopback and forwards every
//! connection to a target, giving each direction its own bandwidth and half of the round
//! trip as delay. The kernel here has no `netem` qdisc, and its `tbf` only shapes
//! bandwidth (and only inside a private network namespace), so the delay has to be
//! emulated in userspace anyway; this crate emulates both.
//!
//! # Tutorial
//!
//! Start a server, put a link in front of it, and connect to the link instead:
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::time::{Duration, Instant};
//!
//! use roam_link::{Link, LinkSpec};
//!
//! // An echo server stands in for an edge node.
//! let server = TcpListener::bind("127.0.0.1:0")?;
//! let target = server.local_addr()?;
//! std::thread::spawn(move || {
//!     let (mut stream, _) = server.accept().unwrap();
//!     let mut buffer = [0; 5];
//!     while stream.read_exact(&mut buffer).is_ok() {
//!         stream.write_all(&buffer).unwrap();
//!     }
//! });
//!
//! // A device reaches it over the device ↔ edge link: 10 Mbit/s up, 36 down, 10 ms.
//! let link = Link::start(LinkSpec::DEVICE_EDGE, target)?;
//! let mut device = TcpStream::connect(link.addr())?;
//! device.set_nodelay(true)?;
//!
//! let sent = Instant::now();
//! device.write_all(b"hello")?;
//! let mut echo = [0; 5];
//! device.read_exact(&mut echo)?;
//! assert!(sent.elapsed() >= Duration::from_millis(10));
//!
//! // The link can change while it runs, for example to replay a trace...
//! link.set_spec(LinkSpec::DEVICE_CLOUD)?;
//! // ...and it counts what went through it.
//! assert_eq!(link.stats().up_bytes, 5);
//!
//! // Cutting it resets the open connections; restoring it lets new ones through.
//! link.set_down(true);
//! assert!(device.read(&mut echo).map_or(true, |read| read == 0));
//! link.set_down(false);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A WebSocket client connects to [`Link::url`]. Dropping the link stops it.
//!
//! # How it works
//!
//! Each direction of each connection has a reader and a pacer thread. The reader stamps
//! every batch of bytes with the moment it read them. The pacer puts batches on the wire
//! in order at the direction's bandwidth (a token bucket that banks no tokens, so an
//! idle link sends no burst), then holds each one for the one-way delay after its last bit
//! left, and writes it to the other side. Times come from the stamps, so late wake-ups
//! delay bytes but never slow the link down. A batch is at most about 2 ms of the
//! bandwidth, so bytes come out smoothly.
//!
//! The link holds at most its bandwidth-delay product over a round trip plus 64 KiB per
//! direction and connection ([`Link::queue_capacity`]); when that is full it stops
//! reading and the sender's writes block, as TCP flow control would make them. A
//! receiver that stops reading holds the link up in the same way.
//!
//! The pacing runs on plain threads, not on an async runtime's timer: tokio's timer
//! rounds every sleep up to the next millisecond, which alone would add up to 2 ms to a
//! 10 ms round trip, while a thread's timed wait is good to about 0.1 ms. The link works
//! the same from synchronous tests and from inside any async runtime.
//!
//! What it does not emulate: loss, jitter, and the TCP handshake (a connection to the
//! link is set up at once; only the bytes on it are delayed).
//!
//! # Accuracy
//!
//! Measured on this machine (2 cores, shared) with `cargo run --release -p roam-link
//! --example accuracy`: the median of 3 bulk transfers of about one second each way (the
//! rate at the receiver, leaving out the one-way delay) and of 3 × 20 ping-pongs of 64
//! bytes. The error is the measured value against the setting.
//!
//! | link | up set | up measured | error | down set | down measured | error | round trip set | measured | error |
//! |---|---|---|---|---|---|---|---|---|---|
//! | device ↔ edge | 10 Mbit/s | 10.00 Mbit/s | +0.04 % | 36 Mbit/s | 36.00 Mbit/s | +0.01 % | 10 ms | 10.19 ms | +1.86 % |
//! | edge ↔ edge | 42 Mbit/s | 42.01 Mbit/s | +0.03 % | 42 Mbit/s | 42.00 Mbit/s | +0.00 % | 10 ms | 10.23 ms | +2.26 % |
//! | edge ↔ cloud | 118 Mbit/s | 118.06 Mbit/s | +0.05 % | 118 Mbit/s | 118.01 Mbit/s | +0.00 % | 40 ms | 40.22 ms | +0.56 % |
//! | device ↔ cloud | 10 Mbit/s | 10.00 Mbit/s | +0.03 % | 36 Mbit/s | 36.00 Mbit/s | +0.00 % | 50 ms | 50.30 ms | +0.59 % |
//!
//! The round trips run long by about 0.2 ms: up to 65 µs of it is the pings' own time on the
//! wire at 10 and 36 Mbit/s, which a real link adds too, about 70 µs is the proxy's
//! hops through loopback (measured with a zero round trip), and the rest is wake-up
//! lateness that the pacer's early wake-up does not absorb.
//!
//! The tests in `tests/link.rs` check the same within 5 % (plus 1 ms for the round
//! trips) on every run. When the machine is so busy that threads wait for a core, pings
//! come back late (never early) by up to a few milliseconds; the round-trip test then
//! measures again, up to three times.
//!
//! The kernel's `tbf` could serve as a reference for the bandwidth: in a private network
//! namespace with the loopback MTU set to 1500, shape `lo` with `tbf` and compare a bulk
//! transfer through it with one through a [`Link`] of the same rate. That check is not
//! part of this crate.
//!
//! # Slow devices
//!
//! A phone is slower than the machine the tests run on. [`CpuQuota`] emulates one by
//! letting a thread, or a whole process, run for only a share of one CPU's time: a cgroup
//! with the cpu controller's bandwidth limit (`cpu.max` on cgroup v2, `cpu.cfs_quota_us`
//! over `cpu.cfs_period_us` on v1). It needs root. Dropping the quota moves everything
//! back to the group it came from and removes the group.
//!
//! ```no_run
//! use roam_link::CpuQuota;
//!
//! // The client's thread gets a quarter of one CPU: a device four times slower.
//! let mut quota = CpuQuota::new(0.25)?;
//! quota.add_current_thread()?;
//! println!("{} at {}", quota.path().display(), quota.version());
//! // ... run the client ...
//! drop(quota);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Measured with `cargo test -p roam-link --test cpu -- --nocapture` on this machine
//! (cgroup v1, the default 10 ms period): a busy loop worth 496 ms of CPU time took
//! 1,980 ms of wall-clock time under `CpuQuota::new(0.25)`, 3.99 times longer. The test
//! checks 3.5 to 4.6 times on every run. It compares with the loop's CPU time, not with an
//! unthrottled run's wall-clock time: on a busy machine the unthrottled run waits for a
//! core too, while the quota's quarter is still met.
//!
//! The period is short by default so that a handler of a few milliseconds is slowed
//! evenly; with the kernel's usual 100 ms it would run at full speed for 25 ms and then
//! wait 75 ms. [`CpuQuota::with_period`] sets another.

#![deny(missing_docs)]

mod conn;
mod cpu;
mod delay_line;
mod link;
pub mod measure;
mod spec;

pub use cpu::{
    AddToCpuQuotaError, CgroupVersion, CpuQuota, CreateCpuQuotaError, RemoveCpuQuotaError,
    TaskKind, DEFAULT_CPU_PERIOD,
};
pub use link::{Link, LinkStats, SetSpecError, StartLinkError};
pub use spec::{Direction, InvalidSpecError, LinkSpec};
