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
use simd_json::prelude::*;
use simd_json::{BorrowedValue, StaticNode};

/// A string `id` is 1 to 64 characters from `!` to `~`.
pub const ID_TEXT_LENGTH_MAX: usize = 64;
/// An integer `id` is at most 2^53 - 1, the largest every JSON client keeps exact.
pub const ID_INTEGER_MAX: u64 = (1 << 53) - 1;
/// A field name the client sent is echoed in `param` only if it is this short and plain.
const ECHOED_FIELD_LENGTH_MAX: usize = 40;

/// The client's `id`, kept as the JSON it is echoed as, and as the text the access log
/// shows (the id itself, or the integer's digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageId {
    json: String,
    text_range: std::ops::Range<usize>,
}

impl MessageId {
    fn text(text: &str) -> MessageId {
        let mut json = Vec::with_capacity(text.len() + 2);
        write_json_string(&mut json, text);
        // Only `"` and `\` are escaped among `!`..`~`, so the JSON is ASCII.
        let json = String::from_utf8(json).expect("an escaped ASCII id is UTF-8");
        let text_range = 1..json.len() - 1;
        MessageId { json, text_range }
    }

    fn integer(value: u64) -> MessageId {
        let json = itoa::Buffer::new().format(value).to_string();
        let text_range = 0..json.len();
        MessageId { json, text_range }
    }

    /// The id as JSON: a string or an integer, as the client sent it.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The id as a log field: the string as escaped in JSON (visible ASCII, no space), or
    /// the integer's digits.
    pub fn log_text(&self) -> &[u8] {
        &self.json.as_bytes()[self.text_range.clone()]
    }
}

/// One request carried by a message: what the HTTP request would have had.
#[derive(Debug, PartialEq, Eq)]
pub struct MessageRequest {
    pub id: MessageId,
    pub method: Method,
    pub target: String,
    /// `None` when absent or not a string of digits: the API answers 401.
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// The exact string that was signed (empty when absent).
    pub body: Vec<u8>,
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
    /// `method`, `target` or `body` is missing or of the wrong type, or a field is unknown.
    Field(String),
    /// The body is over `limits.max_body_bytes`.
    BodyTooLarge,
}

/// Parses a text message (in place: `text` is scratch space simd-json may rearrange).
pub fn parse_message(text: &mut [u8], max_body_bytes: usize) -> Result<MessageRequest, Refusal> {
    let refuse = |id, fault| Refusal { id, fault };
    let Ok(value) = simd_json::to_borrowed_value(text) else {
        return Err(refuse(None, Fault::NotAnObjectWithId));
    };
    let Some(object) = value.as_object() else {
        return Err(refuse(None, Fault::NotAnObjectWithId));
    };
    let Some(id) = object.get("id").and_then(parse_id) else {
        return Err(refuse(None, Fault::NotAnObjectWithId));
    };
    let field = |name: &str| Fault::Field(name.to_string());
    for key in object.keys() {
        if !matches!(
            key.as_ref(),
            "id" | "method" | "target" | "timestamp" | "signature" | "body"
        ) {
            let fault = if is_echoable(key) {
                field(key)
            } else {
                field("(unknown field)")
            };
            return Err(refuse(Some(id), fault));
        }
    }
    let method = match object.get("method").and_then(|value| value.as_str()) {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some(_) => Method::Other,
        None => return Err(refuse(Some(id), field("method"))),
    };
    let target = match object.get("target").and_then(|value| value.as_str()) {
        Some(target) if target.starts_with('/') => target.to_string(),
        _ => return Err(refuse(Some(id), field("target"))),
    };
    let body = match object.get("body") {
        None | Some(BorrowedValue::Static(StaticNode::Null)) => Vec::new(),
        Some(BorrowedValue::String(body)) if body.len() > max_body_bytes => {
            return Err(refuse(Some(id), Fault::BodyTooLarge))
        }
        Some(BorrowedValue::String(body)) => body.as_bytes().to_vec(),
        Some(_) => return Err(refuse(Some(id), field("body"))),
    };
    Ok(MessageRequest {
        id,
        method,
        target,
        timestamp: object.get("timestamp").and_then(timestamp_text),
        signature: object
            .get("signature")
            .and_then(|value| value.as_str())
            .map(str::to_string),
        body,
    })
}

fn parse_id(value: &BorrowedValue<'_>) -> Option<MessageId> {
    match value {
        BorrowedValue::String(text)
            if (1..=ID_TEXT_LENGTH_MAX).contains(&text.len())
                && text.bytes().all(|b| (b'!'..=b'~').contains(&b)) =>
        {
            Some(MessageId::text(text))
        }
        BorrowedValue::Static(StaticNode::U64(value)) if *value <= ID_INTEGER_MAX => {
            Some(MessageId::integer(*value))
        }
        BorrowedValue::Static(StaticNode::I64(value)) => u64::try_from(*value)
            .ok()
            .filter(|value| *value <= ID_INTEGER_MAX)
            .map(MessageId::integer),
        _ => None,
    }
}

/// The timestamp as the text that was signed: a string as sent, or a non-negative
/// integer's digits (what a client that sends a number signed).
fn timestamp_text(value: &BorrowedValue<'_>) -> Option<String> {
    match value {
        BorrowedValue::String(text) => Some(text.to_string()),
        BorrowedValue::Static(StaticNode::U64(value)) => Some(value.to_string()),
        BorrowedValue::Static(StaticNode::I64(value)) if *value >= 0 => Some(value.to_string()),
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
    out.extend_from_slice(b"{\"id\":");
    match id {
        Some(id) => out.extend_from_slice(id.json().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.extend_from_slice(if replayed {
        b",\"replayed\":true,\"body\":"
    } else {
        b",\"replayed\":false,\"body\":"
    });
    out.extend_from_slice(body);
    out.push(b'}');
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

    fn parse(text: &str) -> Result<MessageRequest, Refusal> {
        parse_message(&mut text.as_bytes().to_vec(), 16384)
    }

    #[test]
    fn a_create_message_is_the_http_request_it_carries() {
        let request = parse(
            r#"{"id":"c-17","method":"POST","target":"/v1/payments","timestamp":"1796363613",
                "signature":"v1=ab","body":"{\"order_id\":\"ord-1\",\"amount\":1999}"}"#,
        )
        .unwrap();
        assert_eq!(request.id.json(), "\"c-17\"");
        assert_eq!(request.id.log_text(), b"c-17");
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.target, "/v1/payments");
        assert_eq!(request.timestamp.as_deref(), Some("1796363613"));
        assert_eq!(request.signature.as_deref(), Some("v1=ab"));
        assert_eq!(request.body, br#"{"order_id":"ord-1","amount":1999}"#);
    }

    #[test]
    fn ids_are_short_visible_strings_or_exact_integers() {
        let id_of = |id: &str| {
            parse(&format!(r#"{{"id":{id},"method":"GET","target":"/"}}"#))
                .map(|request| request.id.json().to_string())
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
            assert_eq!(refusal.id.unwrap().json(), "1");
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
        let big = format!(
            r#"{{"id":1,"method":"POST","target":"/","body":"{}"}}"#,
            "x".repeat(101)
        );
        let refusal = parse_message(&mut big.into_bytes(), 100).unwrap_err();
        assert_eq!(refusal.fault, Fault::BodyTooLarge);
    }

    #[test]
    fn a_numeric_timestamp_is_its_digits_and_a_wrong_type_is_absent() {
        let timestamp = |value: &str| {
            parse(&format!(
                r#"{{"id":1,"method":"GET","target":"/","timestamp":{value},"signature":5}}"#
            ))
            .unwrap()
            .timestamp
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
