//! The real `payd-loadtest` binary against the real `bare-loop` binary over loopback.
//!
//! The bare loop answers every request with 200, so every request the generator sends
//! must come back as exactly one recorded 200, in closed loop, pipelined and open loop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct BareLoop {
    child: Child,
    address: String,
}

impl Drop for BareLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_bare_loop() -> BareLoop {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bare-loop"))
        .args(["--listen", "127.0.0.1:0", "--cpu", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("bare-loop starts");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("bare-loop: ready, listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    BareLoop { child, address }
}

fn run_loadtest(address: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_payd-loadtest"))
        .args(["run", "--address", address, "--cpus", "0", "--json", "-"])
        .args([
            "--scenario",
            "healthz",
            "--duration-secs",
            "1",
            "--timeout-ms",
            "2000",
        ])
        .args(extra)
        .output()
        .expect("payd-loadtest runs");
    let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "no JSON summary ({error}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), summary)
}

fn assert_all_answered_200(summary: &serde_json::Value) {
    let responses = summary["responses"].as_u64().unwrap();
    assert!(responses > 0, "{summary}");
    assert_eq!(summary["successes"], responses, "{summary}");
    assert_eq!(summary["failed_requests"], 0, "{summary}");
    assert_eq!(summary["outcomes"][0]["status"], 200, "{summary}");
    assert_eq!(
        summary["latency_us"]["healthz"]["count"], responses,
        "{summary}"
    );
    let p50 = summary["latency_us"]["all"]["p50"].as_u64().unwrap();
    let max = summary["latency_us"]["all"]["max"].as_u64().unwrap();
    assert!(p50 <= max, "{summary}");
}

#[test]
fn closed_loop_records_every_response() {
    let server = start_bare_loop();
    let (success, summary) = run_loadtest(&server.address, &["--connections", "8"]);
    assert!(success);
    assert_all_answered_200(&summary);
    assert_eq!(summary["mode"], "closed");
}

#[test]
fn pipelined_responses_are_counted_one_by_one() {
    let server = start_bare_loop();
    let (success, summary) =
        run_loadtest(&server.address, &["--connections", "4", "--pipeline", "16"]);
    assert!(success);
    assert_all_answered_200(&summary);
    // Whole batches only: every batch of 16 requests is answered in full.
    assert_eq!(summary["responses"].as_u64().unwrap() % 16, 0, "{summary}");
}

#[test]
fn open_loop_sends_at_the_asked_rate() {
    let server = start_bare_loop();
    let (success, summary) =
        run_loadtest(&server.address, &["--connections", "4", "--rate", "2000"]);
    assert!(success);
    assert_all_answered_200(&summary);
    assert_eq!(summary["mode"], "open");
    // The schedule fixes the count: 2000 per second for one second.
    assert_eq!(summary["responses"], 2000, "{summary}");
    assert_eq!(summary["send_lag_us"]["count"], 2000, "{summary}");
}

#[test]
fn a_server_that_is_down_fails_the_run_with_connect_errors() {
    // Bind and drop to find a port with nothing listening.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let (success, summary) = run_loadtest(&address, &["--connections", "2"]);
    assert!(!success);
    assert_eq!(summary["responses"], 0);
    assert!(
        summary["failures"]["connect_error"].as_u64().unwrap() > 0,
        "{summary}"
    );
}
