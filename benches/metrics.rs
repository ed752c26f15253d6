//! Recording a request in a core's metrics (counter, histogram bucket and HDR slice of
//! the recent window), and a stage: paid per request, and per stage of a create. Beside
//! them, one bare HDR record and a sum: what a request's latency cost before the
//! Prometheus buckets, as the yardstick within one run.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use hdrhistogram::Histogram;
use payd::metrics::{CoreMetrics, Route, Stage};

fn record(c: &mut Criterion) {
    let mut metrics = CoreMetrics::new(0);
    let mut latency_ns = 1u64;
    c.bench_function("record_request", |b| {
        b.iter(|| {
            latency_ns = latency_ns * 7 % 10_007_000;
            metrics.record_request(black_box(Route::CreatePayment), 201, latency_ns);
        })
    });
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
    let mut sum = 0u64;
    c.bench_function("hdr_record_and_sum", |b| {
        b.iter(|| {
            latency_ns = latency_ns * 7 % 10_007_000;
            histogram.saturating_record(black_box(latency_ns / 1000).max(1));
            sum = sum.saturating_add(latency_ns);
        })
    });
    black_box(sum);
    c.bench_function("record_stage", |b| {
        b.iter(|| {
            latency_ns = latency_ns * 7 % 10_007_000;
            metrics.record_stage(black_box(Stage::Persist), latency_ns);
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
