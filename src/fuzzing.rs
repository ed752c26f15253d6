//! The bodies of the fuzz targets in `fuzz/`, one function per parser of outside bytes.
//!
//! They live in the library so that two callers run exactly the same code: the cargo-fuzz
//! targets (nightly, libFuzzer), and the corpus replay test (`tests/fuzz_corpus.rs`), which
//! feeds every file of `fuzz/corpus/<target>/` through them on stable, so `cargo test`
//! catches a regression on any input fuzzing ever kept. Each function takes arbitrary
//! bytes, must never panic on them, and asserts what must hold whatever they are.

use crate::acquirer::http::classify;
use crate::api::create_request::parse_create_request;
use crate::api::error::ApiError;
use crate::api::events::{parse_query, EVENTS_LIMIT_MAX};
use crate::auth::{sign_hex, MerchantKeys, SignedHeaders};
use crate::http::{frame_request, BodyDecoder, FrameOutcome, FramingLimits, ProtocolError};
use crate::outbound::response::{parse_response, Progress};
use crate::payment::{
    has_characters_within, is_valid_order_id, EventId, PaymentId, AMOUNT_MAX,
    DESCRIPTION_LENGTH_MAX, METADATA_KEYS_MAX, METADATA_KEY_LENGTH_MAX, METADATA_VALUE_LENGTH_MAX,
    PAYMENT_METHOD_LENGTH_MAX,
};
use crate::shard::recovery::rebuild;
use crate::shard::state::Payment;
use crate::wal::{
    decode_frame, decode_record, encode_created, encode_frame, encode_record, segment_file_name,
    Checkpoint, Created, DecodeOutcome, Finalized, RecordKind, WebhookAttempted, WebhookDeadLetter,
    WebhookDelivered, WebhookEvent, RECORD_PAYLOAD_BYTES_MAX, SEQUENCE_FIRST,
};
use crate::webhooks::retry::{RetrySchedule, Verdict, RETRIES_MAX};
use crate::webhooks::sender::{parse_retry_after, DeliveryOutcome};
use std::path::PathBuf;

/// Limits the HTTP target picks from with its first byte: the defaults, and small ones
/// that short inputs can reach.
const FRAMING_LIMITS_CHOICES: [FramingLimits; 3] = [
    FramingLimits {
        max_header_bytes: 8192,
        max_body_bytes: 16384,
    },
    FramingLimits {
        max_header_bytes: 256,
        max_body_bytes: 64,
    },
    FramingLimits {
        max_header_bytes: 64,
        max_body_bytes: 8,
    },
];
/// Reads the HTTP target splits its input into at most, so one input costs little.
const HTTP_READS_MAX: usize = 64;

/// What framing made of one request of a stream, for comparing two readings of it.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Request { consumed: usize, body: Vec<u8> },
    Unfinished,
    Refused(ProtocolError),
}

/// HTTP request framing, chunked bodies included, as the connection loop does it: the
/// first byte picks the limits and how many bytes arrive per read, the rest is the
/// stream. Framed read by read, it must come to exactly what framing it whole does
/// (the chunked decoder resumes between reads), and an unfinished request must always
/// fit in `request_bytes_max` (the connection's buffer relies on it).
pub fn http_request(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let limits = FRAMING_LIMITS_CHOICES[usize::from(selector) % FRAMING_LIMITS_CHOICES.len()];
    let read_bytes = (usize::from(selector) / FRAMING_LIMITS_CHOICES.len() + 1)
        .max(stream.len() / HTTP_READS_MAX + 1);
    let whole = frame_stream(stream, &limits, stream.len().max(1));
    let by_reads = frame_stream(stream, &limits, read_bytes);
    assert_eq!(whole, by_reads, "reads of {read_bytes} bytes");
}

/// Frames every request of `stream`, receiving it `read_bytes` at a time.
fn frame_stream(stream: &[u8], limits: &FramingLimits, read_bytes: usize) -> Vec<Framing> {
    let mut decoder = BodyDecoder::default();
    let mut bodies = Vec::new();
    let mut framings = Vec::new();
    let mut start = 0;
    let mut filled = stream.len().min(read_bytes);
    loop {
        let buffered = &stream[start..filled];
        match frame_request(buffered, limits, &mut decoder, &mut bodies) {
            Ok(FrameOutcome::Complete { head, consumed }) => {
                assert!(consumed >= head.head_length && consumed <= buffered.len());
                assert!(head.head_length <= limits.max_header_bytes);
                assert!(bodies.len() <= limits.max_body_bytes);
                assert!(head.target.end <= head.head_length);
                let body = std::mem::take(&mut bodies);
                framings.push(Framing::Request { consumed, body });
                start += consumed;
                if !head.keep_alive || start == stream.len() {
                    return framings;
                }
            }
            Ok(FrameOutcome::Partial { .. }) => {
                assert!(buffered.len() < limits.request_bytes_max());
                if filled == stream.len() {
                    framings.push(Framing::Unfinished);
                    return framings;
                }
                filled = stream.len().min(filled + read_bytes);
            }
            Err(error) => {
                framings.push(Framing::Refused(error));
                return framings;
            }
        }
    }
}

/// The create body, parsed and validated as the API does for merchant 0. What is
/// accepted must be what the rest of payd accepts too: the shard's state takes it
/// without tripping an assertion, and the log's encoding reads back exactly.
pub fn create_body(data: &[u8]) {
    let mut body = data.to_vec();
    let terms = match parse_create_request(&mut body, 0) {
        Ok(terms) => terms,
        Err(error) => return assert_error_is_json(&error),
    };
    assert!(is_valid_order_id(&terms.order_id));
    assert!((1..=AMOUNT_MAX).contains(&terms.amount));
    assert!(has_characters_within(
        &terms.payment_method,
        1,
        PAYMENT_METHOD_LENGTH_MAX
    ));
    assert!(terms
        .description
        .as_deref()
        .is_none_or(|text| has_characters_within(text, 0, DESCRIPTION_LENGTH_MAX)));
    assert!(terms.metadata.len() <= METADATA_KEYS_MAX);
    for (key, value) in &terms.metadata {
        assert!(has_characters_within(key, 1, METADATA_KEY_LENGTH_MAX));
        assert!(has_characters_within(value, 0, METADATA_VALUE_LENGTH_MAX));
    }
    let id = PaymentId {
        shard: 0,
        sequence: SEQUENCE_FIRST,
    };
    let mut encoded = Vec::new();
    encode_created(&mut encoded, id, "m_fuzz", &terms, 1);
    assert!(encoded.len() <= RECORD_PAYLOAD_BYTES_MAX);
    let created = Created::decode(&encoded).expect("an accepted create reads back");
    assert_eq!(created.into_terms(0), terms);
    let _ = Payment::pending(id, terms, 1);
}

/// An error body, whatever the request echoed into it, is the contract's JSON.
fn assert_error_is_json(error: &ApiError) {
    let mut json = Vec::new();
    error.write_json(&mut json);
    let mut parsed = json.clone();
    assert!(
        simd_json::to_owned_value(&mut parsed).is_ok(),
        "error body is not JSON: {}",
        String::from_utf8_lossy(&json)
    );
}

/// A request target, as the routes read it: the events query (every parameter once,
/// none unknown, the error naming a parameter only when it is plain), and payment and
/// event ids, which must print back exactly as they parsed.
pub fn request_target(data: &[u8]) {
    match parse_query(data) {
        Ok(query) => assert!((1..=EVENTS_LIMIT_MAX).contains(&query.limit)),
        Err(error) => assert_error_is_json(&error),
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = PaymentId::parse(text) {
        assert_eq!(id.to_string(), text);
    }
    if let Some(id) = EventId::parse(text) {
        assert_eq!(id.to_string(), text);
    }
    if is_valid_order_id(text) {
        assert!(text.len() <= crate::payment::ORDER_ID_LENGTH_MAX);
    }
}

/// Secrets of the signature target's two merchants (the first has two, rotating).
const FUZZ_MERCHANTS: [(&str, &[&[u8]]); 2] = [
    ("m_one", &[b"fuzz-secret-one-old", b"fuzz-secret-one-new"]),
    ("m_two", &[b"fuzz-secret-two"]),
];
/// The signature target's clock; timestamps within 300 s of it are fresh.
const FUZZ_NOW_SECS: u64 = 1_763_800_000;

/// The signature headers: the input is split at `\n` into merchant, timestamp,
/// signature, method, target and body. With the first byte odd, the signature is
/// replaced by the right one for the first merchant's second secret, so the accepting
/// path is fuzzed too. Whatever is accepted must carry a signature one of the named
/// merchant's secrets makes.
pub fn signature_headers(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keys = MerchantKeys::new(
        FUZZ_MERCHANTS
            .iter()
            .map(|(id, secrets)| (id.to_string(), secrets.iter().map(|s| s.to_vec()).collect()))
            .collect(),
    );
    let mut parts = rest.splitn(6, |&b| b == b'\n');
    let mut next = || parts.next().unwrap_or_default();
    let (merchant, timestamp, signature) = (next(), next(), next());
    let (method, target, body) = (next(), next(), next());
    let signed;
    let signature = match (mode % 2, std::str::from_utf8(timestamp)) {
        (1, Ok(timestamp_text)) => {
            let Ok(timestamp_secs) = timestamp_text.parse::<u64>() else {
                return;
            };
            let hex = sign_hex(
                FUZZ_MERCHANTS[0].1[1],
                timestamp_secs,
                &String::from_utf8_lossy(method),
                &String::from_utf8_lossy(target),
                body,
            );
            signed = format!("v1={hex}");
            signed.as_bytes()
        }
        _ => signature,
    };
    let headers = SignedHeaders {
        merchant: (!merchant.is_empty()).then_some(merchant),
        timestamp: Some(timestamp),
        signature: Some(signature),
    };
    let Ok(index) = keys.verify(&headers, method, target, body, FUZZ_NOW_SECS, 300) else {
        return;
    };
    let (id, secrets) = FUZZ_MERCHANTS[index as usize];
    assert_eq!(merchant, id.as_bytes());
    let timestamp_secs: u64 = std::str::from_utf8(timestamp)
        .expect("an accepted timestamp is digits")
        .parse()
        .expect("an accepted timestamp is a number");
    let hex = std::str::from_utf8(&signature[3..])
        .expect("an accepted signature is hex")
        .to_ascii_lowercase();
    let (Ok(method), Ok(target)) = (std::str::from_utf8(method), std::str::from_utf8(target))
    else {
        // Accepted over bytes that are not UTF-8: the secret matched them as bytes.
        return;
    };
    assert!(secrets
        .iter()
        .any(|secret| sign_hex(secret, timestamp_secs, method, target, body) == hex));
}

/// Log framing and every payload decoder. The first byte picks: 0 walks the rest as a
/// format-1 segment (bare records with checksums), 8 as a format-2 segment (batch
/// frames), any other value decodes the rest as the payload of record kind `byte % 8`
/// directly (the checksums would stop most inputs short of the decoders). Whatever
/// decodes must encode back to the same bytes, and a `Created` must be one the shard's
/// state takes.
pub fn wal_record(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            let mut at = 0;
            while let DecodeOutcome::Record(record) = decode_record(&rest[at..]) {
                assert!(record.length_total > 0 && at + record.length_total <= rest.len());
                decode_payload(record.kind, record.payload);
                at += record.length_total;
            }
        }
        8 => {
            let mut at = 0;
            while let crate::wal::FrameOutcome::Frame(frame) = decode_frame(rest, at) {
                assert!(frame.length_total > 0 && at + frame.length_total <= rest.len());
                assert!(frame.first_sequence > frame.synced_through);
                let mut entries = 0u64;
                for record in frame.records() {
                    let record = record.expect("a checked frame's entries parse");
                    assert_eq!(record.sequence, frame.first_sequence + entries);
                    decode_payload(record.kind, record.payload);
                    entries += 1;
                }
                assert_eq!(entries, u64::from(frame.entry_count));
                at += frame.length_total;
            }
        }
        _ => decode_payload(mode % 8, rest),
    }
}

fn decode_payload(kind: u8, payload: &[u8]) {
    let mut encoded = Vec::new();
    match RecordKind::from_u8(kind) {
        Some(RecordKind::Created) => {
            let Ok(created) = Created::decode(payload) else {
                return;
            };
            created.encode(&mut encoded);
            let id = created.id;
            let _ = Payment::pending(id, created.into_terms(0), 1);
        }
        Some(RecordKind::Finalized) => match Finalized::decode(payload) {
            Ok(finalized) => finalized.encode(&mut encoded),
            Err(_) => return,
        },
        Some(RecordKind::Checkpoint) => match Checkpoint::decode(payload) {
            Ok(checkpoint) => checkpoint.encode(&mut encoded),
            Err(_) => return,
        },
        Some(RecordKind::WebhookEvent) => match WebhookEvent::decode(payload) {
            Ok(event) => event.encode(&mut encoded),
            Err(_) => return,
        },
        Some(RecordKind::WebhookDelivered) => match WebhookDelivered::decode(payload) {
            Ok(delivered) => delivered.encode(&mut encoded),
            Err(_) => return,
        },
        Some(RecordKind::WebhookAttempted) => match WebhookAttempted::decode(payload) {
            Ok(attempted) => attempted.encode(&mut encoded),
            Err(_) => return,
        },
        Some(RecordKind::WebhookDeadLetter) => match WebhookDeadLetter::decode(payload) {
            Ok(dead) => dead.encode(&mut encoded),
            Err(_) => return,
        },
        None => return,
    }
    assert_eq!(encoded, payload, "kind {kind} decodes and encodes back");
}

/// Merchants the recovery target's logs may name.
const RECOVERY_MERCHANTS: [&str; 2] = ["m_demo", "m_other"];

/// Recovery of a shard from arbitrary segment files, through `shard::recovery::rebuild`
/// as payd starts. The first byte picks the shape: 0 mod 3, the rest is one segment's
/// raw bytes; otherwise it is a list of records (`kind`, a 16-bit little-endian length,
/// the payload) laid out here with correct checksums and sequence numbers, so the replay
/// itself is fuzzed, not only the checksums: 1 mod 3 as format-1 records, 2 mod 3 as
/// format-2 frames of `byte / 3 % 8 + 1` records each. Recovery must refuse or rebuild,
/// never panic. The files live in a directory of this process under /dev/shm (or the
/// system's temporary directory), emptied at every run.
pub fn wal_recovery(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let segment = match mode % 3 {
        0 => rest.to_vec(),
        1 => framed_records(rest),
        _ => batch_frames(rest, usize::from(mode / 3 % 8) + 1),
    };
    let dir = recovery_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the fuzz shard directory");
    let path = dir.join(segment_file_name(SEQUENCE_FIRST));
    std::fs::write(&path, &segment).expect("write the fuzz segment");
    let keys = MerchantKeys::new(
        RECOVERY_MERCHANTS
            .iter()
            .map(|id| (id.to_string(), vec![b"fuzz-secret".to_vec()]))
            .collect(),
    );
    if let Ok(rebuilt) = rebuild(0, &dir, &keys) {
        assert!(rebuilt.recovery.next_sequence >= SEQUENCE_FIRST);
        assert!(rebuilt.state.next_sequence() >= rebuilt.state.len() as u64);
    }
}

/// `kind`, length, payload triples, framed as the log frames records.
fn framed_records(mut rest: &[u8]) -> Vec<u8> {
    let mut segment = Vec::new();
    let mut sequence = SEQUENCE_FIRST;
    while let [kind, low, high, tail @ ..] = rest {
        let length = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        let (payload, after) = tail.split_at(length);
        encode_record(&mut segment, *kind, sequence, payload);
        sequence += 1;
        rest = after;
    }
    // Whatever is left is a torn tail.
    segment.extend_from_slice(rest);
    segment
}

/// `kind`, length, payload triples (as `framed_records` reads them), in format-2 frames
/// of `per_frame` records; each frame says everything before it was synced.
fn batch_frames(mut rest: &[u8], per_frame: usize) -> Vec<u8> {
    let mut records: Vec<(u8, &[u8])> = Vec::new();
    while let [kind, low, high, tail @ ..] = rest {
        let length = usize::from(u16::from_le_bytes([*low, *high])).min(tail.len());
        let (payload, after) = tail.split_at(length);
        records.push((*kind, payload));
        rest = after;
    }
    let mut segment = Vec::new();
    let mut sequence = SEQUENCE_FIRST;
    for frame in records.chunks(per_frame) {
        encode_frame(&mut segment, sequence, sequence - 1, frame);
        sequence += frame.len() as u64;
    }
    segment.extend_from_slice(rest);
    segment
}

fn recovery_dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("payd-fuzz-recovery-{}", std::process::id()))
        .join("shard-0000")
}

/// Limits the response targets parse within: the acquirer's and the webhooks' clients
/// both take 16 KiB.
const RESPONSE_BYTES_MAX: usize = 16 * 1024;

/// An acquirer's HTTP response, as the outbound client reads it and the acquirer client
/// judges it. The first byte's low bit says whether the peer has closed.
pub fn acquirer_response(data: &[u8]) {
    let Some(parsed) = parse_outbound_response(data) else {
        return;
    };
    let _ = classify(Ok(parsed));
}

/// A webhook receiver's HTTP response, as the outbound client reads it and the outbox
/// judges it: its verdict, and the delay of the retry it asks for (the first byte's
/// high bits pick the attempt number).
pub fn webhook_response(data: &[u8]) {
    let Some(response) = parse_outbound_response(data) else {
        return;
    };
    let outcome = DeliveryOutcome::Answered {
        status: response.status,
        retry_after_secs: response.retry_after_secs,
    };
    let schedule = RetrySchedule::new(vec![5, 300, 1800, 7200, 18000, 36000, 36000]);
    if let Verdict::Retry { retry_after_secs } = Verdict::of(&outcome) {
        let attempt = 1 + u32::from(data[0] >> 1) % (RETRIES_MAX as u32 + 1);
        let _ = schedule.delay_ms(attempt, retry_after_secs, u64::from(data[0]));
    }
    // The header's own parser, on the whole input as a value.
    let _ = parse_retry_after(&data[1..], FUZZ_NOW_SECS);
}

/// Parses the rest of `data` as the client does, checking what its read buffer relies
/// on: a partial response never holds more than the limit, a complete one never
/// consumes more than it was given, and the same bytes cut at the end it consumed
/// parse to the same response.
fn parse_outbound_response(data: &[u8]) -> Option<crate::outbound::Response> {
    let (&mode, input) = data.split_first()?;
    let at_eof = mode & 1 == 1;
    match parse_response(input, at_eof, RESPONSE_BYTES_MAX) {
        Ok(Progress::Partial) => {
            assert!(
                input.len() <= RESPONSE_BYTES_MAX,
                "a partial response over the limit"
            );
            None
        }
        Ok(Progress::Complete(parsed)) => {
            assert!(parsed.consumed <= input.len());
            assert!(parsed.response.body.len() <= RESPONSE_BYTES_MAX);
            if !at_eof {
                let again = parse_response(&input[..parsed.consumed], false, RESPONSE_BYTES_MAX);
                assert!(
                    matches!(&again, Ok(Progress::Complete(same)) if *same == parsed),
                    "the response alone parses the same"
                );
            }
            Some(parsed.response)
        }
        Err(_) => None,
    }
}

/// A client's side of a WebSocket connection: frames through the codec and messages
/// through their envelope, as the session drives them (`http::websocket::fuzz`, which
/// asserts what the codec promises).
pub fn websocket_frames(data: &[u8]) {
    let _ = crate::http::websocket::fuzz::websocket_input(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_stream_frames_the_same_at_any_read_size() {
        let mut data = vec![0u8];
        data.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n1\r\nd\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET /",
        );
        for selector in 0..=255u8 {
            data[0] = selector;
            http_request(&data);
        }
    }
}
