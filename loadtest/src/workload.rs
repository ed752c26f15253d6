//! What each connection sends: `/healthz` probes, or signed payment creates, replays and reads.
//!
//! Every connection owns a `Workload` that writes whole HTTP/1.1 requests into a reusable
//! buffer. Order ids are unique per run (`run-thread-connection-number`), so creates are
//! new payments unless the workload chooses, by a seeded generator, to replay an earlier
//! one (same body, so payd answers 200 `Idempotent-Replayed`) or to read it back.

use crate::signing::{sign_hex, Secret};
use std::collections::VecDeque;
use std::io::Write;

/// Order numbers a connection remembers for replays and reads; older ones are forgotten.
pub const REMEMBERED_ORDERS_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Unsigned `GET /healthz`.
    Healthz,
    /// Signed creates, with the chosen shares of replays and reads.
    Payments,
}

/// How requests travel: HTTP/1.1 requests, or WebSocket messages on `GET /v1/ws`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

/// What one request was, so latency and outcomes can be told apart in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Health,
    Create,
    Replay,
    Read,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Health, Kind::Create, Kind::Replay, Kind::Read];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Health => "healthz",
            Kind::Create => "create",
            Kind::Replay => "replay",
            Kind::Read => "read",
        }
    }
}

/// The part of the command line that shapes requests; shared read-only by every connection.
#[derive(Debug)]
pub struct WorkloadConfig {
    pub scenario: Scenario,
    /// The `Host` header: the address the generator connects to.
    pub host: String,
    pub merchant: String,
    pub secret: Secret,
    pub reads_percent: u64,
    pub replays_percent: u64,
    pub amount: u64,
    pub currency: String,
    pub payment_method: String,
    /// Makes order ids unique across runs against the same data directory.
    pub run_id: String,
    pub transport: Transport,
}

pub struct Workload<'config> {
    config: &'config WorkloadConfig,
    thread: usize,
    connection: usize,
    orders_created: u64,
    remembered: VecDeque<u64>,
    random_state: u64,
    body: Vec<u8>,
    target: Vec<u8>,
    signature: Vec<u8>,
    /// WebSocket: the `id` of the next message (one sequence per connection).
    next_message_id: u64,
}

impl<'config> Workload<'config> {
    pub fn new(config: &'config WorkloadConfig, thread: usize, connection: usize) -> Self {
        // Any odd constant mixes the indices; xorshift needs a non-zero state.
        let seed = (thread as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (connection as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        Workload {
            config,
            thread,
            connection,
            orders_created: 0,
            remembered: VecDeque::with_capacity(REMEMBERED_ORDERS_MAX),
            random_state: seed | 1,
            body: Vec::with_capacity(512),
            target: Vec::with_capacity(128),
            signature: Vec::with_capacity(80),
            next_message_id: 0,
        }
    }

    pub fn config(&self) -> &'config WorkloadConfig {
        self.config
    }

    /// WebSocket: the `id` the next request's message will carry; each request takes the
    /// next one, so a batch's answers map back to its requests by `id - first`.
    pub fn next_message_id(&self) -> u64 {
        self.next_message_id
    }

    /// Appends one complete request to `output` and says what it is.
    pub fn next_request(&mut self, now_secs: u64, output: &mut Vec<u8>) -> Kind {
        if self.config.scenario == Scenario::Healthz {
            write_healthz(&self.config.host, output);
            return Kind::Health;
        }
        let kind = self.choose_kind();
        match kind {
            Kind::Read => {
                let order = self.pick_remembered();
                self.write_read(order, now_secs, output);
            }
            Kind::Replay => {
                let order = self.pick_remembered();
                self.write_create(order, now_secs, output);
            }
            Kind::Create | Kind::Health => {
                let order = self.orders_created;
                self.orders_created += 1;
                if self.remembered.len() == REMEMBERED_ORDERS_MAX {
                    self.remembered.pop_front();
                }
                self.remembered.push_back(order);
                self.write_create(order, now_secs, output);
            }
        }
        kind
    }

    fn choose_kind(&mut self) -> Kind {
        if self.remembered.is_empty() {
            return Kind::Create;
        }
        let roll = self.random() % 100;
        if roll < self.config.reads_percent {
            Kind::Read
        } else if roll < self.config.reads_percent + self.config.replays_percent {
            Kind::Replay
        } else {
            Kind::Create
        }
    }

    fn pick_remembered(&mut self) -> u64 {
        assert!(!self.remembered.is_empty());
        let index = (self.random() % self.remembered.len() as u64) as usize;
        self.remembered[index]
    }

    /// xorshift64*: cheap, seeded, and good enough to pick request kinds.
    fn random(&mut self) -> u64 {
        let mut state = self.random_state;
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        self.random_state = state;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn write_order_id(&self, order: u64, output: &mut Vec<u8>) {
        let config = self.config;
        write!(
            output,
            "{}-{}-{}-{}",
            config.run_id, self.thread, self.connection, order
        )
        .expect("writing to a Vec cannot fail");
    }

    fn write_create(&mut self, order: u64, now_secs: u64, output: &mut Vec<u8>) {
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        body.extend_from_slice(b"{\"order_id\":\"");
        self.write_order_id(order, &mut body);
        let config = self.config;
        write!(
            body,
            "\",\"amount\":{},\"currency\":\"{}\",\"payment_method\":\"{}\"}}",
            config.amount, config.currency, config.payment_method
        )
        .expect("writing to a Vec cannot fail");
        self.write_signed(b"POST", b"/v1/payments", &body, now_secs, output);
        self.body = body;
    }

    fn write_read(&mut self, order: u64, now_secs: u64, output: &mut Vec<u8>) {
        let mut target = std::mem::take(&mut self.target);
        target.clear();
        target.extend_from_slice(b"/v1/orders/");
        self.write_order_id(order, &mut target);
        self.write_signed(b"GET", &target, b"", now_secs, output);
        self.target = target;
    }

    fn write_signed(
        &mut self,
        method: &[u8],
        target: &[u8],
        body: &[u8],
        now_secs: u64,
        output: &mut Vec<u8>,
    ) {
        let config = self.config;
        let method_text = std::str::from_utf8(method).expect("methods are ASCII");
        let target_text = std::str::from_utf8(target).expect("targets are ASCII");
        self.signature.clear();
        let transport = config.transport;
        sign_hex(
            &config.secret,
            now_secs,
            method_text,
            target_text,
            body,
            &mut self.signature,
        );
        if transport == Transport::WebSocket {
            let id = self.next_message_id;
            self.next_message_id += 1;
            return write_message(id, method, target, now_secs, &self.signature, body, output);
        }
        output.extend_from_slice(method);
        output.push(b' ');
        output.extend_from_slice(target);
        write!(
            output,
            " HTTP/1.1\r\nHost: {}\r\nX-Payd-Merchant: {}\r\nX-Payd-Timestamp: {}\r\nX-Payd-Signature: v1=",
            config.host, config.merchant, now_secs
        )
        .expect("writing to a Vec cannot fail");
        output.extend_from_slice(&self.signature);
        if !body.is_empty() {
            write!(
                output,
                "\r\nContent-Type: application/json\r\nContent-Length: {}",
                body.len()
            )
            .expect("writing to a Vec cannot fail");
        }
        output.extend_from_slice(b"\r\n\r\n");
        output.extend_from_slice(body);
    }
}

/// A request as the JSON text of a WebSocket message (API.md section 9).
fn write_message(
    id: u64,
    method: &[u8],
    target: &[u8],
    now_secs: u64,
    signature: &[u8],
    body: &[u8],
    output: &mut Vec<u8>,
) {
    write!(output, "{{\"id\":{id},\"method\":\"").expect("writing to a Vec cannot fail");
    output.extend_from_slice(method);
    output.extend_from_slice(b"\",\"target\":\"");
    output.extend_from_slice(target);
    write!(
        output,
        "\",\"timestamp\":\"{now_secs}\",\"signature\":\"v1="
    )
    .expect("writing to a Vec cannot fail");
    output.extend_from_slice(signature);
    output.extend_from_slice(b"\",\"body\":\"");
    // Bodies are ASCII JSON of the generator's own making: only quotes need escaping.
    for &byte in body {
        if byte == b'"' || byte == b'\\' {
            output.push(b'\\');
        }
        output.push(byte);
    }
    output.extend_from_slice(b"\"}");
}

fn write_healthz(host: &str, output: &mut Vec<u8>) {
    write!(output, "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scenario: Scenario, reads_percent: u64, replays_percent: u64) -> WorkloadConfig {
        WorkloadConfig {
            scenario,
            host: "127.0.0.1:8080".to_string(),
            merchant: "m_demo".to_string(),
            secret: Secret::resolve("test-secret").unwrap(),
            reads_percent,
            replays_percent,
            amount: 1999,
            currency: "CNY".to_string(),
            payment_method: "tok_visa".to_string(),
            run_id: "r1".to_string(),
            transport: Transport::Http,
        }
    }

    fn parse(bytes: &[u8]) -> (String, String, Vec<(String, String)>, Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        let head_bytes = match request.parse(bytes).unwrap() {
            httparse::Status::Complete(head_bytes) => head_bytes,
            httparse::Status::Partial => panic!("partial request"),
        };
        let headers = request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8(h.value.to_vec()).unwrap(),
                )
            })
            .collect();
        (
            request.method.unwrap().to_string(),
            request.path.unwrap().to_string(),
            headers,
            bytes[head_bytes..].to_vec(),
        )
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        &headers.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn a_create_is_a_complete_signed_request_with_a_unique_order() {
        let config = config(Scenario::Payments, 0, 0);
        let mut workload = Workload::new(&config, 2, 5);
        let mut first = Vec::new();
        assert_eq!(workload.next_request(1763800000, &mut first), Kind::Create);
        let (method, path, headers, body) = parse(&first);
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/v1/payments"));
        assert_eq!(header(&headers, "content-length"), body.len().to_string());
        assert_eq!(header(&headers, "x-payd-merchant"), "m_demo");
        assert_eq!(header(&headers, "x-payd-timestamp"), "1763800000");
        let mut expected = b"v1=".to_vec();
        sign_hex(
            &config.secret,
            1763800000,
            "POST",
            "/v1/payments",
            &body,
            &mut expected,
        );
        assert_eq!(header(&headers, "x-payd-signature").as_bytes(), expected);
        let body_text = String::from_utf8(body).unwrap();
        assert_eq!(
            body_text,
            r#"{"order_id":"r1-2-5-0","amount":1999,"currency":"CNY","payment_method":"tok_visa"}"#
        );
        let mut second = Vec::new();
        workload.next_request(1763800000, &mut second);
        assert!(String::from_utf8(second)
            .unwrap()
            .contains("\"order_id\":\"r1-2-5-1\""));
    }

    #[test]
    fn reads_target_an_order_created_before_and_sign_an_empty_body() {
        let config = config(Scenario::Payments, 100, 0);
        let mut workload = Workload::new(&config, 0, 0);
        let mut output = Vec::new();
        assert_eq!(workload.next_request(7, &mut output), Kind::Create);
        output.clear();
        assert_eq!(workload.next_request(7, &mut output), Kind::Read);
        let (method, path, headers, body) = parse(&output);
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("GET", "/v1/orders/r1-0-0-0")
        );
        assert!(body.is_empty());
        let mut expected = b"v1=".to_vec();
        sign_hex(
            &config.secret,
            7,
            "GET",
            "/v1/orders/r1-0-0-0",
            b"",
            &mut expected,
        );
        assert_eq!(header(&headers, "x-payd-signature").as_bytes(), expected);
    }

    #[test]
    fn replays_resend_an_earlier_body_and_shares_follow_the_percentages() {
        let config = config(Scenario::Payments, 20, 30);
        let mut workload = Workload::new(&config, 1, 1);
        let mut counts = [0u64; 4];
        let mut output = Vec::new();
        for _ in 0..10_000 {
            output.clear();
            let kind = workload.next_request(7, &mut output);
            counts[kind.index()] += 1;
            if kind == Kind::Replay {
                let (_, _, _, body) = parse(&output);
                let text = String::from_utf8(body).unwrap();
                let order: u64 = text
                    .split('-')
                    .nth(3)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(order < workload.orders_created);
            }
        }
        let share = |kind: Kind| counts[kind.index()] as f64 / 10_000.0;
        assert!((share(Kind::Read) - 0.2).abs() < 0.02, "{counts:?}");
        assert!((share(Kind::Replay) - 0.3).abs() < 0.02, "{counts:?}");
        assert!(workload.remembered.len() <= REMEMBERED_ORDERS_MAX);
    }

    #[test]
    fn healthz_is_unsigned() {
        let config = config(Scenario::Healthz, 0, 0);
        let mut workload = Workload::new(&config, 0, 0);
        let mut output = Vec::new();
        assert_eq!(workload.next_request(7, &mut output), Kind::Health);
        assert_eq!(
            output,
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
        );
    }

    #[test]
    fn a_websocket_message_carries_the_signed_request_with_a_sequence_id() {
        let mut config = config(Scenario::Payments, 0, 0);
        config.transport = Transport::WebSocket;
        let mut workload = Workload::new(&config, 0, 3);
        for expected_id in 0..3 {
            assert_eq!(workload.next_message_id(), expected_id);
            let mut text = Vec::new();
            assert_eq!(workload.next_request(1763800000, &mut text), Kind::Create);
            let message: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(message["id"], expected_id);
            assert_eq!(message["method"], "POST");
            assert_eq!(message["target"], "/v1/payments");
            assert_eq!(message["timestamp"], "1763800000");
            let body = message["body"].as_str().unwrap();
            assert!(body.starts_with("{\"order_id\":\"r1-0-3-"), "{body}");
            let mut signature = b"v1=".to_vec();
            sign_hex(
                &config.secret,
                1763800000,
                "POST",
                "/v1/payments",
                body.as_bytes(),
                &mut signature,
            );
            assert_eq!(message["signature"].as_str().unwrap().as_bytes(), signature);
        }
    }
}
