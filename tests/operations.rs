//! Operations endpoints and observability of API.md section 6: `/metrics` merged from
//! every core, per-route counters, latency histograms and recent summaries, and the
//! per-core access log.

mod common;

use common::{get_request, Metrics, Server, ServerOptions};
use std::time::Duration;

const CONNECTIONS_COUNT: usize = 200;
const QUANTILES: [&str; 5] = ["0.5", "0.9", "0.99", "0.999", "1"];
/// Counters are merged from the cores on scrape; give a late core this long to catch up.
const METRICS_SETTLE_MS: u64 = 3_000;
const ACCESS_LOG_FLUSH_WAIT_MS: u64 = 3_000;

fn requests(metrics: &Metrics, route: &str, status: &str) -> f64 {
    metrics
        .get(
            "payd_requests_total",
            &[("route", route), ("status", status)],
        )
        .unwrap_or(0.0)
}

#[test]
fn two_cores_both_accept_and_metrics_add_up() {
    let server = Server::start(ServerOptions {
        cores: vec![0, 1],
        ..ServerOptions::default()
    });
    for index in 0..CONNECTIONS_COUNT {
        let mut client = server.connect();
        let response = client.get("/healthz", &format!("spread-{index}"));
        assert_eq!(
            response.status_line, "HTTP/1.1 200 OK",
            "connection {index}"
        );
    }
    let mut scraper = server.connect();
    let mut metrics = scraper.metrics();
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        metrics = scraper.metrics();
        requests(&metrics, "healthz", "200") >= CONNECTIONS_COUNT as f64
            && metrics.sum("payd_connections_open") <= 1.0
    });
    assert_eq!(
        requests(&metrics, "healthz", "200"),
        CONNECTIONS_COUNT as f64,
        "payd_requests_total{{route=\"healthz\",status=\"200\"}} does not add up over cores"
    );
    for core in ["0", "1"] {
        let accepted = metrics.value("payd_connections_accepted_total", &[("core", core)]);
        assert!(
            accepted > 0.0,
            "core {core} accepted no connection out of {CONNECTIONS_COUNT}"
        );
        metrics.value("payd_connections_open", &[("core", core)]);
    }
    let accepted_total = metrics.sum("payd_connections_accepted_total");
    assert!(
        accepted_total > CONNECTIONS_COUNT as f64,
        "accepted {accepted_total}, want {CONNECTIONS_COUNT} + the scrape connection"
    );
    assert_eq!(
        metrics.sum("payd_connections_open"),
        1.0,
        "only the scrape connection is still open (closed connections are not counted down?)"
    );
    assert_latency_summary(&metrics, "healthz");
    let rss = metrics.value("process_resident_memory_bytes", &[]);
    assert!(
        (1024.0 * 1024.0..16.0 * 1024.0 * 1024.0 * 1024.0).contains(&rss),
        "process_resident_memory_bytes = {rss}"
    );
}

/// The route's histogram counts every answered request, its buckets never decrease, and
/// its recent summary has ordered quantiles with a non-zero maximum.
fn assert_latency_summary(metrics: &Metrics, route: &str) {
    let mut previous = 0.0;
    for quantile in QUANTILES {
        let value = metrics.value(
            "payd_request_duration_recent_seconds",
            &[("route", route), ("quantile", quantile)],
        );
        assert!(
            value.is_finite() && value >= previous,
            "latency quantile {quantile} of {route} is {value}, below the previous {previous}"
        );
        previous = value;
    }
    assert!(
        previous > 0.0,
        "max latency of {route} is 0: nothing recorded?"
    );
    let answered: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.name == "payd_requests_total")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "route" && v == route))
        .map(|s| s.value)
        .sum();
    let count_labels = [("route", route)];
    let count = metrics.value("payd_request_duration_seconds_count", &count_labels);
    assert_eq!(count, answered, "histogram count vs requests of {route}");
    let infinity = metrics.value(
        "payd_request_duration_seconds_bucket",
        &[("route", route), ("le", "+Inf")],
    );
    assert_eq!(infinity, count, "the +Inf bucket of {route} is its count");
    let mut buckets: Vec<(f64, f64)> = metrics
        .samples
        .iter()
        .filter(|s| s.name == "payd_request_duration_seconds_bucket")
        .filter(|s| s.labels.iter().any(|(k, v)| k == "route" && v == route))
        .map(|s| {
            let le = s.labels.iter().find(|(k, _)| k == "le").unwrap();
            (le.1.parse::<f64>().unwrap(), s.value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
        "buckets of {route} are not cumulative: {buckets:?}"
    );
}

#[test]
fn requests_are_counted_by_route_and_status() {
    let server = Server::start(ServerOptions::default());
    let mut client = server.connect();
    for index in 0..3 {
        assert_eq!(client.get("/readyz", &format!("rz-{index}")).status, 200);
    }
    for index in 0..2 {
        assert_eq!(client.get("/nope", &format!("nf-{index}")).status, 404);
    }
    let response =
        client.request(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(response.status, 405);
    let _first_scrape = client.metrics();
    let mut metrics = client.metrics();
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        metrics = client.metrics();
        requests(&metrics, "readyz", "200") >= 3.0 && requests(&metrics, "not_found", "404") >= 2.0
    });
    assert_eq!(requests(&metrics, "readyz", "200"), 3.0);
    assert_eq!(requests(&metrics, "not_found", "404"), 2.0);
    assert_eq!(requests(&metrics, "healthz", "405"), 1.0);
    assert!(
        requests(&metrics, "metrics", "200") >= 1.0,
        "earlier scrapes are not counted under route=\"metrics\""
    );
    assert_eq!(requests(&metrics, "healthz", "200"), 0.0);
    assert_latency_summary(&metrics, "readyz");
    metrics.value("payd_connections_open", &[("core", "0")]);
    assert!(
        metrics
            .get("payd_connections_open", &[("core", "1")])
            .is_none(),
        "a core that does not serve has a connections series"
    );
}

fn access_log_text(server: &Server) -> String {
    std::fs::read_to_string(server.log_dir().join("access-core0.log")).unwrap_or_default()
}

#[test]
fn access_log_has_a_line_per_request_with_id_and_route() {
    let server = Server::start(ServerOptions {
        access_log: true,
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    client.send(get_request("/healthz", "log-probe-healthz").as_bytes());
    assert_eq!(client.read_response().status, 200);
    client.send(get_request("/nope", "log-probe-missing").as_bytes());
    assert_eq!(client.read_response().status, 404);
    let mut text = String::new();
    let written = common::eventually(Duration::from_millis(ACCESS_LOG_FLUSH_WAIT_MS), || {
        text = access_log_text(&server);
        text.contains("log-probe-healthz") && text.contains("log-probe-missing")
    });
    assert!(
        written,
        "access log {:?} lacks the requests after {ACCESS_LOG_FLUSH_WAIT_MS} ms; it has:\n{text}",
        server.log_dir().join("access-core0.log")
    );
    let line_of = |id: &str| {
        text.lines()
            .find(|line| line.contains(id))
            .unwrap()
            .to_string()
    };
    let healthz = line_of("log-probe-healthz");
    assert!(
        healthz.contains("healthz") && healthz.contains("200"),
        "{healthz:?}"
    );
    let missing = line_of("log-probe-missing");
    assert!(missing.contains("404"), "{missing:?}");
    assert_eq!(
        text.lines().filter(|l| l.contains("log-probe-")).count(),
        2,
        "one line per request:\n{text}"
    );
}

#[test]
fn access_log_off_writes_nothing() {
    let server = Server::start(ServerOptions {
        access_log: false,
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    for index in 0..5 {
        assert_eq!(
            client.get("/healthz", &format!("quiet-{index}")).status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(1_500));
    let mut written = Vec::new();
    if let Ok(entries) = std::fs::read_dir(server.log_dir()) {
        for entry in entries.flatten() {
            let length = entry.metadata().map(|m| m.len()).unwrap_or(0);
            if length > 0 {
                written.push((entry.path(), length));
            }
        }
    }
    assert!(written.is_empty(), "access_log = false wrote {written:?}");
}
