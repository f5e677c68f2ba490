//! `paper.md`: the results as tables, with the targets of the issue checked.

use std::fmt::Write as _;

use super::{MoveRow, PaperResults};

/// Settle time over the limit allowed by the target.
pub const SETTLE_TARGET: f64 = 1.3;
/// Bytes on the wire over the compressed non-zero state allowed by the target.
pub const BYTES_TARGET: f64 = 1.1;

/// Bytes in MiB, or in KiB below one MiB.
fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.2} MiB", bytes as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

pub(crate) fn seconds_or_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// The route of a move, e.g. `device → A`.
pub fn route(row: &MoveRow) -> String {
    format!("{} → {}", row.from, row.to)
}

fn moves_table(s: &mut String, rows: &[&MoveRow]) {
    s.push_str(
        "| app | move | link | settle | limit | settle / limit | stall | stall target | on the wire | module / state / protocol | memory / non-zero | the paper |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} {} | {} | {} | {} | {:.2} | {} | {} | {} | {} / {} / {} | {} / {} | {} |",
            r.app,
            r.kind,
            route(r),
            r.link,
            seconds_or_ms(r.settle_ms),
            seconds_or_ms(r.limit_ms),
            r.settle_over_limit,
            seconds_or_ms(r.stall_ms),
            seconds_or_ms(r.stall_target_ms),
            mib(r.wire_bytes),
            mib(r.module_bytes),
            mib(r.state_bytes),
            mib(r.protocol_bytes),
            mib(r.memory_bytes),
            mib(r.nonzero_bytes),
            r.paper_text
        );
    }
}

/// The whole report.
pub fn markdown(r: &PaperResults) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# The SoCC 2019 evaluation, reproduced\n");
    if r.quick {
        s.push_str("**Quick smoke run** (`--quick`): links 100× faster than BENCH.md, small scenes, one run each. Not comparable with the paper.\n\n");
    }
    let loads: Vec<String> = r
        .load
        .load_average
        .iter()
        .map(|l| format!("{l:.1}"))
        .collect();
    let _ = writeln!(
        s,
        "Machine: {}. The whole benchmark took {:.0} s. How busy the machine was: {:.0} % of all cores busy on average over the run (every process, from /proc/stat; this benchmark's own nodes, links and client included), 1-minute load average {} at the start of each part. Other work on the machine slows the handlers and the link threads, so the times are upper bounds of what the software does here.\n",
        r.machine,
        r.total_s,
        r.load.busy_percent,
        loads.join(" → ")
    );
    s.push_str("How every figure is measured: [docs/benchmarks.md](../../docs/benchmarks.md).\n\n");

    s.push_str("## Links\n\n| link | device up (or each way) | device down | round trip |\n|---|---|---|---|\n");
    for l in &r.links {
        let _ = writeln!(
            s,
            "| {} | {} Mbit/s | {} Mbit/s | {:.0} ms |",
            l.name,
            l.up_bps / 1_000_000,
            l.down_bps / 1_000_000,
            l.rtt_ms
        );
    }
    s.push_str("\n## Applications\n\n| app | message | module | message size | window | messages per stay |\n|---|---|---|---|---|---|\n");
    for a in &r.apps {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            a.app,
            a.workload,
            mib(a.module_bytes),
            mib(a.message_bytes),
            a.window,
            a.phase
        );
    }

    let warm: Vec<&MoveRow> = r.moves.iter().filter(|m| !m.cold).collect();
    let cold: Vec<&MoveRow> = r.moves.iter().filter(|m| m.cold).collect();
    let _ = writeln!(
        s,
        "\n## Moves, module warm (the module is in the destination's cache: how a deployed app runs)\n\nMedians of {} runs each. Settle: from the move's request until the worker runs at the destination with all of its state. Stall: the most a gap between two replies the application saw around the move exceeded the steady-state time per message of the place that answered (the source for the messages the moved state had handled, the destination for the others). Limit: one round trip of the state's link + bytes on the wire / its bandwidth. The paper's figure is its migration time for the application, whatever the move.\n",
        r.runs
    );
    moves_table(&mut s, &warm);
    let _ = writeln!(
        s,
        "\n## Moves, module cold (the destination never saw the module: it is fetched and compiled)\n"
    );
    moves_table(&mut s, &cold);

    s.push_str("\n## Targets (warm moves)\n\n| app | move | stall ≤ handler + 2 × RTT + 30 ms | settle ≤ 1.3 × limit | bytes ≤ 1.1 × compressed non-zero state |\n|---|---|---|---|---|\n");
    for m in &warm {
        let _ = writeln!(
            s,
            "| {} | {} {} | {}: {} vs {} (handler {:.0} ms) | {}: {:.2} × | {}: {:.2} × |",
            m.app,
            m.kind,
            route(m),
            met(m.stall_ms <= m.stall_target_ms),
            seconds_or_ms(m.stall_ms),
            seconds_or_ms(m.stall_target_ms),
            m.handler_ms,
            met(m.settle_over_limit <= SETTLE_TARGET),
            m.settle_over_limit,
            met(m.bytes_over_state <= BYTES_TARGET),
            m.bytes_over_state
        );
    }
    let at_1000 = r.frame_rate.rows.iter().find(|f| f.cubes == 1000);
    match at_1000 {
        Some(f) => {
            let _ = writeln!(
                s,
                "\nOffloaded physics at 1,000 cubes ≥ 60 frames/s: **{}** ({:.1} frames/s).",
                met(f.offloaded_fps >= super::frame_rate::TARGET_FPS),
                f.offloaded_fps
            );
        }
        None => s.push_str("\nOffloaded physics at 1,000 cubes: not measured in this run.\n"),
    }
    let total = warm.len() * 3;
    let passed = warm
        .iter()
        .map(|m| {
            usize::from(m.stall_ms <= m.stall_target_ms)
                + usize::from(m.settle_over_limit <= SETTLE_TARGET)
                + usize::from(m.bytes_over_state <= BYTES_TARGET)
        })
        .sum::<usize>();
    let _ = writeln!(s, "\nMove targets met: {passed} of {total}.");

    s.push_str("\n## Other figures per move (medians)\n\n| app | move | cold | steady time per message at the destination | handler time there | messages in flight | replayed | replies lost (all runs) | every settle (ms) | every stall (ms) |\n|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.moves {
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "| {} | {} {} | {} | {} | {:.1} ms | {} | {} | {} | {} | {} |",
            m.app,
            m.kind,
            route(m),
            if m.cold { "cold" } else { "warm" },
            seconds_or_ms(m.steady_ms),
            m.handler_ms,
            m.in_flight,
            m.replayed,
            m.replies_lost,
            list(&m.settle_ms_runs),
            list(&m.stall_ms_runs)
        );
    }

    let sw = &r.sweep;
    let _ = writeln!(
        s,
        "\n## Memory sweep: handoff A → B, {} % of the memory rewritten per message\n\nLink A → B: {}. The device reaches both edges directly (loopback). Window {}. Medians of the runs given.\n\n| memory | non-zero | compressed state | ratio | runs | time per message | settle | stall | on the wire | limit | settle / limit |\n|---|---|---|---|---|---|---|---|---|---|---|",
        sw.rewrite_percent, sw.link, sw.window
    );
    for row in &sw.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {:.1} ms | {} | {} | {} | {} | {:.2} |",
            mib(row.memory_bytes),
            mib(row.nonzero_bytes),
            mib(row.state_bytes),
            row.compression_ratio,
            row.runs,
            row.message_ms,
            seconds_or_ms(row.settle_ms),
            seconds_or_ms(row.stall_ms),
            mib(row.wire_bytes),
            seconds_or_ms(row.limit_ms),
            row.settle_over_limit
        );
    }

    let fr = &r.frame_rate;
    let _ = writeln!(
        s,
        "\n## Physics frame rate\n\nDevice: {}. Offloaded: to edge A over the device ↔ edge link, {} frames in flight. Frames per second = {} frames (steps of 1/60 s) divided by the time from posting the first to receiving the last reply, after {} warm-up frames; medians of the runs. The paper's server handled about 1,000 cubes at 30–60 frames/s.\n\n| cubes | reply | on the device | offloaded | offloaded / device |\n|---|---|---|---|---|",
        fr.device,
        fr.window,
        fr.frames,
        super::frame_rate::WARMUP_FRAMES
    );
    for row in &fr.rows {
        let _ = writeln!(
            s,
            "| {} | {:.1} KiB | {:.1} frames/s | {:.1} frames/s | {:.1} × |",
            row.cubes,
            row.reply_bytes as f64 / 1024.0,
            row.local_fps,
            row.offloaded_fps,
            row.offloaded_fps / row.local_fps.max(1e-9)
        );
    }
    s.push_str("\nPlots: `paper-moves.svg` (settle and stall per app and move, with the limit and the paper's figure), `paper-sweep.svg`, `paper-frame-rate.svg`.\n");
    s
}
