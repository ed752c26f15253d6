//! Benchmark of request signature verification: a typical signed create request, as the
//! server checks it before parsing the body. Every check costs as many HMACs as the most
//! secrets any merchant has, so the three cases (one secret, two, unknown merchant)
//! should take the same time.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use payd::auth::{sign_hex, MerchantKeys, SignedHeaders};

const SECRET: &[u8] = b"m_demo-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
const TIMESTAMP: u64 = 1_763_800_000;
const TOLERANCE_SECS: u64 = 300;
const TARGET: &str = "/v1/payments";
const BODY: &[u8] = br#"{"order_id":"ord-20261122-0001","amount":1999,"currency":"CNY","payment_method":"tok_visa","description":"2 coffees","metadata":{"cart":"c-17"}}"#;

fn verify_typical_create(c: &mut Criterion) {
    let keys = MerchantKeys::new(vec![
        (
            "m_rotating".to_string(),
            vec![b"old".to_vec(), SECRET.to_vec()],
        ),
        ("m_demo".to_string(), vec![SECRET.to_vec()]),
    ]);
    let signature = format!("v1={}", sign_hex(SECRET, TIMESTAMP, "POST", TARGET, BODY));
    let headers = SignedHeaders {
        merchant: Some(b"m_demo"),
        timestamp: Some(b"1763800000"),
        signature: Some(signature.as_bytes()),
    };
    assert_eq!(
        keys.verify(
            &headers,
            b"POST",
            TARGET.as_bytes(),
            BODY,
            TIMESTAMP,
            TOLERANCE_SECS
        ),
        Ok(1)
    );
    c.bench_function("auth_verify_create", |b| {
        b.iter(|| {
            keys.verify(
                black_box(&headers),
                b"POST",
                TARGET.as_bytes(),
                black_box(BODY),
                TIMESTAMP,
                TOLERANCE_SECS,
            )
        })
    });
    let unknown = SignedHeaders {
        merchant: Some(b"m_nobody"),
        ..headers
    };
    let rotating = SignedHeaders {
        merchant: Some(b"m_rotating"),
        ..headers
    };
    for (name, headers) in [
        ("auth_verify_unknown_merchant", &unknown),
        ("auth_verify_two_secrets", &rotating),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                keys.verify(
                    black_box(headers),
                    b"POST",
                    TARGET.as_bytes(),
                    black_box(BODY),
                    TIMESTAMP,
                    TOLERANCE_SECS,
                )
            })
        });
    }
}

criterion_group!(benches, verify_typical_create);
criterion_main!(benches);
