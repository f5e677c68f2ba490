//! The SVG plots of `roam bench paper`.

use super::{FrameRate, MoveRow, PaperResults, Sweep};
use crate::svg::{tick_label, x_axis, y_axis, Axis, Svg};

const SETTLE: &str = "#3b6fb6";
const STALL: &str = "#e08a2c";
const LIMIT: &str = "#222222";
const PAPER: &str = "#d9d9d9";

/// Settle and stall per move (warm), one panel per application, on a log scale, with
/// each move's limit and the paper's migration time as a band.
pub fn moves(r: &PaperResults) -> String {
    let apps: Vec<&str> = r.apps.iter().map(|a| a.app.as_str()).collect();
    let (panel_w, top, bottom, left) = (330.0, 50.0, 300.0, 70.0);
    let mut svg = Svg::new(left + panel_w * apps.len().max(1) as f64 + 20.0, 390.0);
    let warm: Vec<&MoveRow> = r.moves.iter().filter(|m| !m.cold).collect();
    let values = warm.iter().flat_map(|m| {
        [
            m.settle_ms,
            m.stall_ms.max(1.0),
            m.limit_ms,
            m.paper_s.0 * 1e3,
            m.paper_s.1 * 1e3,
        ]
    });
    let y = Axis::log_covering(values, bottom, top);
    svg.text(
        left,
        20.0,
        "Moves (module warm): settle and stall per app, the limit (—) and the paper's migration time (grey band)",
        13.0,
        "start",
        0.0,
    );
    y_axis(
        &mut svg,
        &y,
        left,
        left + panel_w * apps.len() as f64,
        "ms (log scale)",
    );
    for (p, app) in apps.iter().enumerate() {
        let x0 = left + panel_w * p as f64;
        let rows: Vec<&&MoveRow> = warm.iter().filter(|m| m.app == *app).collect();
        if let Some(first) = rows.first() {
            let (lo, hi) = (y.map(first.paper_s.0 * 1e3), y.map(first.paper_s.1 * 1e3));
            svg.rect(
                x0 + 8.0,
                hi,
                panel_w - 16.0,
                (lo - hi).max(2.0),
                PAPER,
                None,
            );
        }
        svg.text(x0 + panel_w / 2.0, top - 8.0, app, 12.0, "middle", 0.0);
        let slot = (panel_w - 20.0) / rows.len().max(1) as f64;
        for (i, m) in rows.iter().enumerate() {
            let cx = x0 + 10.0 + slot * (i as f64 + 0.5);
            let bar = (slot / 3.0).min(22.0);
            let settle = y.map(m.settle_ms);
            let stall = y.map(m.stall_ms.max(y.min));
            svg.rect(cx - bar, settle, bar, bottom - settle, SETTLE, None);
            svg.rect(cx, stall, bar, bottom - stall, STALL, None);
            let limit = y.map(m.limit_ms);
            svg.line(
                (cx - bar - 3.0, limit),
                (cx + bar + 3.0, limit),
                LIMIT,
                2.0,
                None,
            );
            svg.text(cx, bottom + 14.0, &m.kind, 10.0, "middle", 0.0);
            svg.text(
                cx,
                bottom + 26.0,
                &super::report::route(m),
                9.0,
                "middle",
                0.0,
            );
        }
        svg.line(
            (x0 + panel_w, top),
            (x0 + panel_w, bottom),
            "#bbbbbb",
            1.0,
            Some("3 3"),
        );
    }
    svg.line(
        (left, bottom),
        (left + panel_w * apps.len() as f64, bottom),
        "#444444",
        1.0,
        None,
    );
    svg.legend(
        left,
        370.0,
        &[
            (SETTLE, "settle"),
            (STALL, "stall"),
            (LIMIT, "limit: RTT + bytes / bandwidth"),
            (PAPER, "the paper's migration time"),
        ],
    );
    svg.finish()
}

/// A line of the sweep plot: colour, dash pattern, value.
type Series = (
    &'static str,
    Option<&'static str>,
    fn(&super::SweepRow) -> f64,
);

/// Settle, stall and limit against memory size, log-log.
pub fn sweep(sweep: &Sweep) -> String {
    let (left, right, top, bottom) = (80.0, 600.0, 50.0, 330.0);
    let mut svg = Svg::new(640.0, 400.0);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let x = Axis::log_covering(sweep.rows.iter().map(|r| mib(r.memory_bytes)), left, right);
    let y = Axis::log_covering(
        sweep
            .rows
            .iter()
            .flat_map(|r| [r.settle_ms, r.stall_ms.max(1.0), r.limit_ms]),
        bottom,
        top,
    );
    svg.text(
        left,
        22.0,
        &format!(
            "Memory sweep: handoff A → B over {}, {} % rewritten per message",
            sweep.link, sweep.rewrite_percent
        ),
        13.0,
        "start",
        0.0,
    );
    y_axis(&mut svg, &y, left, right, "ms (log scale)");
    x_axis(
        &mut svg,
        &x,
        bottom,
        "worker memory, MiB (log scale)",
        &tick_label,
    );
    let series: [Series; 3] = [
        (SETTLE, None, |r| r.settle_ms),
        (STALL, None, |r| r.stall_ms),
        (LIMIT, Some("5 4"), |r| r.limit_ms),
    ];
    for (colour, dash, value) in series {
        let points: Vec<(f64, f64)> = sweep
            .rows
            .iter()
            .map(|r| (x.map(mib(r.memory_bytes)), y.map(value(r).max(y.min))))
            .collect();
        svg.polyline(&points, colour, 2.0, dash);
        for (px, py) in points {
            svg.circle(px, py, 3.0, colour);
        }
    }
    svg.legend(
        left,
        385.0,
        &[
            (SETTLE, "settle"),
            (STALL, "stall"),
            (LIMIT, "limit (dashed)"),
        ],
    );
    svg.finish()
}

/// Frames per second against cubes: on the slow device and offloaded.
pub fn frame_rate(fr: &FrameRate) -> String {
    let (left, right, top, bottom) = (70.0, 600.0, 50.0, 330.0);
    let mut svg = Svg::new(640.0, 400.0);
    let max_cubes = fr
        .rows
        .iter()
        .map(|r| r.cubes)
        .max()
        .unwrap_or(1000)
        .max(1000);
    let x = Axis {
        min: 0.0,
        max: f64::from(max_cubes),
        log: false,
        from: left,
        to: right,
    };
    let y = Axis::linear_covering(
        fr.rows
            .iter()
            .flat_map(|r| [r.local_fps, r.offloaded_fps])
            .chain([super::frame_rate::TARGET_FPS * 1.1]),
        bottom,
        top,
    );
    svg.text(
        left,
        22.0,
        "Physics frame rate: slow device versus offloaded to an edge",
        13.0,
        "start",
        0.0,
    );
    y_axis(&mut svg, &y, left, right, "frames per second");
    x_axis(&mut svg, &x, bottom, "cubes", &tick_label);
    let (lo, hi) = super::frame_rate::PAPER_FPS;
    let paper_x = x.map(1000.0);
    svg.rect(
        paper_x - 6.0,
        y.map(hi),
        12.0,
        y.map(lo) - y.map(hi),
        PAPER,
        Some("#999999"),
    );
    let target = y.map(super::frame_rate::TARGET_FPS);
    svg.line((left, target), (right, target), "#c0392b", 1.0, Some("6 4"));
    svg.text(
        right,
        target - 4.0,
        "target: 60 frames/s at 1,000 cubes",
        10.0,
        "end",
        0.0,
    );
    for (colour, value) in [
        (
            STALL,
            (|r: &super::FrameRateRow| r.local_fps) as fn(&super::FrameRateRow) -> f64,
        ),
        (SETTLE, |r| r.offloaded_fps),
    ] {
        let points: Vec<(f64, f64)> = fr
            .rows
            .iter()
            .map(|r| (x.map(f64::from(r.cubes)), y.map(value(r))))
            .collect();
        svg.polyline(&points, colour, 2.0, None);
        for (px, py) in points {
            svg.circle(px, py, 3.0, colour);
        }
    }
    svg.legend(
        left,
        385.0,
        &[
            (STALL, "on the slow device"),
            (SETTLE, "offloaded to edge A"),
            (PAPER, "the paper's server, ~1,000 cubes"),
        ],
    );
    svg.finish()
}
