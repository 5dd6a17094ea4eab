//! The soak chart as a self-contained SVG: one panel per sampled quantity (resident memory, open
//! file descriptors, threads, `/metrics` series) over the run's minutes, a line per process, the
//! warm-up shaded, and the verdict in the header.

use std::fmt::Write;

use super::chart::{axis, escape, number, open};
use super::soak::{process_names, SoakReport, QUANTITIES};

const WIDTH: f64 = 880.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 112.0;
const PANEL: f64 = 130.0;
const GAP: f64 = 42.0;
const COLOURS: [&str; 6] = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"];
const GRID_COLOUR: &str = "#e5e5e5";

const LABELS: [&str; 4] = ["resident memory, MiB", "open file descriptors", "threads", "/metrics series"];

/// Draws the chart; `title` is its first line.
pub fn svg(report: &SoakReport, title: &str) -> String {
    let height = TOP + QUANTITIES.len() as f64 * (PANEL + GAP) + 10.0;
    let mut s = String::new();
    open(&mut s, (WIDTH, height), LEFT, title, &summary(report));
    let processes = process_names(&report.samples);
    let minutes = report.samples.iter().map(|p| p.elapsed_s / 60.0).fold(0.0, f64::max);
    let (x_max, x_step) = axis(minutes);
    let plot_width = WIDTH - LEFT - RIGHT;
    let x = |m: f64| LEFT + m / x_max * plot_width;

    for (i, ((_, read), label)) in QUANTITIES.iter().zip(LABELS).enumerate() {
        let top = TOP + i as f64 * (PANEL + GAP);
        let bottom = top + PANEL;
        let peak = report.samples.iter().map(read).fold(0.0, f64::max);
        let (y_max, y_step) = axis(peak);
        let y = |v: f64| bottom - v / y_max * PANEL;
        let _ = writeln!(s, r#"<g class="panel" data-quantity="{}">"#, QUANTITIES[i].0);
        let _ = writeln!(s, r#"<text x="{LEFT}" y="{:.1}" font-weight="bold">{label}</text>"#, top - 8.0);
        let warm = x(report.warmup_s / 60.0) - LEFT;
        let _ = writeln!(
            s,
            r##"<rect class="warmup" x="{LEFT}" y="{top:.1}" width="{warm:.1}" height="{PANEL}" fill="#f3f3f3"/>"##
        );
        let mut v = 0.0;
        while v <= y_max + 1e-9 {
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" x2="{:.1}" y1="{yv:.1}" y2="{yv:.1}" stroke="{GRID_COLOUR}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + plot_width,
                LEFT - 6.0,
                y(v) + 4.0,
                number(v, y_step),
                yv = y(v)
            );
            v += y_step;
        }
        for (p, process) in processes.iter().enumerate() {
            let points: Vec<String> = report
                .samples
                .iter()
                .filter(|sample| sample.process == *process)
                .map(|sample| format!("{:.1},{:.1}", x(sample.elapsed_s / 60.0), y(read(sample))))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline class="series" data-process="{}" points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
                escape(process),
                points.join(" "),
                COLOURS[p % COLOURS.len()]
            );
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{top:.1}" width="{plot_width:.1}" height="{PANEL}" fill="none" stroke="black"/>"#
        );
        let mut m = 0.0;
        while m <= x_max + 1e-9 {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                x(m),
                bottom + 15.0,
                number(m, x_step)
            );
            m += x_step;
        }
        s.push_str("</g>\n");
    }
    let legend_x = LEFT + plot_width + 16.0;
    for (p, process) in processes.iter().enumerate() {
        let y = TOP + 10.0 + p as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{legend_x:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 18.0,
            COLOURS[p % COLOURS.len()],
            legend_x + 24.0,
            y + 4.0,
            escape(process)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{legend_x:.1}" y="{:.1}">shaded: warm-up</text><text x="{:.1}" y="{:.1}" text-anchor="middle">minutes</text>"#,
        TOP + 10.0 + processes.len() as f64 * 18.0 + 8.0,
        LEFT + plot_width / 2.0,
        height - 4.0
    );
    s.push_str("</svg>\n");
    s
}

fn summary(report: &SoakReport) -> [String; 3] {
    let r = &report.load;
    let capacity = report.capacity_per_s.map_or(String::new(), |c| {
        format!(" ({:.0} % of the {c:.1} frames/s measured)", 100.0 * report.rate_per_s / c)
    });
    let duration = if report.duration_s >= 120.0 {
        format!("{:.0} min", report.duration_s / 60.0)
    } else {
        format!("{:.0} s", report.duration_s)
    };
    let first = format!("{:.1} requests/s{capacity} for {duration}", report.rate_per_s);
    let second = format!(
        "{} requests: {} valid answered 200, {} valid failed, {} invalid refused with a 4xx; p99 {:.0} ms",
        r.requests,
        r.ok,
        r.failed(),
        r.invalid.values().sum::<u64>() - r.invalid_not_refused(),
        r.latency_ms.p99
    );
    let verdict = if report.failures.is_empty() {
        "passed: every quantity flat within the tolerance after the warm-up".to_string()
    } else {
        format!("FAILED: {}", report.failures.join("; "))
    };
    [first, second, verdict]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::soak::{ProcessSample, Tolerance};

    #[test]
    fn one_panel_per_quantity_and_a_line_per_process() {
        let samples = (0..20)
            .flat_map(|i| {
                ["gateway", "worker-1"].map(|p| ProcessSample {
                    elapsed_s: i as f64 * 6.0,
                    process: p.into(),
                    rss_mib: 100.0 + i as f64,
                    fds: 12,
                    threads: 7,
                    series: 60,
                })
            })
            .collect();
        let report = crate::loadtest::soak::tests::report(samples, Tolerance::default());
        let svg = svg(&report, "soak <tiny>");
        let doc = roxmltree::Document::parse(&svg).expect("well-formed");
        let count = |c: &str| doc.descendants().filter(|n| n.attribute("class") == Some(c)).count();
        assert_eq!((count("panel"), count("series"), count("warmup")), (4, 8, 4));
        assert!(svg.contains("soak &lt;tiny&gt;"));
    }
}
