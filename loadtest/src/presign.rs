//! `payd-loadtest presign`: signed requests written to a file, for wrk to replay.
//!
//! The file holds whole HTTP/1.1 requests, each followed by one NUL byte (a request never
//! contains one), which `loadtest/presigned.lua` splits on. The signatures carry the time
//! they were made, so the file must be replayed within payd's timestamp tolerance
//! (`security.timestamp_tolerance_secs`, 300 s by default).

use crate::arguments::PresignArguments;
use crate::workload::{Kind, Workload, WorkloadConfig};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn presign(arguments: PresignArguments) -> Result<ExitCode, String> {
    arguments.validate()?;
    let config = arguments.workload.config()?;
    let path = &arguments.out;
    let file =
        File::create(path).map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    let mut writer = BufWriter::new(file);
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let counts = write_requests(&config, arguments.count, now_secs, &mut writer)
        .and_then(|counts| writer.flush().map(|_| counts))
        .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
    let described: Vec<String> = Kind::ALL
        .iter()
        .filter(|kind| counts[kind.index()] > 0)
        .map(|kind| format!("{} {}", counts[kind.index()], kind.name()))
        .collect();
    eprintln!(
        "payd-loadtest: wrote {} requests ({}) to {}, signed at {now_secs}: replay them within payd's timestamp tolerance",
        arguments.count,
        described.join(", "),
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `count` requests, each followed by a NUL byte, and counts them by kind.
pub fn write_requests(
    config: &WorkloadConfig,
    count: u64,
    now_secs: u64,
    writer: &mut impl Write,
) -> std::io::Result<[u64; Kind::ALL.len()]> {
    let mut workload = Workload::new(config, 0, 0);
    let mut counts = [0; Kind::ALL.len()];
    let mut request = Vec::with_capacity(1024);
    for _ in 0..count {
        request.clear();
        let kind = workload.next_request(now_secs, &mut request);
        assert!(!request.contains(&0), "a request never contains a NUL byte");
        counts[kind.index()] += 1;
        request.push(0);
        writer.write_all(&request)?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::Secret;
    use crate::workload::{Scenario, Transport};

    #[test]
    fn writes_count_complete_requests_separated_by_nul() {
        let config = WorkloadConfig {
            scenario: Scenario::Payments,
            host: "127.0.0.1:8080".to_string(),
            merchant: "m_demo".to_string(),
            secret: Secret::resolve("test-secret").unwrap(),
            reads_percent: 25,
            replays_percent: 25,
            amount: 1999,
            currency: "CNY".to_string(),
            payment_method: "tok_visa".to_string(),
            run_id: "r".to_string(),
            transport: Transport::Http,
        };
        let mut bytes = Vec::new();
        let counts = write_requests(&config, 200, 1763800000, &mut bytes).unwrap();
        assert_eq!(counts.iter().sum::<u64>(), 200);
        assert!(counts[Kind::Read.index()] > 0 && counts[Kind::Replay.index()] > 0);
        assert_eq!(bytes.last(), Some(&0));
        let requests: Vec<&[u8]> = bytes[..bytes.len() - 1].split(|&byte| byte == 0).collect();
        assert_eq!(requests.len(), 200);
        for request in requests {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Request::new(&mut headers);
            let head = match parsed.parse(request).unwrap() {
                httparse::Status::Complete(head) => head,
                httparse::Status::Partial => panic!("a partial request"),
            };
            let length = parsed
                .headers
                .iter()
                .find(|header| header.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |header| {
                    std::str::from_utf8(header.value).unwrap().parse().unwrap()
                });
            assert_eq!(request.len(), head + length);
        }
    }
}
