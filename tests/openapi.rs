//! `docs/openapi.yaml` against the real server: the document is valid OpenAPI 3.1, and
//! schemathesis, driven by it, sends payd generated requests (valid and invalid, every
//! `/v1` one signed by `tests/openapi_hooks.py` over its exact bytes) and checks every
//! answer against it: status codes, headers, content types and bodies as described, no
//! 5xx, authentication enforced, 405 on other methods.
//!
//! Bounded: `EXAMPLES_PER_OPERATION` cases per operation and phase, one worker, the run
//! killed after `SCHEMATHESIS_TIMEOUT_MS`. The seed is fixed so a CI failure reproduces;
//! set `PAYD_OPENAPI_SEED` to explore others.

mod common;

use common::{merchants_toml, Server, ServerOptions, MERCHANT_A, MERCHANT_A_SECRETS};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC_PATH: &str = "docs/openapi.yaml";
/// Hypothesis examples per operation in the fuzzing phase (the other phases add theirs).
const EXAMPLES_PER_OPERATION: u32 = 100;
/// The whole schemathesis run, generation and requests, must end within this.
const SCHEMATHESIS_TIMEOUT_MS: u64 = 300_000;
/// Fewer generated cases than this means schemathesis tested next to nothing.
const CASES_GENERATED_MIN: u64 = 300;
/// A single request's time limit for schemathesis, in seconds.
const REQUEST_TIMEOUT_SECS: u32 = 10;
const SEED_DEFAULT: &str = "1";

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn spec_path() -> String {
    repository().join(SPEC_PATH).display().to_string()
}

/// Runs `python3 args...` in a scratch directory (schemathesis leaves its caches in the
/// working directory), bounded by `timeout`; returns whether it succeeded and its
/// combined output.
fn python(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output_path = dir.path().join("output");
    let output = std::fs::File::create(&output_path).unwrap();
    let mut child = Command::new("python3")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output)
        .spawn()
        .expect("python3 is needed by this test");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(&output_path).unwrap_or_default();
            panic!("python3 {args:?} still running after {timeout:?}; output:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    (status.success(), text)
}

#[test]
fn the_openapi_document_is_valid_openapi() {
    let (ok, output) = python(
        &["-m", "openapi_spec_validator", &spec_path()],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        ok,
        "{SPEC_PATH} is not valid OpenAPI (or openapi-spec-validator is not installed: \
         python3 -m pip install -r tests/requirements.txt):\n{output}"
    );
}

/// `N generated` from schemathesis's summary line `Test cases: N generated, ...`.
fn cases_generated(output: &str) -> Option<u64> {
    let line = output.lines().find(|line| line.contains(" generated"))?;
    line.split_whitespace()
        .zip(line.split_whitespace().skip(1))
        .find(|(_, next)| next.trim_end_matches(',') == "generated")
        .and_then(|(count, _)| count.parse().ok())
}

#[test]
fn schemathesis_finds_every_answer_as_the_document_describes() {
    let server = Server::start(ServerOptions {
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    });
    let url = format!("http://{}", server.addr);
    let seed = std::env::var("PAYD_OPENAPI_SEED").unwrap_or_else(|_| SEED_DEFAULT.to_string());
    let examples = EXAMPLES_PER_OPERATION.to_string();
    let timeout = REQUEST_TIMEOUT_SECS.to_string();
    let tests_dir: PathBuf = repository().join("tests");
    let tests_dir = tests_dir.display().to_string();
    let (ok, output) = python(
        &[
            "-m",
            "schemathesis.cli",
            "run",
            &spec_path(),
            "--url",
            &url,
            "--checks",
            "all",
            "--max-examples",
            &examples,
            "--seed",
            &seed,
            "--workers",
            "1",
            "--request-timeout",
            &timeout,
            "--generation-database",
            "none",
            "--no-color",
        ],
        &[
            ("SCHEMATHESIS_HOOKS", "openapi_hooks"),
            ("PYTHONPATH", &tests_dir),
            ("PAYD_OPENAPI_MERCHANT", MERCHANT_A),
            ("PAYD_OPENAPI_SECRET", MERCHANT_A_SECRETS[0]),
        ],
        Duration::from_millis(SCHEMATHESIS_TIMEOUT_MS),
    );
    // Shown with --nocapture, and kept in the log of a failing run.
    println!("{output}");
    assert!(
        ok,
        "schemathesis found answers that differ from {SPEC_PATH}:\n{output}"
    );
    let generated = cases_generated(&output).unwrap_or(0);
    assert!(
        generated >= CASES_GENERATED_MIN,
        "schemathesis generated {generated} cases, fewer than {CASES_GENERATED_MIN}:\n{output}"
    );
    // Signing worked: signed requests were answered with payments, not only with 401s
    // (which would match the document too, and test nothing behind authentication).
    let metrics = server.metrics();
    let answered = |route: &str, status: &str| {
        metrics
            .get(
                "payd_requests_total",
                &[("route", route), ("status", status)],
            )
            .unwrap_or(0.0)
    };
    assert!(
        answered("create_payment", "201") >= 1.0,
        "no payment was created"
    );
    assert!(
        answered("get_payment", "200") >= 1.0,
        "no payment was read by id"
    );
    assert!(
        answered("list_events", "200") >= 1.0,
        "no event list was answered"
    );
    let server_errors: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.name == "payd_requests_total")
        .filter(|s| {
            s.labels
                .iter()
                .any(|(k, v)| k == "status" && v.starts_with('5'))
        })
        .map(|s| s.value)
        .sum();
    assert_eq!(server_errors, 0.0, "payd answered with a 5xx");
}
