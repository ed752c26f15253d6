//! Create request parsing and validation: a typical body with metadata, from JSON bytes
//! to `PaymentTerms`; and, alone, the raw-byte checks made before simd-json parses
//! (`json_scan::prepare`), whose cost is part of the first.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use payd::api::create_request::parse_create_request;
use payd::api::json_scan;

const BODY: &[u8] = br#"{"order_id":"ord-20261122-0001","amount":1999,"currency":"CNY","payment_method":"tok_visa","description":"2 coffees","metadata":{"cart":"c-17","channel":"app","customer":"cus_8842"}}"#;

fn parse_typical_create(c: &mut Criterion) {
    let mut body = BODY.to_vec();
    assert!(parse_create_request(&mut body, 0).is_ok());
    c.bench_function("create_request_parse", |b| {
        b.iter(|| {
            // simd-json parses in place: every iteration starts from the bytes sent.
            body.copy_from_slice(BODY);
            parse_create_request(black_box(&mut body), 0)
        })
    });
    c.bench_function("create_request_json_scan", |b| {
        b.iter(|| {
            body.copy_from_slice(BODY);
            json_scan::prepare(black_box(&mut body))
        })
    });
}

criterion_group!(benches, parse_typical_create);
criterion_main!(benches);
