//! What a run measured: latency histograms per request kind and outcome counts.
//!
//! Each generator thread keeps its own `Stats` (no sharing on the hot path) and the main
//! thread merges them at the end. Latency is in microseconds, from when a request was
//! due (closed loop: written; open loop: scheduled) to when its response was parsed.

use crate::workload::Kind;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The longest latency the histograms hold; longer ones are recorded as this.
pub const LATENCY_US_MAX: u64 = 60 * 1_000_000;
/// Significant decimal digits kept by the histograms.
const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// The percentiles every report lists.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// How a request ended when it got no HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The connection could not be opened.
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    /// The connection broke, or the server closed it, before the response.
    Io,
    /// Bytes that are not an HTTP/1.1 response payd would send.
    BadResponse,
}

impl Failure {
    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Io => "io_error",
            Failure::BadResponse => "bad_response",
        }
    }
}

pub struct Stats {
    latency_us: Vec<Histogram<u64>>,
    /// (status, error code or "") to count; error codes only for statuses of 400 and up.
    outcomes: BTreeMap<(u16, String), u64>,
    failures: BTreeMap<Failure, u64>,
    /// Open loop only: how late each batch left after it was due. A generator that cannot
    /// keep its schedule charges its own delay to the server; this shows when it does.
    send_lag_us: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let histogram = || {
            Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
                .expect("the bounds are valid")
        };
        Stats {
            latency_us: Kind::ALL.iter().map(|_| histogram()).collect(),
            outcomes: BTreeMap::new(),
            failures: BTreeMap::new(),
            send_lag_us: histogram(),
        }
    }

    /// Counts a response; `code` is the `error.code` of an error body, or empty.
    pub fn record_response(&mut self, kind: Kind, status: u16, code: &str, latency_us: u64) {
        self.latency_us[kind.index()].saturating_record(latency_us.clamp(1, LATENCY_US_MAX));
        // Look up before inserting so the common case allocates nothing.
        let key = (status, String::new());
        if code.is_empty() {
            if let Some(count) = self.outcomes.get_mut(&key) {
                *count += 1;
                return;
            }
        }
        *self.outcomes.entry((status, code.to_string())).or_insert(0) += 1;
    }

    pub fn record_send_lag(&mut self, lag_us: u64) {
        self.send_lag_us
            .saturating_record(lag_us.clamp(1, LATENCY_US_MAX));
    }

    pub fn send_lag_us(&self) -> &Histogram<u64> {
        &self.send_lag_us
    }

    pub fn record_failure(&mut self, failure: Failure) {
        *self.failures.entry(failure).or_insert(0) += 1;
    }

    pub fn merge(&mut self, other: &Stats) {
        for (mine, theirs) in self.latency_us.iter_mut().zip(&other.latency_us) {
            mine.add(theirs)
                .expect("histograms of the same bounds add up");
        }
        for (key, count) in &other.outcomes {
            *self.outcomes.entry(key.clone()).or_insert(0) += count;
        }
        self.send_lag_us
            .add(&other.send_lag_us)
            .expect("histograms of the same bounds add up");
        for (failure, count) in &other.failures {
            *self.failures.entry(*failure).or_insert(0) += count;
        }
    }

    pub fn responses(&self) -> u64 {
        self.outcomes.values().sum()
    }

    pub fn failures(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Responses of status 2xx.
    pub fn successes(&self) -> u64 {
        self.outcomes
            .iter()
            .filter(|((status, _), _)| (200..300).contains(status))
            .map(|(_, count)| count)
            .sum()
    }

    /// Every kind's latencies together.
    pub fn latency_all_us(&self) -> Histogram<u64> {
        let mut all = self.latency_us[0].clone();
        for histogram in &self.latency_us[1..] {
            all.add(histogram)
                .expect("histograms of the same bounds add up");
        }
        all
    }

    pub fn latency_us(&self, kind: Kind) -> &Histogram<u64> {
        &self.latency_us[kind.index()]
    }

    pub fn outcomes(&self) -> impl Iterator<Item = (u16, &str, u64)> {
        self.outcomes
            .iter()
            .map(|((status, code), count)| (*status, code.as_str(), *count))
    }

    pub fn failure_counts(&self) -> impl Iterator<Item = (Failure, u64)> + '_ {
        self.failures
            .iter()
            .map(|(failure, count)| (*failure, *count))
    }
}

/// The value at each of `PERCENTILES`, in microseconds.
pub fn percentiles_us(histogram: &Histogram<u64>) -> [u64; PERCENTILES.len()] {
    PERCENTILES.map(|percentile| {
        if percentile >= 100.0 {
            histogram.max()
        } else {
            histogram.value_at_quantile(percentile / 100.0)
        }
    })
}

/// The classic HdrHistogram percentile distribution text (values in milliseconds), which
/// the usual plotting tools read.
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total_count = 0;
    for step in histogram.iter_quantiles(5) {
        total_count += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:14.2}", 1.0 / (1.0 - quantile))
        } else {
            format!("{:>14}", "")
        };
        let value_ms = step.value_iterated_to() as f64 / 1000.0;
        let _ = writeln!(
            text,
            "{value_ms:12.3} {quantile:14.12} {total_count:10} {inverse}"
        );
    }
    let mean_ms = histogram.mean() / 1000.0;
    let deviation_ms = histogram.stdev() / 1000.0;
    let max_ms = histogram.max() as f64 / 1000.0;
    let _ = writeln!(
        text,
        "#[Mean    = {mean_ms:12.3}, StdDeviation   = {deviation_ms:12.3}]"
    );
    let _ = writeln!(
        text,
        "#[Max     = {max_ms:12.3}, Total count    = {:12}]",
        histogram.len()
    );
    let _ = writeln!(
        text,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_by_status_and_code_and_merges() {
        let mut first = Stats::new();
        first.record_response(Kind::Create, 201, "", 100);
        first.record_response(Kind::Create, 201, "", 300);
        first.record_response(Kind::Replay, 409, "order_conflict", 50);
        first.record_failure(Failure::Timeout);
        first.record_send_lag(40);
        let mut second = Stats::new();
        second.record_response(Kind::Read, 200, "", 10_000);
        second.record_response(Kind::Create, 409, "order_conflict", 70);
        second.record_failure(Failure::Timeout);
        second.record_send_lag(2_000);
        first.merge(&second);
        assert_eq!(first.send_lag_us().len(), 2);
        assert!(first.send_lag_us().max() >= 2_000);
        let outcomes: Vec<_> = first.outcomes().collect();
        assert_eq!(
            outcomes,
            vec![(200, "", 1), (201, "", 2), (409, "order_conflict", 2)]
        );
        assert_eq!(first.responses(), 5);
        assert_eq!(first.successes(), 3);
        assert_eq!(first.failures(), 2);
        assert_eq!(first.latency_us(Kind::Create).len(), 3);
        assert_eq!(first.latency_all_us().len(), 5);
        assert!(first.latency_all_us().max() >= 10_000);
    }

    #[test]
    fn percentiles_rise_to_the_max_and_latencies_are_bounded() {
        let mut stats = Stats::new();
        for latency_us in 1..=10_000 {
            stats.record_response(Kind::Health, 200, "", latency_us);
        }
        stats.record_response(Kind::Health, 200, "", u64::MAX);
        let values = percentiles_us(&stats.latency_all_us());
        assert!((4_990..=5_010).contains(&values[0]), "{values:?}");
        assert!(
            values.windows(2).all(|pair| pair[0] <= pair[1]),
            "{values:?}"
        );
        assert!(values[5] >= LATENCY_US_MAX && values[5] < LATENCY_US_MAX + LATENCY_US_MAX / 100);
    }

    #[test]
    fn the_distribution_ends_at_the_max_and_counts_everything() {
        let mut stats = Stats::new();
        for latency_us in [100, 200, 300, 4_000] {
            stats.record_response(Kind::Health, 200, "", latency_us);
        }
        let text = percentile_distribution(&stats.latency_all_us());
        assert!(text.starts_with("       Value"));
        let last_row = text.lines().rfind(|line| !line.starts_with('#')).unwrap();
        let fields: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(fields[1], "1.000000000000");
        assert_eq!(fields[2], "4");
        assert!(text.contains("Total count    =            4"));
    }
}
