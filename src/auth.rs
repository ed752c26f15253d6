//! Request signatures of API.md section 1: HMAC-SHA256 over timestamp, method, target
//! and body, keyed by any of the merchant's active secrets, compared in constant time.
//!
//! Each secret's keyed HMAC state is computed once at start and cloned per check, so a
//! verification costs the hashing of the message and nothing else: no allocation, no
//! re-keying.

use crate::config::{resolve_secret, ConfigError, MerchantConfig};
use crate::payment::MerchantIndex;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// `v1=` and 64 hex digits.
const SIGNATURE_PREFIX: &[u8] = b"v1=";
const SIGNATURE_HEX_LENGTH: usize = 64;
/// Unix seconds have 10 digits until 2286; more is malformed, not merely out of range.
const TIMESTAMP_DIGITS_MAX: usize = 12;
/// Secrets a merchant may have active at once (rotation).
pub const SECRETS_PER_MERCHANT_MAX: usize = 8;

/// Why a request is not authenticated; each maps to one `error.code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// A header is missing or malformed.
    AuthenticationRequired,
    TimestampOutOfRange,
    /// Unknown merchant, or no secret matches: deliberately the same answer.
    InvalidSignature,
}

/// The three signature headers as sent, unparsed.
#[derive(Clone, Copy, Debug, Default)]
pub struct SignedHeaders<'a> {
    pub merchant: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
}

struct Merchant {
    id: String,
    keys: Vec<HmacSha256>,
}

/// Every merchant's keyed HMAC states, by merchant index (the config's order).
pub struct MerchantKeys {
    merchants: Vec<Merchant>,
    by_id: HashMap<Vec<u8>, MerchantIndex>,
    /// Hashed in place of the secrets a merchant lacks (all of them for an unknown one).
    decoy: HmacSha256,
    /// HMACs computed by every check: the most secrets any merchant has. An unknown
    /// merchant, or one with fewer secrets, costs the same as the one with the most, so
    /// the time of an answer tells neither which merchants exist nor how many secrets
    /// they hold (API.md section 1).
    keys_per_check: usize,
}

impl MerchantKeys {
    /// `merchants[i]` = (merchant id, its secrets); `i` is the merchant's index.
    pub fn new(merchants: Vec<(String, Vec<Vec<u8>>)>) -> MerchantKeys {
        let mut by_id = HashMap::with_capacity(merchants.len());
        let merchants: Vec<Merchant> = merchants
            .into_iter()
            .enumerate()
            .map(|(index, (id, secrets))| {
                let index = MerchantIndex::try_from(index).expect("merchant count fits u32");
                by_id.insert(id.as_bytes().to_vec(), index);
                let keys = secrets.iter().map(|secret| keyed(secret)).collect();
                Merchant { id, keys }
            })
            .collect();
        let keys_per_check = merchants
            .iter()
            .map(|merchant| merchant.keys.len())
            .max()
            .unwrap_or(0)
            .max(1);
        MerchantKeys {
            merchants,
            by_id,
            decoy: keyed(b"payd-decoy-key"),
            keys_per_check,
        }
    }

    /// Resolves every merchant's secrets from the config (literal, `env:` or `file:`).
    pub fn from_config(merchants: &[MerchantConfig]) -> Result<MerchantKeys, ConfigError> {
        let mut resolved = Vec::with_capacity(merchants.len());
        for (index, merchant) in merchants.iter().enumerate() {
            let key = format!("merchants[{index}].secrets");
            if merchant.secrets.len() > SECRETS_PER_MERCHANT_MAX {
                let message = format!("at most {SECRETS_PER_MERCHANT_MAX} active secrets");
                return Err(ConfigError { key, message });
            }
            let secrets = merchant
                .secrets
                .iter()
                .map(|source| resolve_secret(source))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| ConfigError { key, message })?;
            resolved.push((merchant.id.clone(), secrets));
        }
        Ok(MerchantKeys::new(resolved))
    }

    pub fn len(&self) -> usize {
        self.merchants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.merchants.is_empty()
    }

    pub fn merchant_id(&self, index: MerchantIndex) -> &str {
        &self.merchants[index as usize].id
    }

    pub fn index_of(&self, id: &[u8]) -> Option<MerchantIndex> {
        self.by_id.get(id).copied()
    }

    /// Checks a request's signature; returns the merchant it authenticates.
    pub fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        method: &[u8],
        target: &[u8],
        body: &[u8],
        now_secs: u64,
        tolerance_secs: u64,
    ) -> Result<MerchantIndex, AuthError> {
        let (Some(merchant), Some(timestamp), Some(signature)) =
            (headers.merchant, headers.timestamp, headers.signature)
        else {
            return Err(AuthError::AuthenticationRequired);
        };
        let timestamp_secs = parse_timestamp(timestamp).ok_or(AuthError::AuthenticationRequired)?;
        let digest = parse_signature(signature).ok_or(AuthError::AuthenticationRequired)?;
        if now_secs.abs_diff(timestamp_secs) > tolerance_secs {
            return Err(AuthError::TimestampOutOfRange);
        }
        let index = self.index_of(merchant);
        let mut matched = false;
        for (key, real) in self.keys_to_try(index) {
            let mut mac = key.clone();
            feed_message(&mut mac, timestamp, method, target, body);
            // verify_slice compares in constant time. Every key is tried, decoys too, so
            // the time taken does not tell which secret matched, or whether any could.
            let verified = mac.verify_slice(&digest).is_ok();
            matched |= verified & real;
        }
        match index {
            Some(index) if matched => Ok(index),
            _ => Err(AuthError::InvalidSignature),
        }
    }

    /// The `keys_per_check` keys one check hashes with, each with whether it is a real
    /// secret of the merchant: its secrets first, then the decoy for the rest.
    fn keys_to_try(
        &self,
        index: Option<MerchantIndex>,
    ) -> impl Iterator<Item = (&HmacSha256, bool)> + '_ {
        let secrets = match index {
            Some(index) => &self.merchants[index as usize].keys[..],
            None => &[],
        };
        (0..self.keys_per_check).map(move |slot| match secrets.get(slot) {
            Some(key) => (key, true),
            None => (&self.decoy, false),
        })
    }
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length")
}

/// `timestamp \n METHOD \n target \n body`, fed without building the message.
fn feed_message(mac: &mut HmacSha256, timestamp: &[u8], method: &[u8], target: &[u8], body: &[u8]) {
    mac.update(timestamp);
    mac.update(b"\n");
    mac.update(method);
    mac.update(b"\n");
    mac.update(target);
    mac.update(b"\n");
    mac.update(body);
}

fn parse_timestamp(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > TIMESTAMP_DIGITS_MAX || !text.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    Some(
        text.iter()
            .fold(0u64, |total, digit| total * 10 + u64::from(digit - b'0')),
    )
}

/// `v1=` + 64 hex digits, either case, into the 32-byte digest.
fn parse_signature(text: &[u8]) -> Option<[u8; 32]> {
    let hex_digits = text.strip_prefix(SIGNATURE_PREFIX)?;
    if hex_digits.len() != SIGNATURE_HEX_LENGTH {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(hex_digits, &mut digest).ok()?;
    Some(digest)
}

/// The signature of a request, as 64 lowercase hex digits (for `payd sign`, tests and
/// the load generator).
pub fn sign_hex(secret: &[u8], timestamp: u64, method: &str, target: &str, body: &[u8]) -> String {
    let mut mac = keyed(secret);
    let timestamp = timestamp.to_string();
    feed_message(
        &mut mac,
        timestamp.as_bytes(),
        method.as_bytes(),
        target.as_bytes(),
        body,
    );
    hex::encode(mac.finalize().into_bytes())
}

/// The demo merchant's secret for the embedded defaults: read from
/// `<data_dir>/m_demo.secret`, or generated there on first start (mode 0600, created
/// exclusively so two starts never race). Returns the secret and whether it was created.
pub fn load_or_create_demo_secret(data_dir: &Path) -> std::io::Result<(String, bool)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("m_demo.secret");
    std::fs::create_dir_all(data_dir)?;
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
    let secret = hex::encode(random);
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(format!("{secret}\n").as_bytes())?;
            file.sync_all()?;
            Ok((secret, true))
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(&path)?;
            Ok((text.trim_end().to_string(), false))
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_763_800_000;

    fn keys() -> MerchantKeys {
        MerchantKeys::new(vec![
            (
                "m_one".into(),
                vec![b"old-secret".to_vec(), b"new-secret".to_vec()],
            ),
            ("m_two".into(), vec![b"two-secret".to_vec()]),
        ])
    }

    fn check(
        merchant: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<u32, AuthError> {
        let headers = SignedHeaders {
            merchant: Some(merchant.as_bytes()),
            timestamp: Some(timestamp.as_bytes()),
            signature: Some(signature.as_bytes()),
        };
        keys().verify(&headers, b"POST", b"/v1/payments", body, NOW, 300)
    }

    #[test]
    fn reference_vector_matches_openssl() {
        // Recorded from API.md's shell reference, run once:
        // printf '%s\n%s\n%s\n%s' 1763800000 POST /v1/payments \
        //   '{"order_id":"ord-1","amount":1999,"currency":"CNY","payment_method":"tok_visa"}' \
        //   | openssl dgst -sha256 -hmac new-secret -hex
        let body =
            br#"{"order_id":"ord-1","amount":1999,"currency":"CNY","payment_method":"tok_visa"}"#;
        let expected = "289d19be4243e02d393fb562185393c7e6ff4265ad9f77ab8e59ee9cf8ddf084";
        assert_eq!(
            sign_hex(b"new-secret", NOW, "POST", "/v1/payments", body),
            expected
        );
        let signature = format!("v1={expected}");
        assert_eq!(check("m_one", "1763800000", &signature, body), Ok(0));
    }

    #[test]
    fn every_active_secret_is_accepted_in_either_case() {
        let body = b"{}";
        for secret in [&b"old-secret"[..], b"new-secret"] {
            let signature = sign_hex(secret, NOW, "POST", "/v1/payments", body);
            assert_eq!(
                check("m_one", "1763800000", &format!("v1={signature}"), body),
                Ok(0)
            );
            let upper = signature.to_ascii_uppercase();
            assert_eq!(
                check("m_one", "1763800000", &format!("v1={upper}"), body),
                Ok(0)
            );
        }
    }

    #[test]
    fn wrong_secret_unknown_merchant_and_changed_body_are_invalid() {
        let body = b"{}";
        let two = format!(
            "v1={}",
            sign_hex(b"two-secret", NOW, "POST", "/v1/payments", body)
        );
        assert_eq!(
            check("m_one", "1763800000", &two, body),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            check("m_nobody", "1763800000", &two, body),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(
            check("m_two", "1763800000", &two, b"{ }"),
            Err(AuthError::InvalidSignature)
        );
        assert_eq!(check("m_two", "1763800000", &two, body), Ok(1));
    }

    #[test]
    fn every_check_hashes_as_often_whoever_the_merchant() {
        let keys = keys();
        let tried = |index| keys.keys_to_try(index).count();
        // m_one has two secrets, m_two one, and an unknown merchant none: each costs two.
        assert_eq!(tried(Some(0)), 2);
        assert_eq!(tried(Some(1)), 2);
        assert_eq!(tried(None), 2);
        let real = |index| keys.keys_to_try(index).filter(|&(_, real)| real).count();
        assert_eq!((real(Some(0)), real(Some(1)), real(None)), (2, 1, 0));
    }

    #[test]
    fn the_decoy_never_matches() {
        let body = b"{}";
        let decoy = format!(
            "v1={}",
            sign_hex(b"payd-decoy-key", NOW, "POST", "/v1/payments", body)
        );
        for merchant in ["m_one", "m_two", "m_nobody"] {
            assert_eq!(
                check(merchant, "1763800000", &decoy, body),
                Err(AuthError::InvalidSignature),
                "{merchant}"
            );
        }
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused() {
        let body = b"{}";
        for (timestamp, expected) in [
            (NOW - 300, Ok(1)),
            (NOW - 301, Err(AuthError::TimestampOutOfRange)),
            (NOW + 301, Err(AuthError::TimestampOutOfRange)),
        ] {
            let signature = sign_hex(b"two-secret", timestamp, "POST", "/v1/payments", body);
            let result = check(
                "m_two",
                &timestamp.to_string(),
                &format!("v1={signature}"),
                body,
            );
            assert_eq!(result, expected, "timestamp {timestamp}");
        }
    }

    #[test]
    fn missing_or_malformed_headers_require_authentication() {
        let good = format!("v1={}", "a".repeat(64));
        for (timestamp, signature) in [
            ("", good.as_str()),
            ("17638x0000", good.as_str()),
            ("1763800000000000", good.as_str()),
            ("1763800000", "v2=aa"),
            ("1763800000", &good[..60]),
            ("1763800000", &format!("v1={}", "g".repeat(64))),
        ] {
            assert_eq!(
                check("m_one", timestamp, signature, b""),
                Err(AuthError::AuthenticationRequired)
            );
        }
        let headers = SignedHeaders {
            merchant: None,
            timestamp: Some(b"1"),
            signature: Some(b"v1="),
        };
        assert_eq!(
            keys().verify(&headers, b"GET", b"/", b"", NOW, 300),
            Err(AuthError::AuthenticationRequired)
        );
    }

    #[test]
    fn demo_secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (secret, created) = load_or_create_demo_secret(dir.path()).unwrap();
        assert!(created);
        assert_eq!(secret.len(), 64);
        let mode = std::fs::metadata(dir.path().join("m_demo.secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            load_or_create_demo_secret(dir.path()).unwrap(),
            (secret, false)
        );
    }
}
