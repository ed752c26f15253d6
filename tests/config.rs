//! `payd check-config` and `payd serve` with good and bad config files: every error names
//! the key at fault, and no secret ever reaches the output.

mod common;

use common::{run_payd, run_payd_with_env, CommandOutput};
use std::collections::BTreeSet;
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

/// The secrets `payd.example.toml` reads from the environment, with test values.
const EXAMPLE_ENV: [(&str, &str); 2] = [
    ("PAYD_M_SHOP_SECRET", "example-test-secret-0123456789abcdef"),
    (
        "PAYD_M_SHOP_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
];

fn example_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("payd.example.toml")
}

/// Every dotted key of a TOML document (`server.listen`, `merchants.id`), tables apart.
fn keys_of(text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, keys: &mut BTreeSet<String>) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) => walk(&key, inner, keys),
                toml::Value::Array(items)
                    if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
                {
                    for item in items {
                        walk(&key, item.as_table().unwrap(), keys);
                    }
                }
                _ => {
                    keys.insert(key);
                }
            }
        }
    }
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"));
    let mut keys = BTreeSet::new();
    walk("", &table, &mut keys);
    keys
}

/// check-config's output without its leading comment lines (they name the file).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_config_is_valid_and_sets_every_key_with_a_comment() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_path().display().to_string();
    let output = run_payd_with_env(&["check-config", &example], dir.path(), &EXAMPLE_ENV);
    assert!(output.status.success(), "{}", combined(&output));
    let text = std::fs::read_to_string(example_path()).unwrap();
    // Every key payd knows (as check-config prints them all) is in the example.
    assert_eq!(
        keys_of(&text),
        keys_of(&output.stdout),
        "keys of the example vs payd's"
    );
    // Each key line has a comment of its own just above it (a comment block may cover
    // a pair of keys that go together, such as latency_ms and jitter_ms).
    let lines: Vec<&str> = text.lines().collect();
    for (index, line) in lines.iter().enumerate() {
        let is_key = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
        if is_key {
            let above = lines[..index]
                .iter()
                .rev()
                .take_while(|l| !l.is_empty() && !l.starts_with('['))
                .any(|l| l.starts_with('#'));
            assert!(above, "line {} has no comment above it: {line}", index + 1);
        }
    }
}

#[test]
fn check_config_output_is_toml_that_check_config_accepts_again() {
    let dir = tempfile::tempdir().unwrap();
    let example = example_path().display().to_string();
    let first = run_payd_with_env(&["check-config", &example], dir.path(), &EXAMPLE_ENV);
    assert!(first.status.success(), "{}", combined(&first));
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &first.stdout).unwrap();
    let printed = printed.display().to_string();
    let second = run_payd_with_env(&["check-config", &printed], dir.path(), &EXAMPLE_ENV);
    assert!(second.status.success(), "{}", combined(&second));
    assert_eq!(
        without_comments(&first.stdout),
        without_comments(&second.stdout)
    );
    for (_, secret) in EXAMPLE_ENV {
        assert!(!combined(&first).contains(secret), "a secret was printed");
    }
    // env: sources are shown as they are: they name where the secret lives.
    assert!(
        first.stdout.contains("env:PAYD_M_SHOP_SECRET"),
        "{}",
        first.stdout
    );
}

#[test]
fn the_log_dir_shows_its_effective_default() {
    let output = check_config("[storage]\ndata_dir = \"/srv/payd\"\n");
    assert!(output.status.success(), "{}", combined(&output));
    assert!(
        output.stdout.contains("dir = \"/srv/payd/logs\""),
        "{}",
        output.stdout
    );
}

#[test]
fn a_literal_secret_prints_as_a_placeholder_that_payd_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("m_test.secret"), FILE_SECRET).unwrap();
    let path = write_config(dir.path(), VALID_CONFIG);
    let first = run_payd(&["check-config", &path], dir.path());
    assert!(first.status.success(), "{}", combined(&first));
    assert!(first.stdout.contains("\"<redacted>\""), "{}", first.stdout);
    let path = write_config(dir.path(), &first.stdout);
    let second = run_payd(&["check-config", &path], dir.path());
    assert_rejected(&second, "merchants[0].secrets[0]", "printed placeholder");
    assert!(
        combined(&second).contains("placeholder"),
        "{}",
        combined(&second)
    );
}

/// Asserts a refusal whose message reads plainly: it contains `wanted`, and no Rust type
/// name, no hidden-value marker and no flag payd does not have.
fn assert_plain(output: &CommandOutput, wanted: &[&str], what: &str) {
    let text = combined(output);
    assert!(!output.status.success(), "{what}: accepted:\n{text}");
    for word in wanted {
        assert!(text.contains(word), "{what}: no {word:?} in:\n{text}");
    }
    for rust in [
        "f64",
        "u64",
        "usize",
        "u32",
        "u16",
        "struct ",
        "enum ",
        "(value hidden)",
        "--config",
        "(file)",
        "os error",
    ] {
        assert!(!text.contains(rust), "{what}: {rust:?} in:\n{text}");
    }
}

#[test]
fn config_errors_read_plainly_and_name_the_expected_form() {
    assert_plain(
        &check_config("[server]\ncores = \"some\"\n"),
        &["server.cores", "\"all\" or a list of CPU ids"],
        "cores as a word",
    );
    let week = check_config("[storage]\nretention_hours = \"a week\"\n");
    assert_plain(
        &week,
        &[
            "storage.retention_hours",
            "a number of hours",
            "found a string",
        ],
        "retention as words",
    );
    assert!(
        !combined(&week).contains("a week"),
        "the value is quoted back"
    );
    assert_plain(
        &check_config("[limits]\nmax_body_bytes = -1\n"),
        &["limits.max_body_bytes", "whole number of bytes", "negative"],
        "negative size",
    );
    assert_plain(
        &check_config("[storage]\ndurability = \"sometimes\"\n"),
        &["storage.durability", "\"fsync\" or \"none\""],
        "unknown durability",
    );
    assert_plain(
        &check_config("[server]\nlisten = \"nope\"\n"),
        &["server.listen", "127.0.0.1:8080"],
        "bad address",
    );
}

#[test]
fn syntax_errors_name_the_line_and_missing_files_name_no_flag() {
    assert_plain(
        &check_config("[server]\nlisten = \"127.0.0.1:0\"\n\n[limits\n"),
        &["payd.toml", "not valid TOML", "line 4"],
        "syntax error",
    );
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml").display().to_string();
    let output = run_payd(&["check-config", &missing], dir.path());
    assert_plain(
        &output,
        &["cannot read", "absent.toml", "No such file"],
        "missing file",
    );
}

#[test]
fn secrets_shorter_than_32_bytes_are_refused_naming_which() {
    let short = "sk_short_0123456789abcdef_31byt";
    assert_eq!(short.len(), 31);
    let output = check_config(&merchant_config(
        &format!("[\"{LITERAL_SECRET}\", \"{short}\"]"),
        "",
    ));
    assert_rejected(&output, "merchants[0].secrets[1]", "short secret");
    assert!(
        combined(&output).contains("at least 32 bytes"),
        "{}",
        combined(&output)
    );
    assert!(
        !combined(&output).contains(short),
        "the short secret was printed"
    );
}

#[test]
fn a_config_without_merchants_warns() {
    let output = check_config("[server]\ncores = [0]\n");
    assert!(output.status.success(), "{}", combined(&output));
    assert!(
        output.stderr.contains("warning: no merchant is configured"),
        "{}",
        output.stderr
    );
    assert!(
        !output.stdout.contains("warning"),
        "the warning is not TOML"
    );
}

#[test]
fn serve_without_merchants_warns_at_start() {
    let server = common::Server::start(common::ServerOptions::default());
    let stderr = server.stderr.text();
    assert!(
        stderr.contains("warning: no merchant is configured"),
        "{stderr}"
    );
}
