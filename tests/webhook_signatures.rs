//! payd's webhook signatures checked by an independent implementation: the reference
//! Python package `standardwebhooks`, through `tests/webhook_verify.py`. Also a self-test
//! of that script's receiver, so the webhook tests that use it can trust what it reports.
//!
//! Needs `python3` with `standardwebhooks` installed (`pip install standardwebhooks`);
//! without it these tests fail and say so, rather than pass without checking anything.

mod common;

use payd::payment::{EventId, PaymentId};
use payd::payment_object::PaymentSnapshot;
use payd::webhooks::event::write_event_body;
use payd::webhooks::signing::{WebhookHeaders, WebhookKey};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// No answer of the local receiver should take longer.
const READ_TIMEOUT_MS: u64 = 5_000;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn payment() -> PaymentSnapshot {
    PaymentSnapshot {
        id: PaymentId {
            shard: 1,
            sequence: 42,
        },
        merchant_id: "m_demo".to_string(),
        order_id: "ord-\"quoted\"".to_string(),
        amount: 1999,
        currency: payd::payment::Currency(*b"CNY"),
        status: payd::payment::PaymentStatus::Declined,
        decline_code: Some("card_declined".to_string()),
        description: Some("2 coffees ☕\nand a line break".to_string()),
        metadata: vec![("cart".to_string(), "c-17".to_string())],
        created_at_ms: 1_763_800_000_123,
        updated_at_ms: 1_763_800_000_125,
    }
}

fn signed_event() -> (WebhookHeaders, Vec<u8>) {
    let payment = payment();
    let mut body = Vec::new();
    write_event_body(&mut body, payment.updated_at_ms, &payment);
    let key = WebhookKey::parse(SECRET.as_bytes()).unwrap();
    let event = EventId::of_final_status(payment.id);
    (WebhookHeaders::sign(&key, event, now_secs(), &body), body)
}

/// Runs `webhook_verify.py verify` and returns its exit code.
fn verify(secret: &str, headers: &WebhookHeaders, body: &[u8]) -> i32 {
    let mut child = common::webhook_verifier()
        .args(["verify", "--secret", secret, "--id", &headers.id])
        .args(["--timestamp", &headers.timestamp])
        .args(["--signature", &headers.signature])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().unwrap().write_all(body).unwrap();
    child.wait().unwrap().code().expect("exits with a code")
}

#[test]
fn the_reference_implementation_accepts_payd_signatures() {
    let (headers, body) = signed_event();
    assert_eq!(verify(SECRET, &headers, &body), 0);
}

#[test]
fn the_reference_implementation_rejects_a_changed_message() {
    let (headers, body) = signed_event();
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(verify(SECRET, &headers, &tampered), 1);
    let other_secret = format!("whsec_{}", "A".repeat(32));
    assert_eq!(verify(&other_secret, &headers, &body), 1);
    let other_id = WebhookHeaders {
        id: "evt_00010000000000000043".to_string(),
        ..headers.clone()
    };
    assert_eq!(verify(SECRET, &other_id, &body), 1);
}

/// A receiver process, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    lines: BufReader<std::process::ChildStdout>,
}

impl Receiver {
    fn start(extra: &[&str]) -> Receiver {
        let (child, port, lines) = common::start_webhook_receiver(SECRET, extra);
        Receiver { child, port, lines }
    }

    /// POSTs a signed event and returns the status code of the answer.
    fn post(&self, headers: &WebhookHeaders, body: &[u8]) -> u16 {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))
            .unwrap();
        let mut request = String::from("POST /hooks HTTP/1.1\r\nhost: 127.0.0.1\r\n");
        for (name, value) in headers.pairs() {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        ));
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
    }

    fn next_record(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_receiver_verifies_counts_attempts_and_fails_the_first_ones() {
    let mut receiver = Receiver::start(&["--fail-first", "2", "--fail-status", "503"]);
    let (headers, body) = signed_event();
    let expected_start = format!(
        r#"{{"id": "evt_0001000000000000002a", "timestamp": "{}", "verified": true, "type": "payment.declined", "payment_id": "pay_0001000000000000002a", "#,
        headers.timestamp
    );
    for (attempt, status) in [(1, 503), (2, 503), (3, 204)] {
        assert_eq!(receiver.post(&headers, &body), status);
        let record = receiver.next_record();
        assert!(record.starts_with(&expected_start), "{record}");
        assert!(
            record.ends_with(&format!(
                "\"attempt\": {attempt}, \"answered\": {status}}}\n"
            )),
            "{record}"
        );
    }
    let mut forged = body.clone();
    forged[10] ^= 1;
    assert_eq!(receiver.post(&headers, &forged), 204);
    assert!(receiver.next_record().contains(r#""verified": false"#));
}
