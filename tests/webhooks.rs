//! Webhooks end to end (issue 6, API.md section 5): the real binary delivers events to a
//! real receiver process (`tests/webhook_verify.py serve`) whose every signature is checked
//! by the reference `standardwebhooks` package, never by payd's own code.
//!
//! Needs `python3` with `standardwebhooks` installed; without it these tests fail and
//! say so.
//!
//! Also here: the receiver down while payd restarts, a hanging endpoint next to a healthy
//! one, dead letters listed by `GET /v1/events?delivery=failed` (and after a restart),
//! attempt counts that survive a restart, and a backlog bound small enough that events
//! wait on disk and are loaded back while payd runs.

mod common;

use common::{create_body, toml_string, Server, ServerOptions, Signed};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MERCHANT: &str = "m_hooks";
const MERCHANT_SECRET: &str = "secret-hooks-1-test-only-0123456789abcdef";
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
        let (child, port, lines) = common::start_webhook_receiver(SECRET, extra);
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
        url_of(self.port)
    }

    /// The next request within `timeout_ms`, if one came.
    fn try_next(&self, timeout_ms: u64) -> Option<simd_json::OwnedValue> {
        let line = self
            .records
            .recv_timeout(Duration::from_millis(timeout_ms))
            .ok()?;
        Some(simd_json::to_owned_value(&mut line.into_bytes()).expect("the receiver writes JSON"))
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

fn url_of(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hooks")
}

fn options(webhook_url: &str, retry_schedule_secs: &str) -> ServerOptions {
    options_for(
        &[(MERCHANT, MERCHANT_SECRET, webhook_url)],
        retry_schedule_secs,
        "",
    )
}

/// A config with `merchants` (id, API secret, webhook URL; all sign webhooks with
/// `SECRET`), the retry schedule, and more `[webhooks]` keys.
fn options_for(
    merchants: &[(&str, &str, &str)],
    retry_schedule_secs: &str,
    more_webhooks_toml: &str,
) -> ServerOptions {
    let mut toml = format!(
        "\n[webhooks]\nretry_schedule_secs = {retry_schedule_secs}\ntimeout_ms = 2000\n{more_webhooks_toml}\n"
    );
    for (id, secret, url) in merchants {
        toml.push_str(&format!(
            "\n[[merchants]]\nid = {}\nsecrets = [{}]\nwebhook_url = {}\nwebhook_secret = {}\n",
            toml_string(id),
            toml_string(secret),
            toml_string(url),
            toml_string(SECRET),
        ));
    }
    ServerOptions {
        extra_toml: toml,
        ..ServerOptions::default()
    }
}

/// A loopback port nothing listens on (for now).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Creates a payment and returns its id and status.
fn create(server: &Server, order_id: &str, token: &str) -> (String, String) {
    create_as(server, (MERCHANT, MERCHANT_SECRET), order_id, token)
}

fn create_as(
    server: &Server,
    (merchant, secret): (&str, &str),
    order_id: &str,
    token: &str,
) -> (String, String) {
    let body = create_body(order_id, 1999, "CNY", token);
    let request = Signed::new("POST", "/v1/payments", body.as_bytes())
        .by(merchant, secret)
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
    // The first receiver never answers: payd dies with the first attempt in flight
    // (timeout_ms is 2 s), so the event is owed and no attempt of it is on record. (An
    // attempt that failed before the kill would resume its schedule, retry far away:
    // `a_restart_resumes_an_events_attempt_count`.)
    let hanging = Receiver::start(&["--hang"]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&hanging.url(), "[600]"),
    );
    let (id, _) = create(&server, "ord-hook-3", "tok_visa");
    let record = hanging.next(DELIVERY_TIMEOUT_MS);
    assert_eq!(text(&record, "id"), event_id_of(&id));
    let (dir, _) = server.stop_keeping_dir(true);
    drop(hanging);

    let receiver = Receiver::start(&[]);
    let _server = Server::start_in(dir, options(&receiver.url(), "[600]"));
    let record = receiver.next(DELIVERY_TIMEOUT_MS);
    assert!(verified(&record), "{record:?}");
    assert_eq!(text(&record, "id"), event_id_of(&id), "the same event id");
    assert_eq!(text(&record, "payment_id"), id);
    assert_eq!(number(&record, "answered"), 204);
}

/// `GET target` signed by `merchant`.
fn signed_get(server: &Server, (merchant, secret): (&str, &str), target: &str) -> common::Response {
    let request = Signed::new("GET", target, b"").by(merchant, secret).bytes();
    server.connect().request(&request)
}

/// The failed events page of `merchant`: status 200 asserted, JSON returned.
fn failed_events(server: &Server, merchant: (&str, &str), query: &str) -> simd_json::OwnedValue {
    let target = format!("/v1/events?delivery=failed{query}");
    let response = signed_get(server, merchant, &target);
    assert_eq!(response.status, 200, "{}", response.body_text());
    simd_json::to_owned_value(&mut response.body.clone()).expect("a JSON page")
}

fn page_ids(page: &simd_json::OwnedValue) -> Vec<String> {
    use simd_json::prelude::*;
    page["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .map(|event| text(event, "id"))
        .collect()
}

fn has_more(page: &simd_json::OwnedValue) -> bool {
    use simd_json::prelude::*;
    page["has_more"].as_bool().expect("has_more is a boolean")
}

/// Collects receiver requests until every id of `wanted` was answered 204 (each signature
/// verified), or `timeout_ms` passes. Returns the ids delivered.
fn delivered_ids(
    receiver: &Receiver,
    wanted: &HashSet<String>,
    timeout_ms: u64,
) -> HashSet<String> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut delivered = HashSet::new();
    while !wanted.is_subset(&delivered) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(record) = receiver.try_next(left.as_millis() as u64) else {
            break;
        };
        assert!(verified(&record), "{record:?}");
        if number(&record, "answered") == 204 {
            delivered.insert(text(&record, "id"));
        }
    }
    delivered
}

/// Many short retries: an event is not dead-lettered while a test waits for it.
const PATIENT_SCHEDULE: &str = "[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]";

#[test]
fn a_receiver_down_while_payd_restarts_gets_every_event_after_it() {
    let port = free_port();
    // A backlog of 2: after the restart most owed events wait on disk for a reload.
    let options = options_for(
        &[(MERCHANT, MERCHANT_SECRET, &url_of(port))],
        PATIENT_SCHEDULE,
        "max_backlog_per_shard = 2\n",
    );
    let server = Server::start_in(tempfile::tempdir().unwrap(), options.clone());
    let mut wanted = HashSet::new();
    for index in 0..5 {
        let (id, _) = create(&server, &format!("ord-down-{index}"), "tok_visa");
        wanted.insert(event_id_of(&id));
    }
    // Every event was attempted against the closed port at least once.
    let refused = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        let metrics = server.metrics();
        metrics.value(
            "payd_webhook_attempts_total",
            &[("outcome", "connection_error")],
        ) >= 5.0
    });
    assert!(refused, "every event met the receiver down");
    let (dir, status) = server.stop_keeping_dir(false);
    assert!(status.success(), "{status:?}");

    let server = Server::start_in(dir, options);
    let receiver = Receiver::start(&["--port", &port.to_string()]);
    assert_eq!(receiver.port, port);
    let delivered = delivered_ids(&receiver, &wanted, 3 * DELIVERY_TIMEOUT_MS);
    assert_eq!(
        delivered, wanted,
        "every event owed across the restart arrives"
    );
    let counted = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        server
            .metrics()
            .value("payd_webhook_deliveries_total", &[("outcome", "delivered")])
            == 5.0
    });
    assert!(counted);
}

#[test]
fn a_hanging_endpoint_does_not_delay_another_merchants_events() {
    let hanging = Receiver::start(&["--hang"]);
    let healthy = Receiver::start(&[]);
    let slow = ("m_slow", "secret-slow-1-test-only-0123456789abcdef");
    let quick = ("m_quick", "secret-quick-1-test-only-0123456789abcdef");
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options_for(
            &[
                (slow.0, slow.1, &hanging.url()),
                (quick.0, quick.1, &healthy.url()),
            ],
            PATIENT_SCHEDULE,
            "",
        ),
    );
    // More events than a merchant may have in flight: the hung endpoint holds every slot
    // it is allowed (each attempt up to timeout_ms = 2 s).
    for index in 0..20 {
        create_as(&server, slow, &format!("ord-slow-{index}"), "tok_visa");
    }
    let held = hanging.next(DELIVERY_TIMEOUT_MS);
    assert!(verified(&held), "{held:?}");
    let started = Instant::now();
    let mut wanted = HashSet::new();
    for index in 0..5 {
        let (id, _) = create_as(&server, quick, &format!("ord-quick-{index}"), "tok_visa");
        wanted.insert(event_id_of(&id));
    }
    // A local delivery takes milliseconds; a generous bound still far below the hung
    // endpoint's timeouts piling up (20 events x 2 s).
    let delivered = delivered_ids(&healthy, &wanted, 3_000);
    assert_eq!(delivered, wanted, "the healthy merchant is served on time");
    assert!(started.elapsed() < Duration::from_millis(3_000));
    let metrics = server.metrics();
    assert!(metrics.value("payd_webhook_in_flight", &[("core", "0")]) >= 1.0);
}

#[test]
fn failed_events_are_listed_to_their_merchant_only_and_survive_a_restart() {
    let failing = Receiver::start(&["--fail-first", "1000", "--fail-status", "500"]);
    let gone = Receiver::start(&["--fail-first", "1000", "--fail-status", "410"]);
    let first = ("m_first", "secret-first-1-test-only-0123456789abcdef");
    let second = ("m_second", "secret-second-1-test-only-0123456789abcdef");
    let merchants = [
        (first.0, first.1, failing.url()),
        (second.0, second.1, gone.url()),
    ];
    let merchants: Vec<(&str, &str, &str)> = merchants
        .iter()
        .map(|(id, secret, url)| (*id, *secret, url.as_str()))
        .collect();
    // Two cores, two shards: the list is gathered from both over the mesh.
    let options = ServerOptions {
        cores: vec![0, 1],
        ..options_for(&merchants, "[1]", "")
    };
    let server = Server::start_in(tempfile::tempdir().unwrap(), options.clone());
    let (failed_a, _) = create_as(&server, first, "ord-dead-1", "tok_visa");
    let (failed_b, _) = create_as(&server, first, "ord-dead-3", "tok_decline");
    let (gone_id, _) = create_as(&server, second, "ord-gone-1", "tok_visa");
    // The shard is the id's first four hex digits: these two live on different cores.
    assert_ne!(failed_a[4..8], failed_b[4..8], "{failed_a} {failed_b}");
    let dead = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        let metrics = server.metrics();
        metrics.value("payd_webhook_dead_letters_total", &[]) == 2.0
            && metrics.value("payd_webhook_deliveries_total", &[("outcome", "gone")]) == 1.0
    });
    assert!(dead, "two dead letters and one 410");
    // The 410 stopped at once: one request, never a second.
    assert_eq!(number(&gone.next(DELIVERY_TIMEOUT_MS), "answered"), 410);
    assert!(gone.try_next(1_500).is_none(), "no attempt after a 410");

    let check = |server: &Server| {
        use simd_json::prelude::*;
        let page = failed_events(server, first, "");
        assert_eq!(page["object"].as_str(), Some("list"));
        assert!(!has_more(&page));
        let ids = page_ids(&page);
        assert_eq!(ids.len(), 2, "{page:?}");
        let expected: HashSet<String> = [event_id_of(&failed_a), event_id_of(&failed_b)].into();
        assert_eq!(ids.iter().cloned().collect::<HashSet<_>>(), expected);
        for event in page["data"].as_array().unwrap() {
            assert_eq!(text(event, "delivery"), "failed");
            assert_eq!(
                number(event, "attempts"),
                2,
                "the first attempt and one retry"
            );
            assert_eq!(number(event, "last_status"), 500);
            assert!(number(event, "last_attempt_at") >= number(event, "created_at"));
            assert_eq!(event_id_of(&text(event, "payment_id")), text(event, "id"));
            assert_eq!(text(&event["data"], "id"), text(event, "payment_id"));
            assert_eq!(text(&event["data"], "merchant_id"), first.0);
        }
        // Paging: one at a time, in the same order as the whole list.
        let one = failed_events(server, first, "&limit=1");
        assert_eq!(page_ids(&one), ids[..1]);
        assert!(has_more(&one));
        let next = failed_events(
            server,
            first,
            &format!("&limit=1&starting_after={}", ids[0]),
        );
        assert_eq!(page_ids(&next), ids[1..]);
        assert!(!has_more(&next));
        // The other merchant sees its 410 only, with one attempt.
        let page = failed_events(server, second, "");
        assert_eq!(page_ids(&page), [event_id_of(&gone_id)]);
        assert_eq!(number(&page["data"][0], "attempts"), 1);
        assert_eq!(number(&page["data"][0], "last_status"), 410);
        assert_eq!(text(&page["data"][0], "type"), "payment.succeeded");
        // Another merchant's event is no cursor.
        let target = format!("/v1/events?delivery=failed&starting_after={}", ids[0]);
        let response = signed_get(server, second, &target);
        common::assert_error(&response, "HTTP/1.1 400 Bad Request", "invalid_request");
        assert_eq!(response.error_param().as_deref(), Some("starting_after"));
    };
    check(&server);
    let mut requests = 0;
    while let Some(record) = failing.try_next(500) {
        assert!(verified(&record), "{record:?}");
        requests += 1;
    }
    assert_eq!(requests, 4, "two events, two attempts each");
    let (dir, _) = server.stop_keeping_dir(true);
    let server = Server::start_in(dir, options);
    check(&server);
    // Dead letters are listed, never sent again.
    assert!(
        failing.try_next(1_500).is_none(),
        "no attempt after the restart"
    );
}

#[test]
fn the_events_list_refuses_bad_queries_and_unsigned_requests() {
    let receiver = Receiver::start(&[]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&receiver.url(), "[1]"),
    );
    let merchant = (MERCHANT, MERCHANT_SECRET);
    for (query, param) in [
        ("", "delivery"),
        ("?delivery=delivered", "delivery"),
        ("?delivery=failed&limit=0", "limit"),
        ("?delivery=failed&limit=101", "limit"),
        ("?delivery=failed&limit=ten", "limit"),
        ("?delivery=failed&starting_after=nope", "starting_after"),
        (
            "?delivery=failed&starting_after=evt_00000000000000000001",
            "starting_after",
        ),
        ("?delivery=failed&type=payment.failed", "type"),
    ] {
        let response = signed_get(&server, merchant, &format!("/v1/events{query}"));
        common::assert_error(&response, "HTTP/1.1 400 Bad Request", "invalid_request");
        assert_eq!(response.error_param().as_deref(), Some(param), "{query}");
    }
    let page = failed_events(&server, merchant, "&limit=100");
    assert_eq!(page_ids(&page), Vec::<String>::new());
    assert!(!has_more(&page));
    let unsigned = server
        .connect()
        .get("/v1/events?delivery=failed", "unsigned");
    common::assert_error(
        &unsigned,
        "HTTP/1.1 401 Unauthorized",
        "authentication_required",
    );
    let request = Signed::new("POST", "/v1/events", b"{}")
        .by(MERCHANT, MERCHANT_SECRET)
        .bytes();
    let response = server.connect().request(&request);
    assert_eq!(response.status, 405);
    assert_eq!(response.header("Allow"), Some("GET, HEAD"));
}

#[test]
fn a_restart_resumes_an_events_attempt_count() {
    // Schedule [1, 2]: three attempts. Two fail before the restart; the third is due
    // 2 s after the second.
    let failing = Receiver::start(&["--fail-first", "1000"]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options(&failing.url(), "[1, 2]"),
    );
    let (id, _) = create(&server, "ord-resume-1", "tok_visa");
    for attempt in [1, 2] {
        let record = failing.next(DELIVERY_TIMEOUT_MS);
        assert_eq!(text(&record, "id"), event_id_of(&id));
        assert_eq!(number(&record, "attempt"), attempt);
    }
    // Let the attempt record reach the file before the kill.
    std::thread::sleep(Duration::from_millis(300));
    let (dir, _) = server.stop_keeping_dir(true);
    drop(failing);

    let failing = Receiver::start(&["--fail-first", "1000"]);
    let server = Server::start_in(dir, options(&failing.url(), "[1, 2]"));
    // Resumed: one attempt (the third and last), then the dead letter. A schedule begun
    // again would send three more.
    let record = failing.next(DELIVERY_TIMEOUT_MS);
    assert_eq!(text(&record, "id"), event_id_of(&id));
    let dead = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        server
            .metrics()
            .value("payd_webhook_dead_letters_total", &[])
            == 1.0
    });
    assert!(dead, "the event is dead-lettered after its third attempt");
    assert!(
        failing.try_next(2_500).is_none(),
        "no attempt after the last"
    );
    let page = failed_events(&server, (MERCHANT, MERCHANT_SECRET), "");
    assert_eq!(page_ids(&page), [event_id_of(&id)]);
    assert_eq!(number(&page["data"][0], "attempts"), 3);
}

#[test]
fn events_a_full_backlog_leaves_on_disk_are_loaded_while_payd_runs() {
    // A backlog of 2; the receiver fails each event's first attempt, so each one stays in
    // memory about a second and the other events wait on disk.
    let receiver = Receiver::start(&["--fail-first", "1"]);
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        options_for(
            &[(MERCHANT, MERCHANT_SECRET, &receiver.url())],
            PATIENT_SCHEDULE,
            "max_backlog_per_shard = 2\n",
        ),
    );
    let mut wanted = HashSet::new();
    for index in 0..10 {
        let (id, _) = create(&server, &format!("ord-spill-{index}"), "tok_visa");
        wanted.insert(event_id_of(&id));
    }
    let metrics = server.metrics();
    assert!(metrics.value("payd_webhook_backlog", &[("core", "0")]) <= 2.0);
    assert!(metrics.value("payd_webhook_left_on_disk_total", &[("core", "0")]) >= 1.0);
    let delivered = delivered_ids(&receiver, &wanted, 4 * DELIVERY_TIMEOUT_MS);
    assert_eq!(delivered, wanted, "every event arrives without a restart");
    // The receiver prints before payd reads its answer: wait for the count.
    let counted = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        server
            .metrics()
            .value("payd_webhook_deliveries_total", &[("outcome", "delivered")])
            == 10.0
    });
    assert!(counted, "ten deliveries counted");
    let metrics = server.metrics();
    assert!(metrics.value("payd_webhook_reloads_total", &[("core", "0")]) >= 1.0);
    assert_eq!(
        metrics.value("payd_webhook_merchants_waiting_on_disk", &[("core", "0")]),
        0.0
    );
    // Each event once (plus its one failed attempt): nothing was sent twice.
    let mut attempts: HashMap<String, u64> = HashMap::new();
    while let Some(record) = receiver.try_next(500) {
        *attempts.entry(text(&record, "id")).or_default() += 1;
    }
    assert!(
        attempts.is_empty(),
        "no request after every delivery: {attempts:?}"
    );
}

/// Retention of three seconds, checked often, with small segments.
const SHORT_RETENTION_HOURS: &str = "0.000833333333333";

#[test]
fn retention_carries_owed_events_forward_and_lets_old_dead_letters_go() {
    use common::durable::{merchant_toml, segment_paths, shard_dir};
    use common::retention::create_padded;
    let failing = Receiver::start(&["--fail-first", "100000"]);
    let gone = Receiver::start(&["--fail-first", "100000", "--fail-status", "410"]);
    let owing = ("m_owing", "secret-owing-1-test-only-0123456789abcdef");
    let leaving = ("m_leaving", "secret-leaving-1-test-only-0123456789abcdef");
    let options = options_for(
        &[
            (owing.0, owing.1, &failing.url()),
            (leaving.0, leaving.1, &gone.url()),
        ],
        // Retries for about a minute: owed through the whole test.
        &format!("[{}]", vec!["3"; 20].join(", ")),
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let config = options.config_text(&base).replace(
        "durability = \"fsync\"\n",
        &format!(
            "durability = \"fsync\"\nretention_hours = {SHORT_RETENTION_HOURS}\n\
             retention_check_interval_ms = 100\nsegment_bytes = 266240\n"
        ),
    ) + &merchant_toml();
    let server = Server::start_with_config(dir, &config);
    let (owed, _) = create_as(&server, owing, "ord-kept-1", "tok_visa");
    let (dead, _) = create_as(&server, leaving, "ord-gone-1", "tok_visa");
    assert_eq!(
        text(&failing.next(DELIVERY_TIMEOUT_MS), "id"),
        event_id_of(&owed)
    );
    assert_eq!(
        text(&gone.next(DELIVERY_TIMEOUT_MS), "id"),
        event_id_of(&dead)
    );
    let listed = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        page_ids(&failed_events(&server, leaving, "")) == [event_id_of(&dead)]
    });
    assert!(listed, "the 410 is listed");
    // Fill a few segments, so the first one (with both events) closes and ages.
    let first_segment = segment_paths(&shard_dir(&base, 0))[0].clone();
    let mut client = server.connect();
    for index in 0..700 {
        let response = create_padded(&mut client, &format!("ord-pad-{index}"), "tok_visa");
        assert_eq!(response.status, 201);
    }
    let deleted = common::eventually(Duration::from_millis(4 * DELIVERY_TIMEOUT_MS), || {
        !first_segment.exists()
    });
    assert!(deleted, "retention deleted the first segment");
    // The dead letter was older than the retention: it left the list with its record.
    let expired = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        page_ids(&failed_events(&server, leaving, "")).is_empty()
    });
    assert!(expired, "an old dead letter leaves the list");
    let (dir, _) = server.stop_keeping_dir(true);
    let failing_url = failing.url();
    drop(failing);

    // The owed event was carried forward before its segment went: a restart sends it.
    let receiver = Receiver::start(&[]);
    let config = config.replace(&failing_url, &receiver.url());
    let server = Server::start_with_config(dir, &config);
    let record = receiver.next(3 * DELIVERY_TIMEOUT_MS);
    assert!(verified(&record), "{record:?}");
    assert_eq!(text(&record, "id"), event_id_of(&owed));
    assert!(page_ids(&failed_events(&server, leaving, "")).is_empty());
}

/// Owed events of a merchant whose `webhook_url` a restart removed: payd keeps serving
/// (no attempt without an endpoint), keeps them on disk, and a later restart with a url
/// delivers them.
#[test]
fn events_owed_to_a_merchant_whose_url_was_removed_wait_for_a_url() {
    let port = free_port();
    let server = Server::start(options(&url_of(port), PATIENT_SCHEDULE));
    let (id, _) = create(&server, "ord-unhooked-1", "tok_visa");
    let attempted = common::eventually(Duration::from_millis(DELIVERY_TIMEOUT_MS), || {
        let metrics = server.metrics();
        metrics.value(
            "payd_webhook_attempts_total",
            &[("outcome", "connection_error")],
        ) >= 1.0
    });
    assert!(attempted, "the event met the receiver down");
    let (dir, _) = server.stop_keeping_dir(false);

    let without_url = ServerOptions {
        extra_toml: format!(
            "\n[[merchants]]\nid = {}\nsecrets = [{}]\n",
            toml_string(MERCHANT),
            toml_string(MERCHANT_SECRET),
        ),
        ..ServerOptions::default()
    };
    let mut server = Server::start_in(dir, without_url);
    // The owed event's retry falls due within a second of the start.
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(
        server.wait_exit(Duration::from_millis(100)).is_none(),
        "payd died: {}",
        server.stderr.text()
    );
    create(&server, "ord-unhooked-2", "tok_visa");
    assert!(
        server
            .stderr
            .text()
            .contains("until it has a webhook_url again"),
        "{}",
        server.stderr.text()
    );
    let (dir, status) = server.stop_keeping_dir(false);
    assert!(status.success(), "{status:?}");

    let receiver = Receiver::start(&["--port", &port.to_string()]);
    let _server = Server::start_in(dir, options(&receiver.url(), PATIENT_SCHEDULE));
    let record = receiver.next(3 * DELIVERY_TIMEOUT_MS);
    assert!(verified(&record), "{record:?}");
    assert_eq!(text(&record, "id"), event_id_of(&id));
}

/// Events left on disk in a segment that closed with direct I/O's zero padding after its
/// last record are loaded back while payd runs (a reload once took the padding for
/// damage and failed for good).
#[test]
fn events_on_disk_across_a_segment_roll_are_loaded_while_payd_runs() {
    use common::durable::{merchant_toml, segment_paths, shard_dir};
    use common::retention::create_padded;
    let port = free_port();
    let options = options_for(
        &[(MERCHANT, MERCHANT_SECRET, &url_of(port))],
        PATIENT_SCHEDULE,
        "max_backlog_per_shard = 2\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    let config = options.config_text(&base).replace(
        "durability = \"fsync\"\n",
        "durability = \"fsync\"\nsegment_bytes = 266240\n",
    ) + &merchant_toml();
    let server = Server::start_with_config(dir, &config);
    let mut wanted = HashSet::new();
    let mut owe = |index: usize| {
        let (id, _) = create(&server, &format!("ord-roll-{index}"), "tok_visa");
        wanted.insert(event_id_of(&id));
    };
    (0..3).for_each(&mut owe);
    // Another merchant's payments (it has no endpoint: no events) roll the segment.
    let mut client = server.connect();
    for index in 0..250 {
        let response = create_padded(&mut client, &format!("ord-fill-{index}"), "tok_visa");
        assert_eq!(response.status, 201);
    }
    (3..6).for_each(&mut owe);
    let segments = segment_paths(&shard_dir(&base, 0));
    assert!(segments.len() >= 2, "the log rolled: {segments:?}");
    let closed = std::fs::read(&segments[0]).unwrap();
    assert_eq!(closed.len() % 4096, 0, "direct I/O pads each write");
    assert_eq!(
        closed.last(),
        Some(&0),
        "the closed segment ends in padding"
    );

    let receiver = Receiver::start(&["--port", &port.to_string()]);
    let delivered = delivered_ids(&receiver, &wanted, 3 * DELIVERY_TIMEOUT_MS);
    assert_eq!(delivered, wanted, "every event arrives without a restart");
    assert!(
        !server.stderr.text().contains("webhook reload"),
        "{}",
        server.stderr.text()
    );
}
