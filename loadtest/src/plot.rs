//! The latency percentile curve as a self-contained SVG: one line per request kind.
//!
//! The x axis is `1/(1-percentile)` on a log scale, the way HdrHistogram's plotter draws
//! it, so p50, p90, p99 ... p99.999 sit one decade apart and the tail is readable.

use crate::report::RunShape;
use crate::stats::Stats;
use crate::workload::Kind;
use hdrhistogram::Histogram;
use std::fmt::Write as _;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 80.0;
const MARGIN_RIGHT: f64 = 120.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// Decades on the x axis: up to p99.999.
const DECADES_MAX: f64 = 5.0;
/// Points per halving of the distance to 100 %, as HdrHistogram's percentile iterator.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

pub fn latency_svg(stats: &Stats, shape: &RunShape) -> String {
    let all = stats.latency_all_us();
    let mut series: Vec<(&str, &Histogram<u64>)> = Kind::ALL
        .iter()
        .filter(|kind| !stats.latency_us(**kind).is_empty())
        .map(|kind| (kind.name(), stats.latency_us(*kind)))
        .collect();
    if series.len() != 1 {
        series.insert(0, ("all", &all));
    }
    let y_max_us = nice_ceiling(all.max().max(1));
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "payd-loadtest {} {}: {} connections, pipeline {}, {}",
        shape.scenario,
        shape.address,
        shape.connections,
        shape.pipeline_depth,
        shape
            .rate_per_s
            .map_or("closed loop".to_string(), |rate| format!(
                "{rate} req/s open loop"
            ))
    );
    let _ = writeln!(
        svg,
        r#"<text x="{MARGIN_LEFT}" y="24">{}</text>"#,
        escape(&title)
    );
    write_axes(&mut svg, y_max_us);
    for (index, (name, histogram)) in series.iter().enumerate() {
        write_series(
            &mut svg,
            name,
            histogram,
            y_max_us,
            COLOURS[index % COLOURS.len()],
            index,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn plot_x(decades: f64) -> f64 {
    MARGIN_LEFT + decades.min(DECADES_MAX) / DECADES_MAX * (WIDTH - MARGIN_LEFT - MARGIN_RIGHT)
}

fn plot_y(value_us: u64, y_max_us: u64) -> f64 {
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    HEIGHT - MARGIN_BOTTOM - (value_us as f64 / y_max_us as f64).min(1.0) * plot_height
}

fn write_axes(svg: &mut String, y_max_us: u64) {
    let (left, right) = (plot_x(0.0), plot_x(DECADES_MAX));
    let (bottom, top) = (plot_y(0, y_max_us), plot_y(y_max_us, y_max_us));
    let _ = writeln!(
        svg,
        r#"<path d="M{left} {top} V{bottom} H{right}" stroke="black" fill="none"/>"#
    );
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (decade, label) in labels.iter().enumerate() {
        let x = plot_x(decade as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 18.0
        );
    }
    for step in 0..=4 {
        let value_us = y_max_us * step / 4;
        let y = plot_y(value_us, y_max_us);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            left - 6.0,
            y + 4.0,
            format_us(value_us)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (left + right) / 2.0,
        HEIGHT - 10.0
    );
}

fn write_series(
    svg: &mut String,
    name: &str,
    histogram: &Histogram<u64>,
    y_max_us: u64,
    colour: &str,
    index: usize,
) {
    let mut points = String::new();
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        let quantile = step.quantile_iterated_to();
        let decades = if quantile >= 1.0 {
            DECADES_MAX
        } else {
            (1.0 / (1.0 - quantile)).log10()
        };
        let value_us = histogram.highest_equivalent(step.value_iterated_to());
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            plot_x(decades),
            plot_y(value_us, y_max_us)
        );
    }
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
        points.trim_end()
    );
    let legend_y = MARGIN_TOP + 16.0 * index as f64;
    let legend_x = WIDTH - MARGIN_RIGHT + 10.0;
    let _ = writeln!(
        svg,
        r#"<text x="{legend_x}" y="{legend_y}" fill="{colour}">{} (max {})</text>"#,
        escape(name),
        format_us(histogram.max())
    );
}

/// 1, 2 or 5 times a power of ten, at least `value`: round axis labels.
fn nice_ceiling(value: u64) -> u64 {
    let mut power = 1u64;
    loop {
        for multiple in [1, 2, 5] {
            if power.saturating_mul(multiple) >= value {
                return power.saturating_mul(multiple);
            }
        }
        power = power.saturating_mul(10);
    }
}

fn format_us(value_us: u64) -> String {
    if value_us >= 1000 {
        format!("{} ms", value_us as f64 / 1000.0)
    } else {
        format!("{value_us} µs")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn draws_one_line_per_kind_plus_all_within_the_frame() {
        let mut stats = Stats::new();
        for latency_us in 1..=1000 {
            stats.record_response(Kind::Create, 201, "", latency_us * 3);
            stats.record_response(Kind::Read, 200, "", latency_us);
        }
        let shape = RunShape {
            scenario: "payments",
            transport: "http",
            address: "127.0.0.1:8080".to_string(),
            connections: 64,
            cpus: vec![1],
            pipeline_depth: 1,
            rate_per_s: Some(1000),
            warmup: Duration::ZERO,
            measured: Duration::from_secs(1),
        };
        let svg = latency_svg(&stats, &shape);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(
            svg.contains(">all (max ")
                && svg.contains(">create (max ")
                && svg.contains(">read (max ")
        );
        assert!(svg.contains("1000 req/s open loop"));
        for line in svg.lines().filter(|line| line.starts_with("<polyline")) {
            let points = line
                .split("points=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"/>");
            for point in points.split(' ') {
                let (x, y) = point.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((MARGIN_LEFT..=WIDTH - MARGIN_RIGHT).contains(&x), "{point}");
                assert!(
                    (MARGIN_TOP..=HEIGHT - MARGIN_BOTTOM).contains(&y),
                    "{point}"
                );
            }
        }
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(3), 5);
        assert_eq!(nice_ceiling(1234), 2000);
        assert_eq!(nice_ceiling(5001), 10_000);
        assert_eq!(format_us(1500), "1.5 ms");
        assert_eq!(format_us(999), "999 µs");
    }
}
