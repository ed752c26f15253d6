//! WebSocket (RFC 6455) at the bytes level: the answer to an opening handshake, the frame
//! codec, and the message envelope of API.md section 9.
//!
//! The handshake stays with HTTP: the connection loop parses the upgrade request like any
//! other (`RequestHead::websocket`), `api` authenticates it, and `write_switching_protocols`
//! answers it. Frames are tungstenite's protocol core (`codec`), driven over in-memory
//! buffers so that payd keeps its own I/O, its own output bound and its own timers.
//! `message` turns a text message into a request of the API and an answer back into text.

pub mod codec;
pub mod fuzz;
pub mod message;

use base64::Engine;
use sha1::{Digest, Sha1};

/// A `Sec-WebSocket-Key` is 16 random bytes in base64: 24 characters.
pub const KEY_BASE64_LENGTH: usize = 24;
const KEY_BYTES: usize = 16;
/// RFC 6455 section 1.3: appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A `Sec-WebSocket-Accept` is a SHA-1 digest in base64: 28 characters.
pub const ACCEPT_BASE64_LENGTH: usize = 28;

/// Whether `key` is what RFC 6455 asks for: base64 of exactly 16 bytes.
pub fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; KEY_BYTES + 2];
    key.len() == KEY_BASE64_LENGTH
        && base64::engine::general_purpose::STANDARD
            .decode_slice(key, &mut decoded)
            .is_ok_and(|length| length == KEY_BYTES)
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; ACCEPT_BASE64_LENGTH] {
    let mut hasher = Sha1::new();
    hasher.update(key);
    hasher.update(ACCEPT_GUID);
    let digest = hasher.finalize();
    let mut accept = [0u8; ACCEPT_BASE64_LENGTH];
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(digest, &mut accept)
        .expect("a SHA-1 digest fits 28 base64 characters");
    assert_eq!(written, ACCEPT_BASE64_LENGTH);
    accept
}

/// Appends the `101 Switching Protocols` answer to a valid upgrade request.
pub fn write_switching_protocols(out: &mut Vec<u8>, key: &[u8], request_id: &[u8], date: &[u8]) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept_key(key));
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_the_rfc_example() {
        // RFC 6455 section 1.3.
        let accept = accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(&accept, b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn keys_are_base64_of_sixteen_bytes() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=!"));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZSE="), "17 bytes");
        assert!(!is_valid_key(b""));
    }

    #[test]
    fn switching_protocols_names_the_accept_key() {
        let mut out = Vec::new();
        write_switching_protocols(&mut out, b"dGhlIHNhbXBsZSBub25jZQ==", b"r-1", b"DATE");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nDate: DATE\r\nX-Request-Id: r-1\r\n\r\n"
        );
    }
}
