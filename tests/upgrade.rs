//! An upgrade must not lose data: a data directory written by payd before batch frames
//! (log format 1, kept in tests/fixtures/format1-log, made by that payd with six creates
//! on two shards and a clean stop) is served by this payd as it was, idempotency
//! included, and new records go in format 2 behind it.

mod common;

use common::durable::{frame_spans, parse_payment, segment_paths};
use common::{signed_request_as, Server, ServerOptions};
use std::path::Path;

const MERCHANT: &str = "m_upgrade";
/// The fixture's merchant secret: test-only, never real.
const SECRET: &str = "upgrade-fixture-secret-0123456789abcdef";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1-log");

/// What the old payd answered for each create of the fixture: order, id, amount, status.
const BEFORE: [(&str, &str, u64, &str); 6] = [
    ("ord-up-1", "pay_00000000000000000000", 1001, "succeeded"),
    ("ord-up-2", "pay_00000000000000000001", 1002, "succeeded"),
    ("ord-up-3", "pay_00010000000000000000", 1003, "declined"),
    ("ord-up-4", "pay_00000000000000000002", 1004, "succeeded"),
    ("ord-up-5", "pay_00010000000000000001", 1005, "succeeded"),
    ("ord-up-6", "pay_00010000000000000002", 1006, "succeeded"),
];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn config(base: &Path) -> String {
    let options = ServerOptions {
        cores: vec![0, 1],
        extra_toml: format!("\n[[merchants]]\nid = \"{MERCHANT}\"\nsecrets = [\"{SECRET}\"]\n"),
        ..ServerOptions::default()
    };
    options.config_text(base)
}

fn create_body(order_id: &str, amount: u64, token: &str) -> String {
    format!(
        r#"{{"order_id":"{order_id}","amount":{amount},"currency":"CNY","payment_method":"{token}","description":"before the upgrade"}}"#
    )
}

/// Every payment of the fixture reads back as the old payd answered it.
fn assert_fixture_payments(server: &Server, context: &str) {
    let mut client = server.connect();
    for (order_id, id, amount, status) in BEFORE {
        let target = format!("/v1/orders/{order_id}");
        let request = signed_request_as(MERCHANT, SECRET, "GET", &target, "");
        let response = client.request(request.as_bytes());
        assert_eq!(
            response.status_line,
            "HTTP/1.1 200 OK",
            "{context}: {order_id}: {}",
            response.body_text()
        );
        let payment = parse_payment(&response.body).expect("a payment object");
        assert_eq!(
            (payment.id.as_str(), payment.amount, payment.status.as_str()),
            (id, amount, status),
            "{context}: {order_id}"
        );
    }
}

#[test]
fn a_format_1_log_is_served_after_the_upgrade_and_new_records_use_frames() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), &dir.path().join("data"));
    let text = config(dir.path());
    let server = Server::start_with_config(dir, &text);
    assert!(
        server
            .stderr
            .text()
            .contains("in format 1 are read as they are"),
        "the upgrade was not reported: {}",
        server.stderr.text()
    );
    assert_fixture_payments(&server, "after the upgrade");

    // Idempotency survived: the same create again is a replay of the old payment...
    let mut client = server.connect();
    let body = create_body("ord-up-2", 1002, "tok_visa");
    let replay = signed_request_as(MERCHANT, SECRET, "POST", "/v1/payments", &body);
    let response = client.request(replay.as_bytes());
    assert_eq!(
        response.status_line,
        "HTTP/1.1 200 OK",
        "{}",
        response.body_text()
    );
    assert_eq!(response.header("idempotent-replayed"), Some("true"));
    // ...and new payments take ids after the old ones.
    let body = create_body("ord-after-upgrade", 2001, "tok_visa");
    let create = signed_request_as(MERCHANT, SECRET, "POST", "/v1/payments", &body);
    let response = client.request(create.as_bytes());
    assert_eq!(
        response.status_line,
        "HTTP/1.1 201 Created",
        "{}",
        response.body_text()
    );
    let new_payment = parse_payment(&response.body).unwrap();
    assert!(BEFORE.iter().all(|(_, id, _, _)| *id != new_payment.id));

    let (dir, status) = server.stop_keeping_dir(false);
    assert!(status.success());
    // The old segments are untouched; the new records are frames in a new segment.
    let framed = (0..2).any(|shard| {
        let shard_dir = dir.path().join(format!("data/shard-{shard:04}"));
        let segments = segment_paths(&shard_dir);
        let last = std::fs::read(segments.last().unwrap()).unwrap();
        segments.len() == 2 && !frame_spans(&last).is_empty()
    });
    assert!(framed, "no shard wrote its new records as frames");

    let text = config(dir.path());
    let server = Server::start_with_config(dir, &text);
    assert_fixture_payments(&server, "after a restart on the upgraded log");
    let mut client = server.connect();
    let read = signed_request_as(MERCHANT, SECRET, "GET", "/v1/orders/ord-after-upgrade", "");
    let response = client.request(read.as_bytes());
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert_eq!(parse_payment(&response.body).unwrap(), new_payment);
}
