//! TLS end to end (issue 15, API.md section 8), on the real binary with certificates made
//! here by rcgen: HTTPS on the listener (curl and a rustls client), a plain-HTTP request
//! on the TLS port, webhooks to HTTPS receivers (Python's `ssl`, signatures checked by
//! the reference `standardwebhooks` package) and to receivers that must be refused, the
//! acquirer over HTTPS, `check-config` with the TLS keys, and the certificate reload on
//! SIGHUP.
//!
//! Needs `curl` and `python3` with `standardwebhooks` (tests/setup.sh installs both).

mod common;

use common::{create_body, merchants_toml, toml_string, Metrics, Server, ServerOptions, Signed};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HOOK_MERCHANT: &str = "m_hooks";
const HOOK_MERCHANT_SECRET: &str = "secret-hooks-1-test-only-0123456789abcdef";
/// A delivery or a payment's end on loopback takes well under this.
const WAIT_MS: u64 = 10_000;
const TLS_ACQUIRER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tls_acquirer.py");

/// A certificate authority of the test, and the PEM files it wrote.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: &'static str,
}

/// A certificate and its key, as PEM files.
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &'static str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("payd test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).unwrap();
        Authority {
            issuer,
            dir: dir.to_path_buf(),
            name,
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// A server certificate for `names` (host names or IP addresses), with its key.
    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

fn path_text(path: &Path) -> String {
    toml_string(&path.display().to_string())
}

fn server_tls_toml(leaf: &Leaf) -> String {
    format!(
        "\n[server.tls]\ncert_file = {}\nkey_file = {}\n",
        path_text(&leaf.cert),
        path_text(&leaf.key)
    )
}

fn https_server(leaf: &Leaf) -> Server {
    Server::start(ServerOptions {
        extra_toml: format!("{}{}", server_tls_toml(leaf), merchants_toml()),
        ..ServerOptions::default()
    })
}

/// Runs curl, bounded in time, trusting `ca`: its stdout, and whether it succeeded.
fn curl(ca: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("these tests need curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// A signed request through curl: the status, the HTTP version and the body.
fn curl_signed(ca: &Path, addr: SocketAddr, signed: &Signed<'_>) -> (u16, String, String) {
    let url = format!("https://{addr}{}", signed.target);
    let mut args: Vec<String> = vec![
        "-X".into(),
        signed.method.into(),
        "-w".into(),
        "\n%{http_code} %{http_version}".into(),
    ];
    for header in signed.auth_headers() {
        args.extend(["-H".into(), header]);
    }
    if !signed.body.is_empty() {
        args.extend([
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data-binary".into(),
            String::from_utf8(signed.body.to_vec()).unwrap(),
        ]);
    }
    args.push(url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, output) = curl(ca, &args);
    assert!(ok, "curl failed: {output}");
    let (body, trailer) = output.rsplit_once('\n').unwrap();
    let (status, version) = trailer.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        version.to_string(),
        body.to_string(),
    )
}

fn json(text: &str) -> simd_json::OwnedValue {
    simd_json::to_owned_value(&mut text.as_bytes().to_vec())
        .unwrap_or_else(|_| panic!("not JSON: {text}"))
}

fn https_metrics(ca: &Path, addr: SocketAddr) -> Metrics {
    let (ok, text) = curl(ca, &[&format!("https://{addr}/metrics")]);
    assert!(ok, "GET /metrics over HTTPS failed");
    Metrics::parse(&text).expect("valid exposition")
}

fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    assert!(
        common::eventually(Duration::from_millis(WAIT_MS), &mut condition),
        "{what} within {WAIT_MS} ms"
    );
}

/// A rustls client connection trusting only `ca`, kept alive across requests.
struct HttpsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    input: Vec<u8>,
}

impl HttpsClient {
    fn connect(addr: SocketAddr, ca: &Path) -> std::io::Result<HttpsClient> {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(ca).unwrap();
        for cert in rustls_pem_certificates(&pem) {
            roots.add(cert).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_millis(common::READ_TIMEOUT_MS)))?;
        let mut client = HttpsClient {
            stream: rustls::StreamOwned::new(connection, tcp),
            input: Vec::new(),
        };
        // Completes the handshake now, so a certificate the client refuses fails here.
        while client.stream.conn.is_handshaking() {
            client
                .stream
                .conn
                .complete_io(&mut client.stream.sock)
                .map(|_| ())?;
        }
        Ok(client)
    }

    /// `GET path` on this connection: the status line and the body.
    fn get(&mut self, path: &str) -> std::io::Result<(String, String)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: payd\r\n\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.stream.flush()?;
        self.read_response()
    }

    /// The next response on this connection: the status line and the body.
    fn read_response(&mut self) -> std::io::Result<(String, String)> {
        loop {
            if let Some(answer) = self.take_response() {
                return Ok(answer);
            }
            let mut chunk = [0u8; 4096];
            let count = self.stream.read(&mut chunk)?;
            if count == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.input.extend_from_slice(&chunk[..count]);
        }
    }

    fn take_response(&mut self) -> Option<(String, String)> {
        let head_end = self.input.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&self.input[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .map_or(0, |value| value.parse().unwrap());
        if self.input.len() < head_end + length {
            return None;
        }
        let body = String::from_utf8_lossy(&self.input[head_end..head_end + length]).into_owned();
        self.input.drain(..head_end + length);
        Some((head.lines().next().unwrap().to_string(), body))
    }
}

fn rustls_pem_certificates(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .map(|cert| cert.unwrap())
        .collect()
}

#[test]
fn curl_creates_and_reads_a_payment_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let leaf = authority.leaf("server", &["127.0.0.1", "localhost"]);
    let server = https_server(&leaf);
    let ca = authority.ca_file();
    let body = create_body("ord-tls-1", 1999, "CNY", "tok_visa");
    let (status, version, text) = curl_signed(
        &ca,
        server.addr,
        &Signed::new("POST", "/v1/payments", body.as_bytes()),
    );
    assert_eq!((status, version.as_str()), (201, "1.1"), "{text}");
    let created = json(&text);
    assert_eq!(created["status"].to_string(), "succeeded");
    let target = format!("/v1/payments/{}", created["id"]);
    let (status, _, text) = curl_signed(&ca, server.addr, &Signed::new("GET", &target, b""));
    assert_eq!(status, 200, "{text}");
    let read = json(&text);
    assert_eq!(read["id"], created["id"]);
    assert_eq!(read["order_id"].to_string(), "ord-tls-1");
    // Both versions of the contract, each asked for alone.
    let healthz = format!("https://{}/healthz", server.addr);
    for only in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, text) = curl(&ca, &[only[0], only[1], only[2], &healthz]);
        assert!(ok && text.contains("\"ok\""), "{only:?}: {text}");
    }
    let metrics = https_metrics(&ca, server.addr);
    // Two requests, two version checks, this scrape: one handshake each.
    assert!(metrics.value("payd_tls_handshakes_total", &[("core", "0")]) >= 5.0);
    assert_eq!(
        metrics.value("payd_tls_handshake_failures_total", &[("core", "0")]),
        0.0
    );
}

#[test]
fn plain_http_on_the_tls_port_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let leaf = authority.leaf("server", &["127.0.0.1"]);
    let server = https_server(&leaf);
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_millis(common::READ_TIMEOUT_MS)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: payd\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // The server closes: read_to_end returns (a timeout would be an error here).
    plain
        .read_to_end(&mut answer)
        .expect("payd closes the connection");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "served over plain HTTP: {answer:?}"
    );
    // Nothing, or one TLS alert record (content type 21).
    assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    let ca = authority.ca_file();
    eventually("the failed handshake counted", || {
        https_metrics(&ca, server.addr).value("payd_tls_handshake_failures_total", &[("core", "0")])
            >= 1.0
    });
    // A client that does not trust the certificate gets no answer either.
    let other = Authority::new(dir.path(), "other");
    assert!(HttpsClient::connect(server.addr, &other.ca_file()).is_err());
}

/// A receiver process, killed when dropped; its JSON lines arrive on a channel.
struct Receiver {
    child: Child,
    port: u16,
    records: mpsc::Receiver<String>,
}

impl Receiver {
    fn start(leaf: &Leaf, extra: &[&str]) -> Receiver {
        let cert = leaf.cert.display().to_string();
        let key = leaf.key.display().to_string();
        let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
        args.extend_from_slice(extra);
        let (child, port, lines) = common::start_webhook_receiver(WEBHOOK_SECRET, &args);
        Receiver::around(child, port, lines)
    }

    /// Reads an already started child's JSON lines in a thread.
    fn around(child: Child, port: u16, lines: BufReader<std::process::ChildStdout>) -> Receiver {
        let (sender, records) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Receiver {
            child,
            port,
            records,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hooks", self.port)
    }

    fn next(&self) -> simd_json::OwnedValue {
        let line = self
            .records
            .recv_timeout(Duration::from_millis(WAIT_MS))
            .unwrap_or_else(|_| panic!("nothing reached the receiver within {WAIT_MS} ms"));
        json(&line)
    }

    fn nothing_received(&self) -> bool {
        self.records.try_recv().is_err()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hook_merchant_toml(id: &str, url: &str) -> String {
    format!(
        "\n[[merchants]]\nid = \"{id}\"\nsecrets = [\"{HOOK_MERCHANT_SECRET}\"]\n\
         webhook_url = \"{url}\"\nwebhook_secret = \"{WEBHOOK_SECRET}\"\n"
    )
}

fn create_as(server: &Server, merchant: &str, order_id: &str) -> simd_json::OwnedValue {
    let body = create_body(order_id, 1999, "CNY", "tok_visa");
    let signed =
        Signed::new("POST", "/v1/payments", body.as_bytes()).by(merchant, HOOK_MERCHANT_SECRET);
    let response = server.connect().request(&signed.bytes());
    assert_eq!(response.status, 201, "{}", response.body_text());
    json(&response.body_text())
}

#[test]
fn webhooks_reach_an_https_receiver_verified_and_resume_tls_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "hooks");
    let leaf = authority.leaf("receiver", &["127.0.0.1"]);
    // Closing after every answer makes each delivery a new connection: the second one
    // resumes the TLS session of the first.
    let receiver = Receiver::start(&leaf, &["--close"]);
    let server = Server::start(ServerOptions {
        extra_toml: format!(
            "[tls]\nextra_ca_file = {}\n{}",
            path_text(&authority.ca_file()),
            hook_merchant_toml(HOOK_MERCHANT, &receiver.url())
        ),
        ..ServerOptions::default()
    });
    for (order, resumed) in [("ord-hook-1", false), ("ord-hook-2", true)] {
        let payment = create_as(&server, HOOK_MERCHANT, order);
        let record = receiver.next();
        assert_eq!(
            record["verified"], true,
            "standardwebhooks accepted it: {record:?}"
        );
        assert_eq!(record["type"].to_string(), "payment.succeeded");
        assert_eq!(record["payment_id"], payment["id"]);
        assert_eq!(record["tls_resumed"], resumed, "{order}: {record:?}");
    }
    // The receiver logs a request before payd has read the answer to it.
    eventually("both attempts counted as successes", || {
        server
            .metrics()
            .value("payd_webhook_attempts_total", &[("outcome", "success")])
            == 2.0
    });
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_webhook_attempts_total", &[("outcome", "tls_error")]),
        0.0
    );
}

#[test]
fn receivers_with_a_wrong_name_or_an_unknown_ca_get_nothing_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Authority::new(dir.path(), "trusted");
    let unknown = Authority::new(dir.path(), "unknown");
    let wrong_name = Receiver::start(&trusted.leaf("wrong-name", &["other.example"]), &[]);
    let wrong_ca = Receiver::start(&unknown.leaf("wrong-ca", &["127.0.0.1"]), &[]);
    let server = Server::start(ServerOptions {
        extra_toml: format!(
            "[webhooks]\nretry_schedule_secs = [1]\n\n[tls]\nextra_ca_file = {}\n{}{}",
            path_text(&trusted.ca_file()),
            hook_merchant_toml("m_wrong_name", &wrong_name.url()),
            hook_merchant_toml("m_wrong_ca", &wrong_ca.url()),
        ),
        ..ServerOptions::default()
    });
    create_as(&server, "m_wrong_name", "ord-name-1");
    create_as(&server, "m_wrong_ca", "ord-ca-1");
    // Two attempts each (the first and one retry), both refused in the handshake.
    eventually("both events dead-lettered", || {
        server.metrics().value(
            "payd_webhook_deliveries_total",
            &[("outcome", "dead_lettered")],
        ) == 2.0
    });
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_webhook_attempts_total", &[("outcome", "tls_error")]),
        4.0
    );
    assert_eq!(
        metrics.value("payd_webhook_attempts_total", &[("outcome", "success")]),
        0.0
    );
    assert!(
        wrong_name.nothing_received(),
        "a request reached the wrong-name receiver"
    );
    assert!(
        wrong_ca.nothing_received(),
        "a request reached the unknown-CA receiver"
    );
    let log = server.stderr.text();
    for receiver in [&wrong_name, &wrong_ca] {
        let line = format!("TLS handshake with 127.0.0.1:{} failed", receiver.port);
        assert!(log.contains(&line), "no {line:?} in:\n{log}");
    }
    assert!(log.contains("not valid for name"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
}

/// The Python acquirer behind TLS with `leaf`.
fn start_tls_acquirer(leaf: &Leaf) -> Receiver {
    let mut child = Command::new("python3")
        .arg(TLS_ACQUIRER)
        .arg("--tls-cert")
        .arg(&leaf.cert)
        .arg("--tls-key")
        .arg(&leaf.key)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let port = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("the TLS acquirer did not start: {first:?}"));
    Receiver::around(child, port, lines)
}

fn acquirer_server(acquirer: &Receiver, ca: &Path) -> Server {
    Server::start(ServerOptions {
        extra_toml: format!(
            "[acquirer]\nmode = \"http\"\nurl = \"https://127.0.0.1:{}\"\nmax_attempts = 2\n\n\
             [tls]\nextra_ca_file = {}\n{}",
            acquirer.port,
            path_text(ca),
            merchants_toml()
        ),
        ..ServerOptions::default()
    })
}

#[test]
fn the_acquirer_is_called_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "acquirer");
    let acquirer = start_tls_acquirer(&authority.leaf("acquirer", &["127.0.0.1"]));
    let server = acquirer_server(&acquirer, &authority.ca_file());
    for (order, token, status) in [
        ("ord-a-1", "tok_visa", "succeeded"),
        ("ord-a-2", "tok_decline", "declined"),
    ] {
        let body = create_body(order, 1999, "CNY", token);
        let response = server
            .connect()
            .request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
        assert_eq!(response.status, 201, "{}", response.body_text());
        let payment = json(&response.body_text());
        assert_eq!(payment["status"].to_string(), status);
        let call = acquirer.next();
        assert_eq!(call["idempotency_key"], payment["id"]);
        assert_eq!(call["payment_method"].to_string(), token);
    }
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_acquirer_calls_total", &[("outcome", "approved")]),
        1.0
    );
    assert_eq!(
        metrics.value("payd_acquirer_calls_total", &[("outcome", "declined")]),
        1.0
    );
    assert_eq!(
        metrics.value("payd_acquirer_calls_total", &[("outcome", "tls_error")]),
        0.0
    );
    // Kept alive: both calls on one connection.
    assert_eq!(
        metrics.value("payd_acquirer_pool_connects_total", &[("core", "0")]),
        1.0
    );
}

#[test]
fn an_acquirer_whose_certificate_does_not_verify_is_never_called() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Authority::new(dir.path(), "trusted");
    let unknown = Authority::new(dir.path(), "unknown");
    let acquirer = start_tls_acquirer(&unknown.leaf("acquirer", &["127.0.0.1"]));
    let server = acquirer_server(&acquirer, &trusted.ca_file());
    let body = create_body("ord-bad-ca", 1999, "CNY", "tok_visa");
    let response = server
        .connect()
        .request(&Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
    assert!(
        matches!(response.status, 201 | 202),
        "{}",
        response.body_text()
    );
    let id = json(&response.body_text())["id"].to_string();
    eventually("the payment failed", || {
        let target = format!("/v1/payments/{id}");
        let signed = Signed::new("GET", &target, b"");
        let payment = json(&server.connect().request(&signed.bytes()).body_text());
        payment["status"] == "failed" && payment["decline_code"] == "acquirer_unavailable"
    });
    let metrics = server.metrics();
    // Both attempts of `max_attempts = 2`, each refused in the handshake.
    assert_eq!(
        metrics.value("payd_acquirer_calls_total", &[("outcome", "tls_error")]),
        2.0
    );
    assert!(
        acquirer.nothing_received(),
        "a request reached the acquirer"
    );
    assert!(server.stderr.text().contains("UnknownIssuer"));
}

/// `payd check-config` on a config with `tls_toml` appended: exit success, output.
fn check_config(dir: &Path, tls_toml: &str) -> common::CommandOutput {
    let path = dir.join("check.toml");
    std::fs::write(&path, format!("{tls_toml}\n{}", merchants_toml())).unwrap();
    common::run_payd(&["check-config", &path.display().to_string()], dir)
}

#[test]
fn check_config_and_serve_name_the_tls_key_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let good = authority.leaf("good", &["127.0.0.1"]);
    let other = authority.leaf("other", &["127.0.0.1"]);
    let not_pem = dir.path().join("not-pem.txt");
    std::fs::write(&not_pem, "this is not a PEM file\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let tls = |cert: &Path, key: &Path| {
        format!(
            "[server.tls]\ncert_file = {}\nkey_file = {}\n",
            path_text(cert),
            path_text(key)
        )
    };
    let cases = [
        (tls(&missing, &good.key), "server.tls.cert_file"),
        (tls(&not_pem, &good.key), "server.tls.cert_file"),
        (tls(&good.cert, &missing), "server.tls.key_file"),
        (tls(&good.cert, &not_pem), "server.tls.key_file"),
        // A key of another certificate: the key is at fault.
        (tls(&good.cert, &other.key), "server.tls.key_file"),
        // The key given as the certificate and the other way round.
        (tls(&good.key, &good.cert), "server.tls.cert_file"),
        (
            format!("[server.tls]\ncert_file = {}\n", path_text(&good.cert)),
            "server.tls.key_file",
        ),
        (
            format!("[tls]\nextra_ca_file = {}\n", path_text(&not_pem)),
            "tls.extra_ca_file",
        ),
        (
            format!("[tls]\nextra_ca_file = {}\n", path_text(&missing)),
            "tls.extra_ca_file",
        ),
        ("[tls]\nverify = false\n".to_string(), "tls.verify"),
    ];
    let key_lines: Vec<String> = std::fs::read_to_string(&good.key)
        .unwrap()
        .lines()
        .chain(std::fs::read_to_string(&other.key).unwrap().lines())
        .filter(|line| !line.starts_with("-----"))
        .map(str::to_string)
        .collect();
    let leaks_a_key = |text: &str| key_lines.iter().any(|line| text.contains(line.as_str()));
    for (toml, key) in &cases {
        let output = check_config(dir.path(), toml);
        assert!(!output.status.success(), "accepted: {toml}");
        assert!(
            output.stderr.contains(&format!("`{key}`")),
            "{toml}: expected {key} in {:?}",
            output.stderr
        );
        assert!(!leaks_a_key(&output.stderr) && !leaks_a_key(&output.stdout));
    }
    let output = check_config(
        dir.path(),
        &format!(
            "{}\n[tls]\nextra_ca_file = {}\n",
            tls(&good.cert, &good.key),
            path_text(&authority.ca_file())
        ),
    );
    assert!(output.status.success(), "{}", output.stderr);
    assert!(
        output.stdout.contains("good.key"),
        "the key's path is shown"
    );
    assert!(!leaks_a_key(&output.stdout), "the key itself is not");
    // `serve` refuses to start on the same mismatch, naming the key.
    let path = dir.path().join("serve.toml");
    let options = ServerOptions {
        extra_toml: tls(&good.cert, &other.key),
        ..ServerOptions::default()
    };
    std::fs::write(&path, options.config_text(dir.path())).unwrap();
    let output = common::run_payd(
        &["serve", "--config", &path.display().to_string()],
        dir.path(),
    );
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("`server.tls.key_file`"),
        "{}",
        output.stderr
    );
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = Authority::new(dir.path(), "first");
    let second = Authority::new(dir.path(), "second");
    let leaf = first.leaf("server", &["127.0.0.1"]);
    let server = https_server(&leaf);
    let mut open = HttpsClient::connect(server.addr, &first.ca_file()).unwrap();
    assert_eq!(open.get("/healthz").unwrap().0, "HTTP/1.1 200 OK");
    // A renewal: new files in place, then SIGHUP.
    let renewed = second.leaf("renewed", &["127.0.0.1"]);
    std::fs::copy(&renewed.cert, &leaf.cert).unwrap();
    std::fs::copy(&renewed.key, &leaf.key).unwrap();
    server.signal(libc::SIGHUP);
    eventually("the reload logged", || {
        server
            .stderr
            .text()
            .contains("TLS certificate and key reloaded")
    });
    assert!(HttpsClient::connect(server.addr, &first.ca_file()).is_err());
    let mut fresh = HttpsClient::connect(server.addr, &second.ca_file()).unwrap();
    assert_eq!(fresh.get("/healthz").unwrap().0, "HTTP/1.1 200 OK");
    assert_eq!(
        open.get("/healthz").unwrap().0,
        "HTTP/1.1 200 OK",
        "the open connection stays"
    );
    // A bad renewal changes nothing: the server keeps the certificate it has.
    std::fs::write(&leaf.key, "not a key\n").unwrap();
    server.signal(libc::SIGHUP);
    eventually("the failed reload logged", || {
        server.stderr.text().contains("TLS not reloaded")
    });
    let log = server.stderr.text();
    assert!(log.contains("holds no PEM private key"), "{log}");
    let mut again = HttpsClient::connect(server.addr, &second.ca_file()).unwrap();
    assert_eq!(again.get("/healthz").unwrap().0, "HTTP/1.1 200 OK");
}

#[test]
fn a_stalled_handshake_is_cut_at_the_request_timeout_and_the_limit_holds() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let leaf = authority.leaf("server", &["127.0.0.1"]);
    let server = Server::start(ServerOptions {
        request_timeout_ms: 500,
        max_connections_per_core: 2,
        extra_toml: format!("{}{}", server_tls_toml(&leaf), merchants_toml()),
        ..ServerOptions::default()
    });
    // Two connections that never start their handshake fill the core's limit.
    let mut silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // Over the limit, a TLS listener closes at once: no plain-text 503 to a TLS client.
    let mut over = TcpStream::connect(server.addr).unwrap();
    over.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut bytes = Vec::new();
    over.read_to_end(&mut bytes)
        .expect("closed before the handshake timeout");
    assert!(bytes.is_empty(), "{bytes:?}");
    // The silent ones are closed at limits.request_timeout_ms.
    let started = std::time::Instant::now();
    for stream in &mut silent {
        stream
            .set_read_timeout(Some(Duration::from_millis(common::READ_TIMEOUT_MS)))
            .unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("closed by payd");
    }
    assert!(started.elapsed() < Duration::from_millis(3_000));
    let ca = authority.ca_file();
    let metrics = https_metrics(&ca, server.addr);
    assert_eq!(
        metrics.value("payd_tls_handshake_failures_total", &[("core", "0")]),
        2.0
    );
    assert_eq!(
        metrics.value("payd_connections_rejected_total", &[("core", "0")]),
        1.0
    );
}

#[test]
fn pipelined_creates_over_tls_are_all_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let leaf = authority.leaf("server", &["127.0.0.1"]);
    let server = https_server(&leaf);
    let mut client = HttpsClient::connect(server.addr, &authority.ca_file()).unwrap();
    let bodies: Vec<String> = (0..8)
        .map(|index| create_body(&format!("ord-pipe-{index}"), 100 + index, "CNY", "tok_visa"))
        .collect();
    let mut batch = Vec::new();
    for body in &bodies {
        batch.extend(Signed::new("POST", "/v1/payments", body.as_bytes()).bytes());
    }
    batch.extend(b"GET /healthz HTTP/1.1\r\nHost: payd\r\n\r\n");
    client.stream.write_all(&batch).unwrap();
    client.stream.flush().unwrap();
    for index in 0..8 {
        let (status, body) = client.read_response().unwrap();
        assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
        assert_eq!(
            json(&body)["order_id"].to_string(),
            format!("ord-pipe-{index}")
        );
    }
    assert_eq!(client.read_response().unwrap().0, "HTTP/1.1 200 OK");
}

#[test]
fn shutdown_does_not_wait_for_a_stalled_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new(dir.path(), "main");
    let leaf = authority.leaf("server", &["127.0.0.1"]);
    let mut server = https_server(&leaf);
    let _silent = TcpStream::connect(server.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let asked = std::time::Instant::now();
    server.signal(libc::SIGTERM);
    let status = server
        .wait_exit(Duration::from_millis(common::COMMAND_TIMEOUT_MS))
        .expect("payd exits");
    assert!(status.success(), "{status:?}");
    // Well before both the handshake's timeout (limits.request_timeout_ms, 10 s) and
    // server.shutdown_timeout_ms (5 s).
    assert!(
        asked.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        asked.elapsed()
    );
}
