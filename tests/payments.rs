//! Payments of API.md sections 1 to 4 against the real binary: signed creates, every
//! validation rule, idempotency by order_id, reads, the simulated acquirer's token table,
//! concurrency, both cores, and restarts on the same data directory.
//!
//! Requests are signed here by an independent implementation of section 1 (the harness's
//! `signature_hex`), so a signing bug in payd cannot hide behind the same bug in the tests.

mod common;

use common::{
    assert_error, body_with, create_body, files_under, merchants_toml, request_bytes, run_payd,
    unix_now_ms, unix_now_secs, Client, PaymentJson, Response, Server, ServerOptions, Signed,
    MERCHANT_A, MERCHANT_A_SECRETS, MERCHANT_B, MERCHANT_B_SECRET, TIMESTAMP_TOLERANCE_SECS,
};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const STATUS_OK: &str = "HTTP/1.1 200 OK";
const STATUS_CREATED: &str = "HTTP/1.1 201 Created";
const STATUS_ACCEPTED: &str = "HTTP/1.1 202 Accepted";
const STATUS_BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request";
const STATUS_UNAUTHORIZED: &str = "HTTP/1.1 401 Unauthorized";
const STATUS_NOT_FOUND: &str = "HTTP/1.1 404 Not Found";
const STATUS_METHOD_NOT_ALLOWED: &str = "HTTP/1.1 405 Method Not Allowed";
const STATUS_CONFLICT: &str = "HTTP/1.1 409 Conflict";
const STATUS_UNSUPPORTED_MEDIA_TYPE: &str = "HTTP/1.1 415 Unsupported Media Type";

/// API.md section 4: `tok_slow` is approved after this long.
const SLOW_TOKEN_LATENCY_MS: u64 = 3_000;
/// How long a test waits for a pending payment to be finalised in the background.
const FINALISE_WAIT_MS: u64 = 15_000;
/// How long an access log may take to be written (it is buffered per core).
const ACCESS_LOG_FLUSH_WAIT_MS: u64 = 5_000;
/// Counters are merged from the cores on scrape; give a late core this long.
const METRICS_SETTLE_MS: u64 = 3_000;
/// A read timeout longer than `tok_slow`'s latency, for creates that wait for it.
const SLOW_READ_TIMEOUT_MS: u64 = 10_000;
/// How long the first of two creates may take to become visible as pending.
const IN_PROGRESS_WAIT_MS: u64 = 2_000;
/// Clock slack between signing here and checking in payd.
const CLOCK_SLACK_SECS: u64 = 10;
const IDENTICAL_CREATES_COUNT: usize = 20;
const TWO_CORE_PAYMENTS_COUNT: usize = 40;
const RESTART_PAYMENTS_COUNT: usize = 12;

/// A server with both test merchants and `acquirer_toml` appended (may be empty).
fn start(cores: Vec<usize>, acquirer_toml: &str) -> Server {
    Server::start(options(cores, acquirer_toml))
}

fn options(cores: Vec<usize>, acquirer_toml: &str) -> ServerOptions {
    ServerOptions {
        cores,
        extra_toml: format!("{}\n{acquirer_toml}\n", merchants_toml()),
        ..ServerOptions::default()
    }
}

/// Sends a create signed by merchant A's first secret and reads the answer.
fn create(client: &mut Client, body: &str) -> Response {
    client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes())
}

/// Sends a signed GET by merchant A.
fn get(client: &mut Client, target: &str) -> Response {
    client.request(&Signed::new("GET", target, b"").bytes())
}

fn assert_status(response: &Response, status_line: &str) {
    assert_eq!(
        response.status_line,
        status_line,
        "{response:?}\nbody: {}",
        response.body_text()
    );
}

/// A 201 with a final payment; returns it.
fn assert_created(response: &Response) -> PaymentJson {
    assert_status(response, STATUS_CREATED);
    assert_eq!(
        response.header("Idempotent-Replayed"),
        None,
        "a new payment is not a replay"
    );
    response.payment()
}

fn assert_invalid_request(response: &Response, param: &str, body: &str) {
    assert_error(response, STATUS_BAD_REQUEST, "invalid_request");
    assert_eq!(
        response.error_param().as_deref(),
        Some(param),
        "param for body {body:?}: {}",
        response.body_text()
    );
}

/// A body with the required fields minus `field`.
fn body_without(field: &str) -> String {
    let body = body_with("x", "0", "ord-missing");
    let start = body.find(&format!("\"{field}\":")).expect("known field");
    let end = start + body[start..].find(',').expect("not the last field") + 1;
    let without = format!("{}{}", &body[..start], &body[end..]);
    without.replace(",\"x\":0", "")
}

#[test]
fn create_answers_201_with_every_field_of_the_payment_object() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = r#"{"order_id":"ord-20261122-0001","amount":1999,"currency":"CNY","payment_method":"tok_visa_secretish","description":"2 coffees","metadata":{"zeta":"1","cart":"c-17","alpha":"x y"}}"#;
    let before_ms = unix_now_ms();
    let response = create(&mut client, body);
    let after_ms = unix_now_ms();
    let payment = assert_created(&response);
    assert_eq!(payment.merchant_id, MERCHANT_A);
    assert_eq!(payment.order_id, "ord-20261122-0001");
    assert_eq!(payment.amount, 1999);
    assert_eq!(payment.currency, "CNY");
    assert_eq!(payment.status, "succeeded");
    assert_eq!(payment.decline_code, None);
    assert_eq!(payment.description.as_deref(), Some("2 coffees"));
    let metadata: Vec<(&str, &str)> = payment
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        metadata,
        [("zeta", "1"), ("cart", "c-17"), ("alpha", "x y")],
        "metadata not kept in the order sent"
    );
    for stamp in [payment.created_at, payment.updated_at] {
        assert!(
            (before_ms..=after_ms).contains(&stamp),
            "{stamp} not within the request ({before_ms}..={after_ms})"
        );
    }
    // The token is not echoed, under any name.
    assert!(
        !response.body_text().contains("tok_visa_secretish"),
        "{}",
        response.body_text()
    );
    assert!(!response.body_text().contains("payment_method"));
}

#[test]
fn absent_description_and_metadata_are_null_and_empty() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let response = create(&mut client, &create_body("ord-bare", 1, "USD", "tok_visa"));
    let payment = assert_created(&response);
    assert_eq!(payment.description, None);
    assert!(payment.metadata.is_empty());
    let text = response.body_text();
    assert!(text.contains("\"description\":null"), "{text}");
    assert!(text.contains("\"metadata\":{}"), "{text}");
    assert_eq!((payment.amount, payment.currency.as_str()), (1, "USD"));
}

#[test]
fn text_fields_round_trip_with_escapes_and_unicode() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = r#"{"order_id":"ord-text","amount":5,"currency":"CNY","payment_method":"tok_visa","description":"\u2615 \"two\" coffees\\\n\t\u0001 caf\u00e9","metadata":{"k\"ey":"line1\nline2","\u00fcber":"\ud83d\ude00","slash":"a\/b"}}"#;
    let payment = assert_created(&create(&mut client, body));
    assert_eq!(
        payment.description.as_deref(),
        Some("\u{2615} \"two\" coffees\\\n\t\u{1} caf\u{e9}")
    );
    let metadata: Vec<(&str, &str)> = payment
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        metadata,
        [
            ("k\"ey", "line1\nline2"),
            ("\u{fc}ber", "\u{1f600}"),
            ("slash", "a/b")
        ]
    );
    assert_eq!(get(&mut client, "/v1/orders/ord-text").payment(), payment);
}

#[test]
fn replay_answers_200_with_the_same_payment_and_idempotent_replayed() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-replay", 500, "EUR", "tok_visa");
    let first = assert_created(&create(&mut client, &body));
    // A replay is signed anew (a client retrying later), on another connection too.
    for mut replayer in [server.connect(), server.connect()] {
        let replay = create(&mut replayer, &body);
        assert_status(&replay, STATUS_OK);
        assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
        assert_eq!(replay.payment(), first);
    }
    // Only amount, currency and payment_method decide: other fields may differ.
    let with_description = body.replace('}', r#","description":"again","metadata":{"k":"v"}}"#);
    let replay = create(&mut client, &with_description);
    assert_status(&replay, STATUS_OK);
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(replay.payment(), first, "a replay changed the payment");
    // A read is not a replay.
    let read = get(&mut client, &format!("/v1/payments/{}", first.id));
    assert_status(&read, STATUS_OK);
    assert_eq!(read.header("Idempotent-Replayed"), None);
}

#[test]
fn different_terms_for_the_same_order_are_a_conflict() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let first = assert_created(&create(
        &mut client,
        &create_body("ord-c", 700, "CNY", "tok_visa"),
    ));
    for body in [
        create_body("ord-c", 701, "CNY", "tok_visa"),
        create_body("ord-c", 700, "USD", "tok_visa"),
        create_body("ord-c", 700, "CNY", "tok_other"),
    ] {
        let response = create(&mut client, &body);
        assert_error(&response, STATUS_CONFLICT, "order_conflict");
    }
    // The conflicts changed nothing.
    let read = get(&mut client, "/v1/orders/ord-c");
    assert_status(&read, STATUS_OK);
    assert_eq!(read.payment(), first);
}

#[test]
fn order_ids_are_unique_per_merchant_not_across_merchants() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-shared", 100, "CNY", "tok_visa");
    let of_a = assert_created(&create(&mut client, &body));
    let signed_by_b =
        Signed::new("POST", "/v1/payments", body.as_bytes()).by(MERCHANT_B, MERCHANT_B_SECRET);
    let of_b = assert_created(&client.request(&signed_by_b.bytes()));
    assert_eq!(of_b.merchant_id, MERCHANT_B);
    assert_ne!(of_a.id, of_b.id);
    let read_by_b = client.request(
        &Signed::new("GET", "/v1/orders/ord-shared", b"")
            .by(MERCHANT_B, MERCHANT_B_SECRET)
            .bytes(),
    );
    assert_status(&read_by_b, STATUS_OK);
    assert_eq!(read_by_b.payment(), of_b);
}

#[test]
fn bodies_that_are_not_a_json_object_are_invalid_json() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    for body in [
        "",
        "not json",
        "{",
        "{\"order_id\":",
        "[1,2]",
        "\"a string\"",
        "123",
        "null",
        "true",
        "{\"order_id\":\"o\"} trailing",
        "{'order_id':'o'}",
    ] {
        let response = create(&mut client, body);
        assert_error(&response, STATUS_BAD_REQUEST, "invalid_json");
        assert!(!response.closes(), "invalid JSON closed the connection");
    }
}

#[test]
fn missing_unknown_and_mistyped_fields_name_the_param() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    for field in ["order_id", "amount", "currency", "payment_method"] {
        let body = body_without(field);
        assert_invalid_request(&create(&mut client, &body), field, &body);
    }
    let cases = [
        ("unknown_field", "1", "unknown_field"),
        ("Amount", "1999", "Amount"),
        (
            "payment_method_token",
            "\"tok_visa\"",
            "payment_method_token",
        ),
        ("order_id", "5", "order_id"),
        ("order_id", "null", "order_id"),
        ("amount", "\"1999\"", "amount"),
        ("amount", "true", "amount"),
        ("amount", "null", "amount"),
        ("amount", "[1999]", "amount"),
        ("currency", "1", "currency"),
        ("currency", "[\"CNY\"]", "currency"),
        ("payment_method", "true", "payment_method"),
        ("payment_method", "{}", "payment_method"),
        ("description", "5", "description"),
        ("description", "[\"x\"]", "description"),
        ("metadata", "[]", "metadata"),
        ("metadata", "\"cart\"", "metadata"),
        ("metadata", "{\"k\":1}", "metadata"),
        ("metadata", "{\"k\":null}", "metadata"),
        ("metadata", "{\"k\":{\"nested\":\"v\"}}", "metadata"),
    ];
    for (field, value, param) in cases {
        let body = body_with(field, value, "ord-typed");
        assert_invalid_request(&create(&mut client, &body), param, &body);
    }
    // Nothing above was stored.
    assert_error(
        &get(&mut client, "/v1/orders/ord-typed"),
        STATUS_NOT_FOUND,
        "payment_not_found",
    );
}

#[test]
fn amounts_must_be_integers_from_1_to_100000000000() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    for value in [
        "1.5",
        "1e3",
        "1E3",
        "1999.0",
        "18446744073709551616",
        "1000000000000000000000000000000",
        "0",
        "-1",
        "-0",
        "100000000001",
    ] {
        let body = body_with("amount", value, "ord-amount");
        assert_invalid_request(&create(&mut client, &body), "amount", &body);
    }
    for (index, amount) in [1u64, 100_000_000_000].into_iter().enumerate() {
        let body = body_with(
            "amount",
            &amount.to_string(),
            &format!("ord-amount-{index}"),
        );
        assert_eq!(assert_created(&create(&mut client, &body)).amount, amount);
    }
}

#[test]
fn order_id_is_1_to_64_chars_of_the_allowed_set() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let too_long = "o".repeat(65);
    for value in [
        "", &too_long, "a b", "a/b", "a#b", "a+b", "a,b", "a?b", "ordé", "a\\\"b",
    ] {
        let body = body_with("order_id", &format!("\"{value}\""), "unused");
        assert_invalid_request(&create(&mut client, &body), "order_id", &body);
    }
    let longest = "L".repeat(64);
    for value in [longest.as_str(), "Az09._:-", "x"] {
        let body = body_with("order_id", &format!("\"{value}\""), "unused");
        let payment = assert_created(&create(&mut client, &body));
        assert_eq!(payment.order_id, value);
        let read = get(&mut client, &format!("/v1/orders/{value}"));
        assert_status(&read, STATUS_OK);
        assert_eq!(read.payment(), payment);
    }
}

#[test]
fn currency_payment_method_and_description_limits() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let method_too_long = format!("\"{}\"", "m".repeat(129));
    let description_too_long = format!("\"{}\"", "d".repeat(257));
    let rejected = [
        ("currency", "\"cny\"", "currency"),
        ("currency", "\"CN\"", "currency"),
        ("currency", "\"CNYY\"", "currency"),
        ("currency", "\"C1Y\"", "currency"),
        ("currency", "\"\"", "currency"),
        ("currency", "\"ÇNY\"", "currency"),
        ("payment_method", "\"\"", "payment_method"),
        ("payment_method", method_too_long.as_str(), "payment_method"),
        ("description", description_too_long.as_str(), "description"),
    ];
    for (index, (field, value, param)) in rejected.into_iter().enumerate() {
        let body = body_with(field, value, &format!("ord-limit-{index}"));
        assert_invalid_request(&create(&mut client, &body), param, &body);
    }
    let method_longest = format!("\"{}\"", "m".repeat(128));
    let description_longest = format!("\"{}\"", "d".repeat(256));
    // 256 characters of two bytes each: the limit counts characters.
    let description_wide = format!("\"{}\"", "é".repeat(256));
    let accepted = [
        ("currency", "\"USD\""),
        ("payment_method", method_longest.as_str()),
        ("description", description_longest.as_str()),
        ("description", description_wide.as_str()),
        ("description", "\"\""),
    ];
    for (index, (field, value)) in accepted.into_iter().enumerate() {
        let body = body_with(field, value, &format!("ord-fits-{index}"));
        assert_created(&create(&mut client, &body));
    }
}

#[test]
fn metadata_has_at_most_20_keys_of_40_chars_and_values_of_500() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let object = |count: usize, key_length: usize, value_length: usize| {
        let members: Vec<String> = (0..count)
            .map(|index| {
                let key = format!("{index:02}{}", "k".repeat(key_length - 2));
                format!("\"{key}\":\"{}\"", "v".repeat(value_length))
            })
            .collect();
        format!("{{{}}}", members.join(","))
    };
    for value in [object(21, 5, 1), object(1, 41, 1), object(1, 5, 501)] {
        let body = body_with("metadata", &value, "ord-meta");
        assert_invalid_request(&create(&mut client, &body), "metadata", &body);
    }
    let fits = [object(20, 40, 1), object(1, 40, 500), object(3, 3, 0)];
    for (index, value) in fits.into_iter().enumerate() {
        let body = body_with("metadata", &value, &format!("ord-meta-{index}"));
        let payment = assert_created(&create(&mut client, &body));
        let sent: Vec<String> = payment.metadata.iter().map(|(k, _)| k.clone()).collect();
        let mut sorted = sent.clone();
        sorted.sort();
        assert_eq!(sent, sorted, "keys were sent in this order");
        assert_eq!(payment.metadata.len(), value.matches("\":\"").count());
    }
}

/// Card numbers in the shapes API.md section 2 names: 12-19 digits, spaces or dashes.
const CARD_NUMBERS: [&str; 6] = [
    "4242424242424242",
    "4242 4242 4242 4242",
    "4242-4242-4242-4242",
    "378282246310005",
    "424242424242",
    "4000056655665556123",
];

#[test]
fn raw_card_numbers_are_rejected_and_never_echoed_logged_or_stored() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    for (index, card) in CARD_NUMBERS.iter().enumerate() {
        let body = create_body("ord-card", 1999, "CNY", card);
        let signed = Signed::new("POST", "/v1/payments", body.as_bytes())
            .header(format!("X-Request-Id: card-probe-{index}"));
        let response = client.request(&signed.bytes());
        assert_error(&response, STATUS_BAD_REQUEST, "raw_card_data_rejected");
        assert_card_absent(&format!("{response:?} {}", response.body_text()), card);
    }
    // Not card-like: too few or too many digits, or not only digits.
    for (index, token) in ["98765432109", "98765432109876543210", "tok_4242"]
        .iter()
        .enumerate()
    {
        let body = create_body(&format!("ord-token-{index}"), 1, "CNY", token);
        assert_created(&create(&mut client, &body));
    }
    // Nothing was stored for the order: it is free for a real token.
    assert_error(
        &get(&mut client, "/v1/orders/ord-card"),
        STATUS_NOT_FOUND,
        "payment_not_found",
    );
    assert_created(&create(
        &mut client,
        &create_body("ord-card", 1999, "CNY", "tok_visa"),
    ));
    wait_for_access_log(&server, "card-probe-5");
    for (path, bytes) in files_under(&server.log_dir())
        .into_iter()
        .chain(files_under(&server.data_dir()))
    {
        for card in CARD_NUMBERS {
            let digits: String = card.chars().filter(char::is_ascii_digit).collect();
            assert!(
                !common::contains_bytes(&bytes, card.as_bytes())
                    && !common::contains_bytes(&bytes, digits.as_bytes()),
                "card number {card:?} in {}",
                path.display()
            );
        }
    }
    for card in CARD_NUMBERS {
        assert_card_absent(&server.stderr.text(), card);
        assert_card_absent(&server.stdout.text(), card);
    }
}

fn assert_card_absent(text: &str, card: &str) {
    let digits: String = card.chars().filter(char::is_ascii_digit).collect();
    assert!(
        !text.contains(card) && !text.contains(&digits),
        "card number {card:?} appears in {text:?}"
    );
}

fn wait_for_access_log(server: &Server, request_id: &str) {
    let written = common::eventually(Duration::from_millis(ACCESS_LOG_FLUSH_WAIT_MS), || {
        files_under(&server.log_dir())
            .iter()
            .any(|(_, bytes)| common::contains_bytes(bytes, request_id.as_bytes()))
    });
    assert!(
        written,
        "access log has no line with {request_id} after {ACCESS_LOG_FLUSH_WAIT_MS} ms"
    );
}

#[test]
fn secrets_never_appear_in_logs_metrics_or_data() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let secrets = [
        MERCHANT_A_SECRETS[0],
        MERCHANT_A_SECRETS[1],
        MERCHANT_B_SECRET,
    ];
    for (index, secret) in MERCHANT_A_SECRETS.iter().enumerate() {
        let body = create_body(&format!("ord-quiet-{index}"), 1, "CNY", "tok_visa");
        let signed = Signed::new("POST", "/v1/payments", body.as_bytes())
            .by(MERCHANT_A, secret)
            .header(format!("X-Request-Id: quiet-{index}"));
        let response = client.request(&signed.bytes());
        assert_created(&response);
        assert_eq!(response.request_id(), format!("quiet-{index}"));
    }
    let body = create_body("ord-quiet-bad", 1, "CNY", "tok_visa");
    let wrong = Signed::new("POST", "/v1/payments", body.as_bytes())
        .by(MERCHANT_B, MERCHANT_A_SECRETS[0])
        .header("X-Request-Id: quiet-last");
    let response = client.request(&wrong.bytes());
    assert_error(&response, STATUS_UNAUTHORIZED, "invalid_signature");
    assert_eq!(response.request_id(), "quiet-last");
    wait_for_access_log(&server, "quiet-last");
    let metrics_page = client.get("/metrics", "quiet-metrics").body_text();
    let mut places = vec![
        ("stderr".to_string(), server.stderr.text().into_bytes()),
        ("stdout".to_string(), server.stdout.text().into_bytes()),
        ("/metrics".to_string(), metrics_page.into_bytes()),
        ("401 body".to_string(), response.body.clone()),
    ];
    for (path, bytes) in files_under(&server.log_dir())
        .into_iter()
        .chain(files_under(&server.data_dir()))
    {
        places.push((path.display().to_string(), bytes));
    }
    for (place, bytes) in places {
        for secret in secrets {
            assert!(
                !common::contains_bytes(&bytes, secret.as_bytes()),
                "a merchant secret appears in {place}"
            );
        }
    }
}

#[test]
fn missing_or_malformed_auth_headers_are_authentication_required() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-auth", 1, "CNY", "tok_visa");
    let signed = Signed::new("POST", "/v1/payments", body.as_bytes());
    let [merchant, timestamp, signature] = signed.auth_headers();
    let hex = signature
        .trim_start_matches("X-Payd-Signature: v1=")
        .to_string();
    let malformed_signatures = [
        format!("X-Payd-Signature: {hex}"),
        format!("X-Payd-Signature: v2={hex}"),
        format!("X-Payd-Signature: v1={}", &hex[..63]),
        format!("X-Payd-Signature: v1={hex}0"),
        format!("X-Payd-Signature: v1={}", "g".repeat(64)),
        "X-Payd-Signature: v1=".to_string(),
    ];
    let malformed_timestamps = [
        "X-Payd-Timestamp: soon".to_string(),
        "X-Payd-Timestamp: ".to_string(),
        format!("X-Payd-Timestamp: {}.5", signed.timestamp),
        format!("X-Payd-Timestamp: 0x{:x}", signed.timestamp),
    ];
    let mut header_sets = vec![
        vec![timestamp.clone(), signature.clone()],
        vec![merchant.clone(), signature.clone()],
        vec![merchant.clone(), timestamp.clone()],
        vec![],
    ];
    for bad in malformed_signatures {
        header_sets.push(vec![merchant.clone(), timestamp.clone(), bad]);
    }
    for bad in malformed_timestamps {
        header_sets.push(vec![merchant.clone(), bad, signature.clone()]);
    }
    for headers in header_sets {
        let request = request_bytes("POST", "/v1/payments", &headers, body.as_bytes(), true);
        let response = client.request(&request);
        assert_error(&response, STATUS_UNAUTHORIZED, "authentication_required");
        assert!(!response.closes(), "401 closed the connection: {headers:?}");
    }
    // Reads are signed too.
    let unsigned = request_bytes("GET", "/v1/orders/ord-auth", &[], b"", false);
    assert_error(
        &client.request(&unsigned),
        STATUS_UNAUTHORIZED,
        "authentication_required",
    );
    // The well-formed original still works: nothing above was a create.
    assert_created(&client.request(&signed.bytes()));
}

#[test]
fn timestamps_outside_the_tolerance_are_rejected() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-time", 1, "CNY", "tok_visa");
    let now = unix_now_secs();
    let outside = TIMESTAMP_TOLERANCE_SECS + CLOCK_SLACK_SECS;
    for timestamp in [now - outside, now + outside, 0] {
        let mut signed = Signed::new("POST", "/v1/payments", body.as_bytes());
        signed.timestamp = timestamp;
        let response = client.request(&signed.bytes());
        assert_error(&response, STATUS_UNAUTHORIZED, "timestamp_out_of_range");
    }
    let inside = TIMESTAMP_TOLERANCE_SECS - CLOCK_SLACK_SECS;
    for (index, timestamp) in [now - inside, now + inside].into_iter().enumerate() {
        let body = create_body(&format!("ord-time-{index}"), 1, "CNY", "tok_visa");
        let mut signed = Signed::new("POST", "/v1/payments", body.as_bytes());
        signed.timestamp = timestamp;
        assert_created(&client.request(&signed.bytes()));
    }
}

#[test]
fn a_bad_signature_and_an_unknown_merchant_get_the_same_answer() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-sig", 1, "CNY", "tok_visa");
    let tampered = body.replace("\"amount\":1,", "\"amount\":9,");
    let post = |merchant, secret| {
        Signed::new("POST", "/v1/payments", body.as_bytes())
            .by(merchant, secret)
            .bytes()
    };
    let mut requests = vec![
        post(MERCHANT_A, "wrong-secret"),
        post("m_unknown", MERCHANT_A_SECRETS[0]),
        post("m_unknown", "wrong-secret"),
        post(MERCHANT_A, MERCHANT_B_SECRET),
        post(MERCHANT_B, MERCHANT_A_SECRETS[0]),
        post(&MERCHANT_A.to_uppercase(), MERCHANT_A_SECRETS[0]),
    ];
    // Signed over one thing, sent with another: body, target, method.
    let auth = Signed::new("POST", "/v1/payments", body.as_bytes()).auth_headers();
    requests.push(request_bytes(
        "POST",
        "/v1/payments",
        &auth,
        tampered.as_bytes(),
        true,
    ));
    let auth = Signed::new("POST", "/v1/payments?x=1", body.as_bytes()).auth_headers();
    requests.push(request_bytes(
        "POST",
        "/v1/payments",
        &auth,
        body.as_bytes(),
        true,
    ));
    let auth = Signed::new("PUT", "/v1/payments", body.as_bytes()).auth_headers();
    requests.push(request_bytes(
        "POST",
        "/v1/payments",
        &auth,
        body.as_bytes(),
        true,
    ));
    let mut answers = Vec::new();
    for request in &requests {
        let response = client.request(request);
        assert_error(&response, STATUS_UNAUTHORIZED, "invalid_signature");
        let error = common::parse_error_body(&response.body).unwrap();
        answers.push((error.message, error.param, response.body.len()));
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "answers differ, revealing which merchants exist: {answers:#?}"
    );
    assert_error(
        &get(&mut client, "/v1/orders/ord-sig"),
        STATUS_NOT_FOUND,
        "payment_not_found",
    );
}

#[test]
fn both_rotation_secrets_and_uppercase_hex_are_accepted() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    for (index, secret) in MERCHANT_A_SECRETS.iter().enumerate() {
        let body = create_body(&format!("ord-rot-{index}"), 1, "CNY", "tok_visa");
        let signed = Signed::new("POST", "/v1/payments", body.as_bytes()).by(MERCHANT_A, secret);
        assert_created(&client.request(&signed.bytes()));
        let read = Signed::new("GET", "/v1/orders/ord-rot-0", b"").by(MERCHANT_A, secret);
        assert_status(&client.request(&read.bytes()), STATUS_OK);
    }
    let body = create_body("ord-upper", 1, "CNY", "tok_visa");
    let signed = Signed::new("POST", "/v1/payments", body.as_bytes());
    let mut headers = signed.auth_headers().to_vec();
    let hex = headers[2]
        .trim_start_matches("X-Payd-Signature: v1=")
        .to_string();
    assert!(hex.bytes().any(|b| b.is_ascii_lowercase()), "{hex}");
    headers[2] = format!("X-Payd-Signature: v1={}", hex.to_uppercase());
    let request = request_bytes("POST", "/v1/payments", &headers, body.as_bytes(), true);
    assert_created(&client.request(&request));
}

#[test]
fn authentication_comes_before_the_content_type_check() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-ct", 1, "CNY", "tok_visa");
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/xml",
    ] {
        let mut signed = Signed::new("POST", "/v1/payments", body.as_bytes())
            .header(format!("Content-Type: {content_type}"));
        signed.content_type_json = false;
        let response = client.request(&signed.bytes());
        assert_error(
            &response,
            STATUS_UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
        let unsigned = signed.clone().by(MERCHANT_A, "wrong-secret");
        let response = client.request(&unsigned.bytes());
        assert_error(&response, STATUS_UNAUTHORIZED, "invalid_signature");
    }
    assert_error(
        &get(&mut client, "/v1/orders/ord-ct"),
        STATUS_NOT_FOUND,
        "payment_not_found",
    );
    // No Content-Type is JSON; parameters are allowed.
    let mut bare = Signed::new("POST", "/v1/payments", body.as_bytes());
    bare.content_type_json = false;
    assert_created(&client.request(&bare.bytes()));
    let body = create_body("ord-ct-2", 1, "CNY", "tok_visa");
    let mut with_charset = Signed::new("POST", "/v1/payments", body.as_bytes())
        .header("Content-Type: application/json; charset=utf-8");
    with_charset.content_type_json = false;
    assert_created(&client.request(&with_charset.bytes()));
}

#[test]
fn reads_by_id_and_by_order_give_the_payment_and_head_gives_its_head() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = r#"{"order_id":"ord:read.1","amount":42,"currency":"JPY","payment_method":"tok_decline","metadata":{"b":"2","a":"1"}}"#;
    let created = assert_created(&create(&mut client, body));
    let by_id = get(&mut client, &format!("/v1/payments/{}", created.id));
    assert_status(&by_id, STATUS_OK);
    assert_eq!(by_id.payment(), created);
    let by_order = get(&mut client, "/v1/orders/ord:read.1");
    assert_status(&by_order, STATUS_OK);
    assert_eq!(by_order.payment(), created);
    // The query is part of the signed target.
    let with_query = format!("/v1/payments/{}?expand=none", created.id);
    assert_eq!(get(&mut client, &with_query).payment(), created);
    let auth = Signed::new("GET", &format!("/v1/payments/{}", created.id), b"").auth_headers();
    let request = request_bytes("GET", &with_query, &auth, b"", false);
    assert_error(
        &client.request(&request),
        STATUS_UNAUTHORIZED,
        "invalid_signature",
    );
}

#[test]
fn head_reads_are_signed_as_head_and_give_the_head_of_the_get() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let body = create_body("ord-head", 42, "CNY", "tok_visa");
    let created = assert_created(&create(&mut client, &body));
    let by_id = get(&mut client, &format!("/v1/payments/{}", created.id));
    // API.md section 1: METHOD in the signed message is the request's method, HEAD here.
    for target in [
        format!("/v1/payments/{}", created.id),
        "/v1/orders/ord-head".into(),
    ] {
        client.send(&Signed::new("HEAD", &target, b"").bytes());
        let head = client.read_head_response();
        assert_status(&head, STATUS_OK);
        assert_eq!(
            head.header("Content-Length"),
            Some(by_id.body.len().to_string().as_str()),
            "HEAD {target}"
        );
    }
    // The connection is still in step after the HEADs (no body was sent).
    assert_eq!(get(&mut client, "/v1/orders/ord-head").payment(), created);
}

#[test]
fn unknown_malformed_and_foreign_payments_are_not_found() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let created = assert_created(&create(
        &mut client,
        &create_body("ord-mine", 1, "CNY", "tok_visa"),
    ));
    let mut unknown_id = created.id.clone();
    let last = unknown_id.pop().unwrap();
    unknown_id.push(if last == '1' { '2' } else { '1' });
    let mut targets = vec![
        format!("/v1/payments/{unknown_id}"),
        "/v1/payments/nope".to_string(),
        "/v1/payments/pay_".to_string(),
        format!("/v1/payments/pay_{}", "z".repeat(36)),
        format!("/v1/payments/{}", "p".repeat(300)),
        format!("/v1/payments/{}%00", created.id),
        "/v1/orders/no-such-order".to_string(),
        "/v1/orders/bad*order".to_string(),
        format!("/v1/orders/{}", "o".repeat(65)),
    ];
    let first_message = {
        let response = get(&mut client, &targets[0]);
        assert_error(&response, STATUS_NOT_FOUND, "payment_not_found");
        common::parse_error_body(&response.body).unwrap().message
    };
    targets.remove(0);
    for target in &targets {
        assert_error(
            &get(&mut client, target),
            STATUS_NOT_FOUND,
            "payment_not_found",
        );
    }
    // Another merchant's payment is "not found" too, with the same answer.
    for target in [
        format!("/v1/payments/{}", created.id),
        "/v1/orders/ord-mine".into(),
    ] {
        let request = Signed::new("GET", &target, b"").by(MERCHANT_B, MERCHANT_B_SECRET);
        let response = client.request(&request.bytes());
        assert_error(&response, STATUS_NOT_FOUND, "payment_not_found");
        let error = common::parse_error_body(&response.body).unwrap();
        assert_eq!(error.message, first_message, "{target}");
        assert!(
            !response.body_text().contains(&created.id),
            "{}",
            response.body_text()
        );
    }
}

#[test]
fn wrong_methods_on_payment_routes_are_405_with_allow() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let created = assert_created(&create(
        &mut client,
        &create_body("ord-405", 1, "CNY", "tok_visa"),
    ));
    let by_id = format!("/v1/payments/{}", created.id);
    let cases = [
        ("GET", "/v1/payments", "POST"),
        ("HEAD", "/v1/payments", "POST"),
        ("PUT", "/v1/payments", "POST"),
        ("DELETE", "/v1/payments", "POST"),
        ("PATCH", "/v1/payments", "POST"),
        ("POST", by_id.as_str(), "GET, HEAD"),
        ("DELETE", by_id.as_str(), "GET, HEAD"),
        ("PUT", "/v1/orders/ord-405", "GET, HEAD"),
        ("POST", "/v1/orders/ord-405", "GET, HEAD"),
    ];
    for (method, target, allow) in cases {
        let mut signed = Signed::new(method, target, b"");
        signed.content_type_json = false;
        let mut request = signed.bytes();
        if method != "POST" && method != "GET" && method != "HEAD" {
            // Say the body is empty, so the server need not guess.
            let head_end = request.len() - 2;
            request.splice(head_end..head_end, *b"Content-Length: 0\r\n");
        }
        client.send(&request);
        let response = if method == "HEAD" {
            client.read_head_response()
        } else {
            client.read_response()
        };
        assert_eq!(
            response.status_line, STATUS_METHOD_NOT_ALLOWED,
            "{method} {target}"
        );
        if method != "HEAD" {
            assert_error(&response, STATUS_METHOD_NOT_ALLOWED, "method_not_allowed");
        }
        assert_eq!(response.header("Allow"), Some(allow), "{method} {target}");
    }
    // The payment is untouched.
    assert_eq!(get(&mut client, &by_id).payment(), created);
}

#[test]
fn pipelined_creates_are_answered_in_order() {
    let server = start(vec![0], "");
    let mut client = server.connect();
    let count = 5;
    let mut pipeline = Vec::new();
    for index in 0..count {
        let body = create_body(&format!("ord-pipe-{index}"), 10 + index, "CNY", "tok_visa");
        pipeline.extend(Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
    }
    client.send(&pipeline);
    for index in 0..count {
        let payment = assert_created(&client.read_response());
        assert_eq!(payment.order_id, format!("ord-pipe-{index}"));
        assert_eq!(payment.amount, 10 + index);
    }
}

#[test]
fn simulated_acquirer_follows_the_token_table() {
    // Two attempts keep tok_error quick and are enough for tok_flaky.
    let server = start(vec![0], "[acquirer]\nmax_attempts = 2\n");
    let mut client = server.connect();
    let table = [
        ("tok_decline", "declined", Some("card_declined")),
        (
            "tok_insufficient_funds",
            "declined",
            Some("insufficient_funds"),
        ),
        ("tok_flaky", "succeeded", None),
        ("tok_error", "failed", Some("acquirer_unavailable")),
        ("tok_visa", "succeeded", None),
        ("tok_anything_else", "succeeded", None),
    ];
    for (token, status, decline_code) in table {
        let order_id = format!("ord-{token}");
        let payment = assert_created(&create(
            &mut client,
            &create_body(&order_id, 1, "CNY", token),
        ));
        assert_eq!(payment.status, status, "{token}");
        assert_eq!(payment.decline_code.as_deref(), decline_code, "{token}");
        let read = get(&mut client, &format!("/v1/orders/{order_id}"));
        assert_eq!(read.payment(), payment, "{token}");
        // A replay of a declined or failed payment does not charge again either.
        let replay = create(&mut client, &create_body(&order_id, 1, "CNY", token));
        assert_status(&replay, STATUS_OK);
        assert_eq!(replay.payment(), payment, "{token}");
    }
}

#[test]
fn a_slow_acquirer_gives_202_pending_then_the_payment_succeeds() {
    let server = start(vec![0], "[acquirer]\nresponse_timeout_ms = 300\n");
    let mut client = server.connect();
    let body = create_body("ord-slow", 1999, "CNY", "tok_slow");
    let started = Instant::now();
    let response = create(&mut client, &body);
    assert!(
        started.elapsed() < Duration::from_millis(SLOW_TOKEN_LATENCY_MS),
        "202 came after {:?}",
        started.elapsed()
    );
    assert_status(&response, STATUS_ACCEPTED);
    assert_eq!(response.header("Idempotent-Replayed"), None);
    let pending = response.payment();
    assert_eq!(pending.status, "pending");
    assert_eq!(pending.decline_code, None);
    let replay = create(&mut client, &body);
    assert_status(&replay, STATUS_OK);
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(replay.payment().id, pending.id);
    let target = format!("/v1/payments/{}", pending.id);
    let mut latest = pending.clone();
    let finalised = common::eventually(Duration::from_millis(FINALISE_WAIT_MS), || {
        latest = get(&mut client, &target).payment();
        latest.status != "pending"
    });
    assert!(
        finalised,
        "still pending after {FINALISE_WAIT_MS} ms: {latest:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(SLOW_TOKEN_LATENCY_MS - 100),
        "tok_slow answered after only {:?}",
        started.elapsed()
    );
    assert_eq!(latest.status, "succeeded");
    assert_eq!(latest.decline_code, None);
    assert_eq!(latest.created_at, pending.created_at);
    assert!(latest.updated_at > pending.updated_at, "{latest:?}");
    let expected = PaymentJson {
        status: latest.status.clone(),
        updated_at: latest.updated_at,
        ..pending.clone()
    };
    assert_eq!(
        latest, expected,
        "finalising changed more than status and time"
    );
    assert_eq!(get(&mut client, "/v1/orders/ord-slow").payment(), latest);
    let replay = create(&mut client, &body);
    assert_eq!(replay.payment(), latest);
}

#[test]
fn a_create_while_the_first_is_running_is_request_in_progress() {
    let server = start(vec![0], "[acquirer]\nresponse_timeout_ms = 8000\n");
    let body = create_body("ord-busy", 1999, "CNY", "tok_slow");
    let mut first = server.connect();
    first.set_read_timeout(Duration::from_millis(SLOW_READ_TIMEOUT_MS));
    let started = Instant::now();
    first.send(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
    // Wait until the first create is known (durable and pending, before the acquirer
    // call), rather than sleeping and hoping it got there first.
    let mut second = server.connect();
    let mut read = get(&mut second, "/v1/orders/ord-busy");
    common::eventually(Duration::from_millis(IN_PROGRESS_WAIT_MS), || {
        read = get(&mut second, "/v1/orders/ord-busy");
        read.status == 200
    });
    assert_status(&read, STATUS_OK);
    assert_eq!(read.payment().status, "pending");
    for _ in 0..2 {
        let busy = create(&mut second, &body);
        assert_error(&busy, STATUS_CONFLICT, "request_in_progress");
        assert_eq!(busy.header("Retry-After"), Some("1"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(SLOW_TOKEN_LATENCY_MS),
        "too slow to see the first create in progress: {:?}",
        started.elapsed()
    );
    let created = assert_created(&first.read_response());
    assert_eq!(created.status, "succeeded");
    assert_eq!(read.payment().id, created.id);
    let replay = create(&mut second, &body);
    assert_status(&replay, STATUS_OK);
    assert_eq!(replay.payment(), created);
}

#[test]
fn twenty_identical_creates_at_once_make_one_payment() {
    // A little acquirer latency so that the creates overlap the first one's answer.
    let server = start(vec![0, 1], "[acquirer]\nlatency_ms = 100\n");
    let body = create_body("ord-race", 2500, "CNY", "tok_visa");
    let barrier = Arc::new(Barrier::new(IDENTICAL_CREATES_COUNT));
    let handles: Vec<_> = (0..IDENTICAL_CREATES_COUNT)
        .map(|_| {
            let mut client = server.connect();
            let request = Signed::new("POST", "/v1/payments", body.as_bytes()).bytes();
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                client.request(&request)
            })
        })
        .collect();
    let responses: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let created: Vec<&Response> = responses.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "201s: {created:#?}");
    let payment = created[0].payment();
    for response in &responses {
        match response.status {
            201 => {}
            200 => {
                assert_eq!(response.header("Idempotent-Replayed"), Some("true"));
                assert_eq!(response.payment().id, payment.id);
            }
            _ => assert_error(response, STATUS_CONFLICT, "request_in_progress"),
        }
    }
    for index in 0..IDENTICAL_CREATES_COUNT {
        let mut client = server.connect();
        let target = if index % 2 == 0 {
            "/v1/orders/ord-race".to_string()
        } else {
            format!("/v1/payments/{}", payment.id)
        };
        assert_eq!(get(&mut client, &target).payment(), payment);
        let replay = create(&mut client, &body);
        assert_status(&replay, STATUS_OK);
        assert_eq!(replay.payment(), payment);
    }
}

fn create_many(server: &Server, prefix: &str, count: usize) -> Vec<PaymentJson> {
    (0..count)
        .map(|index| {
            let mut client = server.connect();
            let token = if index % 5 == 4 {
                "tok_decline"
            } else {
                "tok_visa"
            };
            let body = create_body(
                &format!("{prefix}-{index}"),
                100 + index as u64,
                "CNY",
                token,
            );
            assert_created(&create(&mut client, &body))
        })
        .collect()
}

/// Reads every payment by id and by order, each on a new connection.
fn assert_all_readable(server: &Server, payments: &[PaymentJson]) {
    for payment in payments {
        for target in [
            format!("/v1/payments/{}", payment.id),
            format!("/v1/orders/{}", payment.order_id),
        ] {
            let mut client = server.connect();
            let response = get(&mut client, &target);
            assert_status(&response, STATUS_OK);
            assert_eq!(&response.payment(), payment, "{target}");
        }
    }
}

fn assert_unique_ids(payments: &[PaymentJson]) {
    let mut ids: Vec<&str> = payments.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), payments.len(), "payment ids repeat");
}

#[test]
fn payments_created_through_both_cores_are_readable_through_either() {
    let server = start(vec![0, 1], "");
    let payments = create_many(&server, "ord-cores", TWO_CORE_PAYMENTS_COUNT);
    assert_unique_ids(&payments);
    let mut scraper = server.connect();
    let mut metrics = scraper.metrics();
    let expected = (TWO_CORE_PAYMENTS_COUNT + 1) as f64;
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        metrics = scraper.metrics();
        metrics.sum("payd_connections_accepted_total") >= expected
    });
    assert_eq!(metrics.sum("payd_connections_accepted_total"), expected);
    for core in ["0", "1"] {
        let accepted = metrics.value("payd_connections_accepted_total", &[("core", core)]);
        // At most one of them is the scrape's own connection.
        assert!(
            accepted >= 2.0,
            "core {core} accepted {accepted} of {TWO_CORE_PAYMENTS_COUNT} create connections"
        );
    }
    assert_all_readable(&server, &payments);
}

#[test]
fn a_restart_on_the_same_data_dir_keeps_the_payments() {
    let server = start(vec![0, 1], "[acquirer]\nmax_attempts = 2\n");
    let mut payments = create_many(&server, "ord-restart", RESTART_PAYMENTS_COUNT);
    let mut client = server.connect();
    let failed = create_body("ord-restart-failed", 1, "CNY", "tok_error");
    payments.push(assert_created(&create(&mut client, &failed)));
    drop(client);
    let (dir, status) = server.stop_keeping_dir(false);
    assert!(status.success(), "SIGTERM exit status {status:?}");
    // Another core count: the shards of the data directory map onto the cores there are.
    let server = Server::start_in(dir, options(vec![0], "[acquirer]\nmax_attempts = 2\n"));
    assert_all_readable(&server, &payments);
    assert_after_restart(&server, &payments);
}

/// Replays, conflicts and fresh ids after a restart.
fn assert_after_restart(server: &Server, payments: &[PaymentJson]) {
    let mut client = server.connect();
    let first = &payments[0];
    let replay = create(
        &mut client,
        &create_body(&first.order_id, first.amount, &first.currency, "tok_visa"),
    );
    assert_status(&replay, STATUS_OK);
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(&replay.payment(), first);
    let conflict = create(
        &mut client,
        &create_body(
            &first.order_id,
            first.amount + 1,
            &first.currency,
            "tok_visa",
        ),
    );
    assert_error(&conflict, STATUS_CONFLICT, "order_conflict");
    let mut all = payments.to_vec();
    all.extend(create_many(server, "ord-after", 8));
    assert_unique_ids(&all);
}

/// The harness config: `durability = "fsync"`, so acknowledged means on disk.
fn fsync_config(dir: &tempfile::TempDir, cores: Vec<usize>, acquirer_toml: &str) -> String {
    let options = options(cores, acquirer_toml);
    assert_eq!(options.durability, "fsync", "harness default changed");
    options.config_text(dir.path())
}

#[test]
fn a_crash_keeps_every_acknowledged_payment() {
    let dir = tempfile::tempdir().unwrap();
    let config = fsync_config(&dir, vec![0, 1], "");
    let server = Server::start_with_config(dir, &config);
    let payments = create_many(&server, "ord-crash", RESTART_PAYMENTS_COUNT);
    let (dir, _) = server.stop_keeping_dir(true);
    let config = fsync_config(&dir, vec![0, 1], "");
    let server = Server::start_with_config(dir, &config);
    assert_all_readable(&server, &payments);
    assert_after_restart(&server, &payments);
}

#[test]
fn a_payment_pending_at_a_crash_is_finalised_after_the_restart() {
    let acquirer = "[acquirer]\nresponse_timeout_ms = 300\n";
    let dir = tempfile::tempdir().unwrap();
    let config = fsync_config(&dir, vec![0], acquirer);
    let server = Server::start_with_config(dir, &config);
    let mut client = server.connect();
    let body = create_body("ord-crash-pending", 1999, "CNY", "tok_slow");
    let response = create(&mut client, &body);
    assert_status(&response, STATUS_ACCEPTED);
    let pending = response.payment();
    let (dir, _) = server.stop_keeping_dir(true);
    let config = fsync_config(&dir, vec![0], acquirer);
    let server = Server::start_with_config(dir, &config);
    let mut client = server.connect();
    let target = format!("/v1/payments/{}", pending.id);
    let mut latest = pending.clone();
    let finalised = common::eventually(Duration::from_millis(FINALISE_WAIT_MS), || {
        let response = get(&mut client, &target);
        assert_status(&response, STATUS_OK);
        latest = response.payment();
        latest.status != "pending"
    });
    assert!(
        finalised,
        "recovery did not re-ask the acquirer within {FINALISE_WAIT_MS} ms: {latest:?}"
    );
    assert_eq!(latest.status, "succeeded");
    assert_eq!(
        (latest.id.as_str(), latest.created_at),
        (pending.id.as_str(), pending.created_at)
    );
}

#[test]
fn payd_sign_prints_headers_the_server_accepts() {
    let server = start(vec![0], "");
    let body = create_body("ord-signed-by-payd", 1234, "CNY", "tok_visa");
    let timestamp = unix_now_secs().to_string();
    let mut args = vec![
        "sign",
        "--merchant",
        MERCHANT_A,
        "--secret",
        MERCHANT_A_SECRETS[1],
        "--method",
        "POST",
        "--target",
        "/v1/payments",
        "--body",
        &body,
        "--timestamp",
        &timestamp,
    ];
    let output = run_payd(&args, server.dir.path());
    assert!(output.status.success(), "{output:?}");
    let mut ours =
        Signed::new("POST", "/v1/payments", body.as_bytes()).by(MERCHANT_A, MERCHANT_A_SECRETS[1]);
    ours.timestamp = timestamp.parse().unwrap();
    let lines: Vec<String> = output.stdout.lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        ours.auth_headers().to_vec(),
        "payd sign disagrees with API.md"
    );
    let request = request_bytes("POST", "/v1/payments", &lines, body.as_bytes(), true);
    let payment = assert_created(&server.connect().request(&request));
    assert_eq!(payment.amount, 1234);
    let url = format!("http://{}", server.addr);
    args.extend(["--curl", &url]);
    let output = run_payd(&args, server.dir.path());
    assert!(output.status.success(), "{output:?}");
    let command = output.stdout.trim();
    assert!(command.starts_with("curl "), "{command}");
    assert!(command.contains(&format!("{url}/v1/payments")), "{command}");
    assert!(command.contains(&body), "{command}");
    for line in &lines {
        assert!(command.contains(line.as_str()), "{line} not in {command}");
    }
}
