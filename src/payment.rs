//! The payment domain: the values every layer speaks about (ids, terms, statuses).
//!
//! This module sits at the bottom of the crate: it imports nothing from payd, and every
//! layer above (`api`, `shard`, `wal`, `acquirer`, `webhooks`) may import it.

use std::fmt;

/// Index of a merchant in the configuration's `[[merchants]]` list. The config is
/// read-only after start, so the index is a stable, cheap handle within one process.
/// It is NOT stable across restarts with a changed config: the log stores merchant ids.
pub type MerchantIndex = u32;

/// Upper bounds of API.md section 3, shared by validation, storage and tests.
pub const ORDER_ID_LENGTH_MAX: usize = 64;
pub const AMOUNT_MAX: u64 = 100_000_000_000;
pub const PAYMENT_METHOD_LENGTH_MAX: usize = 128;
pub const DESCRIPTION_LENGTH_MAX: usize = 256;
pub const METADATA_KEYS_MAX: usize = 20;
pub const METADATA_KEY_LENGTH_MAX: usize = 40;
pub const METADATA_VALUE_LENGTH_MAX: usize = 500;

/// An `order_id` of API.md section 3: 1 to 64 characters of `A-Z a-z 0-9 . _ : -`, all
/// ASCII, so its length in bytes is its length in characters. Validation, reads by
/// order, the state and the log's decoder all check this one rule.
pub fn is_valid_order_id(text: &str) -> bool {
    (1..=ORDER_ID_LENGTH_MAX).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Whether `text` has from `characters_min` to `characters_max` characters. API.md
/// states text limits in characters, never in bytes: one character may take four.
pub fn has_characters_within(text: &str, characters_min: usize, characters_max: usize) -> bool {
    // No string of more than four bytes per allowed character can be within the limit.
    text.len() <= characters_max * 4
        && (characters_min..=characters_max).contains(&text.chars().count())
}

/// A payment id: the shard that owns the payment and a sequence number unique within
/// that shard for ever. Rendered as `pay_` + 4 hex digits of shard + 16 hex digits of
/// sequence (24 characters, URL-safe), so a read by id goes straight to the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PaymentId {
    pub shard: u16,
    pub sequence: u64,
}

impl PaymentId {
    pub const PREFIX: &'static str = "pay_";
    pub const TEXT_LENGTH: usize = 4 + 4 + 16;

    /// Parses the text form; `None` for anything that is not exactly a payment id.
    pub fn parse(text: &str) -> Option<PaymentId> {
        let (shard, sequence) = parse_shard_sequence(text, Self::PREFIX)?;
        Some(PaymentId { shard, sequence })
    }
}

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_shard_sequence(f, Self::PREFIX, self.shard, self.sequence)
    }
}

/// The text form payment and event ids share: a 4-character prefix, then 4 lowercase hex
/// digits of shard and 16 of sequence. `None` for anything else.
fn parse_shard_sequence(text: &str, prefix: &str) -> Option<(u16, u64)> {
    let hex_part = text.strip_prefix(prefix)?;
    if text.len() != PaymentId::TEXT_LENGTH
        || !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let shard = u16::from_str_radix(&hex_part[..4], 16).ok()?;
    let sequence = u64::from_str_radix(&hex_part[4..], 16).ok()?;
    Some((shard, sequence))
}

fn write_shard_sequence(
    f: &mut fmt::Formatter<'_>,
    prefix: &str,
    shard: u16,
    sequence: u64,
) -> fmt::Result {
    write!(f, "{prefix}{shard:04x}{sequence:016x}")
}

/// A webhook event id: the shard that owns the event and a sequence unique within that
/// shard for ever, rendered as `evt_` + 4 hex digits of shard + 16 hex digits of sequence.
/// It is the `webhook-id` header, the same on every retry: receivers dedupe on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    pub shard: u16,
    pub sequence: u64,
}

impl EventId {
    pub const PREFIX: &'static str = "evt_";
    pub const TEXT_LENGTH: usize = 4 + 4 + 16;

    /// The event that tells a payment's final status. A payment reaches a final status
    /// once, so it has one such event, and deriving the id from the payment's makes it the
    /// same however often the event is rebuilt (a retry, a restart, a recovery that writes
    /// an event whose record was lost with a torn tail).
    pub fn of_final_status(payment: PaymentId) -> EventId {
        EventId {
            shard: payment.shard,
            sequence: payment.sequence,
        }
    }

    /// Parses the text form; `None` for anything that is not exactly an event id.
    pub fn parse(text: &str) -> Option<EventId> {
        let (shard, sequence) = parse_shard_sequence(text, Self::PREFIX)?;
        Some(EventId { shard, sequence })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_shard_sequence(f, Self::PREFIX, self.shard, self.sequence)
    }
}

/// ISO 4217 style currency code: exactly three uppercase ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Currency(pub [u8; 3]);

impl Currency {
    pub fn parse(text: &str) -> Option<Currency> {
        let bytes = text.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Some(Currency([bytes[0], bytes[1], bytes[2]]))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        // Invariant: built only by `parse`, so always ASCII.
        std::str::from_utf8(&self.0).expect("currency is ASCII")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Pending,
    Succeeded,
    Declined,
    Failed,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        self != PaymentStatus::Pending
    }
}

/// A validated create request: everything the client asked for. Built by
/// `api::create_request` from the JSON body, after every rule of API.md section 3 held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentTerms {
    pub merchant: MerchantIndex,
    pub order_id: String,
    pub amount: u64,
    pub currency: Currency,
    /// The opaque token. Never a card number (rejected earlier), never echoed.
    pub payment_method: String,
    pub description: Option<String>,
    /// Insertion order is kept so the payment echoes metadata as it was sent.
    pub metadata: Vec<(String, String)>,
}

/// The answer of the acquirer (or of the retries around it) for one payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorization {
    Approved,
    /// Declined by the issuer, with the acquirer's code (`card_declined`, ...).
    Declined(String),
    /// Not authorised for a technical reason (`acquirer_rejected`, `acquirer_unavailable`).
    Failed(String),
}

impl Authorization {
    pub fn status(&self) -> PaymentStatus {
        match self {
            Authorization::Approved => PaymentStatus::Succeeded,
            Authorization::Declined(_) => PaymentStatus::Declined,
            Authorization::Failed(_) => PaymentStatus::Failed,
        }
    }

    pub fn decline_code(&self) -> Option<&str> {
        match self {
            Authorization::Approved => None,
            Authorization::Declined(code) | Authorization::Failed(code) => Some(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_id_round_trips_through_text() {
        let id = PaymentId {
            shard: 7,
            sequence: 0x1234_5678_9abc,
        };
        let text = id.to_string();
        assert_eq!(text, "pay_00070000123456789abc");
        assert_eq!(PaymentId::parse(&text), Some(id));
    }

    #[test]
    fn payment_id_rejects_other_text() {
        for text in [
            "",
            "pay_",
            "pay_0007000012345678",
            "pay_00070000123456789ABC",
            "pax_00070000123456789abc",
            "pay_00070000123456789abcd",
        ] {
            assert_eq!(PaymentId::parse(text), None, "{text}");
        }
    }

    #[test]
    fn event_id_text_is_prefix_shard_and_sequence() {
        let payment = PaymentId {
            shard: 7,
            sequence: 0x1234_5678_9abc,
        };
        let event = EventId::of_final_status(payment);
        assert_eq!(event.to_string(), "evt_00070000123456789abc");
        assert_eq!(event.to_string().len(), EventId::TEXT_LENGTH);
        // Another payment, even of the same sequence on another shard, gets another id.
        let other = EventId::of_final_status(PaymentId {
            shard: 8,
            ..payment
        });
        assert_ne!(event.to_string(), other.to_string());
    }

    #[test]
    fn currency_is_three_uppercase_letters() {
        assert_eq!(Currency::parse("CNY").map(|c| c.0), Some(*b"CNY"));
        for text in ["cny", "CN", "CNYY", "C1Y", ""] {
            assert_eq!(Currency::parse(text), None, "{text}");
        }
    }
}
