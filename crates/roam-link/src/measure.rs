//! Measuring a link from the outside, as an application sees it: the throughput of a bulk
//! transfer and the round trip of small ping-pongs. The tests and the `accuracy` example
//! use these to show how close the emulator comes to its spec; benchmarks can use them to
//! check a link before they trust it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::link::{Link, StartLinkError};
use crate::spec::LinkSpec;

/// Size of one ping and of its echo.
const PING_BYTES: usize = 64;
/// Reads of the receiver in a bulk transfer.
const READ_BUFFER: usize = 64 * 1024;

/// [`measure_transfer`] failed.
#[derive(Debug, Error)]
pub enum MeasureTransferError {
    /// cannot start the link
    #[error("cannot start the link")]
    Link(#[from] StartLinkError),
    /// the transfer failed
    #[error("the transfer failed")]
    Io(#[from] io::Error),
    /// the bytes that arrived differ from the bytes sent
    #[error("the bytes that arrived differ from the bytes sent")]
    Corrupted,
    /// the transfer arrived in a single read, too fast to time
    #[error("the transfer arrived in a single read, too fast to time")]
    TooShort,
}

/// [`measure_round_trips`] failed.
#[derive(Debug, Error)]
pub enum MeasureRoundTripError {
    /// cannot start the link
    #[error("cannot start the link")]
    Link(#[from] StartLinkError),
    /// a ping failed
    #[error("a ping failed")]
    Io(#[from] io::Error),
    /// the echo differs from the ping
    #[error("the echo differs from the ping")]
    Corrupted,
}

/// The rates a bulk transfer reached, as its receivers saw them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Transfer {
    /// Bits per second from the client to the target, if bytes were sent up.
    pub up_bps: Option<f64>,
    /// Bits per second from the target to the client, if bytes were sent down.
    pub down_bps: Option<f64>,
}

/// Sends `up_bytes` from a client to a target and `down_bytes` back, at the same time,
/// through a new link with `spec`, and measures each direction's rate at its receiver:
/// the bytes after the first read over the time from the first read to the last. That
/// leaves out the one-way delay, which [`measure_round_trips`] measures.
pub fn measure_transfer(
    spec: LinkSpec,
    up_bytes: u64,
    down_bytes: u64,
) -> Result<Transfer, MeasureTransferError> {
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let link = Link::start(spec, server.local_addr()?)?;
    let target = thread::spawn(move || -> Result<Option<f64>, MeasureTransferError> {
        let (stream, _) = server.accept()?;
        let mut header = [0; 16];
        (&stream).read_exact(&mut header)?;
        let up = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
        let down = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
        let sender = send_in_background(&stream, down)?;
        let up_bps = receive(&stream, up)?;
        sender
            .join()
            .unwrap_or_else(|_| Err(io::ErrorKind::Other.into()))?;
        Ok(up_bps)
    });
    let client = TcpStream::connect(link.addr())?;
    let mut header = [0; 16];
    header[..8].copy_from_slice(&up_bytes.to_le_bytes());
    header[8..].copy_from_slice(&down_bytes.to_le_bytes());
    (&client).write_all(&header)?;
    let sender = send_in_background(&client, up_bytes)?;
    let down_bps = receive(&client, down_bytes)?;
    sender
        .join()
        .unwrap_or_else(|_| Err(io::ErrorKind::Other.into()))?;
    let up_bps = target
        .join()
        .unwrap_or_else(|_| Err(io::Error::from(io::ErrorKind::Other).into()))?;
    Ok(Transfer { up_bps, down_bps })
}

/// Sends `count` pings of 64 bytes through a new link with `spec` to an echo server, one
/// after the other, and returns each one's round trip (after one ping not counted, which
/// sets up the connection).
pub fn measure_round_trips(
    spec: LinkSpec,
    count: usize,
) -> Result<Vec<Duration>, MeasureRoundTripError> {
    let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let link = Link::start(spec, server.local_addr()?)?;
    let echo = thread::spawn(move || -> io::Result<()> {
        let (mut stream, _) = server.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = [0; PING_BYTES];
        loop {
            let read = stream.read(&mut buffer)?;
            if read == 0 {
                return Ok(());
            }
            stream.write_all(&buffer[..read])?;
        }
    });
    let mut client = TcpStream::connect(link.addr())?;
    client.set_nodelay(true)?;
    let mut samples = Vec::with_capacity(count);
    let mut echoed = [0; PING_BYTES];
    for round in 0..=count {
        let ping = [round as u8; PING_BYTES];
        let sent = Instant::now();
        client.write_all(&ping)?;
        client.read_exact(&mut echoed)?;
        let round_trip = sent.elapsed();
        if echoed != ping {
            return Err(MeasureRoundTripError::Corrupted);
        }
        if round > 0 {
            samples.push(round_trip);
        }
    }
    drop(client);
    echo.join()
        .unwrap_or_else(|_| Err(io::ErrorKind::Other.into()))?;
    Ok(samples)
}

/// The median of some durations (the mean of the middle two for an even count).
pub fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        len if len % 2 == 1 => sorted[len / 2],
        len => (sorted[len / 2 - 1] + sorted[len / 2]) / 2,
    }
}

/// The bytes of a transfer follow a pattern that catches lost, repeated or reordered
/// bytes: the byte at offset `n` is `n % 251`. This holds the pattern from offset 0 to
/// one read buffer past the period, so any stretch of it is one slice.
fn pattern() -> Vec<u8> {
    (0..READ_BUFFER + PERIOD)
        .map(|n| (n % PERIOD) as u8)
        .collect()
}

/// The pattern's period: a prime, so it does not line up with buffer sizes.
const PERIOD: usize = 251;

/// The pattern's `len` bytes from `offset` on (`len` ≤ one read buffer).
fn expected(pattern: &[u8], offset: u64, len: usize) -> &[u8] {
    let start = (offset % PERIOD as u64) as usize;
    &pattern[start..start + len]
}

fn send_in_background(
    stream: &TcpStream,
    bytes: u64,
) -> io::Result<thread::JoinHandle<io::Result<()>>> {
    let mut stream = stream.try_clone()?;
    Ok(thread::spawn(move || {
        let pattern = pattern();
        let mut offset = 0;
        while offset < bytes {
            let len = (bytes - offset).min(READ_BUFFER as u64) as usize;
            stream.write_all(expected(&pattern, offset, len))?;
            offset += len as u64;
        }
        Ok(())
    }))
}

/// Reads `bytes` bytes, checks them and returns the rate they came at (`None` for none).
fn receive(mut stream: &TcpStream, bytes: u64) -> Result<Option<f64>, MeasureTransferError> {
    if bytes == 0 {
        return Ok(None);
    }
    let pattern = pattern();
    let mut buffer = vec![0; READ_BUFFER];
    let mut offset = 0;
    let mut first: Option<(Instant, u64)> = None;
    while offset < bytes {
        let want = (bytes - offset).min(READ_BUFFER as u64) as usize;
        let read = stream.read(&mut buffer[..want])?;
        if read == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        if first.is_none() {
            first = Some((Instant::now(), read as u64));
        }
        if buffer[..read] != *expected(&pattern, offset, read) {
            return Err(MeasureTransferError::Corrupted);
        }
        offset += read as u64;
    }
    let last = Instant::now();
    let Some((first_at, first_len)) = first else {
        return Err(MeasureTransferError::TooShort);
    };
    let elapsed = last - first_at;
    if first_len == bytes || elapsed.is_zero() {
        return Err(MeasureTransferError::TooShort);
    }
    Ok(Some(
        (bytes - first_len) as f64 * 8.0 / elapsed.as_secs_f64(),
    ))
}
