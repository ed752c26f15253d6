//! Record payloads of the webhook outbox: an event owed to a merchant, a failed attempt
//! of it, and the end of its delivery (delivered, or dead-lettered with the event). Same conventions as `payload` (little-endian, `u16`-counted strings,
//! decoders that bound everything and never panic).
//!
//! The outbox is these two kinds of records: an event whose `WebhookEvent` has no
//! `WebhookDelivered` after it is still owed, so replaying the log resumes exactly the
//! undelivered events. A `WebhookEvent` holds the payment as the event shows it, not a
//! reference to the shard's payment: retention may drop the payment from memory while the
//! event still waits, and carrying an event forward copies one self-contained record. The
//! body is rebuilt from it with the shared payment writer (`payment_object`); the fields,
//! not the JSON, are stored because escaped JSON of the largest payment would not fit a
//! record, while its fields do.

use super::payload::{
    put_id, put_metadata, put_optional_str, put_str, status_code, PayloadError, Reader,
    DECLINE_CODE_LENGTH_MAX, MERCHANT_ID_LENGTH_MAX,
};
use crate::payment::{EventId, PaymentId, DESCRIPTION_LENGTH_MAX, ORDER_ID_LENGTH_MAX};
use crate::payment_object::PaymentSnapshot;

/// A webhook event owed to a merchant, written in the same batch as the final status it
/// tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    pub event: EventId,
    /// The `timestamp` of the event body: when the event happened.
    pub created_at_ms: u64,
    /// The payment as the event body shows it (its final status, merchant id included).
    pub payment: PaymentSnapshot,
}

/// How the delivery of an event ended. Numbers are for ever, as record kinds are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WebhookOutcome {
    /// A 2xx answer.
    Delivered = 1,
    /// Every attempt of the retry schedule failed; the merchant can still query it.
    DeadLettered = 2,
    /// The receiver answered 410 Gone: no more attempts.
    Gone = 3,
}

/// The end of an event's delivery: from here on the event is no longer owed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookDelivered {
    pub event: EventId,
    /// Attempts made, the last one included (0 when it ended without one).
    pub attempts: u16,
    pub outcome: WebhookOutcome,
    pub finished_at_ms: u64,
}

/// A failed attempt after which another is scheduled. Only the last one of an event
/// matters: a restart resumes the event's schedule from it instead of from attempt 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookAttempted {
    pub event: EventId,
    /// Attempts made so far, this one included.
    pub attempts: u16,
    /// The receiver's HTTP status; `None` when it did not answer (timeout, refused).
    pub last_status: Option<u16>,
    pub attempted_at_ms: u64,
    /// When the next attempt is due (schedule, jitter and `Retry-After` applied).
    pub next_attempt_at_ms: u64,
}

/// An event whose delivery failed for good, with the event itself: it ends the delivery
/// as `WebhookDelivered` does, and the merchant can list it (`GET /v1/events`) for
/// `storage.retention_hours` after `failed_at_ms`, even once the event's own record is
/// gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookDeadLetter {
    /// `DeadLettered` or `Gone`, never `Delivered`.
    pub outcome: WebhookOutcome,
    pub attempts: u16,
    pub last_status: Option<u16>,
    /// When the last attempt ended: the time of the dead letter.
    pub failed_at_ms: u64,
    pub event: WebhookEvent,
}

/// Bytes of `WebhookDeadLetter` before its event: outcome, attempts, status, time.
const DEAD_LETTER_FIXED_BYTES: usize = 1 + 2 + 2 + 8;

impl WebhookEvent {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let payment = &self.payment;
        assert!(payment.status.is_final(), "an event tells a final status");
        put_event_id(out, self.event);
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        put_id(out, payment.id);
        out.extend_from_slice(&payment.amount.to_le_bytes());
        out.extend_from_slice(&payment.created_at_ms.to_le_bytes());
        out.extend_from_slice(&payment.updated_at_ms.to_le_bytes());
        out.extend_from_slice(&payment.currency.0);
        out.push(status_code(payment.status));
        put_str(out, &payment.merchant_id);
        put_str(out, &payment.order_id);
        put_optional_str(out, payment.decline_code.as_deref());
        put_optional_str(out, payment.description.as_deref());
        put_metadata(out, &payment.metadata);
    }

    pub fn decode(payload: &[u8]) -> Result<WebhookEvent, PayloadError> {
        let mut reader = Reader::new(payload);
        let event = read_event_id(&mut reader)?;
        let created_at_ms = reader.u64("created_at_ms")?;
        let id = reader.id()?;
        let amount = reader.u64("amount")?;
        let payment_created_at_ms = reader.u64("payment.created_at_ms")?;
        let updated_at_ms = reader.u64("payment.updated_at_ms")?;
        let currency = reader.currency()?;
        let status = reader.final_status()?;
        let merchant_id = reader.string("merchant_id", MERCHANT_ID_LENGTH_MAX)?;
        let order_id = reader.string("order_id", ORDER_ID_LENGTH_MAX)?;
        let decline_code = reader.optional_string("decline_code", DECLINE_CODE_LENGTH_MAX)?;
        let description = reader.optional_string("description", DESCRIPTION_LENGTH_MAX)?;
        let metadata = reader.metadata()?;
        reader.finish()?;
        let payment = PaymentSnapshot {
            id,
            merchant_id,
            order_id,
            amount,
            currency,
            status,
            decline_code,
            description,
            metadata,
            created_at_ms: payment_created_at_ms,
            updated_at_ms,
        };
        Ok(WebhookEvent {
            event,
            created_at_ms,
            payment,
        })
    }
}

impl WebhookDelivered {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_event_id(out, self.event);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.push(self.outcome as u8);
        out.extend_from_slice(&self.finished_at_ms.to_le_bytes());
    }

    pub fn decode(payload: &[u8]) -> Result<WebhookDelivered, PayloadError> {
        let mut reader = Reader::new(payload);
        let event = read_event_id(&mut reader)?;
        let attempts = reader.u16("attempts")?;
        let outcome = match reader.u8("outcome")? {
            1 => WebhookOutcome::Delivered,
            2 => WebhookOutcome::DeadLettered,
            3 => WebhookOutcome::Gone,
            _ => return Err(PayloadError::Invalid("outcome")),
        };
        let finished_at_ms = reader.u64("finished_at_ms")?;
        reader.finish()?;
        Ok(WebhookDelivered {
            event,
            attempts,
            outcome,
            finished_at_ms,
        })
    }
}

impl WebhookAttempted {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_event_id(out, self.event);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&status_or_zero(self.last_status).to_le_bytes());
        out.extend_from_slice(&self.attempted_at_ms.to_le_bytes());
        out.extend_from_slice(&self.next_attempt_at_ms.to_le_bytes());
    }

    pub fn decode(payload: &[u8]) -> Result<WebhookAttempted, PayloadError> {
        let mut reader = Reader::new(payload);
        let event = read_event_id(&mut reader)?;
        let attempts = reader.u16("attempts")?;
        let last_status = read_status(&mut reader)?;
        let attempted_at_ms = reader.u64("attempted_at_ms")?;
        let next_attempt_at_ms = reader.u64("next_attempt_at_ms")?;
        reader.finish()?;
        Ok(WebhookAttempted {
            event,
            attempts,
            last_status,
            attempted_at_ms,
            next_attempt_at_ms,
        })
    }
}

impl WebhookDeadLetter {
    pub fn encode(&self, out: &mut Vec<u8>) {
        assert_ne!(
            self.outcome,
            WebhookOutcome::Delivered,
            "a dead letter failed"
        );
        out.push(self.outcome as u8);
        out.extend_from_slice(&self.attempts.to_le_bytes());
        out.extend_from_slice(&status_or_zero(self.last_status).to_le_bytes());
        out.extend_from_slice(&self.failed_at_ms.to_le_bytes());
        self.event.encode(out);
    }

    pub fn decode(payload: &[u8]) -> Result<WebhookDeadLetter, PayloadError> {
        let mut reader = Reader::new(payload);
        let outcome = match reader.u8("outcome")? {
            2 => WebhookOutcome::DeadLettered,
            3 => WebhookOutcome::Gone,
            _ => return Err(PayloadError::Invalid("outcome")),
        };
        let attempts = reader.u16("attempts")?;
        let last_status = read_status(&mut reader)?;
        let failed_at_ms = reader.u64("failed_at_ms")?;
        let event = WebhookEvent::decode(&payload[DEAD_LETTER_FIXED_BYTES..])?;
        Ok(WebhookDeadLetter {
            outcome,
            attempts,
            last_status,
            failed_at_ms,
            event,
        })
    }
}

/// An HTTP status is 100..=999; zero stands for "no answer".
fn status_or_zero(status: Option<u16>) -> u16 {
    let status = status.unwrap_or(0);
    assert!(status == 0 || (100..=999).contains(&status));
    status
}

fn read_status(reader: &mut Reader<'_>) -> Result<Option<u16>, PayloadError> {
    match reader.u16("last_status")? {
        0 => Ok(None),
        status @ 100..=999 => Ok(Some(status)),
        _ => Err(PayloadError::Invalid("last_status")),
    }
}

/// An event id is laid out as a payment id is: shard, then sequence.
fn put_event_id(out: &mut Vec<u8>, event: EventId) {
    put_id(
        out,
        PaymentId {
            shard: event.shard,
            sequence: event.sequence,
        },
    );
}

fn read_event_id(reader: &mut Reader<'_>) -> Result<EventId, PayloadError> {
    let shard = reader.u16("event.shard")?;
    let sequence = reader.u64("event.sequence")?;
    Ok(EventId { shard, sequence })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::{
        PaymentStatus, METADATA_KEYS_MAX, METADATA_KEY_LENGTH_MAX, METADATA_VALUE_LENGTH_MAX,
    };
    use crate::payment_object::sample_snapshot;
    use crate::wal::fuzz::{mutate, Prng};
    use crate::wal::record::RECORD_PAYLOAD_BYTES_MAX;

    fn sample_event() -> WebhookEvent {
        let payment = sample_snapshot();
        WebhookEvent {
            event: EventId::of_final_status(payment.id),
            created_at_ms: payment.updated_at_ms,
            payment,
        }
    }

    fn largest_event() -> WebhookEvent {
        // Four-byte characters everywhere a character count is the limit.
        let wide = |characters: usize| "😀".repeat(characters);
        let mut event = sample_event();
        event.payment = PaymentSnapshot {
            merchant_id: "m".repeat(MERCHANT_ID_LENGTH_MAX),
            order_id: wide(ORDER_ID_LENGTH_MAX),
            status: PaymentStatus::Failed,
            decline_code: Some(wide(DECLINE_CODE_LENGTH_MAX)),
            description: Some(wide(DESCRIPTION_LENGTH_MAX)),
            metadata: (0..METADATA_KEYS_MAX)
                .map(|_| {
                    (
                        wide(METADATA_KEY_LENGTH_MAX),
                        wide(METADATA_VALUE_LENGTH_MAX),
                    )
                })
                .collect(),
            ..event.payment
        };
        event
    }

    fn sample_delivered(outcome: WebhookOutcome) -> WebhookDelivered {
        WebhookDelivered {
            event: EventId {
                shard: 3,
                sequence: 0x1_0000_0007,
            },
            attempts: 8,
            outcome,
            finished_at_ms: 1_763_800_099_000,
        }
    }

    #[test]
    fn events_round_trip_smallest_to_largest() {
        let bare = {
            let mut event = sample_event();
            event.payment.description = None;
            event.payment.metadata.clear();
            event.payment.status = PaymentStatus::Declined;
            event.payment.decline_code = Some("card_declined".to_string());
            event
        };
        for event in [sample_event(), bare, largest_event()] {
            let mut out = Vec::new();
            event.encode(&mut out);
            assert_eq!(WebhookEvent::decode(&out), Ok(event));
        }
    }

    #[test]
    fn largest_event_fits_in_a_record() {
        let mut out = Vec::new();
        largest_event().encode(&mut out);
        assert!(out.len() <= RECORD_PAYLOAD_BYTES_MAX, "{}", out.len());
    }

    #[test]
    #[should_panic]
    fn an_event_of_a_pending_payment_is_a_bug() {
        let mut event = sample_event();
        event.payment.status = PaymentStatus::Pending;
        event.encode(&mut Vec::new());
    }

    #[test]
    fn delivered_round_trips_for_each_outcome() {
        for outcome in [
            WebhookOutcome::Delivered,
            WebhookOutcome::DeadLettered,
            WebhookOutcome::Gone,
        ] {
            let delivered = sample_delivered(outcome);
            let mut out = Vec::new();
            delivered.encode(&mut out);
            assert_eq!(out.len(), 2 + 8 + 2 + 1 + 8);
            assert_eq!(WebhookDelivered::decode(&out), Ok(delivered));
        }
    }

    fn sample_attempted() -> WebhookAttempted {
        WebhookAttempted {
            event: EventId {
                shard: 2,
                sequence: 41,
            },
            attempts: 3,
            last_status: Some(503),
            attempted_at_ms: 1_763_800_000_000,
            next_attempt_at_ms: 1_763_800_300_000,
        }
    }

    fn sample_dead_letter(outcome: WebhookOutcome) -> WebhookDeadLetter {
        WebhookDeadLetter {
            outcome,
            attempts: 8,
            last_status: None,
            failed_at_ms: 1_763_900_000_000,
            event: sample_event(),
        }
    }

    #[test]
    fn attempts_round_trip_with_and_without_a_status() {
        for last_status in [Some(100), Some(503), Some(999), None] {
            let attempted = WebhookAttempted {
                last_status,
                ..sample_attempted()
            };
            let mut out = Vec::new();
            attempted.encode(&mut out);
            assert_eq!(out.len(), 10 + 2 + 2 + 8 + 8);
            assert_eq!(WebhookAttempted::decode(&out), Ok(attempted));
        }
        let mut out = Vec::new();
        sample_attempted().encode(&mut out);
        out[12..14].copy_from_slice(&42u16.to_le_bytes());
        assert_eq!(
            WebhookAttempted::decode(&out),
            Err(PayloadError::Invalid("last_status"))
        );
    }

    #[test]
    fn dead_letters_round_trip_and_carry_the_whole_event() {
        for outcome in [WebhookOutcome::DeadLettered, WebhookOutcome::Gone] {
            let dead = sample_dead_letter(outcome);
            let mut out = Vec::new();
            dead.encode(&mut out);
            assert_eq!(WebhookDeadLetter::decode(&out), Ok(dead));
        }
        let mut largest = sample_dead_letter(WebhookOutcome::Gone);
        largest.event = largest_event();
        let mut out = Vec::new();
        largest.encode(&mut out);
        assert!(out.len() <= RECORD_PAYLOAD_BYTES_MAX, "{}", out.len());
        out[0] = WebhookOutcome::Delivered as u8;
        assert_eq!(
            WebhookDeadLetter::decode(&out),
            Err(PayloadError::Invalid("outcome"))
        );
        assert!(WebhookDeadLetter::decode(&out[..5]).is_err());
    }

    #[test]
    #[should_panic]
    fn a_delivered_dead_letter_is_a_bug() {
        sample_dead_letter(WebhookOutcome::Delivered).encode(&mut Vec::new());
    }

    #[test]
    fn structural_damage_is_reported_with_the_field() {
        let mut out = Vec::new();
        sample_event().encode(&mut out);
        assert_eq!(
            WebhookEvent::decode(&out[..out.len() - 1]),
            Err(PayloadError::Truncated("metadata.value"))
        );
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(
            WebhookEvent::decode(&longer),
            Err(PayloadError::TrailingBytes)
        );
        // Event id 10, created_at 8, payment id 10, three u64 24, currency 3: status at 55.
        let mut pending = out.clone();
        pending[55] = 0;
        assert_eq!(
            WebhookEvent::decode(&pending),
            Err(PayloadError::Invalid("status"))
        );
        let mut delivered = Vec::new();
        sample_delivered(WebhookOutcome::Gone).encode(&mut delivered);
        delivered[12] = 4; // the outcome byte
        assert_eq!(
            WebhookDelivered::decode(&delivered),
            Err(PayloadError::Invalid("outcome"))
        );
    }

    /// Random bytes, random mutations and random cuts of valid encodings: the decoders
    /// answer every one without panicking, and what decodes encodes back to the input.
    #[test]
    fn decoders_never_panic_on_random_input() {
        let mut prng = Prng(0x2545_f491_4f6c_dd1d);
        let (mut event, mut delivered) = (Vec::new(), Vec::new());
        sample_event().encode(&mut event);
        sample_delivered(WebhookOutcome::DeadLettered).encode(&mut delivered);
        let (mut attempted, mut dead) = (Vec::new(), Vec::new());
        sample_attempted().encode(&mut attempted);
        sample_dead_letter(WebhookOutcome::Gone).encode(&mut dead);
        let mut decoded = 0;
        for case in 0..60_000 {
            let input: Vec<u8> = match case % 5 {
                0 => (0..prng.below(300)).map(|_| prng.next() as u8).collect(),
                1 => mutate(&mut prng, &event),
                2 => mutate(&mut prng, &attempted),
                3 => mutate(&mut prng, &dead),
                _ => mutate(&mut prng, &delivered),
            };
            if let Ok(value) = WebhookAttempted::decode(&input) {
                let mut again = Vec::new();
                value.encode(&mut again);
                assert_eq!(again, input);
                decoded += 1;
            }
            if let Ok(value) = WebhookDeadLetter::decode(&input) {
                let mut again = Vec::new();
                value.encode(&mut again);
                assert_eq!(again, input);
                decoded += 1;
            }
            if let Ok(value) = WebhookEvent::decode(&input) {
                let mut again = Vec::new();
                value.encode(&mut again);
                assert_eq!(again, input);
                decoded += 1;
            }
            if let Ok(value) = WebhookDelivered::decode(&input) {
                let mut again = Vec::new();
                value.encode(&mut again);
                assert_eq!(again, input);
                decoded += 1;
            }
        }
        // Mutations that miss every checked byte still decode: the test reaches the end.
        assert!(decoded > 0);
    }
}
