//! The payment object of API.md section 3, and its JSON writer: what a client reads and
//! what a merchant's webhook receives, byte for byte the same.
//!
//! A leaf beside `payment`: it imports nothing above it, so `api` (answers), `webhooks`
//! (event bodies) and `wal` (webhook event records) can all share it. `PaymentView`
//! borrows the fields from wherever they live (a shard's compact payment on the hot path);
//! `PaymentSnapshot` owns them, for an event that outlives the shard's copy. The payment
//! method token is in neither: it is never rendered.

use crate::payment::{Currency, PaymentId, PaymentStatus};

/// The payment object's fields, borrowed. `M` yields the metadata in insertion order.
pub struct PaymentView<'a, M> {
    pub id: PaymentId,
    pub merchant_id: &'a str,
    pub order_id: &'a str,
    pub amount: u64,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub decline_code: Option<&'a str>,
    pub description: Option<&'a str>,
    pub metadata: M,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl<'a, M> PaymentView<'a, M>
where
    M: Iterator<Item = (&'a str, &'a str)>,
{
    /// Appends the payment object as JSON, fields in the order API.md lists them.
    /// Numbers go through itoa and the id through `write_payment_id`, not `write!`: this
    /// runs for every answer, and the formatting machinery was a visible share of it.
    pub fn write_json(self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(b"{\"id\":\"");
        write_payment_id(out, self.id);
        out.extend_from_slice(b"\",\"object\":\"payment\",\"merchant_id\":");
        write_json_string(out, self.merchant_id);
        out.extend_from_slice(b",\"order_id\":");
        write_json_string(out, self.order_id);
        out.extend_from_slice(b",\"amount\":");
        out.extend_from_slice(number.format(self.amount).as_bytes());
        out.extend_from_slice(b",\"currency\":\"");
        out.extend_from_slice(self.currency.as_str().as_bytes());
        out.extend_from_slice(b"\",\"status\":\"");
        out.extend_from_slice(self.status.as_str().as_bytes());
        out.extend_from_slice(b"\",\"decline_code\":");
        write_optional_string(out, self.decline_code);
        out.extend_from_slice(b",\"description\":");
        write_optional_string(out, self.description);
        out.extend_from_slice(b",\"metadata\":{");
        for (index, (key, value)) in self.metadata.enumerate() {
            if index > 0 {
                out.push(b',');
            }
            write_json_string(out, key);
            out.push(b':');
            write_json_string(out, value);
        }
        out.extend_from_slice(b"},\"created_at\":");
        out.extend_from_slice(number.format(self.created_at_ms).as_bytes());
        out.extend_from_slice(b",\"updated_at\":");
        out.extend_from_slice(number.format(self.updated_at_ms).as_bytes());
        out.push(b'}');
    }
}

/// Appends the id exactly as `PaymentId`'s `Display` renders it: the prefix, then the
/// shard in 4 and the sequence in 16 lower-case hex digits.
fn write_payment_id(out: &mut Vec<u8>, id: PaymentId) {
    out.extend_from_slice(PaymentId::PREFIX.as_bytes());
    write_hex(out, u64::from(id.shard), SHARD_HEX_DIGITS);
    write_hex(out, id.sequence, SEQUENCE_HEX_DIGITS);
}

const SHARD_HEX_DIGITS: u32 = 4;
const SEQUENCE_HEX_DIGITS: u32 = 16;

/// `value` in exactly `digits` lower-case hex digits; the value must fit them.
fn write_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    assert!(
        digits == 16 || value >> (4 * digits) == 0,
        "hex value fits its digits"
    );
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for digit in (0..digits).rev() {
        out.push(HEX[((value >> (4 * digit)) & 0xf) as usize]);
    }
}

/// The payment object's fields, owned: a webhook event keeps the payment as it was when
/// the event was made, whatever the shard does with its copy later (retention).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentSnapshot {
    pub id: PaymentId,
    pub merchant_id: String,
    pub order_id: String,
    pub amount: u64,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub decline_code: Option<String>,
    pub description: Option<String>,
    pub metadata: Vec<(String, String)>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl PaymentSnapshot {
    pub fn view(&self) -> PaymentView<'_, impl Iterator<Item = (&str, &str)> + '_> {
        PaymentView {
            id: self.id,
            merchant_id: &self.merchant_id,
            order_id: &self.order_id,
            amount: self.amount,
            currency: self.currency,
            status: self.status,
            decline_code: self.decline_code.as_deref(),
            description: self.description.as_deref(),
            metadata: self
                .metadata
                .iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    /// An owned copy of a borrowed view.
    pub fn of_view<'a, M>(view: PaymentView<'a, M>) -> PaymentSnapshot
    where
        M: Iterator<Item = (&'a str, &'a str)>,
    {
        PaymentSnapshot {
            id: view.id,
            merchant_id: view.merchant_id.to_string(),
            order_id: view.order_id.to_string(),
            amount: view.amount,
            currency: view.currency,
            status: view.status,
            decline_code: view.decline_code.map(str::to_string),
            description: view.description.map(str::to_string),
            metadata: view
                .metadata
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            created_at_ms: view.created_at_ms,
            updated_at_ms: view.updated_at_ms,
        }
    }
}

/// Appends `text` as a JSON string literal, escaping what RFC 8259 requires.
pub fn write_json_string(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(byte >> 4) as usize]);
                out.push(HEX[(byte & 0xf) as usize]);
            }
            _ => out.push(byte),
        }
    }
    out.push(b'"');
}

fn write_optional_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => write_json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// A payment as tests of every layer use it (the one of the webhook reference vector).
#[cfg(test)]
pub(crate) fn sample_snapshot() -> PaymentSnapshot {
    PaymentSnapshot {
        id: PaymentId {
            shard: 3,
            sequence: 7,
        },
        merchant_id: "m_demo".to_string(),
        order_id: "ord-1".to_string(),
        amount: 1999,
        currency: Currency(*b"CNY"),
        status: PaymentStatus::Succeeded,
        decline_code: None,
        description: Some("2 coffees".to_string()),
        metadata: vec![("cart".to_string(), "c-17".to_string())],
        created_at_ms: 1_763_800_000_123,
        updated_at_ms: 1_763_800_000_125,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PaymentSnapshot {
        sample_snapshot()
    }

    #[test]
    fn ids_are_written_as_their_display_form() {
        let ids = [
            (0, 0),
            (3, 7),
            (0xabc, 0x1234_5678_9abc_def0),
            (u16::MAX, u64::MAX),
        ];
        for (shard, sequence) in ids {
            let id = PaymentId { shard, sequence };
            let mut out = Vec::new();
            write_payment_id(&mut out, id);
            assert_eq!(std::str::from_utf8(&out).unwrap(), id.to_string());
        }
    }

    #[test]
    fn payment_object_is_written_in_api_order() {
        let mut out = Vec::new();
        sample().view().write_json(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            concat!(
                r#"{"id":"pay_00030000000000000007","object":"payment","merchant_id":"m_demo","#,
                r#""order_id":"ord-1","amount":1999,"currency":"CNY","status":"succeeded","#,
                r#""decline_code":null,"description":"2 coffees","metadata":{"cart":"c-17"},"#,
                r#""created_at":1763800000123,"updated_at":1763800000125}"#
            )
        );
    }

    #[test]
    fn absent_fields_are_null_and_metadata_empty() {
        let payment = PaymentSnapshot {
            status: PaymentStatus::Declined,
            decline_code: Some("card_declined".to_string()),
            description: None,
            metadata: Vec::new(),
            ..sample()
        };
        let mut out = Vec::new();
        payment.view().write_json(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(
            text.contains(r#""decline_code":"card_declined","description":null,"metadata":{},"#)
        );
    }

    #[test]
    fn every_string_is_escaped_and_the_output_parses() {
        let payment = PaymentSnapshot {
            order_id: "a\"b".to_string(),
            description: Some("line\nbreak \u{1} ☕".to_string()),
            metadata: vec![("k\\".to_string(), "v\t".to_string())],
            ..sample()
        };
        let mut out = Vec::new();
        payment.view().write_json(&mut out);
        let value: simd_json::OwnedValue = simd_json::to_owned_value(&mut out.clone()).unwrap();
        use simd_json::prelude::*;
        assert_eq!(value["order_id"].as_str(), Some("a\"b"));
        assert_eq!(value["description"].as_str(), Some("line\nbreak \u{1} ☕"));
        assert_eq!(value["metadata"]["k\\"].as_str(), Some("v\t"));
    }

    #[test]
    fn a_snapshot_of_a_view_is_the_same_payment() {
        let payment = sample();
        assert_eq!(PaymentSnapshot::of_view(payment.view()), payment);
    }

    #[test]
    fn json_strings_escape_quotes_and_controls() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\n\u{1}");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#""a\"b\\c\n\u0001""#);
    }
}
