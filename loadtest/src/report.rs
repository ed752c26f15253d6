//! The end of a run: a human summary, a JSON summary, and the HDR percentile distribution.

use crate::stats::{percentiles_us, Stats, PERCENTILES};
use crate::workload::Kind;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::time::Duration;

/// How the run was shaped, echoed in both summaries so a figure never loses its context.
#[derive(Debug)]
pub struct RunShape {
    pub scenario: &'static str,
    /// `http`, or `ws` for requests as WebSocket messages.
    pub transport: &'static str,
    pub address: String,
    pub connections: usize,
    pub cpus: Vec<usize>,
    pub pipeline_depth: usize,
    /// Open loop target in requests per second; `None` for a closed loop.
    pub rate_per_s: Option<u64>,
    pub warmup: Duration,
    pub measured: Duration,
}

fn percentile_label(percentile: f64) -> String {
    if percentile >= 100.0 {
        "max".to_string()
    } else {
        format!("p{percentile}")
    }
}

fn latency_json(histogram: &Histogram<u64>) -> Value {
    let mut object = Map::new();
    object.insert("count".to_string(), json!(histogram.len()));
    for (percentile, value) in PERCENTILES.iter().zip(percentiles_us(histogram)) {
        object.insert(percentile_label(*percentile), json!(value));
    }
    object.insert(
        "mean".to_string(),
        json!((histogram.mean() * 10.0).round() / 10.0),
    );
    Value::Object(object)
}

pub fn throughput_per_s(stats: &Stats, shape: &RunShape) -> f64 {
    stats.responses() as f64 / shape.measured.as_secs_f64().max(f64::MIN_POSITIVE)
}

pub fn summary_json(stats: &Stats, shape: &RunShape) -> Value {
    let outcomes: Vec<Value> = stats
        .outcomes()
        .map(|(status, code, count)| {
            let code = (!code.is_empty()).then_some(code);
            json!({"status": status, "code": code, "count": count})
        })
        .collect();
    let failures: Map<String, Value> = stats
        .failure_counts()
        .map(|(failure, count)| (failure.name().to_string(), json!(count)))
        .collect();
    let mut latency = Map::new();
    latency.insert("all".to_string(), latency_json(&stats.latency_all_us()));
    for kind in Kind::ALL {
        if !stats.latency_us(kind).is_empty() {
            latency.insert(
                kind.name().to_string(),
                latency_json(stats.latency_us(kind)),
            );
        }
    }
    json!({
        "scenario": shape.scenario,
        "transport": shape.transport,
        "address": shape.address,
        "mode": if shape.rate_per_s.is_some() { "open" } else { "closed" },
        "rate_per_s": shape.rate_per_s,
        "connections": shape.connections,
        "cpus": shape.cpus,
        "pipeline_depth": shape.pipeline_depth,
        "warmup_s": shape.warmup.as_secs_f64(),
        "duration_s": shape.measured.as_secs_f64(),
        "responses": stats.responses(),
        "successes": stats.successes(),
        "failed_requests": stats.failures(),
        "throughput_per_s": (throughput_per_s(stats, shape) * 10.0).round() / 10.0,
        "outcomes": outcomes,
        "failures": failures,
        "latency_us": latency,
        "send_lag_us": (!stats.send_lag_us().is_empty()).then(|| latency_json(stats.send_lag_us())),
    })
}

pub fn summary_text(stats: &Stats, shape: &RunShape) -> String {
    let mut text = String::new();
    let mode = match shape.rate_per_s {
        Some(rate) => format!("open loop at {rate} req/s"),
        None => "closed loop".to_string(),
    };
    let _ = writeln!(
        text,
        "payd-loadtest: {} over {} against {}, {mode}, {} connections on CPUs {:?}, pipeline {}, {:.1} s measured after {:.1} s warm-up",
        shape.scenario,
        shape.transport,
        shape.address,
        shape.connections,
        shape.cpus,
        shape.pipeline_depth,
        shape.measured.as_secs_f64(),
        shape.warmup.as_secs_f64()
    );
    let _ = writeln!(
        text,
        "responses {} ({} 2xx), {} requests without a response, {:.1} responses/s",
        stats.responses(),
        stats.successes(),
        stats.failures(),
        throughput_per_s(stats, shape)
    );
    for (status, code, count) in stats.outcomes() {
        let _ = writeln!(text, "  {status} {code:<24} {count}");
    }
    for (failure, count) in stats.failure_counts() {
        let _ = writeln!(text, "  --- {:<24} {count}", failure.name());
    }
    write_latency_table(&mut text, stats);
    let lag = stats.send_lag_us();
    if !lag.is_empty() {
        let [p50, _, p99, _, _, max] = percentiles_us(lag);
        let _ = writeln!(
            text,
            "send lag µs (open loop: how late batches left) p50 {p50}, p99 {p99}, max {max}"
        );
    }
    text
}

fn write_latency_table(text: &mut String, stats: &Stats) {
    let _ = write!(text, "{:<10}{:>10}", "latency µs", "count");
    for percentile in PERCENTILES {
        let _ = write!(text, "{:>10}", percentile_label(percentile));
    }
    let _ = writeln!(text);
    let all = stats.latency_all_us();
    let mut rows = vec![("all", &all)];
    for kind in Kind::ALL {
        if !stats.latency_us(kind).is_empty() {
            rows.push((kind.name(), stats.latency_us(kind)));
        }
    }
    for (name, histogram) in rows {
        let _ = write!(text, "{name:<10}{:>10}", histogram.len());
        for value in percentiles_us(histogram) {
            let _ = write!(text, "{value:>10}");
        }
        let _ = writeln!(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Failure;

    fn shape() -> RunShape {
        RunShape {
            scenario: "payments",
            transport: "http",
            address: "127.0.0.1:8080".to_string(),
            connections: 4,
            cpus: vec![1],
            pipeline_depth: 1,
            rate_per_s: None,
            warmup: Duration::ZERO,
            measured: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_json_summary_has_throughput_outcomes_and_percentiles() {
        let mut stats = Stats::new();
        for latency_us in 1..=100 {
            stats.record_response(Kind::Create, 201, "", latency_us * 10);
        }
        stats.record_response(Kind::Read, 404, "payment_not_found", 5);
        stats.record_failure(Failure::Timeout);
        let summary = summary_json(&stats, &shape());
        assert_eq!(summary["responses"], 101);
        assert_eq!(summary["successes"], 100);
        assert_eq!(summary["throughput_per_s"], 50.5);
        assert_eq!(summary["mode"], "closed");
        assert_eq!(summary["outcomes"][1]["code"], "payment_not_found");
        assert_eq!(summary["outcomes"][0]["code"], Value::Null);
        assert_eq!(summary["failures"]["timeout"], 1);
        assert_eq!(summary["failed_requests"], 1);
        assert_eq!(summary["latency_us"]["create"]["count"], 100);
        assert_eq!(summary["latency_us"]["create"]["max"], 1000);
        assert_eq!(summary["latency_us"]["create"]["p50"], 500);
        assert!(summary["latency_us"].get("replay").is_none());
        assert_eq!(summary["send_lag_us"], Value::Null);
        for key in ["p50", "p90", "p99", "p99.9", "p99.99", "max"] {
            assert!(summary["latency_us"]["all"][key].is_u64(), "{key}");
        }
    }

    #[test]
    fn the_text_summary_lists_every_outcome_and_kind() {
        let mut stats = Stats::new();
        stats.record_response(Kind::Create, 201, "", 100);
        stats.record_response(Kind::Replay, 409, "order_conflict", 100);
        stats.record_failure(Failure::Connect);
        let text = summary_text(&stats, &shape());
        assert!(text.contains("409 order_conflict"));
        assert!(text.contains("connect_error"));
        assert!(text.contains("\ncreate "));
        assert!(text.contains("\nreplay "));
        assert!(!text.contains("\nread "));
        assert!(text.contains("p99.99"));
    }
}
