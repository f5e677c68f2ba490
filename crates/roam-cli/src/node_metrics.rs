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
