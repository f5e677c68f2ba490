//! Hand-written SVG charts for the benchmark results: axes (linear or logarithmic), bars,
//! lines, points, bands and a legend. Enough for a few plots; no plotting library.

use std::fmt::Write as _;

/// An SVG document being drawn.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

/// Escapes text for an SVG text node.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Svg {
    /// An empty drawing of `width` × `height` pixels with a white background.
    pub fn new(width: f64, height: f64) -> Svg {
        let mut svg = Svg {
            width,
            height,
            body: String::new(),
        };
        svg.rect(0.0, 0.0, width, height, "#ffffff", None);
        svg
    }

    /// A filled rectangle, optionally with a stroke colour.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, stroke: Option<&str>) {
        let stroke = stroke.map_or(String::new(), |s| format!(r#" stroke="{s}""#));
        let _ = writeln!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}"{stroke}/>"#,
            w.max(0.0),
            h.max(0.0)
        );
    }

    /// A straight line; `dash` gives a dash pattern such as `"4 3"`.
    pub fn line(
        &mut self,
        (x1, y1): (f64, f64),
        (x2, y2): (f64, f64),
        colour: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" stroke-width="{width}"{dash}/>"#
        );
    }

    /// A line through `points`.
    pub fn polyline(
        &mut self,
        points: &[(f64, f64)],
        colour: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        let list: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>"#,
            list.join(" ")
        );
    }

    /// A dot.
    pub fn circle(&mut self, x: f64, y: f64, r: f64, colour: &str) {
        let _ = writeln!(
            self.body,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{colour}"/>"#
        );
    }

    /// Text; `anchor` is `start`, `middle` or `end`; `rotate` in degrees about (x, y).
    pub fn text(&mut self, x: f64, y: f64, text: &str, size: f64, anchor: &str, rotate: f64) {
        let transform = if rotate != 0.0 {
            format!(r#" transform="rotate({rotate} {x:.1} {y:.1})""#)
        } else {
            String::new()
        };
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-family="sans-serif" font-size="{size}" text-anchor="{anchor}"{transform}>{}</text>"#,
            escape(text)
        );
    }

    /// A legend: one coloured square and label per entry, in a row from (x, y).
    pub fn legend(&mut self, x: f64, y: f64, entries: &[(&str, &str)]) {
        let mut at = x;
        for (colour, label) in entries {
            self.rect(at, y - 9.0, 10.0, 10.0, colour, None);
            self.text(at + 14.0, y, label, 11.0, "start", 0.0);
            at += 24.0 + label.chars().count() as f64 * 6.2;
        }
    }

    /// The finished document.
    pub fn finish(self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n{}</svg>\n",
            self.body,
            w = self.width,
            h = self.height
        )
    }
}

/// A value axis mapped onto a pixel range, linear or base-10 logarithmic.
#[derive(Clone, Copy, Debug)]
pub struct Axis {
    /// Smallest value shown.
    pub min: f64,
    /// Largest value shown.
    pub max: f64,
    /// Logarithmic scale.
    pub log: bool,
    /// Pixel of `min`.
    pub from: f64,
    /// Pixel of `max`.
    pub to: f64,
}

impl Axis {
    /// A logarithmic axis covering `values` (positive ones), widened to whole decades.
    pub fn log_covering(values: impl IntoIterator<Item = f64>, from: f64, to: f64) -> Axis {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
        Axis {
            min: 10f64.powf(lo.log10().floor()),
            max: 10f64
                .powf(hi.log10().ceil())
                .max(10f64.powf(lo.log10().floor() + 1.0)),
            log: true,
            from,
            to,
        }
    }

    /// A linear axis from 0 to a round number above every value.
    pub fn linear_covering(values: impl IntoIterator<Item = f64>, from: f64, to: f64) -> Axis {
        let hi = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let step = 10f64.powf(hi.log10().floor());
        Axis {
            min: 0.0,
            max: (hi / step).ceil() * step,
            log: false,
            from,
            to,
        }
    }

    /// The pixel of `value` (clamped to the axis).
    pub fn map(&self, value: f64) -> f64 {
        let t = if self.log {
            let v = value.max(self.min);
            (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (value - self.min) / (self.max - self.min)
        };
        self.from + t.clamp(0.0, 1.0) * (self.to - self.from)
    }

    /// Tick values: 1, 10, 100 … on a log axis (with 2 and 5 when it spans few decades);
    /// five even steps on a linear one.
    pub fn ticks(&self) -> Vec<f64> {
        if self.log {
            let decades = (self.max / self.min).log10().round() as i32;
            let mut ticks = Vec::new();
            let mut v = self.min;
            while v <= self.max * 1.0001 {
                ticks.push(v);
                if decades <= 3 && v * 2.0 <= self.max {
                    ticks.push(v * 2.0);
                    ticks.push(v * 5.0);
                }
                v *= 10.0;
            }
            ticks.retain(|t| *t <= self.max * 1.0001);
            ticks
        } else {
            (0..=5)
                .map(|i| self.min + (self.max - self.min) * i as f64 / 5.0)
                .collect()
        }
    }
}

/// A short label for a tick value.
pub fn tick_label(value: f64) -> String {
    if value >= 1000.0 && value % 1000.0 == 0.0 {
        format!("{}k", value / 1000.0)
    } else if value >= 1.0 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// Draws a vertical value axis at `x` with grid lines across to `right`, and its title.
pub fn y_axis(svg: &mut Svg, axis: &Axis, x: f64, right: f64, title: &str) {
    for t in axis.ticks() {
        let y = axis.map(t);
        svg.line((x, y), (right, y), "#e4e4e4", 1.0, None);
        svg.text(x - 4.0, y + 4.0, &tick_label(t), 10.0, "end", 0.0);
    }
    svg.line((x, axis.from), (x, axis.to), "#444444", 1.0, None);
    let middle = (axis.from + axis.to) / 2.0;
    svg.text(x - 38.0, middle, title, 11.0, "middle", -90.0);
}

/// Draws a horizontal value axis at `y` with its tick labels and title.
pub fn x_axis(svg: &mut Svg, axis: &Axis, y: f64, title: &str, label: &dyn Fn(f64) -> String) {
    svg.line((axis.from, y), (axis.to, y), "#444444", 1.0, None);
    for t in axis.ticks() {
        let x = axis.map(t);
        svg.line((x, y), (x, y + 4.0), "#444444", 1.0, None);
        svg.text(x, y + 16.0, &label(t), 10.0, "middle", 0.0);
    }
    svg.text(
        (axis.from + axis.to) / 2.0,
        y + 32.0,
        title,
        11.0,
        "middle",
        0.0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_maps_decades_evenly() {
        let axis = Axis::log_covering([3.0, 700.0], 100.0, 0.0);
        assert_eq!((axis.min, axis.max), (1.0, 1000.0));
        assert!((axis.map(10.0) - 66.666).abs() < 0.01);
        assert_eq!(axis.map(0.0), 100.0, "values below the axis sit on it");
    }

    #[test]
    fn the_document_is_closed_and_text_escaped() {
        let mut svg = Svg::new(100.0, 50.0);
        svg.text(1.0, 2.0, "a < b & c", 10.0, "start", 0.0);
        let out = svg.finish();
        assert!(out.starts_with("<svg") && out.trim_end().ends_with("</svg>"));
        assert!(out.contains("a &lt; b &amp; c"));
    }
}
