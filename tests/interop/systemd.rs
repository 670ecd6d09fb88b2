//! deploy/systemd/alsentry.service checked by systemd itself, offline.
//!
//! `systemd-analyze verify` refuses a unit whose ExecStart binary does not exist, and the
//! shipped unit points at /usr/bin/alsentry (the Debian package's path), which a build machine
//! need not have. So
//! the test verifies a temporary copy in which only that path is replaced by the binary
//! cargo just built; every other line is the shipped one. (Installing a stub at
//! /usr/bin would need root and leave traces on the machine.) `.ci/package` verifies the unit
//! the package installs, with the real binary in place.
//!
//! Needs `systemd-analyze` 250 or later (Debian package `systemd`; bookworm has 252).

use std::path::{Path, PathBuf};

use crate::support::tools::require;
use std::process::{Command, Output};

const SHIPPED_BIN: &str = "/usr/bin/alsentry";

fn shipped_unit() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/alsentry.service");
    std::fs::read_to_string(path).unwrap()
}

/// Writes the unit, with the binary path swapped, as `alsentry.service` in a temp dir.
fn unit_for_this_build(unit: &str) -> (tempfile::TempDir, PathBuf) {
    assert!(
        unit.contains(&format!("ExecStart={SHIPPED_BIN} run")),
        "the shipped unit no longer runs {SHIPPED_BIN}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alsentry.service");
    let text = unit.replace(SHIPPED_BIN, env!("CARGO_BIN_EXE_alsentry"));
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn verify(bin: &Path, unit: &Path) -> Output {
    Command::new(bin)
        .arg("verify")
        .arg(unit)
        // Offline: no manager to talk to, and no pager.
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap()
}

/// Lines systemd wrote about our unit (it prints unknown keys as warnings but exits 0).
fn complaints(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .chain(String::from_utf8_lossy(&out.stdout).lines())
        .filter(|l| l.contains("alsentry.service"))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run runs it"]
fn shipped_unit_passes_systemd_analyze_verify() {
    let bin = require("systemd-analyze");
    let (_dir, unit) = unit_for_this_build(&shipped_unit());
    let out = verify(&bin, &unit);
    assert!(
        out.status.success() && complaints(&out).is_empty(),
        "systemd-analyze verify: {}\n{}",
        out.status,
        complaints(&out).join("\n")
    );
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run runs it"]
fn verify_catches_a_broken_unit() {
    // Guards the test above against passing for the wrong reason (e.g. output we ignore).
    let bin = require("systemd-analyze");
    let broken = shipped_unit().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    let (_dir, unit) = unit_for_this_build(&broken);
    let out = verify(&bin, &unit);
    assert!(
        complaints(&out)
            .iter()
            .any(|l| l.contains("NoNewPrivilege")),
        "a misspelt key went unnoticed: {out:?}"
    );
}

#[test]
#[ignore = "needs systemd-analyze; .ci/run runs it"]
fn shipped_unit_exposure_is_low() {
    let bin = require("systemd-analyze");
    let (_dir, unit) = unit_for_this_build(&shipped_unit());
    // `--offline` appeared in systemd 250; older versions cannot score a unit file alone.
    let out = Command::new(&bin)
        .args(["security", "--offline=true", "--threshold=20"])
        .arg(&unit)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("Overall exposure level"),
        "this systemd-analyze cannot score a unit file offline (needs 250 or later): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd rates 0.0 (best) to 10.0; "OK" ends below 2.0. --threshold is in tenths.
    assert!(
        out.status.success(),
        "exposure above 2.0:\n{}",
        text.lines()
            .filter(|l| l.contains('✗') || l.contains("Overall"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
