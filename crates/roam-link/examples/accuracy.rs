//! Measures the four links of the benchmark settings through the emulator and prints a
//! markdown table of what it measured against the settings.
//!
//! Each figure is the median of `RUNS` runs: a bulk transfer of about one second per
//! direction (the rate at the receiver), and 20 ping-pongs of 64 bytes (the median round
//! trip of each run). Run it in release: `cargo run --release -p roam-link --example accuracy`.

use std::time::Duration;

use roam_link::measure::{measure_round_trips, measure_transfer, median};
use roam_link::{Direction, LinkSpec};

const RUNS: usize = 3;
const PINGS: usize = 20;

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let len = values.len();
    if len % 2 == 1 {
        values[len / 2]
    } else {
        (values[len / 2 - 1] + values[len / 2]) / 2.0
    }
}

fn error(measured: f64, set: f64) -> String {
    format!("{:+.2} %", (measured - set) / set * 100.0)
}

fn rate(spec: LinkSpec, direction: Direction) -> Result<f64, Box<dyn std::error::Error>> {
    // About one second of the direction's bandwidth.
    let bytes = spec.bps(direction) / 8;
    let mut rates = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let transfer = match direction {
            Direction::Up => measure_transfer(spec, bytes, 0)?.up_bps,
            Direction::Down => measure_transfer(spec, 0, bytes)?.down_bps,
        };
        rates.push(transfer.ok_or("no bytes were timed")?);
    }
    Ok(median_f64(rates))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("| link | up set | up measured | error | down set | down measured | error | round trip set | measured | error |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, spec) in LinkSpec::BENCH {
        let up = rate(spec, Direction::Up)?;
        let down = rate(spec, Direction::Down)?;
        let mut round_trips: Vec<Duration> = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            round_trips.push(median(&measure_round_trips(spec, PINGS)?));
        }
        let round_trip = median(&round_trips).as_secs_f64() * 1e3;
        let rtt = spec.rtt.as_secs_f64() * 1e3;
        println!(
            "| {name} | {} Mbit/s | {:.2} Mbit/s | {} | {} Mbit/s | {:.2} Mbit/s | {} | {rtt} ms | {round_trip:.2} ms | {} |",
            spec.up_bps / 1_000_000,
            up / 1e6,
            error(up, spec.up_bps as f64),
            spec.down_bps / 1_000_000,
            down / 1e6,
            error(down, spec.down_bps as f64),
            error(round_trip, rtt),
        );
    }
    Ok(())
}
