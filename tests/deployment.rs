//! The deployment files in `docs/`: the systemd unit is one `systemd-analyze verify`
//! accepts without a single complaint, and it keeps what fail-stop and io_uring need.

mod common;

use std::path::Path;
use std::process::Command;

const UNIT_PATH: &str = "docs/systemd/payd.service";
/// Where the unit expects the binary (`cargo install --path . --root /usr/local`).
const INSTALLED_BINARY: &str = "/usr/local/bin/payd";

fn unit_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(UNIT_PATH);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_unit_restarts_on_failure_with_its_limits_user_and_data_directory() {
    let unit = unit_text();
    for line in [
        "Restart=on-failure",
        "User=payd",
        "StateDirectory=payd",
        "LimitMEMLOCK=",
        "LimitNOFILE=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        &format!("ExecStart={INSTALLED_BINARY} serve --config /etc/payd/payd.toml"),
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{UNIT_PATH} has no line starting {line:?}"
        );
    }
}

/// systemd-analyze reports unknown keys and bad values on stderr and still exits 0, so
/// any output at all fails the test. The unit is checked with ExecStart pointing at the
/// binary just built, since verify insists the command exists.
#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        println!(
            "skipped: systemd-analyze is not installed here (Debian's systemd package \
             provides it), so {UNIT_PATH} was not verified"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_text().replace(INSTALLED_BINARY, common::payd_binary());
    let path = dir.path().join("payd.service");
    std::fs::write(&path, unit).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify {UNIT_PATH}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}
