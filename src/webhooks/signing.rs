//! Standard Webhooks signatures (API.md section 5): the three `webhook-*` headers of an
//! attempt, keyed with the merchant's `whsec_` secret.
//!
//! The signed message is `id + "." + timestamp + "." + body`, hashed with HMAC-SHA256
//! under the base64-decoded secret; the header is `v1,` and the base64 of the digest.
//! The message is fed to the MAC in pieces, never concatenated, and the key never leaves
//! this module: its `Debug` is redacted and no error quotes it.

use crate::payment::EventId;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::Write;

/// Every webhook secret starts with this; the rest is the key in base64.
pub const SECRET_PREFIX: &str = "whsec_";
/// The Standard Webhooks specification asks for keys of 24 to 64 bytes: shorter ones are
/// weak, longer ones gain nothing with SHA-256 (whose block is 64 bytes).
pub const KEY_BYTES_MIN: usize = 24;
pub const KEY_BYTES_MAX: usize = 64;
/// `v1,` and the base64 of a 32-byte digest.
pub const SIGNATURE_TEXT_LENGTH: usize = 3 + 44;

/// Secrets are written padded or not; both decode to the same key.
const SECRET_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A merchant's webhook signing key, decoded from its `whsec_` secret.
#[derive(Clone)]
pub struct WebhookKey {
    key: Vec<u8>,
}

/// Why a webhook secret is unusable. Never carries the secret itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyError {
    MissingPrefix,
    NotBase64,
    /// The decoded key has this many bytes, outside `KEY_BYTES_MIN..=KEY_BYTES_MAX`.
    Length(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::MissingPrefix => write!(f, "a webhook secret starts with {SECRET_PREFIX}"),
            KeyError::NotBase64 => write!(f, "a webhook secret is {SECRET_PREFIX} then base64"),
            KeyError::Length(bytes) => write!(
                f,
                "a webhook secret decodes to {KEY_BYTES_MIN}-{KEY_BYTES_MAX} bytes, not {bytes}"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookKey(redacted)")
    }
}

impl WebhookKey {
    /// Decodes a secret as the config resolved it (`whsec_` + base64).
    pub fn parse(secret: &[u8]) -> Result<WebhookKey, KeyError> {
        let encoded = secret
            .strip_prefix(SECRET_PREFIX.as_bytes())
            .ok_or(KeyError::MissingPrefix)?;
        let key = SECRET_BASE64
            .decode(encoded)
            .map_err(|_| KeyError::NotBase64)?;
        if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
            return Err(KeyError::Length(key.len()));
        }
        Ok(WebhookKey { key })
    }

    /// The `webhook-signature` value of one attempt: `v1,` then the base64 digest.
    pub fn sign(&self, event: EventId, timestamp_secs: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        // The id and timestamp are ASCII of known bounds: a stack buffer holds them.
        let mut prefix = [0u8; EventId::TEXT_LENGTH + 1 + 20 + 1];
        let capacity = prefix.len();
        let mut cursor = &mut prefix[..];
        write!(cursor, "{event}.{timestamp_secs}.").expect("id and timestamp fit");
        let written = capacity - cursor.len();
        mac.update(&prefix[..written]);
        mac.update(body);
        let digest = mac.finalize().into_bytes();
        let mut signature = String::with_capacity(SIGNATURE_TEXT_LENGTH);
        signature.push_str("v1,");
        STANDARD.encode_string(digest, &mut signature);
        assert_eq!(signature.len(), SIGNATURE_TEXT_LENGTH);
        signature
    }
}

/// The headers that make an attempt a Standard Webhooks message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookHeaders {
    /// `webhook-id`: the event id, the same on every attempt.
    pub id: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: String,
    /// `webhook-signature`.
    pub signature: String,
}

impl WebhookHeaders {
    /// Signs one attempt of `event` with `body`, made at `now_secs`.
    pub fn sign(key: &WebhookKey, event: EventId, now_secs: u64, body: &[u8]) -> WebhookHeaders {
        WebhookHeaders {
            id: event.to_string(),
            timestamp: now_secs.to_string(),
            signature: key.sign(event, now_secs, body),
        }
    }

    /// Every header of the request, `content-type` included, as name and value.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("webhook-id", &self.id),
            ("webhook-timestamp", &self.timestamp),
            ("webhook-signature", &self.signature),
            ("content-type", "application/json"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::PaymentId;

    /// The example secret of the Standard Webhooks specification (24 bytes).
    const SPEC_SECRET: &[u8] = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    /// Both vectors were computed once with the reference implementation, the Python
    /// package `standardwebhooks` 1.1.0 (`pip install standardwebhooks`):
    ///
    /// ```text
    /// from standardwebhooks.webhooks import Webhook
    /// from datetime import datetime, timezone
    /// wh = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    /// wh.sign(msg_id, datetime.fromtimestamp(ts, tz=timezone.utc), body)
    /// ```
    ///
    /// The first is also the specification's own example; the second is a payd event.
    #[test]
    fn signatures_match_the_reference_implementation() {
        let key = WebhookKey::parse(SPEC_SECRET).unwrap();
        // The spec's message id is not an `evt_` id: sign its message directly.
        let mut mac = Hmac::<Sha256>::new_from_slice(&key.key).unwrap();
        mac.update(b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{\"test\": 2432232314}");
        assert_eq!(
            STANDARD.encode(mac.finalize().into_bytes()),
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let body = concat!(
            r#"{"type":"payment.succeeded","timestamp":1763800000125,"data":{"#,
            r#""id":"pay_00030000000000000007","object":"payment","merchant_id":"m_demo","#,
            r#""order_id":"ord-1","amount":1999,"currency":"CNY","status":"succeeded","#,
            r#""decline_code":null,"description":"2 coffees","metadata":{"cart":"c-17"},"#,
            r#""created_at":1763800000123,"updated_at":1763800000125}}"#
        );
        let event = EventId::of_final_status(PaymentId {
            shard: 3,
            sequence: 7,
        });
        assert_eq!(
            key.sign(event, 1_763_800_000, body.as_bytes()),
            "v1,8kO7Ol9G7Glnv1nSzqGSTVAyqaRiwe8nDpotbG6ESDA="
        );
    }

    #[test]
    fn headers_carry_id_timestamp_signature_and_content_type() {
        let key = WebhookKey::parse(SPEC_SECRET).unwrap();
        let event = EventId {
            shard: 1,
            sequence: 2,
        };
        let headers = WebhookHeaders::sign(&key, event, 1_763_800_000, b"{}");
        assert_eq!(
            headers.pairs(),
            [
                ("webhook-id", "evt_00010000000000000002"),
                ("webhook-timestamp", "1763800000"),
                (
                    "webhook-signature",
                    key.sign(event, 1_763_800_000, b"{}").as_str()
                ),
                ("content-type", "application/json"),
            ]
        );
        // Another attempt a second later is signed anew; the id stays.
        let later = WebhookHeaders::sign(&key, event, 1_763_800_001, b"{}");
        assert_eq!(later.id, headers.id);
        assert_ne!(later.signature, headers.signature);
    }

    #[test]
    fn the_largest_timestamp_fits_the_message_buffer() {
        let key = WebhookKey::parse(SPEC_SECRET).unwrap();
        let event = EventId {
            shard: u16::MAX,
            sequence: u64::MAX,
        };
        assert_eq!(key.sign(event, u64::MAX, b"").len(), SIGNATURE_TEXT_LENGTH);
    }

    #[test]
    fn secrets_need_the_prefix_base64_and_a_sound_length() {
        let padded = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let unpadded = padded.trim_end_matches('=').to_string();
        assert_ne!(padded, unpadded);
        let a = WebhookKey::parse(padded.as_bytes()).unwrap();
        let b = WebhookKey::parse(unpadded.as_bytes()).unwrap();
        assert_eq!(a.key, b.key);
        let short = format!("whsec_{}", STANDARD.encode([7u8; KEY_BYTES_MIN - 1]));
        let long = format!("whsec_{}", STANDARD.encode([7u8; KEY_BYTES_MAX + 1]));
        let edge = format!("whsec_{}", STANDARD.encode([7u8; KEY_BYTES_MAX]));
        assert!(WebhookKey::parse(edge.as_bytes()).is_ok());
        for (secret, error) in [
            (
                &b"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"[..],
                KeyError::MissingPrefix,
            ),
            (b"whsec_not base64!", KeyError::NotBase64),
            (b"whsec_", KeyError::Length(0)),
            (short.as_bytes(), KeyError::Length(KEY_BYTES_MIN - 1)),
            (long.as_bytes(), KeyError::Length(KEY_BYTES_MAX + 1)),
        ] {
            assert_eq!(WebhookKey::parse(secret).unwrap_err(), error);
        }
    }

    #[test]
    fn neither_debug_nor_errors_show_the_key() {
        let key = WebhookKey::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "WebhookKey(redacted)");
        let error = WebhookKey::parse(b"whsec_MfKQ9r8GKYqrTwjU").unwrap_err();
        assert!(!error.to_string().contains("MfKQ"));
    }
}
