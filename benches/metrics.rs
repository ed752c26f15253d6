//! Recording a request in a core's metrics (counter, histogram bucket and HDR slice of
//! the recent window), and a stage: paid per request, and per stage of a create.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
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
    c.bench_function("record_stage", |b| {
        b.iter(|| {
            latency_ns = latency_ns * 7 % 10_007_000;
            metrics.record_stage(black_box(Stage::Persist), latency_ns);
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
