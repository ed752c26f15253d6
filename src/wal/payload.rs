//! Record payloads: the compact binary form of each thing the log remembers.
//!
//! Every record carries a kind byte (see `RecordKind`) that says how to read its payload.
//! A new kind of record, or a new layout of an old one, takes a new kind number: old
//! logs stay readable and nothing is ever re-encoded in place.
//!
//! Integers are little-endian and fixed-width; strings are a `u16` byte count and UTF-8
//! bytes; an optional string is a flag byte (0 absent, 1 present) and then the string.
//! Decoding checks the structure (bounds, UTF-8, flags, no trailing bytes) and never
//! panics: the checksum says the bytes are the ones written, not that the writer was right.

use crate::payment::{
    has_characters_within, is_valid_order_id, Currency, MerchantIndex, PaymentId, PaymentStatus,
    PaymentTerms, DESCRIPTION_LENGTH_MAX, METADATA_KEYS_MAX, METADATA_KEY_LENGTH_MAX,
    METADATA_VALUE_LENGTH_MAX, ORDER_ID_LENGTH_MAX, PAYMENT_METHOD_LENGTH_MAX,
};
use std::fmt;

/// A merchant id in the config is 1-64 ASCII characters (config.rs).
pub const MERCHANT_ID_LENGTH_MAX: usize = 64;
/// A decline code comes from the acquirer; longer ones are a protocol error upstream.
pub const DECLINE_CODE_LENGTH_MAX: usize = 64;
/// API.md counts characters; a UTF-8 character takes at most this many bytes.
const UTF8_CHARACTER_BYTES_MAX: usize = 4;

/// The kind byte of each record. Numbers are for ever: never reuse or renumber one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A payment was accepted and is pending: `Created`.
    Created = 1,
    /// A payment reached its final status: `Finalized`.
    Finalized = 2,
    /// A webhook event owed to a merchant: `WebhookEvent` (webhook_payload.rs).
    WebhookEvent = 3,
    /// A webhook event's delivery ended (delivered, dead-lettered or gone):
    /// `WebhookDelivered` (webhook_payload.rs).
    WebhookDelivered = 4,
    /// Written by retention before it deletes segments: `Checkpoint`.
    Checkpoint = 5,
    /// A webhook attempt failed and another is scheduled: `WebhookAttempted`
    /// (webhook_payload.rs). A restart resumes the schedule from the last one.
    WebhookAttempted = 6,
    /// A webhook event's delivery failed for good (schedule exhausted, or 410): the
    /// event itself and its last attempt, `WebhookDeadLetter` (webhook_payload.rs).
    /// Self-contained, so it stays queryable after the event's own record is deleted.
    WebhookDeadLetter = 7,
}

impl RecordKind {
    pub fn from_u8(kind: u8) -> Option<RecordKind> {
        match kind {
            1 => Some(RecordKind::Created),
            2 => Some(RecordKind::Finalized),
            3 => Some(RecordKind::WebhookEvent),
            4 => Some(RecordKind::WebhookDelivered),
            5 => Some(RecordKind::Checkpoint),
            6 => Some(RecordKind::WebhookAttempted),
            7 => Some(RecordKind::WebhookDeadLetter),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// A new payment, written (and made durable) before the acquirer is asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub id: PaymentId,
    /// The merchant's id from the config, not its index: the config may change.
    pub merchant_id: String,
    pub order_id: String,
    pub amount: u64,
    pub currency: Currency,
    pub payment_method: String,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub created_at_ms: u64,
}

impl Created {
    /// The terms the record carries, for the merchant that `merchant_id` names today.
    pub fn into_terms(self, merchant: MerchantIndex) -> PaymentTerms {
        PaymentTerms {
            merchant,
            order_id: self.order_id,
            amount: self.amount,
            currency: self.currency,
            payment_method: self.payment_method,
            description: self.description,
            metadata: self.metadata,
        }
    }
}

/// The final status of a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finalized {
    pub id: PaymentId,
    /// Always a final status: `Pending` is rejected on both sides.
    pub status: PaymentStatus,
    pub decline_code: Option<String>,
    pub updated_at_ms: u64,
}

/// Why a payload does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload ends inside this field.
    Truncated(&'static str),
    /// This field is longer than any valid value.
    TooLong(&'static str),
    NotUtf8(&'static str),
    /// This field holds a value outside its domain (flag, currency, status).
    Invalid(&'static str),
    /// Bytes follow the last field.
    TrailingBytes,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::Truncated(field) => write!(f, "payload ends inside `{field}`"),
            PayloadError::TooLong(field) => write!(f, "payload field `{field}` is too long"),
            PayloadError::NotUtf8(field) => write!(f, "payload field `{field}` is not UTF-8"),
            PayloadError::Invalid(field) => write!(f, "payload field `{field}` is invalid"),
            PayloadError::TrailingBytes => write!(f, "payload has bytes after its last field"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// Encodes a `Created` payload straight from what the shard holds, without building a
/// `Created` first (no copies of the strings on the hot path).
pub fn encode_created(
    out: &mut Vec<u8>,
    id: PaymentId,
    merchant_id: &str,
    terms: &PaymentTerms,
    created_at_ms: u64,
) {
    let fields = CreatedFields {
        id,
        merchant_id,
        order_id: &terms.order_id,
        amount: terms.amount,
        currency: terms.currency,
        payment_method: &terms.payment_method,
        description: terms.description.as_deref(),
        metadata: &terms.metadata,
        created_at_ms,
    };
    fields.encode(out);
}

/// The fields of a `Created`, borrowed: one encoder for the struct and for the terms.
struct CreatedFields<'a> {
    id: PaymentId,
    merchant_id: &'a str,
    order_id: &'a str,
    amount: u64,
    currency: Currency,
    payment_method: &'a str,
    description: Option<&'a str>,
    metadata: &'a [(String, String)],
    created_at_ms: u64,
}

impl CreatedFields<'_> {
    fn encode(&self, out: &mut Vec<u8>) {
        put_id(out, self.id);
        out.extend_from_slice(&self.amount.to_le_bytes());
        out.extend_from_slice(&self.created_at_ms.to_le_bytes());
        out.extend_from_slice(&self.currency.0);
        put_str(out, self.merchant_id);
        put_str(out, self.order_id);
        put_str(out, self.payment_method);
        put_optional_str(out, self.description);
        put_metadata(out, self.metadata);
    }
}

/// Encodes a `Finalized` payload. `status` must be final.
pub fn encode_finalized(
    out: &mut Vec<u8>,
    id: PaymentId,
    status: PaymentStatus,
    decline_code: Option<&str>,
    updated_at_ms: u64,
) {
    put_id(out, id);
    out.push(status_code(status));
    put_optional_str(out, decline_code);
    out.extend_from_slice(&updated_at_ms.to_le_bytes());
}

impl Created {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let fields = CreatedFields {
            id: self.id,
            merchant_id: &self.merchant_id,
            order_id: &self.order_id,
            amount: self.amount,
            currency: self.currency,
            payment_method: &self.payment_method,
            description: self.description.as_deref(),
            metadata: &self.metadata,
            created_at_ms: self.created_at_ms,
        };
        fields.encode(out);
    }

    pub fn decode(payload: &[u8]) -> Result<Created, PayloadError> {
        let mut reader = Reader::new(payload);
        let id = reader.id()?;
        let amount = reader.u64("amount")?;
        let created_at_ms = reader.u64("created_at_ms")?;
        let currency = reader.currency()?;
        let merchant_id = reader.string("merchant_id", MERCHANT_ID_LENGTH_MAX)?;
        let order_id = reader.string("order_id", ORDER_ID_LENGTH_MAX)?;
        let payment_method = reader.string("payment_method", PAYMENT_METHOD_LENGTH_MAX)?;
        let description = reader.optional_string("description", DESCRIPTION_LENGTH_MAX)?;
        let metadata = reader.metadata()?;
        reader.finish()?;
        // What the API validated on the way in, the shard's state relies on again.
        if !is_valid_order_id(&order_id) {
            return Err(PayloadError::Invalid("order_id"));
        }
        if payment_method.is_empty() {
            return Err(PayloadError::Invalid("payment_method"));
        }
        Ok(Created {
            id,
            merchant_id,
            order_id,
            amount,
            currency,
            payment_method,
            description,
            metadata,
            created_at_ms,
        })
    }
}

impl Finalized {
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_finalized(
            out,
            self.id,
            self.status,
            self.decline_code.as_deref(),
            self.updated_at_ms,
        );
    }

    pub fn decode(payload: &[u8]) -> Result<Finalized, PayloadError> {
        let mut reader = Reader::new(payload);
        let id = reader.id()?;
        let status = reader.final_status()?;
        let decline_code = reader.optional_string("decline_code", DECLINE_CODE_LENGTH_MAX)?;
        let updated_at_ms = reader.u64("updated_at_ms")?;
        reader.finish()?;
        Ok(Finalized {
            id,
            status,
            decline_code,
            updated_at_ms,
        })
    }
}

/// What a shard must remember when retention deletes the segments that said it.
///
/// Payment ids must stay unique for ever: once the records of the newest payments of a
/// deleted segment are gone, only this says where the payment sequence stood. It also
/// tells recovery that a finalisation of a payment below `next_payment_sequence` whose
/// creation it never saw was deleted by retention, not lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The shard's next payment sequence when the checkpoint was written.
    pub next_payment_sequence: u64,
}

impl Checkpoint {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.next_payment_sequence.to_le_bytes());
    }

    pub fn decode(payload: &[u8]) -> Result<Checkpoint, PayloadError> {
        let mut reader = Reader::new(payload);
        let next_payment_sequence = reader.u64("next_payment_sequence")?;
        reader.finish()?;
        Ok(Checkpoint {
            next_payment_sequence,
        })
    }
}

pub(super) fn status_code(status: PaymentStatus) -> u8 {
    match status {
        PaymentStatus::Pending => panic!("a finalized record needs a final status"),
        PaymentStatus::Succeeded => 1,
        PaymentStatus::Declined => 2,
        PaymentStatus::Failed => 3,
    }
}

pub(super) fn put_id(out: &mut Vec<u8>, id: PaymentId) {
    out.extend_from_slice(&id.shard.to_le_bytes());
    out.extend_from_slice(&id.sequence.to_le_bytes());
}

pub(super) fn put_str(out: &mut Vec<u8>, text: &str) {
    // Validation upstream bounds every string far below 64 KiB.
    let length = u16::try_from(text.len()).expect("payload string under 64 KiB");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(super) fn put_optional_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => out.push(0),
        Some(text) => {
            out.push(1);
            put_str(out, text);
        }
    }
}

pub(super) fn put_metadata(out: &mut Vec<u8>, metadata: &[(String, String)]) {
    assert!(metadata.len() <= METADATA_KEYS_MAX);
    out.push(metadata.len() as u8);
    for (key, value) in metadata {
        put_str(out, key);
        put_str(out, value);
    }
}

/// A cursor over a payload that fails, never panics, when the bytes run out.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, at: 0 }
    }

    pub(super) fn bytes(
        &mut self,
        count: usize,
        field: &'static str,
    ) -> Result<&'a [u8], PayloadError> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.buf.len())
            .ok_or(PayloadError::Truncated(field))?;
        let bytes = &self.buf[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, PayloadError> {
        Ok(self.bytes(1, field)?[0])
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, PayloadError> {
        let mut bytes = [0u8; 2];
        bytes.copy_from_slice(self.bytes(2, field)?);
        Ok(u16::from_le_bytes(bytes))
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, PayloadError> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.bytes(8, field)?);
        Ok(u64::from_le_bytes(bytes))
    }

    pub(super) fn currency(&mut self) -> Result<Currency, PayloadError> {
        let bytes = self.bytes(3, "currency")?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(Currency::parse)
            .ok_or(PayloadError::Invalid("currency"))
    }

    /// A status written by `status_code`: final, never pending.
    pub(super) fn final_status(&mut self) -> Result<PaymentStatus, PayloadError> {
        match self.u8("status")? {
            1 => Ok(PaymentStatus::Succeeded),
            2 => Ok(PaymentStatus::Declined),
            3 => Ok(PaymentStatus::Failed),
            _ => Err(PayloadError::Invalid("status")),
        }
    }

    pub(super) fn id(&mut self) -> Result<PaymentId, PayloadError> {
        let shard = self.u16("id.shard")?;
        let sequence = self.u64("id.sequence")?;
        Ok(PaymentId { shard, sequence })
    }

    /// A string of at most `characters_max` characters, bounded by its byte count first
    /// so a damaged length cannot ask for a large allocation.
    pub(super) fn string(
        &mut self,
        field: &'static str,
        characters_max: usize,
    ) -> Result<String, PayloadError> {
        let length = self.u16(field)? as usize;
        if length > characters_max * UTF8_CHARACTER_BYTES_MAX {
            return Err(PayloadError::TooLong(field));
        }
        let bytes = self.bytes(length, field)?;
        let text = std::str::from_utf8(bytes).map_err(|_| PayloadError::NotUtf8(field))?;
        if !has_characters_within(text, 0, characters_max) {
            return Err(PayloadError::TooLong(field));
        }
        Ok(text.to_string())
    }

    pub(super) fn optional_string(
        &mut self,
        field: &'static str,
        characters_max: usize,
    ) -> Result<Option<String>, PayloadError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.string(field, characters_max).map(Some),
            _ => Err(PayloadError::Invalid(field)),
        }
    }

    pub(super) fn metadata(&mut self) -> Result<Vec<(String, String)>, PayloadError> {
        let count = self.u8("metadata")? as usize;
        if count > METADATA_KEYS_MAX {
            return Err(PayloadError::TooLong("metadata"));
        }
        let mut metadata = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.string("metadata.key", METADATA_KEY_LENGTH_MAX)?;
            let value = self.string("metadata.value", METADATA_VALUE_LENGTH_MAX)?;
            metadata.push((key, value));
        }
        Ok(metadata)
    }

    pub(super) fn finish(&self) -> Result<(), PayloadError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(PayloadError::TrailingBytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::fuzz::{mutate, Prng};
    use crate::wal::record::{decode_record, encode_record, RECORD_PAYLOAD_BYTES_MAX};

    #[test]
    fn a_checkpoint_round_trips_and_refuses_a_wrong_length() {
        let checkpoint = Checkpoint {
            next_payment_sequence: 0x0102_0304_0506_0708,
        };
        let mut out = Vec::new();
        checkpoint.encode(&mut out);
        assert_eq!(out.len(), 8);
        assert_eq!(Checkpoint::decode(&out), Ok(checkpoint));
        assert!(Checkpoint::decode(&out[..7]).is_err());
        out.push(0);
        assert_eq!(Checkpoint::decode(&out), Err(PayloadError::TrailingBytes));
        assert_eq!(RecordKind::from_u8(5), Some(RecordKind::Checkpoint));
    }

    fn sample_created() -> Created {
        Created {
            id: PaymentId {
                shard: 3,
                sequence: 0x1_0000_0001,
            },
            merchant_id: "m_demo".to_string(),
            order_id: "ord-1".to_string(),
            amount: 1999,
            currency: Currency(*b"CNY"),
            payment_method: "tok_visa".to_string(),
            description: Some("2 coffees ☕".to_string()),
            metadata: vec![
                ("cart".to_string(), "c-17".to_string()),
                ("a".to_string(), String::new()),
            ],
            created_at_ms: 1_763_800_000_123,
        }
    }

    fn largest_created() -> Created {
        // Four-byte characters everywhere a character count is the limit; order ids are
        // ASCII by their rule.
        let wide = |characters: usize| "😀".repeat(characters);
        Created {
            merchant_id: "m".repeat(MERCHANT_ID_LENGTH_MAX),
            order_id: "o".repeat(ORDER_ID_LENGTH_MAX),
            payment_method: wide(PAYMENT_METHOD_LENGTH_MAX),
            description: Some(wide(DESCRIPTION_LENGTH_MAX)),
            metadata: (0..METADATA_KEYS_MAX)
                .map(|_| {
                    (
                        wide(METADATA_KEY_LENGTH_MAX),
                        wide(METADATA_VALUE_LENGTH_MAX),
                    )
                })
                .collect(),
            ..sample_created()
        }
    }

    #[test]
    fn created_round_trips() {
        for created in [sample_created(), largest_created()] {
            let mut out = Vec::new();
            created.encode(&mut out);
            assert_eq!(Created::decode(&out), Ok(created));
        }
        let bare = Created {
            description: None,
            metadata: Vec::new(),
            ..sample_created()
        };
        let mut out = Vec::new();
        bare.encode(&mut out);
        assert_eq!(Created::decode(&out), Ok(bare));
    }

    #[test]
    fn created_fields_the_api_would_refuse_are_refused() {
        let refused = |created: Created| {
            let mut out = Vec::new();
            created.encode(&mut out);
            Created::decode(&out).unwrap_err()
        };
        // Within the byte bound (four per character) but over the character limit.
        let long_method = Created {
            payment_method: "t".repeat(PAYMENT_METHOD_LENGTH_MAX + 1),
            ..sample_created()
        };
        assert_eq!(
            refused(long_method),
            PayloadError::TooLong("payment_method")
        );
        for order_id in ["", "é", "has space", &"o".repeat(ORDER_ID_LENGTH_MAX + 1)] {
            let created = Created {
                order_id: order_id.to_string(),
                ..sample_created()
            };
            assert!(
                matches!(
                    refused(created),
                    PayloadError::Invalid("order_id") | PayloadError::TooLong("order_id")
                ),
                "{order_id:?}"
            );
        }
        let no_method = Created {
            payment_method: String::new(),
            ..sample_created()
        };
        assert_eq!(refused(no_method), PayloadError::Invalid("payment_method"));
    }

    #[test]
    fn encode_created_from_terms_matches_the_struct() {
        let created = sample_created();
        let terms = PaymentTerms {
            merchant: 9,
            order_id: created.order_id.clone(),
            amount: created.amount,
            currency: created.currency,
            payment_method: created.payment_method.clone(),
            description: created.description.clone(),
            metadata: created.metadata.clone(),
        };
        let (mut from_terms, mut from_struct) = (Vec::new(), Vec::new());
        encode_created(
            &mut from_terms,
            created.id,
            "m_demo",
            &terms,
            created.created_at_ms,
        );
        created.encode(&mut from_struct);
        assert_eq!(from_terms, from_struct);
    }

    #[test]
    fn largest_created_fits_in_a_record() {
        let mut out = Vec::new();
        largest_created().encode(&mut out);
        assert!(out.len() <= RECORD_PAYLOAD_BYTES_MAX, "{}", out.len());
    }

    #[test]
    fn finalized_round_trips_for_each_final_status() {
        for (status, decline_code) in [
            (PaymentStatus::Succeeded, None),
            (PaymentStatus::Declined, Some("card_declined".to_string())),
            (
                PaymentStatus::Failed,
                Some("acquirer_unavailable".to_string()),
            ),
        ] {
            let finalized = Finalized {
                id: PaymentId {
                    shard: 1,
                    sequence: 2,
                },
                status,
                decline_code,
                updated_at_ms: 5,
            };
            let mut out = Vec::new();
            finalized.encode(&mut out);
            assert_eq!(Finalized::decode(&out), Ok(finalized));
        }
    }

    #[test]
    #[should_panic]
    fn finalized_pending_is_a_bug() {
        let id = PaymentId {
            shard: 0,
            sequence: 1,
        };
        encode_finalized(&mut Vec::new(), id, PaymentStatus::Pending, None, 0);
    }

    #[test]
    fn structural_damage_is_reported_with_the_field() {
        let mut out = Vec::new();
        sample_created().encode(&mut out);
        assert_eq!(
            Created::decode(&out[..out.len() - 1]),
            Err(PayloadError::Truncated("metadata.value"))
        );
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(Created::decode(&longer), Err(PayloadError::TrailingBytes));
        let mut lowercase = out.clone();
        lowercase[26] = b'c'; // the currency's first letter
        assert_eq!(
            Created::decode(&lowercase),
            Err(PayloadError::Invalid("currency"))
        );
        let mut pending = Vec::new();
        Finalized {
            id: PaymentId {
                shard: 0,
                sequence: 1,
            },
            status: PaymentStatus::Succeeded,
            decline_code: None,
            updated_at_ms: 0,
        }
        .encode(&mut pending);
        pending[10] = 0; // the status byte: 0 would be pending
        assert_eq!(
            Finalized::decode(&pending),
            Err(PayloadError::Invalid("status"))
        );
    }

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_none() {
        for kind in [
            RecordKind::Created,
            RecordKind::Finalized,
            RecordKind::WebhookEvent,
            RecordKind::WebhookDelivered,
            RecordKind::Checkpoint,
            RecordKind::WebhookAttempted,
            RecordKind::WebhookDeadLetter,
        ] {
            assert_eq!(RecordKind::from_u8(kind.as_u8()), Some(kind));
        }
        assert_eq!(RecordKind::from_u8(0), None);
        assert_eq!(RecordKind::from_u8(8), None);
    }

    /// Random bytes, random mutations of valid encodings, and random cuts: the decoders
    /// answer every one without panicking, and only a valid record decodes as one.
    #[test]
    fn decoders_never_panic_on_random_input() {
        let mut prng = Prng(0x9e37_79b9_7f4a_7c15);
        let mut valid = Vec::new();
        sample_created().encode(&mut valid);
        let mut framed = Vec::new();
        encode_record(&mut framed, RecordKind::Created.as_u8(), 7, &valid);
        let mut finalized = Vec::new();
        encode_finalized(
            &mut finalized,
            PaymentId {
                shard: 1,
                sequence: 9,
            },
            PaymentStatus::Declined,
            Some("card_declined"),
            3,
        );
        let mut decoded_records = 0;
        for case in 0..60_000 {
            let input: Vec<u8> = match case % 4 {
                0 => (0..prng.below(600)).map(|_| prng.next() as u8).collect(),
                1 => mutate(&mut prng, &valid),
                2 => mutate(&mut prng, &finalized),
                _ => mutate(&mut prng, &framed),
            };
            let _ = Created::decode(&input);
            let _ = Finalized::decode(&input);
            if let crate::wal::record::DecodeOutcome::Record(record) = decode_record(&input) {
                assert!(record.length_total <= input.len());
                let _ = Created::decode(record.payload);
                decoded_records += 1;
            }
        }
        // Mutations that leave the frame intact (for example a cut after it) still decode.
        assert!(decoded_records > 0);
    }
}
