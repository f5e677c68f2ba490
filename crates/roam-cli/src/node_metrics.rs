//! Reading a node's `/metrics` (Prometheus text over plain HTTP on the node's address),
//! for the demo and the benchmarks.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};

/// A node's `/metrics` text.
pub(crate) fn metrics(url: &str) -> Result<String> {
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The sum of every series of `name` (all label sets) in Prometheus text.
pub(crate) fn series_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Frame bytes a node counted, in and out.
pub(crate) fn node_bytes(url: &str) -> Result<u64> {
    Ok(series_sum(&metrics(url)?, "roam_bytes_total"))
}

/// A node's handler time so far: (sum in seconds, count), from its `/metrics`.
pub(crate) fn handler_totals(url: &str) -> Result<(f64, u64)> {
    let text = metrics(url)?;
    let value = |name: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    Ok((
        value("roam_message_duration_seconds_sum"),
        value("roam_message_duration_seconds_count") as u64,
    ))
}

/// The value of the series `line_prefix` (name and labels, exactly as the node writes
/// them), 0 when absent.
fn series(text: &str, line_prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// When a handoff ends at its source: a post-copy handoff hands the client over
/// (`Moved`) as soon as the destination runs the worker, and its memory arrives after.
/// The source counts the handoff once the destination holds every chunk
/// (`roam_moves_total{kind="handoff",outcome="ok"}`); a thread watches for that.
pub(crate) struct HandoffWatch {
    destination: String,
    post_copy_before: u64,
    done: std::thread::JoinHandle<Result<std::time::Instant>>,
}

const HANDOFFS_OK: &str = "roam_moves_total{kind=\"handoff\",outcome=\"ok\"}";
const POST_COPY_MOVES: &str = "roam_post_copy_moves_total";

impl HandoffWatch {
    /// Starts watching `source` for its next successful handoff (to `destination`).
    pub(crate) fn start(source: &str, destination: &str) -> Result<HandoffWatch> {
        let before = series(&metrics(source)?, HANDOFFS_OK);
        let post_copy_before = series(&metrics(destination)?, POST_COPY_MOVES);
        let source = source.to_string();
        let done = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                if series(&metrics(&source)?, HANDOFFS_OK) > before {
                    return Ok(std::time::Instant::now());
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{source} did not finish the handoff within 120 s"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(HandoffWatch {
            destination: destination.to_string(),
            post_copy_before,
            done,
        })
    }

    /// Waits for the handoff to end. `Some(when)` if it went post-copy (the destination
    /// counted a post-copy move): the move's settle ends then, not at `Moved`.
    pub(crate) fn post_copy_end(self) -> Result<Option<std::time::Instant>> {
        let done = self
            .done
            .join()
            .map_err(|_| anyhow::anyhow!("the handoff watch panicked"))??;
        let post_copy =
            series(&metrics(&self.destination)?, POST_COPY_MOVES) > self.post_copy_before;
        Ok(post_copy.then_some(done))
    }
}
