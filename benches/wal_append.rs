//! The write-ahead log's hot path: encoding and CRC32C framing of the two records every
//! payment writes, the group-commit append through `ShardLog` (durability none, on a real
//! directory, inside a glommio executor), and the decoder recovery runs over every record.

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use glommio::LocalExecutorBuilder;
use payd::config::Durability;
use payd::payment::{Currency, PaymentId, PaymentStatus};
use payd::wal::{
    decode_record, encode_record, Created, DecodeOutcome, Finalized, LogOptions, RecordKind,
    ShardLog,
};

const NOW_MS: u64 = 1_763_800_000_000;
/// Segments large enough that a bench sample never rolls one over.
const SEGMENT_BYTES_MAX: u64 = 256 << 20;
/// Registered memory of the bench executor: the locked-memory limit is small on most
/// machines, and the log does not need more.
const EXECUTOR_IO_MEMORY_BYTES: usize = 256 << 10;
/// Short samples: CI only compiles the benches, and a person running them wants an
/// answer in seconds, not minutes.
const MEASUREMENT_TIME_MS: u64 = 2_000;
const WARM_UP_TIME_MS: u64 = 500;

/// A create as the API receives it from a typical shop: an order id, a token, a short
/// description and two metadata pairs.
fn created(sequence: u64) -> Created {
    Created {
        id: PaymentId { shard: 0, sequence },
        merchant_id: "m_demo".to_string(),
        order_id: format!("ord-2026-11-23-{sequence:08}"),
        amount: 1999,
        currency: Currency(*b"CNY"),
        payment_method: "tok_visa_4f9a2c81d3e7".to_string(),
        description: Some("2 x espresso beans, 250 g".to_string()),
        metadata: vec![
            ("cart".to_string(), "c-17".to_string()),
            ("channel".to_string(), "web".to_string()),
        ],
        created_at_ms: NOW_MS,
    }
}

fn finalized(sequence: u64) -> Finalized {
    Finalized {
        id: PaymentId { shard: 0, sequence },
        status: PaymentStatus::Succeeded,
        decline_code: None,
        updated_at_ms: NOW_MS + 20,
    }
}

fn encode_and_frame(c: &mut Criterion) {
    let created = created(1);
    let finalized = finalized(1);
    let mut payload = Vec::with_capacity(256);
    let mut record = Vec::with_capacity(512);
    let mut group = c.benchmark_group("wal_encode");
    group
        .measurement_time(Duration::from_millis(MEASUREMENT_TIME_MS))
        .warm_up_time(Duration::from_millis(WARM_UP_TIME_MS));
    group.bench_function("created_payload_and_frame", |b| {
        b.iter(|| {
            payload.clear();
            black_box(&created).encode(&mut payload);
            record.clear();
            encode_record(&mut record, RecordKind::Created.as_u8(), 1, &payload);
            black_box(record.len())
        })
    });
    group.bench_function("finalized_payload_and_frame", |b| {
        b.iter(|| {
            payload.clear();
            black_box(&finalized).encode(&mut payload);
            record.clear();
            encode_record(&mut record, RecordKind::Finalized.as_u8(), 2, &payload);
            black_box(record.len())
        })
    });
    group.finish();
}

/// One framed Created and one framed Finalized, back to back, as a segment holds them.
fn framed_pair() -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut payload = Vec::new();
    created(1).encode(&mut payload);
    encode_record(&mut bytes, RecordKind::Created.as_u8(), 1, &payload);
    payload.clear();
    finalized(1).encode(&mut payload);
    encode_record(&mut bytes, RecordKind::Finalized.as_u8(), 2, &payload);
    bytes
}

fn decode(c: &mut Criterion) {
    let bytes = framed_pair();
    let mut group = c.benchmark_group("wal_decode");
    group
        .measurement_time(Duration::from_millis(MEASUREMENT_TIME_MS))
        .warm_up_time(Duration::from_millis(WARM_UP_TIME_MS))
        .throughput(Throughput::Bytes(bytes.len() as u64));
    // Recovery's work per payment: check both frames, then decode both payloads.
    group.bench_function("created_and_finalized_records", |b| {
        b.iter(|| {
            let DecodeOutcome::Record(first) = decode_record(black_box(&bytes)) else {
                panic!("the first record decodes");
            };
            let created = Created::decode(first.payload).expect("a valid Created");
            let rest = &bytes[first.length_total..];
            let DecodeOutcome::Record(second) = decode_record(rest) else {
                panic!("the second record decodes");
            };
            let finalized = Finalized::decode(second.payload).expect("a valid Finalized");
            black_box((created.amount, finalized.status))
        })
    });
    group.finish();
}

/// Appends `count` Created/Finalized pairs to a fresh log in a fresh directory and
/// returns the time the appends took (opening and closing the log are not counted).
fn time_appends(count: u64) -> Duration {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let mut payload_created = Vec::new();
    created(1).encode(&mut payload_created);
    let mut payload_finalized = Vec::new();
    finalized(1).encode(&mut payload_finalized);
    let options = LogOptions {
        durability: Durability::None,
        segment_bytes_max: SEGMENT_BYTES_MAX,
        buffered_io: false,
    };
    LocalExecutorBuilder::default()
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .make()
        .expect("a glommio executor")
        .run(async move {
            let log = ShardLog::open_with(directory.path(), options, 1)
                .await
                .expect("the log opens");
            let started = Instant::now();
            for _ in 0..count {
                let created = log.append(RecordKind::Created.as_u8(), &payload_created);
                black_box(created.await.expect("append"));
                let finalized = log.append(RecordKind::Finalized.as_u8(), &payload_finalized);
                black_box(finalized.await.expect("append"));
            }
            let elapsed = started.elapsed();
            log.close().await.expect("the log closes");
            elapsed
        })
}

/// The group-commit path without fdatasync: the append's encoding into the filling
/// batch, and the commit task's writes of full batches, which the appends wait for when
/// the batch has no room. The cost of the fsync itself is the disk's, not the code's.
fn shard_log_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_shard_log");
    group
        .measurement_time(Duration::from_millis(MEASUREMENT_TIME_MS))
        .warm_up_time(Duration::from_millis(WARM_UP_TIME_MS))
        .sample_size(20);
    group.bench_function("append_created_and_finalized_durability_none", |b| {
        b.iter_custom(time_appends)
    });
    group.finish();
}

criterion_group!(benches, encode_and_frame, decode, shard_log_append);
criterion_main!(benches);
