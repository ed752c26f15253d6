//! The create path in-process, without sockets or disks: verify the signature, parse and
//! validate the body, route to a shard, decide against the order index, encode the log
//! records, finalise, and render the payment. What a core spends per payment besides
//! the kernel's TCP work and fdatasync.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use payd::api::create_request::parse_create_request;
use payd::auth::{sign_hex, MerchantKeys, SignedHeaders};
use payd::payment::{Authorization, PaymentId};
use payd::shard::routing::shard_of;
use payd::shard::state::{CreateDecision, ShardState};
use payd::wal::{encode_created, encode_finalized, encode_record};

const SECRET: &[u8] = b"bench-secret-0123456789abcdef";
const NOW_SECS: u64 = 1_763_800_000;

fn create_path(c: &mut Criterion) {
    let keys = MerchantKeys::new(vec![("m_demo".to_string(), vec![SECRET.to_vec()])]);
    let mut state = ShardState::new(0, 0);
    let mut order = 0u64;
    let mut record = Vec::with_capacity(512);
    let mut payload = Vec::with_capacity(256);
    // Signing a request is the client's work: it happens in the untimed setup.
    let mut next_request = || {
        order += 1;
        let body = format!(
            r#"{{"order_id":"ord-{order}","amount":1999,"currency":"CNY","payment_method":"tok_visa","metadata":{{"cart":"c-17"}}}}"#
        )
        .into_bytes();
        let signature = format!(
            "v1={}",
            sign_hex(SECRET, NOW_SECS, "POST", "/v1/payments", &body)
        );
        (body, signature, order)
    };
    c.bench_function("create_path_in_process", |b| {
        b.iter_batched(
            &mut next_request,
            |(mut body, signature, order)| {
                let headers = SignedHeaders {
                    merchant: Some(b"m_demo"),
                    timestamp: Some(b"1763800000"),
                    signature: Some(signature.as_bytes()),
                };
                let merchant = keys
                    .verify(&headers, b"POST", b"/v1/payments", &body, NOW_SECS, 300)
                    .unwrap();
                let terms = parse_create_request(&mut body, merchant).unwrap();
                let shard = shard_of(keys.merchant_id(merchant), &terms.order_id, 1);
                let provisional = PaymentId {
                    shard,
                    sequence: state.next_sequence(),
                };
                payload.clear();
                encode_created(&mut payload, provisional, "m_demo", &terms, NOW_SECS * 1000);
                record.clear();
                encode_record(&mut record, 1, order, &payload);
                let CreateDecision::New(id) = state.begin_create(terms, NOW_SECS * 1000) else {
                    panic!("every order is new");
                };
                payload.clear();
                let approved = Authorization::Approved;
                encode_finalized(&mut payload, id, approved.status(), None, NOW_SECS * 1000);
                record.clear();
                encode_record(&mut record, 2, order, &payload);
                state.finalize(id, &approved, NOW_SECS * 1000).unwrap();
                state.mark_answered(id);
                black_box(record.len())
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, create_path);
criterion_main!(benches);
