//! Request signatures of API.md section 1, computed here with hmac and sha2 directly.
//!
//! The load generator signs every `/v1/...` request itself rather than calling into the
//! payd crate, so it checks payd's verification from the outside, as a merchant would.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Bytes in the lowercase hex digest that follows `v1=`.
pub const SIGNATURE_HEX_BYTES: usize = 64;

/// A merchant secret. Its `Debug` is redacted so it cannot reach a report or a log.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Reads a secret given as a literal, `env:NAME` or `file:PATH`, as payd's config does.
    /// Errors name the source, never the value.
    pub fn resolve(source: &str) -> Result<Secret, String> {
        let value = if let Some(name) = source.strip_prefix("env:") {
            std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
        } else if let Some(path) = source.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map_err(|error| format!("cannot read secret file {path}: {error}"))?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        } else {
            source.to_string()
        };
        if value.is_empty() {
            return Err("the merchant secret is empty".to_string());
        }
        Ok(Secret(value.into_bytes()))
    }
}

/// Appends the 64 lowercase hex digits of
/// `HMAC-SHA256(secret, timestamp \n method \n target \n body)` to `output`.
pub fn sign_hex(
    secret: &Secret,
    timestamp: u64,
    method: &str,
    target: &str,
    body: &[u8],
    output: &mut Vec<u8>,
) {
    let mut mac = HmacSha256::new_from_slice(&secret.0).expect("HMAC takes a key of any length");
    let mut digits = [0u8; U64_DECIMAL_DIGITS_MAX];
    mac.update(decimal(timestamp, &mut digits));
    mac.update(b"\n");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(target.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let start = output.len();
    output.resize(start + SIGNATURE_HEX_BYTES, 0);
    hex::encode_to_slice(digest, &mut output[start..]).expect("64 hex digits for 32 bytes");
}

/// Digits in the longest `u64`, 18446744073709551615.
const U64_DECIMAL_DIGITS_MAX: usize = 20;

/// Writes `value` in decimal at the end of `digits` and returns those bytes, without
/// allocating: the generator signs every request.
fn decimal(mut value: u64, digits: &mut [u8; U64_DECIMAL_DIGITS_MAX]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_of(secret: &str, timestamp: u64, method: &str, target: &str, body: &[u8]) -> String {
        let mut output = Vec::new();
        let secret = Secret::resolve(secret).unwrap();
        sign_hex(&secret, timestamp, method, target, body, &mut output);
        String::from_utf8(output).unwrap()
    }

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // Computed with: printf '1763800000\nPOST\n/v1/payments\n{"a":1}' |
        //   openssl dgst -sha256 -hmac bench-secret -hex
        let expected = "43d37f28ad7a8adb1139169d405f903db8b0d32fb707e77d032179bb8b0db21e";
        let actual = hex_of(
            "bench-secret",
            1763800000,
            "POST",
            "/v1/payments",
            b"{\"a\":1}",
        );
        assert_eq!(actual.len(), SIGNATURE_HEX_BYTES);
        assert_eq!(actual, expected);
    }

    #[test]
    fn writes_decimals_of_every_width() {
        let mut digits = [0u8; U64_DECIMAL_DIGITS_MAX];
        for value in [0, 7, 10, 1763800000, u64::MAX] {
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }

    #[test]
    fn every_part_of_the_message_changes_the_signature() {
        let base = hex_of("s", 1, "GET", "/v1/orders/a", b"");
        assert_ne!(base, hex_of("t", 1, "GET", "/v1/orders/a", b""));
        assert_ne!(base, hex_of("s", 2, "GET", "/v1/orders/a", b""));
        assert_ne!(base, hex_of("s", 1, "PUT", "/v1/orders/a", b""));
        assert_ne!(base, hex_of("s", 1, "GET", "/v1/orders/b", b""));
        assert_ne!(base, hex_of("s", 1, "GET", "/v1/orders/a", b"x"));
    }

    #[test]
    fn resolves_env_and_file_secrets_and_redacts_them() {
        std::env::set_var("PAYD_LOADTEST_TEST_SECRET", "from-env");
        let from_env = Secret::resolve("env:PAYD_LOADTEST_TEST_SECRET").unwrap();
        assert_eq!(from_env.0, b"from-env");
        let path =
            std::env::temp_dir().join(format!("payd-loadtest-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let from_file = Secret::resolve(&format!("file:{}", path.display())).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(from_file.0, b"from-file");
        assert_eq!(format!("{from_file:?}"), "Secret(<redacted>)");
        assert!(Secret::resolve("env:PAYD_LOADTEST_SURELY_UNSET").is_err());
        assert!(Secret::resolve("").is_err());
    }
}
