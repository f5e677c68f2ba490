//! One proxied connection: four threads, a reader and a pacer for each direction. A
//! reader stamps what it reads and queues it (waiting while the queue is full, which is
//! how backpressure reaches the sender); a pacer runs the queue through the direction's
//! [`DelayLine`] and writes each batch when it reaches the far side.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;

use crate::delay_line::{Batch, DelayLine};
use crate::link::Shared;
use crate::spec::{Direction, LinkSpec};

/// Extra room in each direction's queue beyond the bandwidth-delay product, so a link
/// with a tiny product still moves whole batches.
const QUEUE_MARGIN: u64 = 64 * 1024;
/// Smallest and largest read: about one segment, and a cap that keeps delivery smooth.
const MIN_BATCH: u64 = 1448;
const MAX_BATCH: u64 = 64 * 1024;
/// A blocked write wakes this often to see whether the connection was closed meanwhile.
const WRITE_POLL: Duration = Duration::from_millis(20);

/// The bytes one direction may hold: the bandwidth-delay product over a round trip plus a
/// margin. With less, the link would idle while the sender waits; with more, the proxy
/// would only hide the receiver's backpressure.
pub(crate) fn queue_capacity(spec: &LinkSpec, direction: Direction) -> u64 {
    spec.bdp_bytes(direction).saturating_add(QUEUE_MARGIN)
}

/// How much one read takes: about 2 ms of the direction's bandwidth, so bytes come out
/// of the link in steps no coarser than that.
fn batch_size(spec: &LinkSpec, direction: Direction) -> u64 {
    (spec.bps(direction) / 8 / 500).clamp(MIN_BATCH, MAX_BATCH)
}

/// The shared state of one direction.
#[derive(Debug, Default)]
pub(crate) struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct PipeState {
    arrivals: VecDeque<Batch>,
    /// Bytes read from the sender and not yet written to the receiver.
    queued: u64,
    closed: bool,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn queued(&self) -> u64 {
        self.lock().queued
    }

    /// Wakes both threads of the direction (a spec changed or the connection closed).
    pub(crate) fn poke(&self) {
        let _state = self.lock();
        self.changed.notify_all();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

/// A connection between a client of the link and the target.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) client: TcpStream,
    pub(crate) target: TcpStream,
    pub(crate) up: Pipe,
    pub(crate) down: Pipe,
}

impl Conn {
    pub(crate) fn new(client: TcpStream, target: TcpStream) -> Conn {
        Conn {
            client,
            target,
            up: Pipe::default(),
            down: Pipe::default(),
        }
    }

    pub(crate) fn pipe(&self, direction: Direction) -> &Pipe {
        match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        }
    }

    /// Ends the connection at once, dropping what the link still holds. With `reset`,
    /// both peers get a TCP reset (the link was cut); without, they see the stream end.
    pub(crate) fn close(&self, reset: bool) {
        for stream in [&self.client, &self.target] {
            if reset {
                // Linger zero turns the final close into a reset.
                let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
                // Shutting the read side wakes the readers without telling the peer
                // anything; the reset goes out when the last thread drops its handle.
                let _ = stream.shutdown(Shutdown::Read);
            } else {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        self.up.close();
        self.down.close();
    }

    /// Runs the connection until both directions end or it is closed.
    pub(crate) fn run(&self, shared: &Shared) {
        thread::scope(|scope| {
            for direction in Direction::BOTH {
                let spawned = thread::Builder::new()
                    .name(format!("roam-link-{}-read", direction.name()))
                    .spawn_scoped(scope, move || self.read(shared, direction));
                let spawned = spawned.and_then(|_| {
                    thread::Builder::new()
                        .name(format!("roam-link-{}-pace", direction.name()))
                        .spawn_scoped(scope, move || self.pace(shared, direction))
                });
                if let Err(error) = spawned {
                    tracing::warn!(%error, "link: cannot start a connection thread");
                    self.close(true);
                }
            }
        });
    }

    fn ends(&self, direction: Direction) -> (&TcpStream, &TcpStream) {
        match direction {
            Direction::Up => (&self.client, &self.target),
            Direction::Down => (&self.target, &self.client),
        }
    }

    fn read(&self, shared: &Shared, direction: Direction) {
        let (mut from, _) = self.ends(direction);
        let pipe = self.pipe(direction);
        loop {
            let want = {
                let mut state = pipe.lock();
                loop {
                    if state.closed {
                        return;
                    }
                    let spec = shared.spec();
                    let capacity = queue_capacity(&spec, direction);
                    if state.queued < capacity {
                        break (capacity - state.queued).min(batch_size(&spec, direction));
                    }
                    state = pipe
                        .changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
            };
            let mut bytes = vec![0; usize::try_from(want).unwrap_or(usize::MAX)];
            let read = match from.read(&mut bytes) {
                Ok(read) => read,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::debug!(%error, direction = direction.name(), "link: read failed, resetting");
                    self.close(true);
                    return;
                }
            };
            let arrived = Instant::now();
            bytes.truncate(read);
            let mut state = pipe.lock();
            if state.closed {
                return;
            }
            state.queued += read as u64;
            state.arrivals.push_back(Batch { bytes, arrived });
            pipe.changed.notify_all();
            if read == 0 {
                // The sender closed its side; the pacer passes that on after the delay.
                return;
            }
        }
    }

    fn pace(&self, shared: &Shared, direction: Direction) {
        let (_, mut to) = self.ends(direction);
        let pipe = self.pipe(direction);
        let counter = match direction {
            Direction::Up => &shared.up_bytes,
            Direction::Down => &shared.down_bytes,
        };
        let mut line = DelayLine::default();
        let mut lateness = Lateness::default();
        loop {
            let ready = {
                let mut state = pipe.lock();
                loop {
                    if state.closed {
                        return;
                    }
                    let spec = shared.spec();
                    let now = Instant::now();
                    line.advance(
                        now,
                        &mut state.arrivals,
                        spec.bps(direction),
                        spec.one_way_delay(),
                    );
                    let ready = line.take_ready(now);
                    if !ready.is_empty() {
                        break ready;
                    }
                    state = match line.next_event() {
                        Some(at) => {
                            let left = at.saturating_duration_since(now);
                            // Only a lone batch (a message, not a stream) is worth waking
                            // early for: in a stream, lateness delays bytes but not the
                            // rate, and spinning for every batch would cost a core.
                            let early = if line.is_lone() {
                                lateness.estimate()
                            } else {
                                Duration::ZERO
                            };
                            if left <= early {
                                // Too close to sleep without overshooting. Spin rather
                                // than yield: on a busy machine a yield gives the core
                                // away for a whole time slice.
                                drop(state);
                                while Instant::now() < at {
                                    std::hint::spin_loop();
                                }
                                pipe.lock()
                            } else {
                                let deadline = at - early;
                                let (state, waited) = pipe
                                    .changed
                                    .wait_timeout(state, left - early)
                                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                                if waited.timed_out() {
                                    lateness.observe(
                                        Instant::now().saturating_duration_since(deadline),
                                    );
                                }
                                state
                            }
                        }
                        None => pipe
                            .changed
                            .wait(state)
                            .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    };
                }
            };
            for bytes in ready {
                if bytes.is_empty() {
                    // End of stream: half-close towards the receiver, as the sender did.
                    let _ = to.shutdown(Shutdown::Write);
                    return;
                }
                // Counted before the write, so a peer that has read the bytes always
                // finds them in the stats.
                counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                match write_all(&mut to, &bytes, pipe) {
                    Ok(Write::Blocked) => line.hold(Instant::now()),
                    Ok(Write::Done) => {}
                    Err(error) => {
                        if error.kind() != ErrorKind::NotConnected {
                            tracing::debug!(%error, direction = direction.name(), "link: write failed, resetting");
                            self.close(true);
                        }
                        return;
                    }
                }
                let mut state = pipe.lock();
                state.queued -= bytes.len() as u64;
                pipe.changed.notify_all();
            }
        }
    }
}

/// How late a timed wait wakes up, learnt as the pacer goes.
///
/// A thread asked to wake at some moment wakes a little after it: the kernel's timer
/// slack (50 µs by default) plus the time an idle core takes to wake, which on a virtual
/// machine is often another 100 µs or more. Two such waits per round trip would add
/// 0.4 ms to it, 4 % of a 10 ms link. So the pacer sleeps until that much before a batch
/// is due and spins for the rest, when the batch is a lone message.
#[derive(Debug)]
struct Lateness {
    /// Moving average, in nanoseconds.
    average_ns: u64,
}

impl Lateness {
    /// The most the pacer wakes early: bounds the time it spends spinning when the
    /// machine is so busy that wake-ups come very late.
    const CAP: Duration = Duration::from_micros(500);

    fn estimate(&self) -> Duration {
        Duration::from_nanos(self.average_ns).min(Self::CAP)
    }

    fn observe(&mut self, late: Duration) {
        let late = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
        // An average over about the last eight waits.
        self.average_ns = (self.average_ns * 7 + late.min(10_000_000)) / 8;
    }
}

impl Default for Lateness {
    fn default() -> Lateness {
        Lateness {
            average_ns: 100_000,
        }
    }
}

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// At once.
    Done,
    /// Only after the receiver's buffer had been full for a whole [`WRITE_POLL`].
    Blocked,
}

/// Writes all of `bytes`, waking every [`WRITE_POLL`] (the socket's send timeout) to give
/// up if the connection was closed meanwhile (reported as `NotConnected`).
fn write_all(to: &mut &TcpStream, mut bytes: &[u8], pipe: &Pipe) -> io::Result<Write> {
    let mut outcome = Write::Done;
    while !bytes.is_empty() {
        match to.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                outcome = Write::Blocked;
                if pipe.lock().closed {
                    return Err(ErrorKind::NotConnected.into());
                }
            }
            Err(error) => return Err(error),
        }
    }
    Ok(outcome)
}

/// Sets up a socket of the proxy: no Nagle delay (the link decides when bytes move) and a
/// send timeout so a blocked write can notice the connection closing.
pub(crate) fn prepare_socket(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_POLL))
}
