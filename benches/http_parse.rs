//! HTTP request head parsing and response writing: the per-request floor of every route.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use payd::http::{parse_request, ConnectionHeader, Response};

const CREATE_HEAD: &[u8] = b"POST /v1/payments HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
User-Agent: payd-loadtest\r\nContent-Type: application/json\r\nContent-Length: 96\r\n\
X-Request-Id: 3f9a0c11-01-000000000000002a\r\nX-Payd-Merchant: m_demo\r\n\
X-Payd-Timestamp: 1763800000\r\n\
X-Payd-Signature: v1=8f2a6d1c9e0b7a3f5d4c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c\r\n\r\n";

fn parse(c: &mut Criterion) {
    c.bench_function("parse_create_head", |b| {
        b.iter(|| parse_request(black_box(CREATE_HEAD), 8192, 16384).unwrap())
    });
    c.bench_function("parse_healthz_head", |b| {
        b.iter(|| {
            parse_request(
                black_box(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
                8192,
                16384,
            )
            .unwrap()
        })
    });
}

fn write(c: &mut Criterion) {
    let mut response = Response::new();
    response.body.extend_from_slice(br#"{"status":"ok"}"#);
    let mut out = Vec::with_capacity(4096);
    c.bench_function("write_healthz_response", |b| {
        b.iter(|| {
            out.clear();
            response.write_to(
                &mut out,
                b"3f9a0c11-01-000000000000002a",
                b"Mon, 23 Nov 2026 07:00:00 GMT",
                ConnectionHeader::Omitted,
                false,
            );
            black_box(out.len())
        })
    });
}

criterion_group!(benches, parse, write);
criterion_main!(benches);
