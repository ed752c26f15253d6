//! A real scrape: Debian's Prometheus server (installed by `tests/setup.sh`) scrapes a
//! running payd every second while an open-loop load of signed creates runs against it,
//! then its HTTP API is asked for the request rate and `histogram_quantile(0.99, ...)`
//! of creates, which must agree with what the load generator measured.
//!
//! Everything stays on 127.0.0.1 and is bounded: the load is `LOAD_RATE_PER_SECOND` for
//! `LOAD_SECONDS`, Prometheus runs in a temporary directory and is killed at the end.
//! This test has a binary of its own so that no other test shares the machine with the
//! load it measures.

mod common;

use common::{merchants_toml, Client, Server, ServerOptions, Signed};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCRAPE_INTERVAL_MS: u64 = 1_000;
/// Prometheus must be up and have scraped payd within this long.
const PROMETHEUS_READY_TIMEOUT_MS: u64 = 30_000;
/// Creates per second in total, spread evenly over the connections (open loop).
const LOAD_RATE_PER_SECOND: u64 = 200;
const LOAD_SECONDS: u64 = 10;
const LOAD_CONNECTIONS: u64 = 8;
/// A connection gives up this long after its last request was due.
const LOAD_OVERRUN_MS: u64 = 10_000;
/// The rate is read over this window inside the load, ending `RATE_WINDOW_END_S` after
/// the load started: away from its ramp at either end.
const RATE_WINDOW_S: u64 = 6;
const RATE_WINDOW_END_S: u64 = 8;
/// Prometheus' rate over a window inside a steady open loop is the rate sent, give or
/// take the jitter of its scrape times against the counters' (tens of milliseconds on a
/// busy two-CPU machine over a 6 s window: a few percent). 10% leaves room for that.
const RATE_TOLERANCE: f64 = 0.10;
/// Creates sent before Prometheus starts, so that its first scrape already sees the
/// create series: `increase` counts from a series' first sample, not from zero.
const WARMUP_CREATES: usize = 3;

/// payd's HDR histograms tell values apart to 1% (two significant figures).
const HDR_PRECISION: f64 = 0.01;
/// The `le` bounds of payd's duration histograms, in seconds (src/metrics/distribution.rs).
const BUCKET_BOUNDS_S: [f64; 23] = [
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The histogram bucket `(lower, upper]` that holds `value` seconds.
fn bucket_of(value: f64) -> (f64, f64) {
    let upper_index = BUCKET_BOUNDS_S
        .iter()
        .position(|&bound| value <= bound)
        .unwrap_or(BUCKET_BOUNDS_S.len());
    let lower = if upper_index == 0 {
        0.0
    } else {
        BUCKET_BOUNDS_S[upper_index - 1]
    };
    let upper = BUCKET_BOUNDS_S
        .get(upper_index)
        .copied()
        .unwrap_or(f64::INFINITY);
    (lower, upper)
}

fn unix_now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A Prometheus server scraping one target, killed when dropped.
struct Prometheus {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "global:\n  scrape_interval: {SCRAPE_INTERVAL_MS}ms\n  scrape_timeout: 900ms\n\
             scrape_configs:\n  - job_name: payd\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = common::acq::free_port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run prometheus ({error}): tests/setup.sh installs Debian's prometheus"
                )
            });
        let prometheus = Prometheus {
            child,
            address,
            _dir: dir,
        };
        let up = common::eventually(Duration::from_millis(PROMETHEUS_READY_TIMEOUT_MS), || {
            prometheus
                .instant(r#"count_over_time(up{job="payd"}[1m])"#, unix_now_s())
                .is_some_and(|scrapes| scrapes >= 2.0)
        });
        assert!(
            up,
            "Prometheus did not scrape payd twice within {PROMETHEUS_READY_TIMEOUT_MS} ms"
        );
        prometheus
    }

    /// The single value of an instant query at `time`, if the query answered one.
    fn instant(&self, query: &str, time: f64) -> Option<f64> {
        use simd_json::prelude::*;
        let path = format!(
            "/api/v1/query?query={}&time={time:.3}",
            percent_encoded(query)
        );
        let mut body = http_get(self.address, &path)?;
        let value = simd_json::to_owned_value(&mut body).ok()?;
        if value["status"].as_str() != Some("success") {
            return None;
        }
        let result = value["data"]["result"].as_array()?;
        let [sample] = result.as_slice() else {
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }
}

/// A GET over HTTP/1.0 (the server closes after the answer); the body of a 200.
fn http_get(address: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    response
        .starts_with(b"HTTP/1.0 200")
        .then(|| response[head_end + 4..].to_vec())
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// What the load generator measured: every create's latency, counted from when it was
/// due (so a stall is charged to every create it held up), and when the load ran.
struct Load {
    latencies_s: Vec<f64>,
    created: usize,
    started_unix_s: f64,
    finished_unix_s: f64,
}

impl Load {
    fn quantile(&self, quantile: f64) -> f64 {
        let mut sorted = self.latencies_s.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((quantile * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }
}

/// Sends `LOAD_RATE_PER_SECOND` signed creates a second for `LOAD_SECONDS`, each
/// connection on its own fixed schedule.
fn run_load(address: SocketAddr) -> Load {
    let interval = Duration::from_secs_f64(LOAD_CONNECTIONS as f64 / LOAD_RATE_PER_SECOND as f64);
    let per_connection = LOAD_RATE_PER_SECOND * LOAD_SECONDS / LOAD_CONNECTIONS;
    let started_unix_s = unix_now_s();
    let start = Instant::now();
    let (sender, receiver) = mpsc::channel();
    for connection in 0..LOAD_CONNECTIONS {
        let sender = sender.clone();
        thread::spawn(move || {
            let mut client = Client::connect(address);
            // Connections are staggered evenly inside one interval.
            let offset = interval.mul_f64(connection as f64 / LOAD_CONNECTIONS as f64);
            for index in 0..per_connection {
                let due = start + offset + interval * index as u32;
                if due.elapsed() > Duration::from_millis(LOAD_OVERRUN_MS) {
                    break;
                }
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let body = common::create_body(
                    &format!("scrape-{connection}-{index}"),
                    100,
                    "CNY",
                    "tok_visa",
                );
                let response =
                    client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
                let _ = sender.send((response.status, due.elapsed().as_secs_f64()));
            }
        });
    }
    drop(sender);
    let mut load = Load {
        latencies_s: Vec::new(),
        created: 0,
        started_unix_s,
        finished_unix_s: 0.0,
    };
    for (status, latency_s) in receiver {
        assert_eq!(status, 201, "a create under load");
        load.created += 1;
        load.latencies_s.push(latency_s);
    }
    load.finished_unix_s = unix_now_s();
    load
}

#[test]
fn prometheus_sees_the_rate_and_p99_the_load_generator_measured() {
    let server = Server::start(ServerOptions {
        access_log: false,
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    for index in 0..WARMUP_CREATES {
        let body = common::create_body(&format!("warmup-{index}"), 100, "CNY", "tok_visa");
        let response =
            client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
        assert_eq!(response.status, 201);
    }
    let prometheus = Prometheus::start(server.addr);

    let load = run_load(server.addr);
    let expected = (LOAD_RATE_PER_SECOND * LOAD_SECONDS) as usize;
    assert_eq!(
        load.created, expected,
        "every create of the load answered 201"
    );
    // Three scrapes after the last create, so the end of the load is in Prometheus.
    thread::sleep(Duration::from_millis(3 * SCRAPE_INTERVAL_MS));
    let hdr_p99 = server.metrics().value(
        "payd_request_duration_recent_seconds",
        &[("route", "create_payment"), ("quantile", "0.99")],
    );

    let rate_at = load.started_unix_s + RATE_WINDOW_END_S as f64;
    let rate = prometheus
        .instant(
            &format!(
                r#"sum(rate(payd_requests_total{{route="create_payment"}}[{RATE_WINDOW_S}s]))"#
            ),
            rate_at,
        )
        .expect("Prometheus answers the rate of creates");
    let sent_rate = load.created as f64 / (LOAD_SECONDS as f64);
    let window_s = (unix_now_s() - load.started_unix_s).ceil() as u64 + 2;
    let p99 = prometheus
        .instant(
            &format!(
                "histogram_quantile(0.99, sum by (le) (increase(\
                 payd_request_duration_seconds_bucket{{route=\"create_payment\"}}[{window_s}s])))"
            ),
            unix_now_s(),
        )
        .expect("Prometheus answers histogram_quantile of creates");
    let generator_p99 = load.quantile(0.99);
    eprintln!(
        "rate: Prometheus {rate:.1}/s, sent {sent_rate:.1}/s; p99: Prometheus {:.3} ms, \
         payd's HDR {:.3} ms, generator {:.3} ms (load {:.1} s)",
        p99 * 1e3,
        hdr_p99 * 1e3,
        generator_p99 * 1e3,
        load.finished_unix_s - load.started_unix_s
    );

    assert!(
        (rate / sent_rate - 1.0).abs() <= RATE_TOLERANCE,
        "Prometheus' rate {rate:.1}/s vs {sent_rate:.1}/s sent"
    );
    // histogram_quantile interpolates inside the bucket that holds the 99th percentile
    // of the creates, which payd's HDR histogram holds too (its window, the last minute,
    // is the whole test; the 3 warm-up creates aside): the same bucket, or the next one
    // when the HDR's p99 is within its 1% precision of a bound.
    let (lower, _) = bucket_of(hdr_p99 * (1.0 - HDR_PRECISION));
    let (_, upper) = bucket_of(hdr_p99 * (1.0 + HDR_PRECISION));
    assert!(
        p99 > lower && p99 <= upper,
        "Prometheus' p99 {p99} s is outside ({lower}, {upper}], the bucket of payd's own p99 {hdr_p99} s"
    );
    // payd times each create inside the generator's time for it, so its 99th percentile
    // is at most the generator's, and Prometheus' estimate at most that bucket's bound.
    let (_, generator_upper) = bucket_of(generator_p99);
    assert!(
        p99 <= generator_upper,
        "Prometheus' p99 {p99} s is above the bucket of the generator's p99 {generator_p99} s"
    );
}
