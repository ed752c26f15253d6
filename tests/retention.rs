//! Retention against the real binary (issue 4): with a retention of a second, old order
//! ids leave memory (the same order id makes a new payment, the old id is 404), old
//! segment files are deleted, a payment still live when its segment goes is carried
//! forward, and after a restart every new id is above every old one. After a restart,
//! segments older than the retention go at once, not one retention later, and the
//! retention metrics say what went.

mod common;

use common::durable::{
    config_text, create, get_order, get_payment, parse_payment, segment_paths, shard_dir,
    start_server, stop_cleanly, write_config,
};
use common::retention::create_padded;
use common::{Client, ServerOptions};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// One second, in hours.
const RETENTION_HOURS: &str = "0.000277777777778";
const RETENTION_CHECK_INTERVAL_MS: u64 = 100;
/// Just above the log's minimum segment size, so segments roll over every ~200 payments.
const SEGMENT_BYTES: u64 = 266_240;
/// Enough padded payments for several segments.
const OLD_PAYMENTS_COUNT: usize = 1_200;
/// Old segments must be gone within this after the last old payment.
const DELETION_TIMEOUT_MS: u64 = 20_000;
const POLL_INTERVAL_MS: u64 = 50;

fn config(base: &Path) -> std::path::PathBuf {
    config_with_retention(base, "payd.toml", RETENTION_HOURS)
}

fn config_with_retention(base: &Path, name: &str, retention_hours: &str) -> std::path::PathBuf {
    let text = config_text(&ServerOptions::default(), base, "fsync").replace(
        "durability = \"fsync\"\n",
        &format!(
            "durability = \"fsync\"\nretention_hours = {retention_hours}\n\
             retention_check_interval_ms = {RETENTION_CHECK_INTERVAL_MS}\n\
             segment_bytes = {SEGMENT_BYTES}\n"
        ),
    );
    // tok_slow takes 3 s, above the attempt timeout: it stays pending through every
    // retry, long after its segment aged past the retention.
    let text = format!(
        "{text}{}\n[acquirer]\nattempt_timeout_ms = 2500\nmax_attempts = 20\n",
        common::durable::merchant_toml()
    );
    write_config(base, name, &text)
}

fn first_segment_sequence(base: &Path) -> u64 {
    let paths = segment_paths(&shard_dir(base, 0));
    let name = paths[0].file_name().unwrap().to_str().unwrap().to_string();
    u64::from_str_radix(name.trim_end_matches(".wal"), 16).unwrap()
}

/// Polls `condition` until it holds, at most `DELETION_TIMEOUT_MS`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(DELETION_TIMEOUT_MS);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

#[test]
fn old_payments_and_segments_go_live_ones_stay_and_ids_stay_unique() {
    let base = tempfile::tempdir().unwrap();
    let config_path = config(base.path());
    let mut server = start_server(&config_path);
    let mut client = server.connect();

    // Pending for the whole test: its creation is in the first segment.
    let slow = create(&mut client, "slow-1", 100, "tok_slow");
    assert_eq!(slow.status, 202, "{}", slow.body_text());
    let slow = parse_payment(&slow.body).unwrap();
    let mut old_ids = Vec::with_capacity(OLD_PAYMENTS_COUNT);
    for index in 0..OLD_PAYMENTS_COUNT {
        let response = create_padded(&mut client, &format!("old-{index}"), "tok_visa");
        assert_eq!(response.status, 201, "{}", response.body_text());
        old_ids.push(parse_payment(&response.body).unwrap().id);
    }
    // About 1.5 MB of log went through ~260 KB segments; old ones go while it runs.

    // The first payments' order ids leave memory, and their segment leaves the disk.
    wait_for("old-0 to expire", || {
        get_order(&mut client, "old-0").status == 404
    });
    assert_eq!(get_payment(&mut client, &old_ids[0]).status, 404);
    wait_for("the first segments to be deleted", || {
        first_segment_sequence(base.path()) > 1
    });
    // The slow payment's creation was in the first segment: it was carried forward.
    let found = get_payment(&mut client, &slow.id);
    assert_eq!(found.status, 200, "{}", found.body_text());
    assert_eq!(parse_payment(&found.body).unwrap().status, "pending");
    assert_eq!(get_order(&mut client, "slow-1").status, 200);
    let metrics = client.metrics();
    assert!(metrics.value("payd_retention_payments_carried_total", &[]) >= 1.0);
    assert!(metrics.value("payd_retention_segments_deleted_total", &[]) >= 1.0);
    assert!(metrics.value("payd_retention_payments_expired_total", &[]) >= 1.0);
    // Only the young segments stay: the log's size follows the retention, not the total.
    wait_for("the log to shrink to its young segments", || {
        segment_paths(&shard_dir(base.path(), 0)).len() <= 2
    });
    // The same order id again is a new payment, with a new id.
    let again = create(&mut client, "old-0", 100, "tok_visa");
    assert_eq!(again.status, 201, "{}", again.body_text());
    let again = parse_payment(&again.body).unwrap();
    assert_ne!(again.id, old_ids[0]);
    assert!(again.id > *old_ids.last().unwrap());

    stop_cleanly(&mut server);
    let mut server = start_server(&config_path);
    let mut client = Client::connect(server.addr);
    let found = get_payment(&mut client, &slow.id);
    assert_eq!(found.status, 200, "{}", found.body_text());
    assert_eq!(parse_payment(&found.body).unwrap().status, "pending");
    let found = get_payment(&mut client, &again.id);
    assert_eq!(found.status, 200, "{}", found.body_text());
    let fresh = create(&mut client, "fresh-1", 100, "tok_visa");
    assert_eq!(fresh.status, 201, "{}", fresh.body_text());
    let fresh = parse_payment(&fresh.body).unwrap();
    // Ids are pay_ + fixed-width hex of shard then sequence: text order is id order.
    assert!(fresh.id > again.id, "{} after {}", fresh.id, again.id);
    stop_cleanly(&mut server);
}

/// The retention of the restart in `old_segments_go_right_after_a_restart`: long enough
/// that deleting within it proves the restart did not wait one retention for its marks.
const RESTART_RETENTION_MS: u64 = 8_000;
/// Eight seconds, in hours.
const RESTART_RETENTION_HOURS: &str = "0.0022222222222223";
/// Enough padded payments for a few segments.
const RESTART_PAYMENTS_COUNT: usize = 600;
/// The restart must have freed the old segments this long before one retention passed.
const RESTART_MARGIN_MS: u64 = 2_000;

fn segments_bytes(base: &Path) -> u64 {
    segment_paths(&shard_dir(base, 0))
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum()
}

#[test]
fn old_segments_go_right_after_a_restart_and_the_metrics_say_so() {
    let base = tempfile::tempdir().unwrap();
    // An hour: nothing ages out while the payments are made.
    let first_run = config_with_retention(base.path(), "first.toml", "1");
    let mut server = start_server(&first_run);
    let mut client = server.connect();
    for index in 0..RESTART_PAYMENTS_COUNT {
        let response = create_padded(&mut client, &format!("old-{index}"), "tok_visa");
        assert_eq!(response.status, 201, "{}", response.body_text());
    }
    let metrics = client.metrics();
    assert_eq!(
        metrics.value("payd_retention_segments_deleted_total", &[]),
        0.0
    );
    stop_cleanly(&mut server);
    let stopped = Instant::now();
    let segments_before = segment_paths(&shard_dir(base.path(), 0)).len();
    assert!(segments_before >= 3, "{segments_before} segments");

    // Every record, and every segment file's time, is now older than the retention.
    thread::sleep(
        Duration::from_millis(RESTART_RETENTION_MS + 500).saturating_sub(stopped.elapsed()),
    );
    let second_run = config_with_retention(base.path(), "second.toml", RESTART_RETENTION_HOURS);
    let mut server = start_server(&second_run);
    let ready = Instant::now();
    let mut client = server.connect();
    let deadline = Duration::from_millis(RESTART_RETENTION_MS - RESTART_MARGIN_MS);
    while segment_paths(&shard_dir(base.path(), 0)).len() > 1 {
        assert!(
            ready.elapsed() < deadline,
            "old segments still there {:?} after the restart",
            ready.elapsed()
        );
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
    assert!(first_segment_sequence(base.path()) > 1);
    assert_eq!(get_order(&mut client, "old-0").status, 404);

    let metrics = client.metrics();
    let expired = metrics.value("payd_retention_payments_expired_total", &[]);
    assert_eq!(expired, RESTART_PAYMENTS_COUNT as f64);
    let deleted = metrics.value("payd_retention_segments_deleted_total", &[]);
    assert!(deleted >= (segments_before - 1) as f64, "{deleted} deleted");
    assert!(metrics.value("payd_retention_bytes_deleted_total", &[]) > 0.0);
    assert_eq!(
        metrics.value("payd_retention_payments_retained", &[("shard", "0")]),
        0.0
    );
    // The disk gauge follows the files (it lags by at most a pass).
    wait_for("the disk gauge to match the files", || {
        let gauge = client
            .metrics()
            .value("payd_wal_disk_bytes", &[("shard", "0")]);
        gauge == segments_bytes(base.path()) as f64
    });
    stop_cleanly(&mut server);
}
