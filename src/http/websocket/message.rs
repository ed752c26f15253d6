//! The message envelope of API.md section 9: a text message is one HTTP request of the
//! API (`method`, `target`, `timestamp`, `signature`, `body`) with the client's `id`, and
//! an answer is `{"id", "status", "replayed", "body"}` with the same id.
//!
//! Parsing checks the envelope only; what is inside it (the signature, the body, the
//! route) is the API's to judge, exactly as for HTTP. A message that is not an object
//! with a valid `id` is refused without an id; any other envelope fault is refused with
//! its id and the field at fault. No error message quotes a value.

use super::super::request::Method;
use crate::payment_object::write_json_string;
use simd_json::{Buffers, Node, StaticNode, Tape};
use std::cell::RefCell;
use std::ops::Range;

/// A string `id` is 1 to 64 characters from `!` to `~`.
pub const ID_TEXT_LENGTH_MAX: usize = 64;
/// An integer `id` is at most 2^53 - 1, the largest every JSON client keeps exact.
pub const ID_INTEGER_MAX: u64 = (1 << 53) - 1;
/// A field name the client sent is echoed in `param` only if it is this short and plain.
const ECHOED_FIELD_LENGTH_MAX: usize = 40;
/// simd-json's buffers start sized for a typical message; they grow to the largest seen.
const PARSE_BUFFERS_BYTES_INITIAL: usize = 1024;
/// The envelope's fields, in the order their values are packed into `MessageRequest`.
const FIELDS: [&str; 6] = ["id", "method", "target", "timestamp", "signature", "body"];

thread_local! {
    /// One core's simd-json buffers and tape, reused by every message it parses.
    static PARSER: RefCell<(Buffers, Option<Tape<'static>>)> = RefCell::new((
        Buffers::new(PARSE_BUFFERS_BYTES_INITIAL),
        Some(Tape(Vec::new())),
    ));
}

/// The client's `id`, kept inline (no allocation): a string's characters, or an integer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    /// The string's characters, or the integer's digits.
    text: [u8; ID_TEXT_LENGTH_MAX],
    length: u8,
    integer: bool,
}

impl MessageId {
    fn new(text: &[u8], integer: bool) -> MessageId {
        let mut id = MessageId {
            text: [0; ID_TEXT_LENGTH_MAX],
            length: text.len() as u8,
            integer,
        };
        id.text[..text.len()].copy_from_slice(text);
        id
    }

    fn text(text: &str) -> MessageId {
        MessageId::new(text.as_bytes(), false)
    }

    fn integer(value: u64) -> MessageId {
        MessageId::new(itoa::Buffer::new().format(value).as_bytes(), true)
    }

    /// Appends the id as JSON: a string or an integer, as the client sent it.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        if self.integer {
            out.extend_from_slice(self.log_text());
        } else {
            // Only `!` to `~`: valid UTF-8, and `"` and `\` get escaped.
            let text = std::str::from_utf8(self.log_text()).unwrap_or_default();
            write_json_string(out, text);
        }
    }

    /// The id as a log field: the string (visible ASCII, no space) or the digits.
    pub fn log_text(&self) -> &[u8] {
        &self.text[..usize::from(self.length)]
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut json = Vec::new();
        self.write_json(&mut json);
        write!(f, "MessageId({})", String::from_utf8_lossy(&json))
    }
}

/// One request carried by a message: what the HTTP request would have had. Its text
/// fields are packed into one buffer, the body last (the API parses it in place).
#[derive(Debug)]
pub struct MessageRequest {
    pub id: MessageId,
    pub method: Method,
    fields: Vec<u8>,
    target: Range<usize>,
    timestamp: Option<Range<usize>>,
    signature: Option<Range<usize>>,
    body_start: usize,
}

/// A request's fields, borrowed from its buffer.
pub struct RequestParts<'a> {
    pub target: &'a [u8],
    /// `None` when absent or of the wrong type: the API answers 401.
    pub timestamp: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
    /// The exact string that was signed (empty when absent).
    pub body: &'a mut [u8],
}

impl MessageRequest {
    pub fn parts(&mut self) -> RequestParts<'_> {
        let (head, body) = self.fields.split_at_mut(self.body_start);
        let field = |range: &Range<usize>| &head[range.clone()];
        RequestParts {
            target: field(&self.target),
            timestamp: self.timestamp.as_ref().map(field),
            signature: self.signature.as_ref().map(field),
            body,
        }
    }

    /// The buffer back, for reuse.
    pub fn into_buffer(self) -> Vec<u8> {
        self.fields
    }
}

/// Why a message carries no request the API can judge.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    /// `None` when the message is not an object with a valid `id`.
    pub id: Option<MessageId>,
    pub fault: Fault,
}

/// The envelope fault; each is a 400 `invalid_request` except an oversized body (413).
#[derive(Debug, PartialEq, Eq)]
pub enum Fault {
    /// Not a JSON object, or its `id` is missing or invalid.
    NotAnObjectWithId,
    /// `method`, `target` or `body` is missing or of the wrong type, or a field is
    /// unknown or repeated.
    Field(String),
    /// The body is over `limits.max_body_bytes`.
    BodyTooLarge,
}

/// Parses a text message (in place: `text` is scratch space simd-json rearranges) into a
/// request whose fields are packed into `buffer` (cleared first; pass a reused one).
pub fn parse_message(
    text: &mut [u8],
    max_body_bytes: usize,
    buffer: Vec<u8>,
) -> Result<MessageRequest, Refusal> {
    PARSER.with(|parser| {
        let mut parser = parser.borrow_mut();
        let (buffers, kept) = &mut *parser;
        let mut tape: Tape<'_> = kept.take().unwrap_or_else(|| Tape(Vec::new())).reset();
        let result = match simd_json::fill_tape(text, buffers, &mut tape) {
            Ok(()) => envelope(&tape.0, max_body_bytes, buffer),
            Err(_) => Err(refuse(None, Fault::NotAnObjectWithId)),
        };
        *kept = Some(tape.reset());
        result
    })
}

fn refuse(id: Option<MessageId>, fault: Fault) -> Refusal {
    Refusal { id, fault }
}

/// The envelope's values, as tape nodes: the top object's fields, each at most once.
fn envelope(
    nodes: &[Node<'_>],
    max_body_bytes: usize,
    buffer: Vec<u8>,
) -> Result<MessageRequest, Refusal> {
    let Some(Node::Object { len, .. }) = nodes.first() else {
        return Err(refuse(None, Fault::NotAnObjectWithId));
    };
    let mut values: [Option<&Node<'_>>; FIELDS.len()] = [None; FIELDS.len()];
    let mut unknown = None;
    let mut index = 1;
    for _ in 0..*len {
        let (Some(Node::String(key)), Some(value)) = (nodes.get(index), nodes.get(index + 1))
        else {
            return Err(refuse(None, Fault::NotAnObjectWithId));
        };
        index += 1 + match value {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
        match FIELDS.iter().position(|field| field == key) {
            Some(slot) if values[slot].is_none() => values[slot] = Some(value),
            Some(_) => unknown = unknown.or(Some(*key)),
            None => unknown = unknown.or(Some(*key)),
        }
    }
    let [id, method, target, timestamp, signature, body] = values;
    let Some(id) = id.and_then(parse_id) else {
        return Err(refuse(None, Fault::NotAnObjectWithId));
    };
    let field = |name: &str| refuse(Some(id), Fault::Field(name.to_string()));
    if let Some(key) = unknown {
        return Err(field(if is_echoable(key) {
            key
        } else {
            "(unknown field)"
        }));
    }
    let method = match method {
        Some(Node::String("GET")) => Method::Get,
        Some(Node::String("POST")) => Method::Post,
        Some(Node::String(_)) => Method::Other,
        _ => return Err(field("method")),
    };
    let target = match target {
        Some(Node::String(target)) if target.starts_with('/') => target.as_bytes(),
        _ => return Err(field("target")),
    };
    let body = match body {
        None | Some(Node::Static(StaticNode::Null)) => &b""[..],
        Some(Node::String(body)) if body.len() > max_body_bytes => {
            return Err(refuse(Some(id), Fault::BodyTooLarge))
        }
        Some(Node::String(body)) => body.as_bytes(),
        Some(_) => return Err(field("body")),
    };
    let mut packed = Packer { buffer };
    packed.buffer.clear();
    let target = packed.push(target);
    let timestamp = timestamp.and_then(|value| packed.push_timestamp(value));
    let signature = match signature {
        Some(Node::String(signature)) => Some(packed.push(signature.as_bytes())),
        _ => None,
    };
    let body_start = packed.buffer.len();
    packed.buffer.extend_from_slice(body);
    Ok(MessageRequest {
        id,
        method,
        fields: packed.buffer,
        target,
        timestamp,
        signature,
        body_start,
    })
}

struct Packer {
    buffer: Vec<u8>,
}

impl Packer {
    fn push(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.buffer.len();
        self.buffer.extend_from_slice(bytes);
        start..self.buffer.len()
    }

    /// The timestamp as the text that was signed: a string as sent, or a non-negative
    /// integer's digits (what a client that sends a number signed).
    fn push_timestamp(&mut self, value: &Node<'_>) -> Option<Range<usize>> {
        let digits = match value {
            Node::String(text) => return Some(self.push(text.as_bytes())),
            Node::Static(StaticNode::U64(value)) => *value,
            Node::Static(StaticNode::I64(value)) => u64::try_from(*value).ok()?,
            _ => return None,
        };
        Some(self.push(itoa::Buffer::new().format(digits).as_bytes()))
    }
}

fn parse_id(value: &Node<'_>) -> Option<MessageId> {
    match value {
        Node::String(text)
            if (1..=ID_TEXT_LENGTH_MAX).contains(&text.len())
                && text.bytes().all(|b| (b'!'..=b'~').contains(&b)) =>
        {
            Some(MessageId::text(text))
        }
        Node::Static(StaticNode::U64(value)) if *value <= ID_INTEGER_MAX => {
            Some(MessageId::integer(*value))
        }
        Node::Static(StaticNode::I64(value)) => u64::try_from(*value)
            .ok()
            .filter(|value| *value <= ID_INTEGER_MAX)
            .map(MessageId::integer),
        _ => None,
    }
}

fn is_echoable(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= ECHOED_FIELD_LENGTH_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Appends an answer: `{"id":..,"status":..,"replayed":..,"body":..}`. `body` is the
/// API's JSON (a payment or an error object), written as it is.
pub fn write_answer(
    out: &mut Vec<u8>,
    id: Option<&MessageId>,
    status: u16,
    replayed: bool,
    body: &[u8],
) {
    write_answer_head(out, id, status, replayed);
    out.extend_from_slice(body);
    out.extend_from_slice(ANSWER_TAIL);
}

/// What follows the body of an answer.
pub const ANSWER_TAIL: &[u8] = b"}";

/// Appends an answer up to its body: the body and `ANSWER_TAIL` follow.
pub fn write_answer_head(out: &mut Vec<u8>, id: Option<&MessageId>, status: u16, replayed: bool) {
    out.extend_from_slice(b"{\"id\":");
    match id {
        Some(id) => id.write_json(out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.extend_from_slice(if replayed {
        b",\"replayed\":true,\"body\":"
    } else {
        b",\"replayed\":false,\"body\":"
    });
}

/// Appends a status push: `{"event":"payment.updated","data":{payment}}`.
pub fn write_payment_updated(out: &mut Vec<u8>, payment: &[u8]) {
    out.extend_from_slice(b"{\"event\":\"payment.updated\",\"data\":");
    out.extend_from_slice(payment);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_of(id: &MessageId) -> String {
        let mut json = Vec::new();
        id.write_json(&mut json);
        String::from_utf8(json).unwrap()
    }

    fn parse(text: &str) -> Result<MessageRequest, Refusal> {
        parse_message(&mut text.as_bytes().to_vec(), 16384, Vec::new())
    }

    #[test]
    fn a_create_message_is_the_http_request_it_carries() {
        let mut request = parse(
            r#"{"id":"c-17","method":"POST","target":"/v1/payments","timestamp":"1796363613",
                "signature":"v1=ab","body":"{\"order_id\":\"ord-1\",\"amount\":1999}"}"#,
        )
        .unwrap();
        assert_eq!(json_of(&request.id), "\"c-17\"");
        assert_eq!(request.id.log_text(), b"c-17");
        assert_eq!(request.method, Method::Post);
        let parts = request.parts();
        assert_eq!(parts.target, b"/v1/payments");
        assert_eq!(parts.timestamp, Some(&b"1796363613"[..]));
        assert_eq!(parts.signature, Some(&b"v1=ab"[..]));
        assert_eq!(parts.body, br#"{"order_id":"ord-1","amount":1999}"#);
    }

    #[test]
    fn ids_are_short_visible_strings_or_exact_integers() {
        let id_of = |id: &str| {
            parse(&format!(r#"{{"id":{id},"method":"GET","target":"/"}}"#))
                .map(|request| json_of(&request.id))
                .map_err(|refusal| refusal.id.is_none())
        };
        assert_eq!(id_of("7"), Ok("7".to_string()));
        assert_eq!(
            id_of("9007199254740991"),
            Ok("9007199254740991".to_string())
        );
        assert_eq!(id_of(r#""a\"b""#), Ok(r#""a\"b""#.to_string()));
        assert_eq!(
            id_of(&format!("\"{}\"", "x".repeat(64))).map(|j| j.len()),
            Ok(66)
        );
        for bad in [
            "9007199254740992",
            "-1",
            "1.5",
            "null",
            "true",
            "[1]",
            r#""""#,
            r#""has space""#,
            r#""é""#,
            &format!("\"{}\"", "x".repeat(65)),
        ] {
            assert_eq!(id_of(bad), Err(true), "{bad}");
        }
    }

    #[test]
    fn not_an_object_with_an_id_is_refused_without_an_id() {
        for text in [
            "",
            "[]",
            "\"x\"",
            "{",
            r#"{"method":"GET"}"#,
            "{\"id\":\"a\"} x",
        ] {
            let refusal = parse(text).unwrap_err();
            assert_eq!(refusal.id, None, "{text:?}");
            assert_eq!(refusal.fault, Fault::NotAnObjectWithId, "{text:?}");
        }
    }

    #[test]
    fn envelope_faults_keep_the_id_and_name_the_field() {
        let fault = |text: &str| {
            let refusal = parse(text).unwrap_err();
            assert_eq!(json_of(&refusal.id.unwrap()), "1");
            refusal.fault
        };
        let field = |name: &str| Fault::Field(name.to_string());
        assert_eq!(
            fault(r#"{"id":1,"target":"/v1/payments"}"#),
            field("method")
        );
        assert_eq!(fault(r#"{"id":1,"method":"GET"}"#), field("target"));
        assert_eq!(
            fault(r#"{"id":1,"method":"GET","target":"v1"}"#),
            field("target")
        );
        assert_eq!(
            fault(r#"{"id":1,"method":"POST","target":"/","body":{}}"#),
            field("body")
        );
        assert_eq!(
            fault(r#"{"id":1,"method":"GET","target":"/","extra":1}"#),
            field("extra")
        );
        assert_eq!(
            fault(r#"{"id":1,"method":"GET","target":"/","target":"/x"}"#),
            field("target"),
            "a repeated field"
        );
        assert_eq!(
            fault(r#"{"id":1,"method":"GET","target":"/","nested":{"a":[1,{"b":2}]},"z":1}"#),
            field("nested"),
            "nested values are skipped whole"
        );
        let big = format!(
            r#"{{"id":1,"method":"POST","target":"/","body":"{}"}}"#,
            "x".repeat(101)
        );
        let refusal = parse_message(&mut big.into_bytes(), 100, Vec::new()).unwrap_err();
        assert_eq!(refusal.fault, Fault::BodyTooLarge);
    }

    #[test]
    fn a_numeric_timestamp_is_its_digits_and_a_wrong_type_is_absent() {
        let timestamp = |value: &str| {
            let mut request = parse(&format!(
                r#"{{"id":1,"method":"GET","target":"/","timestamp":{value},"signature":5}}"#
            ))
            .unwrap();
            let parts = request.parts();
            assert_eq!(parts.signature, None);
            parts
                .timestamp
                .map(|t| String::from_utf8(t.to_vec()).unwrap())
        };
        assert_eq!(timestamp("1796363613"), Some("1796363613".to_string()));
        assert_eq!(timestamp("1.5"), None);
        assert_eq!(timestamp("-3"), None);
        assert_eq!(timestamp("null"), None);
    }

    #[test]
    fn answers_echo_the_id_with_its_type() {
        let mut out = Vec::new();
        let id = MessageId::text("c-17");
        write_answer(&mut out, Some(&id), 201, false, b"{}");
        assert_eq!(
            out,
            br#"{"id":"c-17","status":201,"replayed":false,"body":{}}"#
        );
        out.clear();
        write_answer(&mut out, Some(&MessageId::integer(7)), 200, true, b"{}");
        assert_eq!(out, br#"{"id":7,"status":200,"replayed":true,"body":{}}"#);
        out.clear();
        write_answer(&mut out, None, 400, false, b"{}");
        assert_eq!(
            out,
            br#"{"id":null,"status":400,"replayed":false,"body":{}}"#
        );
        out.clear();
        write_payment_updated(&mut out, b"{\"id\":\"pay_1\"}");
        assert_eq!(out, br#"{"event":"payment.updated","data":{"id":"pay_1"}}"#);
    }
}
