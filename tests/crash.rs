//! Crash safety of the write-ahead log (issue 4) against the real binary: SIGKILL under
//! load and restarts on another core count, a torn tail, a corrupt record, the data
//! directory lock, the log's metrics, and `durability = "none"`.
//!
//! Every server here keeps its data in a directory that outlives it, so the next server
//! can be started on the same log. Every wait is bounded by the harness's timeouts.

mod common;

use common::durable::{
    self, count_records, create, frame_spans, get_order, get_payment, parse_payment, segment_paths,
    shard_dir, start_server, stop_cleanly, write_config, Payment, SplitMix64,
};
use common::{run_payd, Client, Response, Server, ServerOptions, READY_PREFIX};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Client threads creating payments while the kill lands.
const WORKERS_COUNT: usize = 8;
/// Each worker stops after this many creates even if the kill never came.
const PAYMENTS_PER_WORKER_MAX: usize = 2_000;
/// The cores of each crash round, in order, all on one data directory: the shard count
/// of the manifest (two) stays while the cores change.
const ROUND_CORES: [&[usize]; 4] = [&[0, 1], &[0, 1], &[0], &[0, 1]];
/// The cores of the last restart, which only checks and stops cleanly.
const FINAL_CORES: &[usize] = &[0];
/// The kill lands this long after the load started, chosen by the seeded generator.
const KILL_AFTER_MS_MIN: u64 = 200;
const KILL_AFTER_MS_MAX: u64 = 800;
/// A killed process must be gone by then.
const KILL_EXIT_TIMEOUT_MS: u64 = 5_000;
/// Threads reading payments back after a restart.
const VERIFY_WORKERS_COUNT: usize = 4;
/// The simulated acquirer's base latency: small, so creates are in flight at the kill.
const ACQUIRER_LATENCY_MS: u64 = 1;
/// The client's wait before 202 pending: well below `tok_slow`'s 3 s, so some creates
/// are answered 202 and are still pending at the kill.
const RESPONSE_TIMEOUT_MS: u64 = 50;
/// One create in this many uses `tok_slow` (202), and one in this many `tok_decline`.
const SLOW_EVERY: usize = 16;
const DECLINE_EVERY: usize = 5;
/// The whole crash test must stay well within a minute.
const CRASH_TEST_BUDGET_MS: u64 = 50_000;
/// Payments created before a clean stop in the smaller tests.
const PAYMENTS_COUNT: usize = 20;
/// A second payd on a locked directory must give up at once, not after a retry loop.
const LOCKED_EXIT_TIMEOUT_MS: u64 = 5_000;
/// Writes of a running server reach its files within this (durability "none" syncs never).
const LOG_WRITTEN_TIMEOUT_MS: u64 = 3_000;
/// Metrics are merged from the cores on scrape; give a late core this long.
const METRICS_SETTLE_MS: u64 = 3_000;
/// How long recovery may take to finish a pending `tok_slow` payment (the simulated
/// acquirer answers it after 3 s).
const REAUTHORISE_TIMEOUT_MS: u64 = 10_000;

/// Connections opened to spread creates over both cores of a two-core server.
const SPREAD_CONNECTIONS_COUNT: usize = 16;

const QUANTILES: [&str; 5] = ["0.5", "0.9", "0.99", "0.999", "1"];
/// The kind byte of a `Created` record, from the library: the test must count what the
/// server writes, and this number is fixed for ever (src/wal/payload.rs).
const KIND_CREATED: u8 = payd::wal::RecordKind::Created as u8;

/// A create the server answered 201 or 202: it must survive anything.
#[derive(Clone, Debug)]
struct Acknowledged {
    payment: Payment,
    token: &'static str,
    http_status: u16,
}

/// A create that was sent but never answered: it may or may not exist after a crash,
/// but if it does, it must be what was asked for.
#[derive(Clone, Debug)]
struct Unanswered {
    order_id: String,
    amount: u64,
    token: &'static str,
}

#[derive(Default)]
struct WorkerReport {
    acknowledged: Vec<Acknowledged>,
    unanswered: Option<Unanswered>,
    problems: Vec<String>,
}

fn token_of(index: usize) -> &'static str {
    if index % SLOW_EVERY == SLOW_EVERY - 1 {
        "tok_slow"
    } else if index % DECLINE_EVERY == DECLINE_EVERY - 1 {
        "tok_decline"
    } else {
        "tok_visa"
    }
}

/// The final status the simulated acquirer gives a token (API.md section 4).
fn final_status_of(token: &str) -> &'static str {
    match token {
        "tok_decline" => "declined",
        _ => "succeeded",
    }
}

/// Distinct amounts, so a payment read back with another's amount shows.
fn amount_of(round: usize, worker: usize, index: usize) -> u64 {
    1 + (round * WORKERS_COUNT + worker) as u64 * 1_000_000 + index as u64
}

fn crash_config(base: &Path, cores: &[usize]) -> String {
    let options = ServerOptions {
        cores: cores.to_vec(),
        access_log: false,
        extra_toml: format!(
            "\n[acquirer]\nlatency_ms = {ACQUIRER_LATENCY_MS}\n\
             response_timeout_ms = {RESPONSE_TIMEOUT_MS}\n{}",
            durable::merchant_toml()
        ),
        ..ServerOptions::default()
    };
    durable::config_text(&options, base, "fsync")
}

/// Creates payments on one keep-alive connection until the server goes away.
fn run_worker(addr: SocketAddr, round: usize, worker: usize) -> WorkerReport {
    let mut report = WorkerReport::default();
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(1_000)) else {
        return report;
    };
    let mut client = Client::from_stream(stream);
    for index in 0..PAYMENTS_PER_WORKER_MAX {
        let order_id = format!("crash-r{round}-w{worker}-{index}");
        let amount = amount_of(round, worker, index);
        let token = token_of(index);
        let body = durable::create_body(&order_id, amount, token);
        let request = durable::signed_request("POST", "/v1/payments", &body);
        let answer = if client.try_send(request.as_bytes()) {
            client.try_read_response(false).ok()
        } else {
            None
        };
        let Some(response) = answer else {
            report.unanswered = Some(Unanswered {
                order_id,
                amount,
                token,
            });
            return report;
        };
        match check_create_answer(&response, &order_id, amount, token) {
            Ok(ack) => report.acknowledged.push(ack),
            Err(problem) => {
                report
                    .problems
                    .push(format!("create {order_id}: {problem}"));
                return report;
            }
        }
    }
    report
}

/// Checks a create's answer against what was asked for.
fn check_create_answer(
    response: &Response,
    order_id: &str,
    amount: u64,
    token: &'static str,
) -> Result<Acknowledged, String> {
    let expected_status = match response.status {
        201 => final_status_of(token),
        202 => "pending",
        _ => return Err(format!("answered {:?}", response.status_line)),
    };
    let payment = parse_payment(&response.body)?;
    let terms_ok = payment.order_id == order_id
        && payment.amount == amount
        && payment.currency == "CNY"
        && payment.merchant_id == durable::MERCHANT_ID;
    if !terms_ok || payment.status != expected_status {
        return Err(format!(
            "{} with {payment:?}, want status {expected_status}",
            response.status
        ));
    }
    Ok(Acknowledged {
        payment,
        token,
        http_status: response.status,
    })
}

/// A payment read back after a restart, against what was acknowledged before.
fn compare(ack: &Acknowledged, found: &Payment) -> Result<(), String> {
    let was = &ack.payment;
    let same_terms = found.id == was.id
        && found.order_id == was.order_id
        && found.merchant_id == was.merchant_id
        && found.amount == was.amount
        && found.currency == was.currency
        && found.created_at == was.created_at;
    // A 202 pending may have been finalised since (or by recovery); a 201 is final.
    let status_ok = if ack.http_status == 201 {
        found.status == was.status
    } else {
        found.status == "pending" || found.status == final_status_of(ack.token)
    };
    if same_terms && status_ok {
        Ok(())
    } else {
        Err(format!(
            "acknowledged {} {was:?}, now {found:?}",
            ack.http_status
        ))
    }
}

fn read_back(response: &Response, what: &str) -> Result<Payment, String> {
    if response.status != 200 {
        return Err(format!(
            "{what}: {} {}",
            response.status_line,
            response.body_text()
        ));
    }
    parse_payment(&response.body).map_err(|problem| format!("{what}: {problem}"))
}

/// Reads one acknowledged payment by id and by order; both must match.
fn verify_one(client: &mut Client, ack: &Acknowledged) -> Result<(), String> {
    let by_id = read_back(&get_payment(client, &ack.payment.id), &ack.payment.id)?;
    compare(ack, &by_id)?;
    let by_order = read_back(
        &get_order(client, &ack.payment.order_id),
        &ack.payment.order_id,
    )?;
    compare(ack, &by_order)
}

/// Every acknowledged payment, read back over several connections; returns problems.
fn verify_all(addr: SocketAddr, acknowledged: &[Acknowledged]) -> Vec<String> {
    if acknowledged.is_empty() {
        return Vec::new();
    }
    let chunk = acknowledged.len().div_ceil(VERIFY_WORKERS_COUNT);
    thread::scope(|scope| {
        let handles: Vec<_> = acknowledged
            .chunks(chunk)
            .map(|acks| {
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    acks.iter()
                        .filter_map(|ack| verify_one(&mut client, ack).err())
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("verify thread"))
            .collect()
    })
}

/// A create cut off by the kill: absent, or present with the terms it was sent with.
fn verify_unanswered(client: &mut Client, attempt: &Unanswered) -> Result<(), String> {
    let response = get_order(client, &attempt.order_id);
    if response.status == 404 && response.error_code() == "payment_not_found" {
        return Ok(());
    }
    let found = read_back(&response, &attempt.order_id)?;
    let status_ok = found.status == "pending" || found.status == final_status_of(attempt.token);
    if found.amount == attempt.amount && found.order_id == attempt.order_id && status_ok {
        Ok(())
    } else {
        Err(format!(
            "unanswered create {attempt:?} came back as {found:?}"
        ))
    }
}

fn assert_no_problems(problems: &[String], context: &str) {
    assert!(
        problems.is_empty(),
        "{context}: {} problems, the first ones:\n{}",
        problems.len(),
        problems
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Runs the workers against `server`, SIGKILLs it after `kill_after_ms`, and gathers
/// what the workers saw.
fn load_then_kill(server: &mut Server, round: usize, kill_after_ms: u64) -> Vec<WorkerReport> {
    let addr = server.addr;
    let workers: Vec<_> = (0..WORKERS_COUNT)
        .map(|worker| thread::spawn(move || run_worker(addr, round, worker)))
        .collect();
    thread::sleep(Duration::from_millis(kill_after_ms));
    server.signal(libc::SIGKILL);
    let status = server.wait_exit(Duration::from_millis(KILL_EXIT_TIMEOUT_MS));
    assert!(status.is_some(), "payd still running after SIGKILL");
    workers
        .into_iter()
        .map(|worker| worker.join().expect("worker thread"))
        .collect()
}

/// The shard directories of the data directory, by name.
fn shard_dir_names(base: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(durable::data_dir(base))
        .expect("read data dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .to_string()
        })
        .filter(|name| name.starts_with("shard-"))
        .collect();
    names.sort();
    names
}

#[test]
fn acknowledged_payments_survive_sigkill_and_restarts_on_other_core_counts() {
    let started = Instant::now();
    let seed = durable::seed();
    eprintln!("crash test seed {seed} (rerun with PAYD_TEST_SEED={seed})");
    let mut random = SplitMix64::new(seed);
    let base = tempfile::tempdir().expect("tempdir");
    let mut acknowledged: Vec<Acknowledged> = Vec::new();
    let mut unanswered: Vec<Unanswered> = Vec::new();
    for (round, cores) in ROUND_CORES.iter().enumerate() {
        let config = write_config(
            base.path(),
            &format!("round-{round}.toml"),
            &crash_config(base.path(), cores),
        );
        let shard_one_created = round
            .checked_sub(1)
            .map(|_| count_records(&shard_dir(base.path(), 1), KIND_CREATED));
        let mut server = start_server(&config);
        check_after_restart(&server, &acknowledged, &unanswered, round);
        let kill_after_ms = random.between(KILL_AFTER_MS_MIN, KILL_AFTER_MS_MAX);
        let reports = load_then_kill(&mut server, round, kill_after_ms);
        let problems: Vec<String> = reports.iter().flat_map(|r| r.problems.clone()).collect();
        assert_no_problems(&problems, &format!("round {round}, load"));
        let round_acks: Vec<Acknowledged> = reports
            .iter()
            .flat_map(|r| r.acknowledged.clone())
            .collect();
        let pending = round_acks.iter().filter(|a| a.http_status == 202).count();
        eprintln!(
            "round {round} on cores {cores:?}: SIGKILL after {kill_after_ms} ms, {} acknowledged \
             ({pending} pending), {} unanswered",
            round_acks.len(),
            reports.iter().filter(|r| r.unanswered.is_some()).count()
        );
        assert!(
            round_acks.len() >= WORKERS_COUNT,
            "round {round}: only {} creates acknowledged before the kill; the test proves nothing",
            round_acks.len()
        );
        if cores.len() == 1 {
            check_single_core_served_both_shards(base.path(), shard_one_created, round);
        }
        acknowledged.extend(round_acks);
        unanswered.extend(reports.into_iter().filter_map(|r| r.unanswered));
    }
    let config = write_config(
        base.path(),
        "final.toml",
        &crash_config(base.path(), FINAL_CORES),
    );
    let mut server = start_server(&config);
    check_after_restart(&server, &acknowledged, &unanswered, ROUND_CORES.len());
    stop_cleanly(&mut server);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    eprintln!(
        "crash test: {} acknowledged payments checked after {} restarts in {elapsed_ms} ms",
        acknowledged.len(),
        ROUND_CORES.len()
    );
    assert!(
        elapsed_ms < CRASH_TEST_BUDGET_MS,
        "crash test took {elapsed_ms} ms, over its {CRASH_TEST_BUDGET_MS} ms budget"
    );
}

/// After a restart: every acknowledged payment is back, and no unanswered create came
/// back different from what was sent.
fn check_after_restart(
    server: &Server,
    acknowledged: &[Acknowledged],
    unanswered: &[Unanswered],
    round: usize,
) {
    let problems = verify_all(server.addr, acknowledged);
    assert_no_problems(
        &problems,
        &format!(
            "after restart {round}, {} acknowledged payments",
            acknowledged.len()
        ),
    );
    let mut client = server.connect();
    let problems: Vec<String> = unanswered
        .iter()
        .filter_map(|attempt| verify_unanswered(&mut client, attempt).err())
        .collect();
    assert_no_problems(
        &problems,
        &format!("after restart {round}, unanswered creates"),
    );
}

/// On one core the manifest's two shards still both serve: shard 1 logged new creates.
fn check_single_core_served_both_shards(base: &Path, created_before: Option<usize>, round: usize) {
    assert_eq!(
        shard_dir_names(base),
        ["shard-0000", "shard-0001"],
        "round {round} on one core changed the shard layout"
    );
    let before = created_before.expect("a single-core round follows a two-core round");
    let after = count_records(&shard_dir(base, 1), KIND_CREATED);
    assert!(
        after > before,
        "round {round} on one core logged no create on shard 1 ({before} before, {after} after)"
    );
}

/// A server on one core with the test merchant and the given durability.
fn simple_config(base: &Path, cores: &[usize], durability: &'static str) -> String {
    let options = ServerOptions {
        cores: cores.to_vec(),
        access_log: false,
        extra_toml: durable::merchant_toml(),
        ..ServerOptions::default()
    };
    durable::config_text(&options, base, durability)
}

/// Creates `count` payments named `{prefix}-{index}`; each must be 201 succeeded.
fn create_payments(server: &Server, prefix: &str, count: usize) -> Vec<Acknowledged> {
    let mut client = server.connect();
    (0..count)
        .map(|index| {
            let order_id = format!("{prefix}-{index}");
            let amount = 100 + index as u64;
            let response = create(&mut client, &order_id, amount, "tok_visa");
            assert_eq!(
                response.status_line,
                "HTTP/1.1 201 Created",
                "create {order_id}: {}",
                response.body_text()
            );
            check_create_answer(&response, &order_id, amount, "tok_visa")
                .unwrap_or_else(|problem| panic!("create {order_id}: {problem}"))
        })
        .collect()
}

fn assert_all_there(server: &Server, acknowledged: &[Acknowledged], context: &str) {
    assert_no_problems(&verify_all(server.addr, acknowledged), context);
}

/// The last segment of shard 0, its bytes, and where its frames end.
fn last_segment_of_shard_zero(base: &Path) -> (std::path::PathBuf, Vec<u8>, usize) {
    let path = segment_paths(&shard_dir(base, 0))
        .pop()
        .expect("shard 0 has a segment");
    let bytes = std::fs::read(&path).expect("read segment");
    let spans = frame_spans(&bytes);
    let end = spans.last().map_or(0, |s| s.offset + s.length_total);
    (path, bytes, end)
}

/// A frame that would come next in a log that ends with `last`: `records` copies of a
/// record of `kind`, never synced (its `synced_through` is the one `last` carried).
fn next_frame(last: &durable::FrameSpan, records: usize, payload_bytes: usize) -> Vec<u8> {
    let payload = vec![0x42u8; payload_bytes];
    let frame_records: Vec<(u8, &[u8])> = (0..records).map(|_| (200, payload.as_slice())).collect();
    // A frame's checksum covers its offset: encode it where it will be written.
    let at = last.offset + last.length_total;
    let mut bytes = vec![0u8; at];
    let first = last.first_sequence + last.kinds.len() as u64;
    payd::wal::encode_frame(&mut bytes, first, last.synced_through, &frame_records);
    bytes.split_off(at)
}

#[test]
fn torn_tail_is_cut_and_every_payment_stays() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        base.path(),
        "payd.toml",
        &simple_config(base.path(), &[0], "fsync"),
    );
    let mut server = start_server(&config);
    let mut acks = create_payments(&server, "torn-a", PAYMENTS_COUNT);
    stop_cleanly(&mut server);

    // A torn write: the file ends halfway through a frame that follows the last one.
    let (path, bytes, end) = last_segment_of_shard_zero(base.path());
    let last = frame_spans(&bytes).pop().expect("the run wrote frames");
    let torn = next_frame(&last, 3, 100);
    let mut damaged = bytes[..end].to_vec();
    damaged.extend_from_slice(&torn[..torn.len() / 2]);
    std::fs::write(&path, &damaged).expect("write torn segment");

    let mut server = start_server(&config);
    assert!(
        server
            .stderr
            .text()
            .contains("cut a torn write that was never acknowledged"),
        "the cut was not reported: {}",
        server.stderr.text()
    );
    assert_all_there(&server, &acks, "after a torn tail");
    // Writes after the cut must land where the valid frames end, or the next start fails.
    acks.extend(create_payments(&server, "torn-b", PAYMENTS_COUNT));
    stop_cleanly(&mut server);

    // Garbage appended after whatever the last segment ends with (padding included).
    let (path, mut bytes, _) = last_segment_of_shard_zero(base.path());
    let mut random = SplitMix64::new(durable::seed());
    bytes.extend((0..100).map(|_| (random.next_u64() as u8) | 1));
    std::fs::write(&path, &bytes).expect("write garbage tail");

    let mut server = start_server(&config);
    assert_all_there(&server, &acks, "after a garbage tail");
    acks.extend(create_payments(&server, "torn-c", 3));
    stop_cleanly(&mut server);
    let mut server = start_server(&config);
    assert_all_there(&server, &acks, "after the restart that follows a cut tail");
    // After a clean stop only padding follows the frames: nothing to report.
    assert!(
        !server.stderr.text().contains("cut"),
        "a clean restart reported a cut: {}",
        server.stderr.text()
    );
    stop_cleanly(&mut server);
}

/// The power cut of issue 13: the last, unsynced write was two frames of several 4 KiB
/// blocks; a later block persisted and an earlier one did not. Only unacknowledged data
/// is damaged, so payd cuts it and starts (format 1 refused to start here).
#[test]
fn a_torn_write_with_a_later_block_persisted_is_cut_and_payd_starts() {
    let base = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        base.path(),
        "payd.toml",
        &simple_config(base.path(), &[0], "fsync"),
    );
    let mut server = start_server(&config);
    let mut acks = create_payments(&server, "hole-a", PAYMENTS_COUNT);
    stop_cleanly(&mut server);

    let (path, bytes, end) = last_segment_of_shard_zero(base.path());
    let last = frame_spans(&bytes).pop().expect("the run wrote frames");
    let first = next_frame(&last, 3, 3000);
    let second_after = durable::FrameSpan {
        offset: 0,
        length_total: first.len(),
        first_sequence: last.first_sequence + last.kinds.len() as u64,
        synced_through: last.synced_through,
        kinds: vec![200; 3],
    };
    let second = next_frame(&second_after, 3, 3000);
    let mut damaged = bytes[..end].to_vec();
    let hole_at = damaged.len() + 4096;
    damaged.extend_from_slice(&first);
    damaged.extend_from_slice(&second);
    // The second block of the write never reached the disk: it reads as zeros.
    damaged[hole_at..hole_at + 4096].fill(0);
    std::fs::write(&path, &damaged).expect("write torn segment");

    let mut server = start_server(&config);
    assert_all_there(&server, &acks, "after a torn write with a hole");
    acks.extend(create_payments(&server, "hole-b", PAYMENTS_COUNT));
    stop_cleanly(&mut server);
    let mut server = start_server(&config);
    assert_all_there(&server, &acks, "after the restart that follows the cut");
    stop_cleanly(&mut server);
}

/// The offsets a message names ("offset 123").
fn offsets_named(message: &str) -> Vec<u64> {
    message
        .match_indices("offset ")
        .filter_map(|(at, word)| {
            let digits: String = message[at + word.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn corrupt_record_inside_the_log_refuses_to_start_naming_file_and_offset() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0], "fsync");
    let config = write_config(base.path(), "payd.toml", &text);
    let mut server = start_server(&config);
    create_payments(&server, "corrupt", PAYMENTS_COUNT);
    stop_cleanly(&mut server);

    // A frame in the middle: frames after it were written once it was synced, so the
    // damage hits acknowledged records.
    let path = segment_paths(&shard_dir(base.path(), 0))
        .into_iter()
        .find(|path| frame_spans(&std::fs::read(path).unwrap()).len() >= 3)
        .expect("a segment with a few frames");
    let mut bytes = std::fs::read(&path).unwrap();
    let spans = frame_spans(&bytes);
    let victim = spans[spans.len() / 2].clone();
    assert!(spans.last().unwrap().synced_through >= victim.first_sequence);
    bytes[victim.offset + victim.length_total / 2] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();

    let config_arg = config.display().to_string();
    let output = run_payd(&["serve", "--config", &config_arg], base.path());
    let stderr = &output.stderr;
    assert!(
        !output.status.success(),
        "payd started on a corrupt log: {output:?}"
    );
    assert!(
        !stderr.contains(READY_PREFIX),
        "payd said it was ready: {stderr}"
    );
    let canonical = path.canonicalize().unwrap();
    assert!(
        stderr.contains(&path.display().to_string())
            || stderr.contains(&canonical.display().to_string()),
        "the message does not name {}: {stderr}",
        path.display()
    );
    assert!(
        offsets_named(stderr).contains(&(victim.offset as u64)),
        "the message does not name offset {} (the damaged record): {stderr}",
        victim.offset
    );
    // Refusing must not repair: the damaged file is left exactly as it was found.
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "recovery changed a corrupt segment"
    );
}

#[test]
fn a_second_payd_on_the_same_data_dir_fails_at_once() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0], "fsync");
    let config = write_config(base.path(), "payd.toml", &text);
    let mut server = start_server(&config);
    let mut acks = create_payments(&server, "lock-a", 1);

    let second = write_config(base.path(), "second.toml", &text);
    let second_arg = second.display().to_string();
    let started = Instant::now();
    let output = run_payd(&["serve", "--config", &second_arg], base.path());
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert!(
        !output.status.success(),
        "a second payd ran on a locked data dir: {output:?}"
    );
    assert!(
        elapsed_ms < LOCKED_EXIT_TIMEOUT_MS,
        "the second payd took {elapsed_ms} ms to give up"
    );
    let data_dir = durable::data_dir(base.path()).display().to_string();
    let stderr = output.stderr.to_lowercase();
    assert!(
        output.stderr.contains(&data_dir) && (stderr.contains("lock") || stderr.contains("in use")),
        "the message does not say {data_dir} is locked: {}",
        output.stderr
    );
    assert!(!output.stderr.contains(READY_PREFIX));

    // The first is untouched: it still reads and writes, and a later start succeeds.
    acks.extend(create_payments(&server, "lock-b", 1));
    assert_all_there(&server, &acks, "the first payd after the second failed");
    stop_cleanly(&mut server);
    let mut server = start_server(&config);
    assert_all_there(&server, &acks, "after the first payd stopped");
    stop_cleanly(&mut server);
}

/// The quantiles of a summary family are present, ordered, and the max is above 0.
fn assert_summary(metrics: &common::Metrics, name: &str) {
    let mut previous = 0.0;
    for quantile in QUANTILES {
        let values: Vec<f64> = metrics
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                s.labels
                    .iter()
                    .any(|(k, v)| k == "quantile" && v == quantile)
            })
            .map(|s| s.value)
            .collect();
        assert!(!values.is_empty(), "{name} has no quantile {quantile}");
        let value = values.iter().cloned().fold(f64::MIN, f64::max);
        assert!(
            value >= previous,
            "{name} quantile {quantile} is {value}, below {previous}"
        );
        previous = value;
    }
    assert!(previous > 0.0, "{name}: max is 0");
}

#[test]
fn metrics_show_fsync_latency_and_records_per_batch() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0, 1], "fsync");
    let mut server = start_server(&write_config(base.path(), "payd.toml", &text));
    create_payments(&server, "metrics", PAYMENTS_COUNT);
    // One client creating one payment at a time, against the simulated acquirer that
    // answers at once: the Created and Finalized records of each go in one group, so one
    // sync per payment, covering at least two records.
    let records_min = (2 * PAYMENTS_COUNT) as f64;
    let syncs_min = PAYMENTS_COUNT as f64;
    let mut scraper = server.connect();
    let mut metrics = scraper.metrics();
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        metrics = scraper.metrics();
        metrics.sum("payd_wal_records_per_batch_sum") >= records_min
    });
    let syncs = metrics.sum("payd_wal_fsync_duration_seconds_count");
    let batches = metrics.sum("payd_wal_records_per_batch_count");
    let records = metrics.sum("payd_wal_records_per_batch_sum");
    assert!(
        syncs >= syncs_min,
        "{syncs} fsyncs for {PAYMENTS_COUNT} sequential creates"
    );
    assert!(
        batches > 0.0,
        "payd_wal_records_per_batch_count is {batches}"
    );
    assert!(
        records >= records_min,
        "{records} records made durable for {PAYMENTS_COUNT} creates"
    );
    assert_summary(&metrics, "payd_wal_fsync_duration_recent_seconds");
    assert_summary(&metrics, "payd_wal_records_per_batch_recent");
    stop_cleanly(&mut server);
}

#[test]
fn durability_none_still_creates_and_writes_the_log() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0, 1], "none");
    let config = write_config(base.path(), "payd.toml", &text);
    let mut server = start_server(&config);
    let acks = create_payments(&server, "none", PAYMENTS_COUNT);
    let created_on_disk = || {
        (0..2)
            .map(|shard| count_records(&shard_dir(base.path(), shard), KIND_CREATED))
            .sum::<usize>()
    };
    common::eventually(Duration::from_millis(LOG_WRITTEN_TIMEOUT_MS), || {
        created_on_disk() >= PAYMENTS_COUNT
    });
    assert_eq!(
        created_on_disk(),
        PAYMENTS_COUNT,
        "Created records in the log of a running server with durability \"none\""
    );
    stop_cleanly(&mut server);
    let mut server = start_server(&config);
    assert_all_there(
        &server,
        &acks,
        "after a clean restart with durability \"none\"",
    );
    stop_cleanly(&mut server);
}

/// A clean stop right after the last answer: shutdown itself must write and sync what
/// durability "none" acknowledged, not leave it to the commit task's timing.
#[test]
fn durability_none_keeps_every_acknowledged_payment_across_an_immediate_clean_stop() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0, 1], "none");
    let config = write_config(base.path(), "payd.toml", &text);
    let mut server = start_server(&config);
    let acks = create_payments(&server, "stop", PAYMENTS_COUNT);
    stop_cleanly(&mut server);
    let mut server = start_server(&config);
    assert_all_there(
        &server,
        &acks,
        "after an immediate clean stop with \"none\"",
    );
    stop_cleanly(&mut server);
}

#[test]
fn damage_at_the_end_of_a_segment_that_is_not_the_last_is_corruption() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = simple_config(base.path(), &[0], "fsync");
    let config = write_config(base.path(), "payd.toml", &text);
    // Two runs: each start opens a new segment, so the first run's segment is not the
    // last one, and its last record is not the log's last record.
    for run in ["older", "newer"] {
        let mut server = start_server(&config);
        create_payments(&server, run, PAYMENTS_COUNT);
        stop_cleanly(&mut server);
    }
    let segments = segment_paths(&shard_dir(base.path(), 0));
    let first_with_records = segments
        .iter()
        .position(|path| !frame_spans(&std::fs::read(path).unwrap()).is_empty())
        .expect("a segment with records");
    assert!(
        segments[first_with_records + 1..]
            .iter()
            .any(|path| !frame_spans(&std::fs::read(path).unwrap()).is_empty()),
        "the second run did not write a later segment: {segments:?}"
    );
    let path = &segments[first_with_records];
    let mut bytes = std::fs::read(path).unwrap();
    let victim = frame_spans(&bytes).pop().unwrap();
    bytes[victim.offset + victim.length_total - 1] ^= 0x01;
    std::fs::write(path, &bytes).unwrap();

    let config_arg = config.display().to_string();
    let output = run_payd(&["serve", "--config", &config_arg], base.path());
    assert!(
        !output.status.success(),
        "payd started with a damaged record in a segment that is not the last: {output:?}"
    );
    let file_name = path.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        output.stderr.contains(&file_name)
            && offsets_named(&output.stderr).contains(&(victim.offset as u64)),
        "the message does not name {file_name} at offset {}: {}",
        victim.offset,
        output.stderr
    );
    assert_eq!(
        std::fs::read(path).unwrap(),
        bytes,
        "recovery changed the segment"
    );
}

#[test]
fn a_payment_left_pending_by_a_crash_is_reauthorised_and_finalised() {
    let base = tempfile::tempdir().expect("tempdir");
    let text = crash_config(base.path(), &[0, 1]);
    let config = write_config(base.path(), "payd.toml", &text);
    let mut server = start_server(&config);
    let mut client = server.connect();
    let response = create(&mut client, "reauth-1", 4242, "tok_slow");
    let ack = check_create_answer(&response, "reauth-1", 4242, "tok_slow")
        .unwrap_or_else(|problem| panic!("{problem}"));
    assert_eq!(ack.http_status, 202, "tok_slow answered before the timeout");
    // Killed long before the acquirer's 3 s answer: only the pending record is in the log.
    server.signal(libc::SIGKILL);
    assert!(server
        .wait_exit(Duration::from_millis(KILL_EXIT_TIMEOUT_MS))
        .is_some());

    let mut server = start_server(&config);
    let mut client = server.connect();
    let mut found = None;
    let finalised = common::eventually(Duration::from_millis(REAUTHORISE_TIMEOUT_MS), || {
        let payment = read_back(&get_payment(&mut client, &ack.payment.id), "reauth-1")
            .unwrap_or_else(|problem| panic!("{problem}"));
        let done = payment.status != "pending";
        found = Some(payment);
        done
    });
    let found = found.expect("read at least once");
    assert!(
        finalised,
        "still pending {REAUTHORISE_TIMEOUT_MS} ms after the restart: {found:?}"
    );
    compare(&ack, &found).unwrap_or_else(|problem| panic!("{problem}"));
    assert_eq!(found.status, "succeeded");

    // The final status is durable too: another crash does not bring back pending.
    server.signal(libc::SIGKILL);
    assert!(server
        .wait_exit(Duration::from_millis(KILL_EXIT_TIMEOUT_MS))
        .is_some());
    let mut server = start_server(&config);
    let mut client = server.connect();
    let again = read_back(&get_order(&mut client, "reauth-1"), "reauth-1")
        .unwrap_or_else(|problem| panic!("{problem}"));
    assert_eq!(again, found, "the finalised payment changed over a crash");
    stop_cleanly(&mut server);
}

#[test]
fn a_restart_on_more_cores_than_shards_keeps_and_serves_every_payment() {
    let base = tempfile::tempdir().expect("tempdir");
    let one_core = write_config(
        base.path(),
        "one.toml",
        &simple_config(base.path(), &[0], "fsync"),
    );
    let two_cores = write_config(
        base.path(),
        "two.toml",
        &simple_config(base.path(), &[0, 1], "fsync"),
    );
    let mut server = start_server(&one_core);
    let mut acks = create_payments(&server, "grow-a", PAYMENTS_COUNT);
    server.signal(libc::SIGKILL);
    assert!(server
        .wait_exit(Duration::from_millis(KILL_EXIT_TIMEOUT_MS))
        .is_some());

    // The manifest says one shard: core 1 owns none and hands every command to core 0.
    let mut server = start_server(&two_cores);
    assert_all_there(&server, &acks, "on two cores after one");
    for connection in 0..SPREAD_CONNECTIONS_COUNT {
        let prefix = format!("grow-b{connection}");
        acks.extend(create_payments(&server, &prefix, 1));
    }
    assert_all_there(&server, &acks, "created on two cores over one shard");
    let mut scraper = server.connect();
    let mut core_one_accepted = || {
        let metrics = scraper.metrics();
        metrics
            .get("payd_connections_accepted_total", &[("core", "1")])
            .unwrap_or(0.0)
    };
    let mut accepted = 0.0;
    common::eventually(Duration::from_millis(METRICS_SETTLE_MS), || {
        accepted = core_one_accepted();
        accepted > 0.0
    });
    assert!(
        accepted > 0.0,
        "no create reached core 1, which owns no shard: the hand-off was not exercised"
    );
    stop_cleanly(&mut server);
    assert_eq!(shard_dir_names(base.path()), ["shard-0000"]);

    let mut server = start_server(&one_core);
    assert_all_there(&server, &acks, "back on one core");
    stop_cleanly(&mut server);
}
