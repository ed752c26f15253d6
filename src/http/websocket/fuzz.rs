//! The fuzz target over WebSocket input: arbitrary bytes as a client's side of a
//! connection, through the frame codec and the message envelope, as the connection loop
//! drives them. Whatever the bytes, this must not panic, must not grow without bound, and
//! must end in a close frame or in a wish for more input.

use super::codec::{write_text_frame, Codec, Decoded};
use super::message::{parse_message, write_answer};

/// The message size limit the target runs with (the default `websocket.max_message_bytes`).
pub const FUZZ_MESSAGE_BYTES_MAX: usize = 20_480;
const FUZZ_BODY_BYTES_MAX: usize = 16_384;
/// Messages decoded from one input at most: every one takes at least two bytes.
const FUZZ_MESSAGES_MAX: usize = 1 << 20;

/// How an input ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every byte was taken and more are wanted.
    NeedInput,
    ClosedByPeer(Option<u16>),
    Failed(u16),
}

/// Feeds `bytes` to a fresh codec in reads whose sizes the first byte picks, answers
/// every text message as the connection would, and checks what the codec promises.
/// Returns the text messages decoded and how the input ended.
pub fn websocket_input(bytes: &[u8]) -> (usize, Ending) {
    let Some((&split, bytes)) = bytes.split_first() else {
        return (0, Ending::NeedInput);
    };
    let read_bytes = usize::from(split).max(1);
    let mut codec = Codec::new(FUZZ_MESSAGE_BYTES_MAX);
    let mut output = Vec::new();
    let mut scratch = Vec::new();
    let mut answer = Vec::new();
    let mut messages = 0;
    for read in bytes.chunks(read_bytes) {
        let mut input = read;
        loop {
            match codec.decode(&mut input, &mut output) {
                Decoded::Text(text) => {
                    assert!(
                        text.len() <= FUZZ_MESSAGE_BYTES_MAX,
                        "a message over the limit"
                    );
                    messages += 1;
                    assert!(messages <= FUZZ_MESSAGES_MAX);
                    scratch.clear();
                    scratch.extend_from_slice(text.as_bytes());
                    let parsed = parse_message(&mut scratch, FUZZ_BODY_BYTES_MAX, Vec::new());
                    let (id, status) = match parsed {
                        Ok(mut request) => {
                            let parts = request.parts();
                            assert!(parts.body.len() <= FUZZ_BODY_BYTES_MAX);
                            assert!(parts.target.starts_with(b"/"));
                            (Some(request.id), 200)
                        }
                        Err(refusal) => (refusal.id, 400),
                    };
                    answer.clear();
                    write_answer(&mut answer, id.as_ref(), status, false, b"{}");
                    assert!(std::str::from_utf8(&answer).is_ok(), "answers are UTF-8");
                    write_text_frame(&mut output, &answer);
                }
                Decoded::Control => {}
                Decoded::NeedInput => {
                    assert!(input.is_empty(), "more input wanted with input left");
                    break;
                }
                Decoded::ClosedByPeer(code) => return (messages, Ending::ClosedByPeer(code)),
                Decoded::Failed(code) => {
                    assert!(!output.is_empty(), "a failure writes its close frame");
                    return (messages, Ending::Failed(code));
                }
            }
        }
        output.clear();
    }
    (messages, Ending::NeedInput)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::fuzz::{mutate, Prng};

    /// Client frames: masked, of the given opcode byte (FIN and opcode) and payload.
    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            length @ 0..=125 => out.push(0x80 | length as u8),
            length @ 126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(length as u16).to_be_bytes());
            }
            length => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn valid_session() -> Vec<u8> {
        let create = br#"{"id":"c-1","method":"POST","target":"/v1/payments","timestamp":"1","signature":"v1=00","body":"{\"order_id\":\"o\"}"}"#;
        let mut bytes = Vec::new();
        bytes.extend(frame(0x81, create, [1, 2, 3, 4]));
        bytes.extend(frame(0x89, b"ping", [5, 6, 7, 8]));
        bytes.extend(frame(0x01, &create[..20], [9, 9, 9, 9]));
        bytes.extend(frame(0x80, &create[20..], [7, 7, 7, 7]));
        let read = br#"{"id":7,"method":"GET","target":"/v1/orders/o"}"#;
        bytes.extend(frame(0x81, read, [0, 0, 0, 0]));
        bytes.extend(frame(0x88, &[0x03, 0xe8], [1, 1, 1, 1]));
        bytes
    }

    #[test]
    fn random_and_mutated_sessions_never_panic() {
        let valid = valid_session();
        let mut prng = Prng(0x005e_ed0f_ce11);
        for round in 0..20_000 {
            let mut input = vec![prng.next() as u8];
            if round % 4 == 0 {
                let length = prng.below(512);
                input.extend((0..length).map(|_| prng.next() as u8));
            } else {
                input.extend(mutate(&mut prng, &valid));
            }
            websocket_input(&input);
        }
    }

    #[test]
    fn protocol_faults_fail_with_their_close_codes() {
        let text = |payload: &[u8]| frame(0x81, payload, [1, 2, 3, 4]);
        let mut unmasked = vec![0x81, 0x02];
        unmasked.extend_from_slice(b"{}");
        let big_ping = frame(0x89, &[0; 126], [1, 1, 1, 1]);
        let cases: [(Vec<u8>, u16); 7] = [
            (unmasked, 1002),
            (big_ping, 1002),
            (frame(0xc1, b"{}", [1, 1, 1, 1]), 1002),
            (frame(0x83, b"{}", [1, 1, 1, 1]), 1002),
            (frame(0x80, b"{}", [1, 1, 1, 1]), 1002),
            (frame(0x82, b"{}", [1, 1, 1, 1]), 1003),
            (text(&[0xff, 0xfe]), 1007),
        ];
        for (bytes, code) in cases {
            let mut input = vec![255];
            input.extend(bytes);
            assert_eq!(websocket_input(&input).1, Ending::Failed(code), "{code}");
        }
        let mut too_big = vec![255];
        too_big.extend(text(&vec![b' '; FUZZ_MESSAGE_BYTES_MAX + 1]));
        assert_eq!(websocket_input(&too_big).1, Ending::Failed(1009));
        let mut fragments = vec![255];
        let half = vec![b' '; FUZZ_MESSAGE_BYTES_MAX / 2 + 1];
        fragments.extend(frame(0x01, &half, [1, 1, 1, 1]));
        fragments.extend(frame(0x80, &half, [1, 1, 1, 1]));
        assert_eq!(websocket_input(&fragments).1, Ending::Failed(1009));
    }

    #[test]
    fn the_valid_session_decodes_in_any_read_size() {
        for split in [1u8, 2, 3, 7, 64, 255] {
            let mut input = vec![split];
            input.extend(valid_session());
            let ending = websocket_input(&input);
            assert_eq!(
                ending,
                (3, Ending::ClosedByPeer(Some(1000))),
                "reads of {split}"
            );
        }
    }
}
