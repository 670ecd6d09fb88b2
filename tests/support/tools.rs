//! External tools a gated test needs. A gated test is `#[ignore = "needs TOOL ..."]` (plain
//! `cargo test` lists it as ignored; `.ci/run` installs the tools and runs it with
//! `--ignored`); once it runs, a missing tool fails it: nothing here skips.

use std::path::PathBuf;
use std::process::Command;

/// Where a tool is: `$PATH`, then the sbin folders Debian puts daemons in (mosquitto).
pub fn find(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// The tool's path; fails the test when it is missing.
pub fn require(tool: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        panic!("this test needs `{tool}` and it is not installed (.ci/run installs it)")
    })
}

/// Fails the test unless `python3` can import `module`.
pub fn require_python_module(module: &str) {
    let python = require("python3");
    let ok = Command::new(python)
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs the Python module `{module}` and it is not installed (.ci/run installs it)"
    );
}
