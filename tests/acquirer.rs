//! `acquirer.mode = "http"` (API.md section 4, issue 5) against a real `payd acquirer-sim`
//! process over loopback: every token of the table, retries under one Idempotency-Key,
//! an acquirer that dies and comes back, and a burst of creates through a bounded pool.

mod common;

use common::acq::{self, AcquirerSim};
use common::{eventually, run_payd, Metrics, Server, ServerOptions};
use std::thread;
use std::time::{Duration, Instant};

/// Few attempts keep `tok_error` quick: backoffs of about 100 and 200 ms between them.
const MAX_ATTEMPTS: u64 = 3;
const FINAL_WAIT_MS: u64 = 10_000;
/// How long a `tok_slow` call runs at the acquirer before the acquirer is killed.
const IN_FLIGHT_HEAD_START_MS: u64 = 500;

fn calls(metrics: &Metrics, outcome: &str) -> f64 {
    metrics.value("payd_acquirer_calls_total", &[("outcome", outcome)])
}

fn start_pair(sim_args: &[&str], acquirer_toml: &str) -> (AcquirerSim, Server) {
    let sim = AcquirerSim::start("127.0.0.1:0", sim_args);
    let server = Server::start(acq::options_with_http_acquirer(&sim.url(), acquirer_toml));
    (sim, server)
}

#[test]
fn every_token_behaves_as_the_table_says() {
    let (sim, server) = start_pair(&[], &format!("max_attempts = {MAX_ATTEMPTS}"));
    let cases = [
        ("tok_visa", "succeeded", None),
        ("tok_decline", "declined", Some("card_declined")),
        (
            "tok_insufficient_funds",
            "declined",
            Some("insufficient_funds"),
        ),
        ("tok_flaky", "succeeded", None),
        ("tok_error", "failed", Some("acquirer_unavailable")),
    ];
    for (token, status, decline_code) in cases {
        let (code, payment) = acq::create(server.addr, &format!("ord-{token}"), token);
        assert_eq!(code, 201, "{token}: {payment:?}");
        assert_eq!(payment.status, status, "{token}");
        assert_eq!(payment.decline_code.as_deref(), decline_code, "{token}");
    }
    // tok_slow answers after 3 s, past the 2 s the client waits: 202, then final.
    let (code, slow) = acq::create(server.addr, "ord-slow", "tok_slow");
    assert_eq!((code, slow.status.as_str()), (202, "pending"));
    let slow = acq::wait_final(server.addr, &slow.id, Duration::from_millis(FINAL_WAIT_MS));
    assert_eq!(
        (slow.status.as_str(), slow.decline_code),
        ("succeeded", None)
    );
    let metrics = server.metrics();
    assert_eq!(calls(&metrics, "approved"), 3.0, "visa, flaky, slow");
    assert_eq!(calls(&metrics, "declined"), 2.0);
    // One 503 of flaky, every attempt of error.
    assert_eq!(
        calls(&metrics, "retryable_status"),
        1.0 + MAX_ATTEMPTS as f64
    );
    assert_eq!(sim.calls().0, 6 + MAX_ATTEMPTS);
}

#[test]
fn retries_reuse_the_idempotency_key() {
    let (sim, server) = start_pair(&[], &format!("max_attempts = {MAX_ATTEMPTS}"));
    let (_, visa) = acq::create(server.addr, "ord-once", "tok_visa");
    let (_, flaky) = acq::create(server.addr, "ord-flaky", "tok_flaky");
    let (_, error) = acq::create(server.addr, "ord-error", "tok_error");
    let (total, by_key) = sim.calls();
    assert_eq!(by_key.get(&visa.id), Some(&1), "{by_key:?}");
    assert_eq!(by_key.get(&flaky.id), Some(&2), "{by_key:?}");
    assert_eq!(by_key.get(&error.id), Some(&MAX_ATTEMPTS), "{by_key:?}");
    // Every call carried one of these three keys: no attempt went out under another.
    assert_eq!(by_key.len(), 3, "{by_key:?}");
    assert_eq!(total, 3 + MAX_ATTEMPTS);
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_acquirer_retries_total", &[]),
        (1 + MAX_ATTEMPTS - 1) as f64
    );
}

#[test]
fn a_final_4xx_is_not_retried() {
    // A base path the simulator does not serve: every authorisation gets a 404.
    let sim = AcquirerSim::start("127.0.0.1:0", &[]);
    let url = format!("{}/elsewhere", sim.url());
    let server = Server::start(acq::options_with_http_acquirer(&url, ""));
    let (code, payment) = acq::create(server.addr, "ord-404", "tok_visa");
    assert_eq!(code, 201);
    assert_eq!(payment.status, "failed");
    assert_eq!(payment.decline_code.as_deref(), Some("acquirer_rejected"));
    let metrics = server.metrics();
    assert_eq!(calls(&metrics, "rejected"), 1.0);
    assert_eq!(metrics.value("payd_acquirer_retries_total", &[]), 0.0);
}

#[test]
fn payd_recovers_when_the_acquirer_dies_and_comes_back() {
    let test_started = Instant::now();
    let port = acq::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut sim = AcquirerSim::start(&listen, &[]);
    let server = Server::start(acq::options_with_http_acquirer(
        &sim.url(),
        &format!("max_attempts = {MAX_ATTEMPTS}"),
    ));
    let (_, before) = acq::create(server.addr, "ord-before", "tok_visa");
    assert_eq!(before.status, "succeeded");

    // A slow authorisation is in flight at the acquirer when it dies.
    let addr = server.addr;
    let in_flight = thread::spawn(move || acq::create(addr, "ord-in-flight", "tok_slow"));
    thread::sleep(Duration::from_millis(IN_FLIGHT_HEAD_START_MS));
    sim.kill();
    // Its retries fail too, well within the 2 s the client waits: a final answer.
    let (code, in_flight) = in_flight.join().expect("in-flight create");
    assert_eq!(code, 201, "{in_flight:?}");
    assert_eq!(
        (in_flight.status.as_str(), in_flight.decline_code.as_deref()),
        ("failed", Some("acquirer_unavailable")),
        "the broken call was retried, then given up"
    );
    for index in 0..4 {
        let (code, payment) = acq::create(server.addr, &format!("ord-down-{index}"), "tok_visa");
        assert_eq!(code, 201);
        assert_eq!(
            (payment.status.as_str(), payment.decline_code.as_deref()),
            ("failed", Some("acquirer_unavailable")),
            "payment {index} while the acquirer is down"
        );
    }
    let down = server.metrics();
    assert!(calls(&down, "connection_error") >= 5.0, "connects refused");
    assert!(
        down.sum("payd_acquirer_breaker_opened_total") >= 1.0,
        "the breaker opened after consecutive failures"
    );
    assert!(calls(&down, "breaker_open") >= 1.0, "and then failed fast");

    let _sim = AcquirerSim::start(&listen, &[]);
    let started = Instant::now();
    let mut recovered = false;
    for index in 0.. {
        let (_, payment) = acq::create(server.addr, &format!("ord-back-{index}"), "tok_visa");
        if payment.status == "succeeded" {
            recovered = true;
            break;
        }
        if started.elapsed() > Duration::from_millis(FINAL_WAIT_MS) {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        recovered,
        "no payment succeeded within {FINAL_WAIT_MS} ms of the restart"
    );
    for index in 0..5 {
        let (_, payment) = acq::create(server.addr, &format!("ord-after-{index}"), "tok_visa");
        assert_eq!(
            payment.status, "succeeded",
            "payment {index} after recovery"
        );
    }
    let after = server.metrics();
    assert_eq!(
        after.value(
            "payd_acquirer_breaker_state",
            &[("core", "0"), ("state", "closed")]
        ),
        1.0
    );
    assert_outage_logged_once(&server.stderr.text(), test_started.elapsed());
}

/// The breaker's opening and closing are one line each (not one per failed probe), and
/// the unreachable acquirer is logged, at most once per 10 s.
fn assert_outage_logged_once(stderr: &str, outage_within: Duration) {
    let count = |needle: &str| stderr.lines().filter(|line| line.contains(needle)).count();
    assert_eq!(
        count("acquirer circuit breaker opened"),
        1,
        "breaker opening:\n{stderr}"
    );
    assert_eq!(
        count("acquirer circuit breaker closed"),
        1,
        "breaker closing:\n{stderr}"
    );
    let unreachable = count("unreachable");
    let allowed = 1 + (outage_within.as_millis() / 10_000) as usize;
    assert!(
        (1..=allowed).contains(&unreachable),
        "{unreachable} unreachable lines in {outage_within:?}:\n{stderr}"
    );
}

/// Creates in flight at once, each on its own connection.
const BURST_CREATES: usize = 1_000;
const BURST_POOL_SIZE: usize = 32;
const BURST_LATENCY_MS: &str = "20";
/// Writers and readers of the burst; each owns a slice of the connections.
const BURST_THREADS: usize = 10;
const BURST_TIME_LIMIT_MS: u64 = 60_000;

#[test]
fn a_thousand_concurrent_creates_finish_within_the_pool_bound() {
    let sim = AcquirerSim::start("127.0.0.1:0", &["--latency-ms", BURST_LATENCY_MS]);
    let server = Server::start(ServerOptions {
        max_connections_per_core: 2 * BURST_CREATES,
        access_log: false,
        ..acq::options_with_http_acquirer(
            &sim.url(),
            // Every create waits for its final answer: the test counts them all.
            &format!("pool_size = {BURST_POOL_SIZE}\nresponse_timeout_ms = 30000"),
        )
    });
    let started = Instant::now();
    let per_thread = BURST_CREATES / BURST_THREADS;
    let threads: Vec<_> = (0..BURST_THREADS)
        .map(|thread_index| {
            let addr = server.addr;
            thread::spawn(move || {
                // Every request goes out before any answer is read: all are in flight.
                let mut clients: Vec<_> = (0..per_thread)
                    .map(|index| {
                        let mut client = common::Client::connect(addr);
                        let order_id = format!("burst-{thread_index}-{index}");
                        client.send(acq::create_request(&order_id, "tok_visa").as_bytes());
                        client
                    })
                    .collect();
                clients
                    .iter_mut()
                    .map(|client| {
                        client.set_read_timeout(Duration::from_millis(BURST_TIME_LIMIT_MS));
                        let response = client.read_response();
                        (response.status, acq::payment_view(&response).status)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut succeeded = 0;
    for thread in threads {
        for (status, payment_status) in thread.join().expect("burst thread") {
            assert_eq!((status, payment_status.as_str()), (201, "succeeded"));
            succeeded += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(succeeded, BURST_CREATES);
    assert!(
        elapsed < Duration::from_millis(BURST_TIME_LIMIT_MS),
        "{elapsed:?}"
    );
    assert_eq!(
        sim.calls().0,
        BURST_CREATES as u64,
        "one call each, no retries"
    );

    let mut metrics = server.metrics();
    // Gauges are published after each attempt; the last one has settled by now.
    eventually(Duration::from_millis(2_000), || {
        metrics = server.metrics();
        metrics.value("payd_acquirer_pool_connections_in_use", &[("core", "0")]) == 0.0
    });
    let pool = |name: &str| metrics.value(name, &[("core", "0")]);
    let bound = BURST_POOL_SIZE as f64;
    assert_eq!(pool("payd_acquirer_pool_size"), bound);
    assert_eq!(
        pool("payd_acquirer_pool_connections_in_use_max"),
        bound,
        "a thousand creates in flight use every pooled connection, and never more"
    );
    assert!(pool("payd_acquirer_pool_connections_open") <= bound);
    assert!(
        pool("payd_acquirer_pool_connects_total") <= bound,
        "keep-alive: connections are reused, not reopened"
    );
    assert_eq!(pool("payd_acquirer_pool_connections_in_use"), 0.0);
    assert_eq!(calls(&metrics, "approved"), BURST_CREATES as f64);
    assert_eq!(calls(&metrics, "pool_busy"), 0.0);
    // 1,000 calls of 20 ms through 32 connections take at least 625 ms; serialised on
    // one connection they would take 20 s.
    let least = Duration::from_millis(BURST_CREATES as u64 * 20 / BURST_POOL_SIZE as u64);
    assert!(
        elapsed >= least,
        "{elapsed:?} is faster than the pool allows"
    );
}

/// Issue 12, defect 9: an attempt that timed out while still waiting for a pooled
/// connection counted as an acquirer failure, so a healthy acquirer behind a busy pool
/// was declared unavailable. A wait in payd's own queue now tells the breaker nothing.
#[test]
fn waiting_for_a_pooled_connection_is_not_an_acquirer_failure() {
    // One connection, 200 ms a call, a second per attempt of which at most half may
    // go to waiting for the connection: of twenty creates at once a few get it in
    // time, the rest wait in payd's pool until their attempt is over.
    const CREATES: usize = 20;
    let sim = AcquirerSim::start("127.0.0.1:0", &["--latency-ms", "200"]);
    let server = Server::start(acq::options_with_http_acquirer(
        &sim.url(),
        "pool_size = 1\nattempt_timeout_ms = 1000\nmax_attempts = 1\nresponse_timeout_ms = 10000",
    ));
    // Pipelined creates on one connection run together.
    let mut client = server.connect();
    let mut requests = String::new();
    for index in 0..CREATES {
        requests.push_str(&acq::create_request(&format!("pool-{index}"), "tok_visa"));
    }
    client.send(requests.as_bytes());
    let mut outcomes = Vec::new();
    for _ in 0..CREATES {
        let response = client.read_response();
        assert_eq!(response.status, 201, "{response:?}");
        let payment = acq::payment_view(&response);
        outcomes.push((payment.status, payment.decline_code));
    }
    let succeeded = outcomes.iter().filter(|(s, _)| s == "succeeded").count();
    let unavailable = outcomes
        .iter()
        .filter(|(s, code)| s == "failed" && code.as_deref() == Some("acquirer_unavailable"))
        .count();
    assert_eq!(succeeded + unavailable, CREATES, "{outcomes:?}");
    assert!(
        unavailable >= 5,
        "the pool made attempts wait: {outcomes:?}"
    );
    // Only those that got the connection called (one may have been cut short by its
    // own timeout at the acquirer, were this machine very slow).
    let called = sim.calls().0;
    assert!(
        (succeeded as u64..=succeeded as u64 + 1).contains(&called),
        "{called} calls, {succeeded} succeeded"
    );
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_acquirer_breaker_opened_total", &[("core", "0")]),
        0.0,
        "waits in payd's own pool never open the breaker"
    );
    assert_eq!(
        metrics.value(
            "payd_acquirer_breaker_state",
            &[("core", "0"), ("state", "closed")]
        ),
        1.0
    );
}

#[test]
fn the_config_takes_http_mode_and_names_a_bad_url() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[acquirer]\nmode = \"http\"\nurl = \"http://127.0.0.1:9100/base\"\npool_size = 8\n",
    )
    .unwrap();
    let output = run_payd(&["check-config", good.to_str().unwrap()], dir.path());
    assert!(output.status.success(), "{output:?}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[acquirer]\nmode = \"http\"\nurl = \"http://user:hunter2@acquirer\"\n",
    )
    .unwrap();
    let output = run_payd(&["check-config", bad.to_str().unwrap()], dir.path());
    assert!(!output.status.success());
    assert!(output.stderr.contains("acquirer.url"), "{}", output.stderr);
    assert!(!output.stderr.contains("hunter2"), "{}", output.stderr);
}
