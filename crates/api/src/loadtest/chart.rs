//! The sweep chart as a self-contained SVG: for every "replicas-concurrency" point, p50 and p99
//! latency as bars on the left axis and throughput as a line on the right axis, the p99
//! objective as a dashed line and the sustainable capacity marked. Written by hand (a few
//! dozen elements) so the chart needs no plotting or font library.

use std::fmt::Write;
use std::ops::Range;

use super::sweep::{Point, SweepReport};

const WIDTH_MIN: f64 = 720.0;
const SLOT_MIN: f64 = 56.0;
const HEIGHT: f64 = 496.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 108.0;
const BOTTOM: f64 = 84.0;

const P50_COLOUR: &str = "#4e79a7";
const P99_COLOUR: &str = "#f28e2b";
const THROUGHPUT_COLOUR: &str = "#2ca02c";
const SLO_COLOUR: &str = "#d62728";
const GRID_COLOUR: &str = "#e5e5e5";
/// The latency axis stops at this many times the objective.
const LATENCY_CAP: f64 = 4.0;

/// Draws the chart; `title` is its first line.
pub fn svg(report: &SweepReport, title: &str) -> String {
    let g = Geometry::new(report);
    let mut s = String::new();
    header(&mut s, report, title, &g);
    latency_axis(&mut s, &g);
    throughput_axis(&mut s, &g);
    replica_groups(&mut s, &report.points, &g);
    points(&mut s, &report.points, &g);
    objective(&mut s, report.slo_p99_ms, &g);
    throughput_line(&mut s, report, &g);
    frame(&mut s, &report.points, &g);
    s.push_str("</svg>\n");
    s
}

/// The chart's size, its plot area (x0..x1 left to right, y0..y1 top to bottom), the slot each
/// point gets and both axes' ranges.
struct Geometry {
    width: f64,
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    slot: f64,
    latency_max: f64,
    latency_step: f64,
    throughput_max: f64,
    throughput_step: f64,
}

impl Geometry {
    /// Sizes the chart for `report`'s points and picks both axes' ranges.
    fn new(report: &SweepReport) -> Self {
        let points = &report.points;
        let n = points.len().max(1) as f64;
        let width = (LEFT + RIGHT + n * SLOT_MIN).max(WIDTH_MIN);
        let (x0, x1, y0, y1) = (LEFT, width - RIGHT, TOP, HEIGHT - BOTTOM);
        let slot = (x1 - x0) / n;

        // Up to a few times the objective: a saturated point's p99 can be a hundred times it, and
        // would flatten everything that matters. Taller bars are cut and labelled with their value.
        let latency_top = points
            .iter()
            .map(|p| p.report.latency_ms.p99)
            .fold(report.slo_p99_ms, f64::max)
            .min(report.slo_p99_ms * LATENCY_CAP);
        let (latency_max, latency_step) = axis(latency_top);
        let throughput_top = points.iter().map(|p| p.report.throughput_per_s).fold(0.0, f64::max);
        let (throughput_max, throughput_step) = axis(throughput_top);
        Self { width, x0, x1, y0, y1, slot, latency_max, latency_step, throughput_max, throughput_step }
    }

    /// The height of a latency in ms on the left axis, capped at its top.
    fn y_latency(&self, ms: f64) -> f64 {
        self.y1 - (ms / self.latency_max).min(1.0) * (self.y1 - self.y0)
    }

    /// The height of a throughput in requests/s on the right axis, capped at its top.
    fn y_throughput(&self, rps: f64) -> f64 {
        self.y1 - (rps / self.throughput_max).min(1.0) * (self.y1 - self.y0)
    }

    /// The middle of point `i`'s slot.
    fn centre(&self, i: usize) -> f64 {
        self.x0 + self.slot * (i as f64 + 0.5)
    }
}

/// Draws the opening tag, the background, the title, the summary lines and the legend.
fn header(s: &mut String, report: &SweepReport, title: &str, g: &Geometry) {
    open(s, (g.width, HEIGHT), g.x0, title, &summary(report));
    legend(s, g.x0, 92.0);
}

/// The summary lines under the title: the sustainable capacity, the scaling target and, with a
/// price, what a million frames cost; or that there is no capacity.
fn summary(report: &SweepReport) -> [String; 3] {
    let cost = report.cost.as_ref().map_or(String::new(), |c| {
        format!(
            "cost: {:.2} USD per million frames at capacity, {:.2} at the scaling target ({} USD/h: {})",
            c.usd_per_million_frames_at_capacity,
            c.usd_per_million_frames_at_scaling_target,
            c.usd_per_hour,
            c.price_source
        )
    });
    match (&report.capacity, &report.scaling_target) {
        (Some(c), Some(t)) => [
            format!(
                "sustainable capacity: {:.1} requests/s per instance at {} (p99 {:.0} ms ≤ {} ms objective)",
                c.requests_per_s,
                c.label,
                c.p99_ms,
                number(report.slo_p99_ms, 1.0)
            ),
            format!("scaling target: {:.1} {} (capacity × headroom {})", t.value, t.unit, report.headroom),
            cost,
        ],
        _ => [
            format!(
                "no point kept p99 ≤ {} ms without errors: no sustainable capacity",
                number(report.slo_p99_ms, 1.0)
            ),
            String::new(),
            String::new(),
        ],
    }
}

/// Draws the grid and the left axis (latency): its tick labels and its title.
fn latency_axis(s: &mut String, g: &Geometry) {
    let (x0, x1) = (g.x0, g.x1);
    let _ = writeln!(s, r#"<g class="latency-axis">"#);
    let mut tick = 0.0;
    while tick <= g.latency_max + g.latency_step / 2.0 {
        let y = g.y_latency(tick);
        let _ = writeln!(s, r#"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{GRID_COLOUR}"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            number(tick, g.latency_step)
        );
        tick += g.latency_step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency (ms): p50, p99 bars</text>"#,
        (g.y0 + g.y1) / 2.0
    );
    let _ = writeln!(s, "</g>");
}

/// Draws the right axis (throughput): its tick labels and its title.
fn throughput_axis(s: &mut String, g: &Geometry) {
    let _ = writeln!(s, r#"<g class="throughput-axis">"#);
    let mut tick = 0.0;
    while tick <= g.throughput_max + g.throughput_step / 2.0 {
        let y = g.y_throughput(tick);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{THROUGHPUT_COLOUR}">{}</text>"#,
            g.x1 + 6.0,
            y + 4.0,
            number(tick, g.throughput_step)
        );
        tick += g.throughput_step;
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate({:.1} {:.1}) rotate(90)" text-anchor="middle" fill="{THROUGHPUT_COLOUR}">throughput (requests/s): line</text>"#,
        g.width - 16.0,
        (g.y0 + g.y1) / 2.0
    );
    let _ = writeln!(s, "</g>");
}

/// The runs of consecutive points with the same replica count, as `start..end` index ranges.
fn replica_runs(points: &[Point]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=points.len() {
        if i == points.len() || points[i].replicas != points[start].replicas {
            runs.push(start..i);
            start = i;
        }
    }
    runs
}

/// Draws the replica groups: each one's caption, and a separator before each new replica count.
fn replica_groups(s: &mut String, points: &[Point], g: &Geometry) {
    for run in replica_runs(points) {
        let (start, end) = (run.start, run.end);
        let caption = match points[start].replicas {
            Some(1) => "1 replica".to_string(),
            Some(r) => format!("{r} replicas"),
            None => "given server".to_string(),
        };
        let middle = (g.centre(start) + g.centre(end - 1)) / 2.0;
        let _ = writeln!(
            s,
            r#"<text x="{middle:.1}" y="{:.1}" text-anchor="middle" font-style="italic">{caption}</text>"#,
            g.y1 + 44.0
        );
        if start > 0 {
            let (x, y0) = (g.x0 + g.slot * start as f64, g.y0);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="2 3"/>"##,
                g.y1 + 48.0
            );
        }
    }
}

/// Draws one group per point: its p50 and p99 bars, its label, its errors and a tooltip.
fn points(s: &mut String, points: &[Point], g: &Geometry) {
    let bar = (g.slot * 0.3).min(22.0);
    for (i, p) in points.iter().enumerate() {
        let (cx, l) = (g.centre(i), &p.report.latency_ms);
        let errors = p.report.requests - p.report.ok;
        let _ = writeln!(s, r#"<g class="point" data-label="{}">"#, escape(&p.label));
        let _ = writeln!(
            s,
            "<title>{}: {:.1} requests/s, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {errors} errors</title>",
            escape(&p.label),
            p.report.throughput_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.max
        );
        for (value, x, colour, class) in
            [(l.p50, cx - bar - 1.0, P50_COLOUR, "p50"), (l.p99, cx + 1.0, P99_COLOUR, "p99")]
        {
            let y = g.y_latency(value);
            let _ = writeln!(
                s,
                r#"<rect class="{class}" x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{:.1}" fill="{colour}"/>"#,
                (g.y1 - y).max(0.0)
            );
        }
        if l.p99 > g.latency_max {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{P99_COLOUR}">↑{:.0}</text>"#,
                g.y0 - 3.0,
                l.p99
            );
        }
        // Points that do not count towards capacity have their label in the objective's colour.
        let colour = if p.meets_slo { "black" } else { SLO_COLOUR };
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="{colour}">{}</text>"#,
            g.y1 + 18.0,
            escape(&p.label)
        );
        if errors > 0 {
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{SLO_COLOUR}">{errors} err</text>"#,
                g.y1 + 30.0
            );
        }
        let _ = writeln!(s, "</g>");
    }
}

/// Draws the p99 objective as a dashed line with its label.
fn objective(s: &mut String, slo_p99_ms: f64, g: &Geometry) {
    let (x0, x1, y) = (g.x0, g.x1, g.y_latency(slo_p99_ms));
    let _ = writeln!(
        s,
        r#"<line class="slo" x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="{SLO_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" fill="{SLO_COLOUR}">p99 objective {} ms</text>"#,
        x0 + 4.0,
        y - 5.0,
        number(slo_p99_ms, 1.0)
    );
}

/// Draws the throughput: one line per replica count (points of different servers are not a
/// series), a labelled dot per point and a circle round the sustainable capacity.
fn throughput_line(s: &mut String, report: &SweepReport, g: &Geometry) {
    let points = &report.points;
    let _ = writeln!(s, r#"<g class="throughput">"#);
    for run in replica_runs(points) {
        let line: Vec<String> = run
            .map(|j| format!("{:.1},{:.1}", g.centre(j), g.y_throughput(points[j].report.throughput_per_s)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{THROUGHPUT_COLOUR}" stroke-width="2"/>"#,
            line.join(" ")
        );
    }
    for (i, p) in points.iter().enumerate() {
        let (cx, y) = (g.centre(i), g.y_throughput(p.report.throughput_per_s));
        let _ = writeln!(s, r#"<circle cx="{cx:.1}" cy="{y:.1}" r="3.5" fill="{THROUGHPUT_COLOUR}"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{THROUGHPUT_COLOUR}">{:.1}</text>"#,
            y - 8.0,
            p.report.throughput_per_s
        );
    }
    if let Some(c) = &report.capacity {
        if let Some(i) = points.iter().position(|p| p.label == c.label) {
            let (cx, y) = (g.centre(i), g.y_throughput(c.requests_per_s));
            let _ = writeln!(
                s,
                r#"<circle class="capacity" cx="{cx:.1}" cy="{y:.1}" r="8" fill="none" stroke="black" stroke-width="1.5"/>"#
            );
        }
    }
    let _ = writeln!(s, "</g>");
}

/// Draws the frame: the bottom, left and right axis lines and the horizontal axis's title.
fn frame(s: &mut String, points: &[Point], g: &Geometry) {
    let (x0, x1, y0, y1) = (g.x0, g.x1, g.y0, g.y1);
    let _ = writeln!(s, r#"<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="black"/>"#);
    let _ = writeln!(s, r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#);
    let _ = writeln!(s, r#"<line x1="{x1}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="{THROUGHPUT_COLOUR}"/>"#);
    let axis_title = if points.iter().any(|p| p.replicas.is_some()) { "replicas-concurrency" } else { "concurrency" };
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{axis_title}</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 14.0
    );
}

fn legend(s: &mut String, x: f64, y: f64) {
    let items = [
        (P50_COLOUR, "p50 latency", false),
        (P99_COLOUR, "p99 latency", false),
        (THROUGHPUT_COLOUR, "throughput (circled: sustainable capacity)", true),
    ];
    let mut x = x;
    for (colour, label, line) in items {
        if line {
            let _ = writeln!(
                s,
                r#"<line x1="{x}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{colour}" stroke-width="2"/>"#,
                y - 4.0,
                x + 14.0,
                y - 4.0
            );
        } else {
            let _ = writeln!(s, r#"<rect x="{x}" y="{:.1}" width="14" height="10" fill="{colour}"/>"#, y - 9.0);
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{y}">{label}</text>"#, x + 18.0);
        x += 28.0 + label.len() as f64 * 6.3;
    }
    let _ = writeln!(
        s,
        r#"<line x1="{x}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{SLO_COLOUR}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
        y - 4.0,
        x + 20.0,
        y - 4.0
    );
    let _ = writeln!(s, r#"<text x="{:.1}" y="{y}">p99 objective</text>"#, x + 24.0);
}

/// The `<svg>` element of `size` on a white ground, the title in bold at `x0` and up to three
/// summary lines under it.
pub(super) fn open(s: &mut String, size: (f64, f64), x0: f64, title: &str, summary: &[String]) {
    let (width, height) = size;
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{x0}" y="22" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    for (line, y) in summary.iter().zip([42.0, 58.0, 74.0]) {
        let _ = writeln!(s, r#"<text x="{x0}" y="{y}">{}</text>"#, escape(line));
    }
}

/// A rounded axis maximum at or above `top` and a step of 1, 2 or 5 × 10^k giving about five
/// ticks.
pub(super) fn axis(top: f64) -> (f64, f64) {
    let top = if top.is_finite() && top > 0.0 { top * 1.05 } else { 1.0 };
    let raw = top / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|&s| s >= raw).unwrap_or(10.0 * magnitude);
    ((top / step).ceil() * step, step)
}

/// A tick label with as many decimals as the step needs.
pub(super) fn number(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10().floor()) as usize };
    format!("{value:.decimals$}")
}

pub(super) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round_and_cover_the_data() {
        for top in [0.3, 7.0, 34.0, 99.0, 292.4, 1234.0] {
            let (max, step) = axis(top);
            assert!(max >= top, "{top}: {max}");
            let mantissa = step / 10f64.powf(step.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-9), "{top}: step {step}");
            assert!((3.0..=11.0).contains(&(max / step)), "{top}: {max}/{step}");
        }
    }

    #[test]
    fn one_group_per_point_and_the_capacity_circled() {
        use crate::loadtest::sweep::tests::{point, report};
        let report = report(vec![
            point(Some(1), 1, 30.0, 40.0, 0),
            point(Some(1), 4, 60.0, 200.0, 0),
            point(Some(2), 4, 70.0, 400.0, 3),
        ]);
        let svg = svg(&report, "a <title> & more");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed");
        let class = |c: &str| doc.descendants().filter(|n| n.attribute("class") == Some(c)).count();
        assert_eq!(class("point"), 3);
        assert_eq!((class("p50"), class("p99"), class("capacity"), class("slo")), (3, 3, 1, 1));
        let labels: Vec<_> = doc.descendants().filter_map(|n| n.attribute("data-label")).collect();
        assert_eq!(labels, ["1-1", "1-4", "2-4"]);
        assert!(svg.contains("3 err"));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
