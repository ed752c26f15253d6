//! The create request of API.md section 3: the JSON body parsed in place by simd-json
//! into a typed request (serde), then every rule checked, each failure with its exact
//! `error.code` and `param`.
//!
//! Three stages keep the codes apart: `json_scan` first refuses escapes that are not
//! characters and defuses numbers no field takes (which simd-json would get wrong), then
//! simd-json builds its tape, and anything it refuses there is not JSON (`invalid_json`);
//! everything refused while deserializing the tape is a field at fault
//! (`invalid_request`). Each field's value is read through
//! `Named`, which notes the field's (static) name first, so an error names its field
//! without a path tracker allocating a string for every key of every request. No error
//! message ever quotes a value: a value could be card data.

use super::error::{ApiError, ErrorKind};
use super::json_scan;
use crate::payment::{
    has_characters_within, is_valid_order_id, Currency, MerchantIndex, PaymentTerms, AMOUNT_MAX,
    DESCRIPTION_LENGTH_MAX, METADATA_KEYS_MAX, METADATA_KEY_LENGTH_MAX, METADATA_VALUE_LENGTH_MAX,
    PAYMENT_METHOD_LENGTH_MAX,
};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

thread_local! {
    /// The field whose value is being read, if any: the field at fault on an error.
    static FIELD_READ: Cell<Option<&'static str>> = const { Cell::new(None) };
    static PARSE_BUFFERS: std::cell::RefCell<simd_json::Buffers> =
        std::cell::RefCell::new(simd_json::Buffers::new(PARSE_BUFFERS_BYTES_INITIAL));
}

/// simd-json buffers start sized for a typical body; they grow to the largest seen.
const PARSE_BUFFERS_BYTES_INITIAL: usize = 1024;

/// A field name the client sent is echoed in `param` only if it is this short and plain.
const ECHOED_FIELD_LENGTH_MAX: usize = 40;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest<'a> {
    #[serde(borrow)]
    order_id: Named<OrderId, Text<'a>>,
    amount: Named<AmountField, Amount>,
    #[serde(borrow)]
    currency: Named<CurrencyField, Text<'a>>,
    #[serde(borrow)]
    payment_method: Named<PaymentMethod, Text<'a>>,
    #[serde(borrow, default)]
    description: Named<Description, Option<Text<'a>>>,
    #[serde(default)]
    metadata: Named<MetadataField, Option<Metadata>>,
}

/// A field's name, known at compile time.
trait FieldName {
    const NAME: &'static str;
}

macro_rules! field_names {
    ($($marker:ident = $name:literal),* $(,)?) => {
        $(
            #[derive(Default)]
            struct $marker;
            impl FieldName for $marker {
                const NAME: &'static str = $name;
            }
        )*
    };
}

field_names!(
    OrderId = "order_id",
    AmountField = "amount",
    CurrencyField = "currency",
    PaymentMethod = "payment_method",
    Description = "description",
    MetadataField = "metadata",
);

/// A field's value, read after noting the field's name in `FIELD_READ`.
#[derive(Default)]
struct Named<N, T>(T, PhantomData<N>);

impl<'de, N: FieldName, T: Deserialize<'de>> Deserialize<'de> for Named<N, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        FIELD_READ.with(|field| field.set(Some(N::NAME)));
        T::deserialize(deserializer).map(|value| Named(value, PhantomData))
    }
}

/// A string borrowed from the body (simd-json unescapes in place), owned only if the
/// deserializer cannot lend it.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'a>, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(value)))
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(value.to_string())))
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

/// Any JSON number is read, so that 1.5, 1e3 or 2^64 are reported on `amount` rather
/// than as a type error deep inside serde.
struct Amount(Option<u64>);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Amount, D::Error> {
        struct AmountVisitor;
        impl Visitor<'_> for AmountVisitor {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer amount in minor units")
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Amount, E> {
                Ok(Amount(Some(value)))
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Amount, E> {
                Ok(Amount(u64::try_from(value).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Amount, E> {
                Ok(Amount(None))
            }
        }
        deserializer.deserialize_any(AmountVisitor)
    }
}

/// `metadata`: string keys to string values, insertion order kept, duplicates refused.
struct Metadata(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Metadata {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Metadata, D::Error> {
        struct MetadataVisitor;
        impl<'de> Visitor<'de> for MetadataVisitor {
            type Value = Metadata;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
                let mut entries: Vec<(String, String)> = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if entries.len() == METADATA_KEYS_MAX {
                        return Err(de::Error::custom(format!(
                            "at most {METADATA_KEYS_MAX} keys"
                        )));
                    }
                    let value: Cow<'de, str> = map.next_value()?;
                    if entries.iter().any(|(existing, _)| *existing == key) {
                        return Err(de::Error::custom("a key appears twice"));
                    }
                    entries.push((key.into_owned(), value.into_owned()));
                }
                Ok(Metadata(entries))
            }
        }
        deserializer.deserialize_map(MetadataVisitor)
    }
}

/// Parses and validates a create body. `body` is parsed in place (simd-json).
pub fn parse_create_request(
    body: &mut [u8],
    merchant: MerchantIndex,
) -> Result<PaymentTerms, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::with_message(
                ErrorKind::InvalidJson,
                "the body is empty",
            ))
        }
        // serde would take an array for a struct too; the contract wants an object.
        Some(b'{') => {}
        Some(_) => {
            return Err(ApiError::with_message(
                ErrorKind::InvalidJson,
                "the body must be a JSON object",
            ))
        }
    }
    json_scan::prepare(body).map_err(|_| {
        let message = "the body is not valid JSON: a \\u escape is not a Unicode character";
        ApiError::with_message(ErrorKind::InvalidJson, message)
    })?;
    // simd-json's working buffers are reused per thread (one per core): nothing of theirs
    // is allocated per request.
    PARSE_BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let mut deserializer = simd_json::Deserializer::from_slice_with_buffers(body, &mut buffers)
            .map_err(|_| {
                ApiError::with_message(ErrorKind::InvalidJson, "the body is not valid JSON")
            })?;
        FIELD_READ.with(|field| field.set(None));
        let request = CreateRequest::deserialize(&mut deserializer).map_err(|error| {
            let field = FIELD_READ.with(Cell::get);
            field_error(&error.to_string(), field)
        })?;
        validate(request, merchant)
    })
}

/// Turns a deserialization error into `invalid_request` naming its field (the one whose
/// value was being read, `field`), or `invalid_json` when the document itself is not an
/// object.
fn field_error(message: &str, field: Option<&'static str>) -> ApiError {
    let message = message.to_string();
    if let Some(field) = quoted_field(&message, "missing field `") {
        return invalid(field, "is required");
    }
    if let Some(field) = quoted_field(&message, "unknown field `") {
        let param = if is_echoable(&field) {
            field
        } else {
            "(unknown field)".to_string()
        };
        return invalid(param, "is not a known field");
    }
    if let Some(field) = quoted_field(&message, "duplicate field `") {
        return invalid(field, "appears twice");
    }
    let Some(field) = field else {
        return ApiError::with_message(ErrorKind::InvalidJson, "the body must be a JSON object");
    };
    let reason = match field {
        "amount" => "must be an integer from 1 to 100000000000",
        "metadata" => "must be an object of at most 20 keys with string values",
        "description" => "must be a string or null",
        _ => "must be a string",
    };
    invalid(field, reason)
}

/// `invalid_request` on `param`, with a message that names the field and never its value.
fn invalid(param: impl Into<String>, reason: &str) -> ApiError {
    let param = param.into();
    let message = format!("{param} {reason}");
    ApiError::invalid_param(param, message)
}

fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    message[start..].split('`').next().map(str::to_string)
}

fn is_echoable(field: &str) -> bool {
    !field.is_empty()
        && field.len() <= ECHOED_FIELD_LENGTH_MAX
        && field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn validate(request: CreateRequest<'_>, merchant: MerchantIndex) -> Result<PaymentTerms, ApiError> {
    let order_id = request.order_id.0 .0;
    if !is_valid_order_id(&order_id) {
        return Err(invalid(
            "order_id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let amount = match request.amount.0 .0 {
        Some(amount) if (1..=AMOUNT_MAX).contains(&amount) => amount,
        _ => {
            return Err(invalid(
                "amount",
                "must be an integer from 1 to 100000000000",
            ))
        }
    };
    let currency = Currency::parse(&request.currency.0 .0)
        .ok_or_else(|| invalid("currency", "must be 3 uppercase letters"))?;
    let payment_method = request.payment_method.0 .0;
    let description = request.description.0.map(|text| text.0);
    if looks_like_card_number(&payment_method) {
        let message = "payment_method looks like a card number; send a token from your card vault";
        return Err(
            ApiError::with_message(ErrorKind::RawCardDataRejected, message)
                .with_param("payment_method"),
        );
    }
    // Limits are in characters (API.md), as the state and the log count them too.
    if !has_characters_within(&payment_method, 1, PAYMENT_METHOD_LENGTH_MAX) {
        return Err(invalid(
            "payment_method",
            "must be a token of 1-128 characters",
        ));
    }
    if description
        .as_ref()
        .is_some_and(|d| !has_characters_within(d, 0, DESCRIPTION_LENGTH_MAX))
    {
        return Err(invalid("description", "must be at most 256 characters"));
    }
    let metadata = request.metadata.0.map(|m| m.0).unwrap_or_default();
    for (key, value) in &metadata {
        if !has_characters_within(key, 1, METADATA_KEY_LENGTH_MAX) {
            return Err(invalid("metadata", "keys must be 1-40 characters"));
        }
        if !has_characters_within(value, 0, METADATA_VALUE_LENGTH_MAX) {
            return Err(invalid("metadata", "values must be at most 500 characters"));
        }
    }
    Ok(PaymentTerms {
        merchant,
        order_id: order_id.into_owned(),
        amount,
        currency,
        payment_method: payment_method.into_owned(),
        description: description.map(Cow::into_owned),
        metadata,
    })
}

/// 12 to 19 digits, spaces and dashes allowed between them: a primary account number.
fn looks_like_card_number(value: &str) -> bool {
    let mut digits = 0;
    for b in value.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b' ' | b'-' => {}
            _ => return false,
        }
    }
    (12..=19).contains(&digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"{"order_id":"ord-20261122-0001","amount":1999,"currency":"CNY","payment_method":"tok_visa","description":"2 coffees","metadata":{"cart":"c-17","z":"y"}}"#;

    fn parse(body: &str) -> Result<PaymentTerms, ApiError> {
        let mut bytes = body.as_bytes().to_vec();
        parse_create_request(&mut bytes, 3)
    }

    fn error(body: &str) -> (ErrorKind, Option<String>) {
        let error = parse(body).expect_err(body);
        (error.kind, error.param.map(|p| p.into_owned()))
    }

    fn with(field: &str, value: &str) -> String {
        let mut object: Vec<(String, String)> = vec![
            ("order_id".into(), r#""ord-1""#.into()),
            ("amount".into(), "1999".into()),
            ("currency".into(), r#""CNY""#.into()),
            ("payment_method".into(), r#""tok_visa""#.into()),
        ];
        match object.iter_mut().find(|(name, _)| name == field) {
            Some(entry) => entry.1 = value.to_string(),
            None => object.push((field.to_string(), value.to_string())),
        }
        let fields: Vec<String> = object.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    #[test]
    fn a_valid_request_keeps_every_field_in_order() {
        let terms = parse(VALID).unwrap();
        assert_eq!(terms.merchant, 3);
        assert_eq!(terms.order_id, "ord-20261122-0001");
        assert_eq!(terms.amount, 1999);
        assert_eq!(terms.currency.as_str(), "CNY");
        assert_eq!(terms.payment_method, "tok_visa");
        assert_eq!(terms.description.as_deref(), Some("2 coffees"));
        assert_eq!(
            terms.metadata,
            vec![("cart".into(), "c-17".into()), ("z".into(), "y".into())]
        );
    }

    #[test]
    fn escapes_are_decoded() {
        let terms = parse(&with("description", r#""caf\u00e9 \"x\"""#)).unwrap();
        assert_eq!(terms.description.as_deref(), Some("café \"x\""));
    }

    #[test]
    fn not_json_or_not_an_object_is_invalid_json() {
        for body in [
            "", "   ", "{", "nope", "[1,2]", "\"text\"", "42", "{\"a\":}", "null",
        ] {
            assert_eq!(error(body).0, ErrorKind::InvalidJson, "{body:?}");
        }
    }

    #[test]
    fn amounts_out_of_range_name_amount() {
        for amount in [
            "1.5",
            "1e3",
            "18446744073709551616",
            "1000000000000000000000000000000",
            "-1",
            "0",
            "100000000001",
            "\"5\"",
            "null",
        ] {
            assert_eq!(
                error(&with("amount", amount)),
                (ErrorKind::InvalidRequest, Some("amount".into())),
                "{amount}"
            );
        }
        assert_eq!(
            parse(&with("amount", "100000000000")).unwrap().amount,
            AMOUNT_MAX
        );
    }

    #[test]
    fn missing_unknown_and_duplicate_fields_are_named() {
        assert_eq!(
            error(r#"{"amount":1,"currency":"CNY","payment_method":"t"}"#)
                .1
                .as_deref(),
            Some("order_id")
        );
        assert_eq!(
            error(&with("surprise", "1")),
            (ErrorKind::InvalidRequest, Some("surprise".into()))
        );
        let duplicate =
            r#"{"order_id":"a","amount":1,"amount":2,"currency":"CNY","payment_method":"t"}"#;
        assert_eq!(
            error(duplicate),
            (ErrorKind::InvalidRequest, Some("amount".into()))
        );
    }

    #[test]
    fn each_field_rule_names_its_field() {
        let cases = [
            ("order_id", r#""""#),
            ("order_id", &format!("\"{}\"", "a".repeat(65))),
            ("order_id", r#""has space""#),
            ("order_id", "7"),
            ("currency", r#""cny""#),
            ("currency", r#""CNYX""#),
            ("payment_method", r#""""#),
            ("payment_method", &format!("\"tok_{}\"", "a".repeat(125))),
            ("description", &format!("\"{}\"", "d".repeat(257))),
            ("metadata", "[]"),
            ("metadata", r#"{"k":1}"#),
            ("metadata", &format!("{{\"{}\":\"v\"}}", "k".repeat(41))),
            ("metadata", &format!("{{\"k\":\"{}\"}}", "v".repeat(501))),
            ("metadata", r#"{"k":"a","k":"b"}"#),
        ];
        for (field, value) in cases {
            assert_eq!(
                error(&with(field, value)),
                (ErrorKind::InvalidRequest, Some(field.into())),
                "{field}={value}"
            );
        }
        let many: Vec<String> = (0..21).map(|i| format!("\"k{i}\":\"v\"")).collect();
        assert_eq!(
            error(&with("metadata", &format!("{{{}}}", many.join(","))))
                .1
                .as_deref(),
            Some("metadata")
        );
        assert!(parse(&with("description", "null"))
            .unwrap()
            .description
            .is_none());
        assert!(parse(&with("description", &format!("\"{}\"", "é".repeat(256)))).is_ok());
    }

    #[test]
    fn card_numbers_are_rejected_without_echo() {
        for card in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "424242424242",
        ] {
            let error = parse(&with("payment_method", &format!("\"{card}\""))).unwrap_err();
            assert_eq!(error.kind, ErrorKind::RawCardDataRejected);
            assert_eq!(error.param.as_deref(), Some("payment_method"));
            let mut json = Vec::new();
            error.write_json(&mut json);
            assert!(!String::from_utf8(json).unwrap().contains("4242"));
        }
        assert!(parse(&with("payment_method", r#""12345678901""#)).is_ok());
        assert!(parse(&with("payment_method", r#""tok_4242424242424242""#)).is_ok());
    }
}
