//! Distributions for `/metrics`: Prometheus histogram buckets since start, beside HDR
//! quantiles over a recent window.
//!
//! A Prometheus histogram (`_bucket`, `_sum`, `_count`, counted since start) is what
//! Prometheus can aggregate: rates over any range, `histogram_quantile` across cores and
//! processes. Its quantiles are only as fine as its buckets, so each distribution also
//! keeps HDR histograms (1% precision) over the recent window, rendered as a summary with
//! the quantiles of `RECENT_QUANTILES`: what the latency is now, not since start.
//!
//! The window is a ring of `RECENT_SLICES` HDR histograms. Values go into the current
//! slice; every `RECENT_SLICE_MS` the core's rotation task makes the oldest slice current
//! and empties it, so the summary covers the last 60 to 70 seconds. Slices are allocated
//! on first use: a route nobody calls costs no histogram.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// How long one slice of the recent window collects values.
pub const RECENT_SLICE_MS: u64 = 10_000;
/// Slices in the recent window: six whole ones and the one filling now.
pub const RECENT_SLICES: usize = 7;
/// Quantiles of every recent summary; 1.0 is rendered as the maximum.
pub const RECENT_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];
/// Two significant figures: values are told apart to 1%.
const RECENT_SIGNIFICANT_FIGURES: u8 = 2;
/// Nanoseconds per second: durations are recorded in nanoseconds, exported in seconds.
pub const NANOSECONDS_PER_SECOND: u64 = 1_000_000_000;

/// What a distribution measures: its Prometheus bucket bounds (with their `le` labels, in
/// exported units), the largest value its HDR slices track, and how recorded values turn
/// into exported units.
#[derive(Debug)]
pub struct Scale {
    pub bounds: &'static [u64],
    pub bound_labels: &'static [&'static str],
    pub value_max: u64,
    pub recorded_per_exported: u64,
}

/// Durations, recorded in nanoseconds: from a microsecond (parsing, a signature) to ten
/// seconds (a slow acquirer), with the latency targets (1 ms, 3 ms) as bounds.
pub static DURATION: Scale = Scale {
    bounds: &[
        1_000,
        2_500,
        5_000,
        10_000,
        25_000,
        50_000,
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_000_000,
        3_000_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        5_000_000_000,
        10_000_000_000,
    ],
    bound_labels: &[
        "0.000001",
        "0.0000025",
        "0.000005",
        "0.00001",
        "0.000025",
        "0.00005",
        "0.0001",
        "0.00025",
        "0.0005",
        "0.001",
        "0.002",
        "0.003",
        "0.005",
        "0.01",
        "0.025",
        "0.05",
        "0.1",
        "0.25",
        "0.5",
        "1",
        "2.5",
        "5",
        "10",
    ],
    // A minute: anything slower saturates there.
    value_max: 60 * NANOSECONDS_PER_SECOND,
    recorded_per_exported: NANOSECONDS_PER_SECOND,
};

/// Counts (records per write-ahead log batch), in powers of two.
pub static COUNT: Scale = Scale {
    bounds: &[
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
    ],
    bound_labels: &[
        "1", "2", "4", "8", "16", "32", "64", "128", "256", "512", "1024", "2048", "4096", "8192",
        "16384", "32768", "65536",
    ],
    value_max: 1 << 20,
    recorded_per_exported: 1,
};

/// One slice of the recent window.
#[derive(Clone, Debug)]
struct Slice {
    histogram: Histogram<u32>,
    sum: u64,
}

/// Buckets and sum since start, and the recent window. Recorded by one core without
/// synchronisation; cloned for a scrape.
#[derive(Clone, Debug)]
pub struct Distribution {
    scale: &'static Scale,
    /// Values per bucket: `buckets[i]` counts values in `(bounds[i-1], bounds[i]]`, the
    /// last one everything above the last bound.
    buckets: Vec<u64>,
    sum: u64,
    slices: Vec<Slice>,
    current: usize,
}

/// A duration distribution, the usual kind.
impl Default for Distribution {
    fn default() -> Distribution {
        Distribution::new(&DURATION)
    }
}

impl Distribution {
    pub fn new(scale: &'static Scale) -> Distribution {
        assert_eq!(scale.bounds.len(), scale.bound_labels.len());
        assert!(scale.bounds.windows(2).all(|pair| pair[0] < pair[1]));
        Distribution {
            scale,
            buckets: vec![0; scale.bounds.len() + 1],
            sum: 0,
            slices: Vec::new(),
            current: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        let bucket = self.scale.bounds.partition_point(|&bound| bound < value);
        self.buckets[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
        let value_max = self.scale.value_max;
        let slice = self.current_slice();
        slice.histogram.saturating_record(value.clamp(1, value_max));
        slice.sum = slice.sum.saturating_add(value);
    }

    /// Values recorded since start.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Starts a new slice of the recent window, forgetting the oldest once all are used.
    pub fn rotate(&mut self) {
        if self.slices.is_empty() {
            return;
        }
        if self.slices.len() < RECENT_SLICES {
            self.slices.push(new_slice(self.scale));
            self.current = self.slices.len() - 1;
        } else {
            self.current = (self.current + 1) % RECENT_SLICES;
            let slice = &mut self.slices[self.current];
            slice.histogram.reset();
            slice.sum = 0;
        }
    }

    /// Adds `other` (the same scale, from another core) into this one: its buckets and
    /// sum, and its whole recent window into this one's current slice.
    pub fn merge(&mut self, other: &Distribution) {
        assert!(std::ptr::eq(self.scale, other.scale), "merging two scales");
        for (total, count) in self.buckets.iter_mut().zip(&other.buckets) {
            *total += count;
        }
        self.sum = self.sum.saturating_add(other.sum);
        for slice in &other.slices {
            self.add_recent(&slice.histogram, slice.sum);
        }
    }

    /// A distribution made from HDR histograms recorded elsewhere (the write-ahead log's),
    /// in units of `recorded_per_value` of this scale's (1000 for microseconds into a
    /// nanosecond scale). Buckets come from the HDR counts, so a value within the HDR's
    /// 1% of a bound may count on either side of it; sums are estimated from the means.
    pub fn from_histograms(
        scale: &'static Scale,
        since_start: &Histogram<u64>,
        recent: &Histogram<u64>,
        recorded_per_value: u64,
    ) -> Distribution {
        let mut distribution = Distribution::new(scale);
        let mut below = 0;
        for (index, &bound) in scale.bounds.iter().enumerate() {
            let up_to_bound = since_start.count_between(0, bound / recorded_per_value);
            distribution.buckets[index] = up_to_bound.saturating_sub(below);
            below = below.max(up_to_bound);
        }
        distribution.buckets[scale.bounds.len()] = since_start.len().saturating_sub(below);
        distribution.sum = estimated_sum(since_start, recorded_per_value);
        let mut converted = new_slice(scale).histogram;
        for bin in recent.iter_recorded() {
            let value = bin.value_iterated_to().saturating_mul(recorded_per_value);
            let count = u32::try_from(bin.count_at_value()).unwrap_or(u32::MAX);
            converted.saturating_record_n(value.clamp(1, scale.value_max), count);
        }
        distribution.add_recent(&converted, estimated_sum(recent, recorded_per_value));
        distribution
    }

    fn add_recent(&mut self, histogram: &Histogram<u32>, sum: u64) {
        if histogram.is_empty() {
            return;
        }
        let slice = self.current_slice();
        // Same bounds everywhere; a count past u32 in one window cannot happen (4e9
        // requests in a minute), and would only leave that window's quantiles short.
        let _ = slice.histogram.add(histogram);
        slice.sum = slice.sum.saturating_add(sum);
    }

    fn current_slice(&mut self) -> &mut Slice {
        if self.slices.is_empty() {
            self.slices.push(new_slice(self.scale));
            self.current = 0;
        }
        &mut self.slices[self.current]
    }

    /// The recent window as one histogram, with its sum.
    fn recent(&self) -> (Histogram<u32>, u64) {
        let mut merged = new_slice(self.scale);
        for slice in &self.slices {
            let _ = merged.histogram.add(&slice.histogram);
            merged.sum = merged.sum.saturating_add(slice.sum);
        }
        (merged.histogram, merged.sum)
    }

    /// A value of this scale in exported units (seconds for durations).
    fn exported(&self, value: u64) -> f64 {
        value as f64 / self.scale.recorded_per_exported as f64
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series of a histogram family.
    pub fn render_buckets(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (count, le) in self.buckets.iter().zip(self.scale.bound_labels) {
            cumulative += count;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{le}\"}} {cumulative}"
            );
        }
        let total = self.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {total}"
        );
        let braces = braced(labels);
        let _ = writeln!(out, "{name}_sum{braces} {}", self.exported(self.sum));
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }

    /// The quantile, `_sum` and `_count` lines of one series of a recent summary family.
    pub fn render_recent(&self, out: &mut String, name: &str, labels: &str) {
        let separator = if labels.is_empty() { "" } else { "," };
        let (histogram, sum) = self.recent();
        for quantile in RECENT_QUANTILES {
            let value = if quantile >= 1.0 {
                histogram.max()
            } else {
                histogram.value_at_quantile(quantile)
            };
            // An empty window has no quantiles: NaN, as Prometheus' own clients say it.
            let exported = if histogram.is_empty() {
                f64::NAN
            } else {
                self.exported(value)
            };
            let _ = writeln!(
                out,
                "{name}{{{labels}{separator}quantile=\"{quantile}\"}} {exported}"
            );
        }
        let braces = braced(labels);
        let _ = writeln!(out, "{name}_sum{braces} {}", self.exported(sum));
        let _ = writeln!(out, "{name}_count{braces} {}", histogram.len());
    }
}

/// Writes a histogram family `name` and its recent summary `name_recent` (with the unit
/// suffix kept last: `payd_x_seconds` has `payd_x_recent_seconds`), one series per entry.
pub fn render_family(out: &mut String, name: &str, help: &str, series: &[(String, &Distribution)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, distribution) in series {
        distribution.render_buckets(out, name, labels);
    }
    let recent = recent_name(name);
    let _ = writeln!(
        out,
        "# HELP {recent} {help} Quantiles over the last minute (1 is the maximum).\n\
         # TYPE {recent} summary"
    );
    for (labels, distribution) in series {
        distribution.render_recent(out, &recent, labels);
    }
}

/// `payd_x_seconds` → `payd_x_recent_seconds`; `payd_x` → `payd_x_recent`.
pub fn recent_name(name: &str) -> String {
    match name.strip_suffix("_seconds") {
        Some(base) => format!("{base}_recent_seconds"),
        None => format!("{name}_recent"),
    }
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn new_slice(scale: &Scale) -> Slice {
    Slice {
        histogram: Histogram::new_with_bounds(1, scale.value_max, RECENT_SIGNIFICANT_FIGURES)
            .expect("static histogram bounds are valid"),
        sum: 0,
    }
}

fn estimated_sum(histogram: &Histogram<u64>, recorded_per_value: u64) -> u64 {
    let sum = histogram.mean() * histogram.len() as f64 * recorded_per_value as f64;
    sum as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(distribution: &Distribution) -> String {
        let mut out = String::new();
        render_family(
            &mut out,
            "payd_x_seconds",
            "X.",
            &[(String::new(), distribution)],
        );
        out
    }

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let mut distribution = Distribution::new(&DURATION);
        distribution.record(1_000); // exactly the first bound
        distribution.record(1_001);
        distribution.record(20 * NANOSECONDS_PER_SECOND); // above the last bound
        let text = rendered(&distribution);
        assert!(
            text.contains("payd_x_seconds_bucket{le=\"0.000001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("payd_x_seconds_bucket{le=\"0.0000025\"} 2\n"));
        assert!(text.contains("payd_x_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("payd_x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("payd_x_seconds_count 3\n"));
        assert!(text.contains("payd_x_seconds_sum 20.000002001\n"));
        assert!(text.contains("# TYPE payd_x_recent_seconds summary\n"));
        assert!(text.contains("payd_x_recent_seconds_count 3\n"));
    }

    #[test]
    fn the_recent_window_forgets_after_its_slices_and_the_buckets_do_not() {
        let mut distribution = Distribution::new(&DURATION);
        distribution.record(5_000_000);
        for _ in 0..RECENT_SLICES - 1 {
            distribution.rotate();
        }
        distribution.record(1_000_000);
        let (recent, _) = distribution.recent();
        assert_eq!(recent.len(), 2, "still in the window after six rotations");
        distribution.rotate();
        let (recent, sum) = distribution.recent();
        assert_eq!(recent.len(), 1, "the oldest slice was emptied");
        assert_eq!(sum, 1_000_000);
        assert!(recent.max() < 1_100_000);
        assert_eq!(distribution.count(), 2);
        assert_eq!(distribution.slices.len(), RECENT_SLICES);
    }

    #[test]
    fn an_unused_distribution_allocates_no_slice() {
        let mut distribution = Distribution::new(&DURATION);
        distribution.rotate();
        assert!(distribution.slices.is_empty());
        let text = rendered(&distribution);
        assert!(text.contains("payd_x_recent_seconds{quantile=\"0.99\"} NaN\n"));
    }

    #[test]
    fn merging_adds_buckets_and_whole_windows() {
        let mut first = Distribution::new(&DURATION);
        let mut second = Distribution::new(&DURATION);
        first.record(10_000);
        second.record(2_000_000_000);
        second.rotate();
        second.record(2_000_000_000);
        let mut total = Distribution::new(&DURATION);
        total.merge(&first);
        total.merge(&second);
        assert_eq!(total.count(), 3);
        assert_eq!(total.slices.len(), 1);
        let (recent, _) = total.recent();
        assert_eq!(recent.len(), 3);
        let text = rendered(&total);
        assert!(
            text.contains("payd_x_seconds_bucket{le=\"0.00001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("payd_x_seconds_bucket{le=\"2.5\"} 3\n"));
        let max_line = text
            .lines()
            .find(|line| line.starts_with("payd_x_recent_seconds{quantile=\"1\"}"))
            .unwrap();
        let max: f64 = max_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((1.98..=2.02).contains(&max), "{max_line}");
    }

    #[test]
    fn histograms_from_elsewhere_keep_their_counts() {
        let mut since_start = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        let mut recent = since_start.clone();
        for latency_us in [100, 200, 5_000] {
            since_start.record(latency_us).unwrap();
        }
        recent.record(5_000).unwrap();
        let distribution = Distribution::from_histograms(&DURATION, &since_start, &recent, 1000);
        let text = rendered(&distribution);
        assert!(
            text.contains("payd_x_seconds_bucket{le=\"0.0001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("payd_x_seconds_bucket{le=\"0.00025\"} 2\n"));
        assert!(text.contains("payd_x_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("payd_x_seconds_count 3\n"));
        assert!(text.contains("payd_x_recent_seconds_count 1\n"));
    }

    #[test]
    fn recent_names_keep_the_unit_last() {
        assert_eq!(recent_name("payd_a_seconds"), "payd_a_recent_seconds");
        assert_eq!(
            recent_name("payd_wal_records_per_batch"),
            "payd_wal_records_per_batch_recent"
        );
    }
}
