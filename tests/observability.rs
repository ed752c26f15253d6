//! What operators see (API.md section 6): `/metrics` as Prometheus' own `promtool` lints
//! it, the alert rules and their unit tests under `promtool`, the Grafana dashboard's and
//! the rules' queries naming only metrics payd exports, and a clean stop leaving nothing
//! that the next start reports as cut.
//!
//! `promtool` comes with Debian's `prometheus` package, which `tests/setup.sh` installs.

mod common;

use common::{merchants_toml, Metrics, Server, ServerOptions, Signed};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const CREATES_COUNT: usize = 20;
const METRICS_SETTLE_MS: u64 = 3_000;

fn repository_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `promtool` with `args` (and `stdin`), returning whether it succeeded and what it
/// printed.
fn promtool(args: &[&str], stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run promtool ({error}): tests/setup.sh installs it (Debian's prometheus)"
            )
        });
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A two-core payd that has answered every kind of request once or more: creates (so
/// the stages, the log and the acquirer have values), reads, a 404, `/readyz`.
fn busy_server() -> Server {
    let server = Server::start(ServerOptions {
        cores: vec![0, 1],
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    for index in 0..CREATES_COUNT {
        let body = common::create_body(&format!("obs-{index}"), 100, "CNY", "tok_visa");
        let response =
            client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
        assert_eq!(response.status, 201, "{}", response.body_text());
    }
    let read = Signed::new("GET", "/v1/orders/obs-0", b"").bytes();
    assert_eq!(client.request(&read).status, 200);
    assert_eq!(client.get("/nope", "obs-404").status, 404);
    assert_eq!(client.get("/readyz", "obs-ready").status, 200);
    server
}

/// The raw page and its parse, once the creates show in it.
fn scrape(server: &Server) -> (String, Metrics) {
    let mut page = String::new();
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        let mut client = server.connect();
        let response = client.get("/metrics", "obs-scrape");
        page = response.body_text();
        let metrics = Metrics::parse(&page).expect("a valid page");
        metrics.sum("payd_stage_duration_seconds_count") >= (4 * CREATES_COUNT) as f64
    });
    let metrics = Metrics::parse(&page).expect("a valid page");
    (page, metrics)
}

#[test]
fn promtool_accepts_the_metrics_page() {
    let server = busy_server();
    let (page, metrics) = scrape(&server);
    let (ok, output) = promtool(&["check", "metrics"], page.as_bytes());
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics:\n{output}\n\npage:\n{page}"
    );

    // The contract's process and build metrics, and one label for a core everywhere.
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(metrics.value(name, &[]) > 0.0, "{name}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        metrics.value("payd_build_info", &[("version", version)]),
        1.0
    );
    assert!(
        metrics
            .samples
            .iter()
            .all(|sample| sample.labels.iter().all(|(key, _)| key != "cpu")),
        "a metric labels its core `cpu` rather than `core`"
    );
    for core in ["0", "1"] {
        metrics.value("payd_connections_open", &[("core", core)]);
        metrics.value("payd_webhook_backlog", &[("core", core)]);
    }
    for shard in ["0", "1"] {
        assert_eq!(
            metrics.value("payd_shard_can_persist", &[("shard", shard)]),
            1.0
        );
    }
    assert_eq!(metrics.value("payd_ready", &[]), 1.0);

    // Creates went through every stage; the histogram and the recent summary agree on
    // the count while everything happened within the window.
    let creates = metrics.value(
        "payd_request_duration_seconds_count",
        &[("route", "create_payment")],
    );
    assert_eq!(creates, CREATES_COUNT as f64);
    assert_eq!(
        metrics.value(
            "payd_request_duration_recent_seconds_count",
            &[("route", "create_payment")]
        ),
        creates
    );
    for stage in ["parse", "verify", "acquirer"] {
        let count = metrics.value("payd_stage_duration_seconds_count", &[("stage", stage)]);
        assert!(
            count >= creates,
            "stage {stage} timed {count} times for {creates} creates"
        );
    }
    // One wait for durability per create: the simulated acquirer answers at once, so the
    // pending record, the final one and its event are one group.
    let persists = metrics.value("payd_stage_duration_seconds_count", &[("stage", "persist")]);
    assert_eq!(persists, creates);
    let p99 = metrics.value(
        "payd_request_duration_recent_seconds",
        &[("route", "create_payment"), ("quantile", "0.99")],
    );
    assert!(p99 > 0.0 && p99 < 10.0, "create p99 {p99} s");
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = repository_file("docs/prometheus/alerts.yml");
    let (ok, output) = promtool(&["check", "rules", rules.to_str().unwrap()], b"");
    assert!(ok, "promtool check rules:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
    let tests = repository_file("docs/prometheus/alerts.test.yml");
    let (ok, output) = promtool(&["test", "rules", tests.to_str().unwrap()], b"");
    assert!(ok, "promtool test rules:\n{output}");
}

/// Every `payd_*` and `process_*` name in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut start = 0;
    while start < bytes.len() {
        if is_name_byte(bytes[start]) && (start == 0 || !is_name_byte(bytes[start - 1])) {
            let end = (start..bytes.len())
                .find(|&at| !is_name_byte(bytes[at]))
                .unwrap_or(bytes.len());
            let word = &text[start..end];
            if word.starts_with("payd_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
            start = end;
        } else {
            start += 1;
        }
    }
    names
}

/// The queries of a Grafana dashboard: every `expr` string, in panels and rows.
fn dashboard_queries(value: &simd_json::OwnedValue, queries: &mut Vec<String>) {
    use simd_json::prelude::*;
    if let Some(object) = value.as_object() {
        for (key, field) in object.iter() {
            match field.as_str() {
                Some(expr) if key == "expr" => queries.push(expr.to_string()),
                _ => dashboard_queries(field, queries),
            }
        }
    } else if let Some(array) = value.as_array() {
        for item in array {
            dashboard_queries(item, queries);
        }
    }
}

#[test]
fn the_dashboard_and_the_rules_query_only_metrics_payd_exports() {
    let mut dashboard = std::fs::read(repository_file("docs/grafana/payd.json")).unwrap();
    let dashboard =
        simd_json::to_owned_value(&mut dashboard).expect("docs/grafana/payd.json is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(
        queries.len() >= 20,
        "only {} queries in the dashboard",
        queries.len()
    );
    let rules = std::fs::read_to_string(repository_file("docs/prometheus/alerts.yml")).unwrap();
    let mut wanted = metric_names_in(&queries.join("\n"));
    let from_rules = metric_names_in(&rules);
    assert!(from_rules.len() >= 8, "{from_rules:?}");
    wanted.extend(from_rules);

    let server = busy_server();
    let (_, metrics) = scrape(&server);
    let exported: BTreeSet<&str> = metrics.samples.iter().map(|s| s.name.as_str()).collect();
    // A histogram's family name (in prose) stands for its series.
    let is_exported = |name: &str| {
        ["", "_bucket", "_count"]
            .iter()
            .any(|suffix| exported.contains(format!("{name}{suffix}").as_str()))
    };
    let missing: Vec<&String> = wanted.iter().filter(|name| !is_exported(name)).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\nexported: {exported:?}"
    );
    for needed in [
        "payd_requests_total",
        "payd_request_duration_seconds_bucket",
        "payd_wal_fsync_duration_seconds_bucket",
        "payd_acquirer_calls_total",
        "payd_webhook_deliveries_total",
        "payd_webhook_backlog",
        "payd_connections_open",
        "process_resident_memory_bytes",
    ] {
        assert!(wanted.contains(needed), "the dashboard shows no {needed}");
    }
}

#[test]
fn a_clean_stop_leaves_nothing_the_next_start_reports_as_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = ServerOptions {
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    };
    let server = Server::start_in(dir, options.clone());
    let mut client = server.connect();
    for index in 0..3 {
        let body = common::create_body(&format!("stop-{index}"), 100, "CNY", "tok_visa");
        let response =
            client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
        assert_eq!(response.status, 201);
    }
    drop(client);
    let (dir, status) = server.stop_keeping_dir(false);
    assert!(status.success(), "clean stop: {status:?}");
    let server = Server::start_in(dir, options);
    let stderr = server.stderr.text();
    assert!(
        stderr.contains("3 payments recovered"),
        "the restart recovers the payments:\n{stderr}"
    );
    assert!(
        !stderr.contains("cut"),
        "a restart after a clean stop reports a cut:\n{stderr}"
    );
}
