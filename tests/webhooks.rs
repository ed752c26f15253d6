//! Webhooks end to end (issue 6, API.md section 5): the real binary delivers events to a
//! real receiver process (`tests/webhook_verify.py serve`) whose every signature is checked
//! by the reference `standardwebhooks` package, never by payd's own code.
//!
//! Needs `python3` with `standardwebhooks` installed; without it these tests fail and
//! say so.

mod common;

use common::{create_body, toml_string, Server, ServerOptions, Signed};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_verify.py");
const MERCHANT: &str = "m_hooks";
const MERCHANT_SECRET: &str = "secret-hooks-1";
/// A delivery to a local receiver with no retry pending takes well under this.
const DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// A receiver process, killed when dropped. Its JSON lines arrive on a channel.
struct Receiver {
    child: Child,
    port: u16,
    records: mpsc::Receiver<String>,
}

impl Receiver {
    fn start(extra: &[&str]) -> Receiver {
        let check = Command::new("python3")
            .args(["-c", "import standardwebhooks"])
            .status();
        assert!(
            matches!(check, Ok(status) if status.success()),
            "these tests need python3 with standardwebhooks: pip install standardwebhooks"
        );
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .args(["serve", "--secret", SECRET])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut lines = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        let port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("receiver did not start: {first:?}"));
        let (sender, records) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Receiver {
            child,
            port,
            records,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks", self.port)
    }

    /// The next request the receiver got, as its JSON line.
    fn next(&self, timeout_ms: u64) -> simd_json::OwnedValue {
        let line = self
            .records
            .recv_timeout(Duration::from_millis(timeout_ms))
            .unwrap_or_else(|_| panic!("no webhook within {timeout_ms} ms"));
        simd_json::to_owned_value(&mut line.into_bytes()).expect("the receiver writes JSON")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn options(webhook_url: &str, retry_schedule_secs: &str) -> ServerOptions {
    ServerOptions {
        extra_toml: format!(
            "\n[webhooks]\nretry_schedule_secs = {retry_schedule_secs}\ntimeout_ms = 2000\n\
             \n[[merchants]]\nid = {}\nsecrets = [{}]\nwebhook_url = {}\nwebhook_secret = {}\n",
            toml_string(MERCHANT),
            toml_string(MERCHANT_SECRET),
            toml_string(webhook_url),
            toml_string(SECRET),
        ),
        ..ServerOptions::default()
    }
}

/// Creates a payment and returns its id and status.
fn create(server: &Server, order_id: &str, token: &str) -> (String, String) {
    let body = create_body(order_id, 1999, "CNY", token);
    let request = Signed::new("POST", "/v1/payments", body.as_bytes())
        .by(MERCHANT, MERCHANT_SECRET)
        .bytes();
    let response = server.connect().request(&request);
    assert_eq!(response.status, 201, "{}", response.body_text());
    let payment = response.payment();
    (payment.id, payment.status)
}

fn field<'a>(record: &'a simd_json::OwnedValue, name: &str) -> &'a simd_json::OwnedValue {
    use simd_json::prelude::*;
    record
        .get(name)
        .unwrap_or_else(|| panic!("{name} in {record:?}"))
}

fn text(record: &simd_json::OwnedValue, name: &str) -> String {
    use simd_json::prelude::*;
    field(record, name).as_str().unwrap_or_default().to_string()
}

fn number(record: &simd_json::OwnedValue, name: &str) -> u64 {
    use simd_json::prelude::*;
    field(record, name).as_u64().unwrap_or(0)
}

fn verified(record: &simd_json::OwnedValue) -> bool {
    use simd_json::prelude::*;
    field(record, "verified").as_bool() == Some(true)
}

fn event_id_of(payment_id: &str) -> String {
    format!("evt_{}", payment_id.strip_prefix("pay_").unwrap())
}

#[test]
fn a_final_payment_is_delivered_with_a_valid_signature() {
    let receiver = Receiver::start(&[]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&receiver.url(), "[1, 1, 1]"),
    );
    let (id, status) = create(&server, "ord-hook-1", "tok_decline");
    assert_eq!(status, "declined");
    let record = receiver.next(DELIVERY_TIMEOUT_MS);
    assert!(verified(&record), "{record:?}");
    assert_eq!(text(&record, "id"), event_id_of(&id));
    assert_eq!(text(&record, "type"), "payment.declined");
    assert_eq!(text(&record, "payment_id"), id);
    assert_eq!(number(&record, "attempt"), 1);
    assert_eq!(number(&record, "answered"), 204);
    let delivered = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        server
            .metrics()
            .value("payd_webhook_deliveries_total", &[("outcome", "delivered")])
            == 1.0
    });
    assert!(delivered, "the delivery is counted");
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_webhook_attempts_total", &[("outcome", "success")]),
        1.0
    );
    assert_eq!(metrics.value("payd_webhook_dead_letters_total", &[]), 0.0);
    // Delivered once: no second request comes.
    assert!(receiver
        .records
        .recv_timeout(Duration::from_millis(1_500))
        .is_err());
}

#[test]
fn a_receiver_failing_the_first_attempts_gets_the_event_eventually() {
    let receiver = Receiver::start(&["--fail-first", "2", "--fail-status", "503"]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&receiver.url(), "[1, 1, 1]"),
    );
    let (id, status) = create(&server, "ord-hook-2", "tok_visa");
    assert_eq!(status, "succeeded");
    for (attempt, answered) in [(1, 503), (2, 503), (3, 204)] {
        let record = receiver.next(DELIVERY_TIMEOUT_MS);
        assert!(verified(&record), "{record:?}");
        assert_eq!(text(&record, "id"), event_id_of(&id), "the id is stable");
        assert_eq!(text(&record, "type"), "payment.succeeded");
        assert_eq!(number(&record, "attempt"), attempt);
        assert_eq!(number(&record, "answered"), answered);
    }
    let counted = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        let metrics = server.metrics();
        metrics.value("payd_webhook_attempts_total", &[("outcome", "rejected")]) == 2.0
            && metrics.value("payd_webhook_deliveries_total", &[("outcome", "delivered")]) == 1.0
    });
    assert!(
        counted,
        "two rejected attempts and one delivery are counted"
    );
}

#[test]
fn an_event_owed_at_a_sigkill_is_delivered_after_the_restart() {
    // The first receiver rejects every attempt, and the next retry is far away: the
    // event is still owed when payd dies.
    let failing = Receiver::start(&["--fail-first", "1000"]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&failing.url(), "[600]"),
    );
    let (id, _) = create(&server, "ord-hook-3", "tok_visa");
    let record = failing.next(DELIVERY_TIMEOUT_MS);
    assert_eq!(text(&record, "id"), event_id_of(&id));
    assert_eq!(number(&record, "answered"), 500);
    let (dir, _) = server.stop_keeping_dir(true);
    drop(failing);

    let receiver = Receiver::start(&[]);
    let _server = Server::start_in(dir, options(&receiver.url(), "[600]"));
    let record = receiver.next(DELIVERY_TIMEOUT_MS);
    assert!(verified(&record), "{record:?}");
    assert_eq!(text(&record, "id"), event_id_of(&id), "the same event id");
    assert_eq!(text(&record, "payment_id"), id);
    assert_eq!(number(&record, "answered"), 204);
}
