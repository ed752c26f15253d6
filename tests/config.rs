//! `payd check-config` and `payd serve` with good and bad config files: every error names
//! the key at fault, and no secret ever reaches the output.

mod common;

use common::{run_payd, CommandOutput};
use std::path::Path;

/// A literal secret: it must never be printed, in the effective config or in an error.
const LITERAL_SECRET: &str = "sk_test_literal_do_not_print_4711";

const VALID_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
cores = [0]
max_connections_per_core = 100

[limits]
max_body_bytes = 4096

[storage]
data_dir = "./data"

[[merchants]]
id = "m_test"
secrets = ["sk_test_literal_do_not_print_4711", "file:./m_test.secret"]
"#;

/// The content of `./m_test.secret`, which VALID_CONFIG names.
const FILE_SECRET: &str = "sk_test_from_file_do_not_print_0815";

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("payd.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn check_config(text: &str) -> CommandOutput {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    run_payd(&["check-config", &path], dir.path())
}

fn combined(output: &CommandOutput) -> String {
    format!("{}\n{}", output.stdout, output.stderr)
}

/// Asserts a non-zero exit, an error naming `key`, and no literal secret in the output.
fn assert_rejected(output: &CommandOutput, key: &str, what: &str) {
    let text = combined(output);
    assert!(
        !output.status.success(),
        "{what}: accepted, output:\n{text}"
    );
    assert!(
        text.contains(key),
        "{what}: error does not name `{key}`:\n{text}"
    );
    assert!(
        !text.contains(LITERAL_SECRET),
        "{what}: output shows a secret:\n{text}"
    );
}

#[test]
fn valid_config_prints_the_effective_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m_test.secret"), FILE_SECRET).unwrap();
    let path = write_config(dir.path(), VALID_CONFIG);
    let output = run_payd(&["check-config", &path], dir.path());
    let text = combined(&output);
    assert!(output.status.success(), "valid config rejected:\n{text}");
    assert!(
        !text.contains(LITERAL_SECRET) && !text.contains(FILE_SECRET),
        "check-config printed a secret:\n{text}"
    );
    // Effective: the given value and the defaults of keys the file leaves out.
    assert!(text.contains("max_body_bytes"), "{text}");
    assert!(text.contains("4096"), "given value missing:\n{text}");
    assert!(
        text.contains("retention_hours") && text.contains("168"),
        "defaults missing from the effective config:\n{text}"
    );
    assert!(text.contains("m_test"), "merchant missing:\n{text}");
}

#[test]
fn empty_config_is_valid() {
    let output = check_config("");
    assert!(output.status.success(), "{}", combined(&output));
}

#[test]
fn unknown_keys_are_named() {
    assert_rejected(
        &check_config("[server]\nbogus = 1\n"),
        "server.bogus",
        "unknown key in [server]",
    );
    assert_rejected(
        &check_config("[bogus]\nx = 1\n"),
        "bogus",
        "unknown section",
    );
    assert_rejected(
        &check_config("[limits]\nmax_body_byte = 1\n"),
        "limits.max_body_byte",
        "misspelt key",
    );
}

#[test]
fn wrong_types_are_named() {
    assert_rejected(
        &check_config("[limits]\nmax_body_bytes = \"x\"\n"),
        "limits.max_body_bytes",
        "string for a number",
    );
    assert_rejected(
        &check_config("[server]\ncores = \"some\"\n"),
        "server.cores",
        "cores neither \"all\" nor a list",
    );
    assert_rejected(
        &check_config("[storage]\ndurability = \"sometimes\"\n"),
        "storage.durability",
        "unknown durability",
    );
}

#[test]
fn out_of_range_values_are_named() {
    assert_rejected(
        &check_config("[limits]\nmax_body_bytes = 0\n"),
        "limits.max_body_bytes",
        "zero body limit",
    );
    assert_rejected(
        &check_config("[server]\nmax_connections_per_core = 0\n"),
        "server.max_connections_per_core",
        "zero connections",
    );
    assert_rejected(
        &check_config("[limits]\nrequest_timeout_ms = 0\n"),
        "limits.request_timeout_ms",
        "zero request timeout",
    );
}

#[test]
fn a_core_that_does_not_exist_is_named() {
    assert_rejected(
        &check_config("[server]\ncores = [99]\n"),
        "server.cores",
        "core 99",
    );
    assert_rejected(
        &check_config("[server]\ncores = []\n"),
        "server.cores",
        "no cores",
    );
}

fn merchant_config(secrets: &str, extra: &str) -> String {
    format!("[[merchants]]\nid = \"m_test\"\nsecrets = {secrets}\n{extra}")
}

#[test]
fn unreadable_secret_file_is_named() {
    assert_rejected(
        &check_config(&merchant_config(r#"["file:/nonexistent/payd-secret"]"#, "")),
        "merchants[0].secrets",
        "missing secret file",
    );
}

#[test]
fn missing_secrets_are_named() {
    assert_rejected(
        &check_config(&merchant_config("[]", "")),
        "merchants[0].secrets",
        "empty secrets",
    );
}

#[test]
fn errors_next_to_a_secret_do_not_show_it() {
    let literal = format!("[\"{LITERAL_SECRET}\"]");
    assert_rejected(
        &check_config(&merchant_config(&literal, "webhook_url = \"ftp://x\"\n")),
        "merchants[0].webhook_url",
        "bad webhook url",
    );
    assert_rejected(
        &check_config(&merchant_config(&literal, "colour = \"blue\"\n")),
        "merchants[0].colour",
        "unknown merchant key",
    );
    // A secret given with the wrong type must not be quoted back in the error.
    assert_rejected(
        &check_config(&merchant_config(&format!("\"{LITERAL_SECRET}\""), "")),
        "merchants[0].secrets",
        "secret as a string instead of a list",
    );
    assert_rejected(
        &check_config(&merchant_config(
            &literal,
            &format!("webhook_secret = [\"{LITERAL_SECRET}\"]\n"),
        )),
        "merchants[0].webhook_secret",
        "webhook secret as a list",
    );
}

#[test]
fn syntax_errors_and_missing_files_fail() {
    let output = check_config("[server\ncores = [0]\n");
    assert!(!output.status.success(), "{}", combined(&output));
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml").display().to_string();
    let output = run_payd(&["check-config", &missing], dir.path());
    assert!(!output.status.success(), "{}", combined(&output));
}

#[test]
fn serve_with_a_bad_config_exits_with_the_same_error() {
    // Each names a free port, so a server that wrongly starts takes no fixed port.
    for (text, key) in [
        (
            "[server]\nlisten = \"127.0.0.1:0\"\ncores = [99]\n",
            "server.cores",
        ),
        (
            "[server]\nlisten = \"127.0.0.1:0\"\nbogus = 1\n",
            "server.bogus",
        ),
        (
            r#"[server]
listen = "127.0.0.1:0"
cores = [0]

[[merchants]]
id = "m_test"
secrets = ["file:/nonexistent/payd-secret"]
"#,
            "merchants[0].secrets",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(dir.path(), text);
        let output = run_payd(&["serve", "--config", &path], dir.path());
        assert_rejected(&output, key, &format!("serve with {text:?}"));
    }
}
