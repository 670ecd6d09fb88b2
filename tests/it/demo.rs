//! The README's first command: within a minute the demo shows values, a warning before an
//! anode effect, the anode effect, and its return to normal — with nothing else installed.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_shows_warning_anode_effect_and_return_within_a_minute() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["demo", "--run-for", "62s"])
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run the demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let pos = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(l));
    let summary = pos(&|l| l.contains("summary") && l.contains("pot-001") && l.contains("kWh/t"));
    let warning =
        pos(&|l| l.contains("ae_warning") && l.contains("pot-003") && l.contains("active_unacked"));
    let ae = pos(&|l| {
        l.contains("anode_effect") && l.contains("pot-003") && l.contains("active_unacked")
    });
    let back = pos(&|l| {
        l.contains("anode_effect") && l.contains("pot-003") && l.contains("returned_unacked")
    });
    assert!(summary.is_some(), "no values shown:\n{stdout}");
    let (w, a, b) = (
        warning.expect(&stdout),
        ae.expect(&stdout),
        back.expect(&stdout),
    );
    assert!(
        w < a && a < b,
        "order warning < anode effect < return:\n{stdout}"
    );
    assert!(
        stdout.contains("mosquitto_sub -h 127.0.0.1"),
        "prints the mosquitto_sub command"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("pot-001") && l.contains("active_unacked")),
        "no false alarm on a healthy cell:\n{stdout}"
    );
}
