//! Recording a request in a core's metrics (counter and HDR histogram): paid per request.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use payd::metrics::{CoreMetrics, Route};

fn record(c: &mut Criterion) {
    let mut metrics = CoreMetrics::new(0);
    let mut latency_us = 1u64;
    c.bench_function("record_request", |b| {
        b.iter(|| {
            latency_us = latency_us * 7 % 10_007;
            metrics.record_request(black_box(Route::CreatePayment), 201, latency_us);
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
