//! A shard whose disk refuses writes (API.md section 6): its creates answer 503, `/readyz`
//! turns 503 `not_ready` naming it, `payd_shard_can_persist` shows 0 for it, and the log
//! says so once.
//!
//! The fault is real: payd runs under a file size limit (RLIMIT_FSIZE, what `ulimit -f`
//! and `prlimit --fsize` set), so the write that grows a segment past it fails with EFBIG,
//! as a full disk fails with ENOSPC. The limit is set on this test process around the
//! spawn (a child inherits it), which is why this test has a binary of its own: no other
//! test runs in this process meanwhile.

mod common;

use common::{merchants_toml, Server, ServerOptions, Signed};

/// payd's files may not grow past this: a segment preallocates its first megabyte at
/// once, so the write that grows it further fails.
const FILE_SIZE_LIMIT_BYTES: u64 = 1 << 20;
/// Creates of about 10 KiB each fill a shard's megabyte after about a hundred; both
/// shards together take twice that. Past this many the limit did not bite.
const CREATES_MAX: usize = 600;
/// Metadata that makes each Created record about 10 KiB: 20 keys of 500 characters.
const METADATA_KEYS: usize = 20;
const METADATA_VALUE_CHARS: usize = 500;

fn large_create_body(order_id: &str) -> String {
    let value = "v".repeat(METADATA_VALUE_CHARS);
    let metadata: Vec<String> = (0..METADATA_KEYS)
        .map(|key| format!("\"k{key}\":\"{value}\""))
        .collect();
    format!(
        "{{\"order_id\":\"{order_id}\",\"amount\":100,\"currency\":\"CNY\",\
         \"payment_method\":\"tok_visa\",\"metadata\":{{{}}}}}",
        metadata.join(",")
    )
}

/// Starts payd with RLIMIT_FSIZE lowered for it (and restored here right after).
fn start_with_file_size_limit(options: ServerOptions) -> Server {
    let mut saved = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write structs we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut saved), 0);
        let limited = libc::rlimit {
            rlim_cur: FILE_SIZE_LIMIT_BYTES,
            rlim_max: saved.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limited), 0);
    }
    let dir = tempfile::tempdir().expect("create tempdir");
    // Two shards on the one core: one fills up first, the other goes on.
    let config = options.config_text(dir.path()).replace(
        "durability = \"fsync\"\n",
        "durability = \"fsync\"\nshards = 2\n",
    );
    let server = std::panic::catch_unwind(|| Server::start_with_config(dir, &config));
    // SAFETY: as above; the soft limit goes back to what it was (at most the hard one).
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &saved), 0);
    }
    server.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[test]
fn a_shard_that_cannot_write_makes_payd_not_ready_and_names_itself() {
    let server = start_with_file_size_limit(ServerOptions {
        access_log: false,
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    assert_eq!(client.get("/readyz", "ready-before").status, 200);
    let mut refused = None;
    for index in 0..CREATES_MAX {
        let body = large_create_body(&format!("full-{index}"));
        let response =
            client.request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
        match response.status {
            201 => continue,
            503 => {
                refused = Some((index, response));
                break;
            }
            status => panic!(
                "create {index}: unexpected {status}: {}",
                response.body_text()
            ),
        }
    }
    let (created, refusal) = refused.unwrap_or_else(|| {
        panic!("{CREATES_MAX} creates of 10 KiB all succeeded under a 1 MiB file size limit")
    });
    assert!(created > 50, "the limit bit after only {created} creates");
    assert_eq!(
        refusal.error_code(),
        "overloaded",
        "{}",
        refusal.body_text()
    );

    let metrics = server.metrics();
    let failed: Vec<String> = ["0", "1"]
        .into_iter()
        .filter(|shard| metrics.value("payd_shard_can_persist", &[("shard", shard)]) == 0.0)
        .map(str::to_string)
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one shard filled up first and the creates stopped there: {failed:?}"
    );
    let failed = &failed[0];

    let readyz = client.get("/readyz", "ready-after");
    common::assert_error(&readyz, "HTTP/1.1 503 Service Unavailable", "not_ready");
    let message = readyz.body_text();
    assert!(
        message.contains(&format!("shard {failed} cannot persist")),
        "/readyz does not name shard {failed}: {message}"
    );
    assert_eq!(client.get("/healthz", "alive").status, 200, "still serving");

    // More creates: those owned by a failed shard are refused without a log line each.
    for index in 0..20 {
        let body = large_create_body(&format!("after-{index}"));
        let status = client
            .request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes())
            .status;
        assert!(
            status == 201 || status == 503,
            "create after the failure: {status}"
        );
    }
    let stderr = server.stderr.text();
    for shard in ["0", "1"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| line.contains(&format!("shard-000{shard} failed")))
            .collect();
        let expected = usize::from(shard == failed);
        assert!(
            lines.len() == expected || (lines.len() == 1 && shard != failed),
            "shard {shard}'s failure is logged once (the other shard may have filled up \
             meanwhile):\n{stderr}"
        );
        assert!(
            lines
                .iter()
                .all(|line| line.contains("stops acknowledging")),
            "the line says what follows: {lines:?}"
        );
    }
    assert!(
        !stderr.contains(&format!("payd: shard {failed}:")),
        "creates in flight repeat the failure:\n{stderr}"
    );
}
