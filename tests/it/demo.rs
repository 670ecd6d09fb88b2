//! The README's first command: within a minute the demo shows values, a warning before an
//! anode effect, the anode effect, and its return to normal — with nothing else installed; and
//! on another cell a warning, a proposed action, its confirmation by a command, and an anode
//! effect avoided (docs/DISPOSAL.md).

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

    // Disposal on pot-002: warning, proposal, the operator's command, the verified write, and
    // no anode effect.
    let on2 = |what: &'static str| move |l: &str| l.contains("pot-002") && l.contains(what);
    let warned = pos(&|l| on2("ae_warning")(l) && l.contains("active_unacked"));
    let proposed = pos(&|l| on2("extra_feed")(l) && l.contains("proposed"));
    let confirmed_by_command =
        pos(&|l| on2("confirms over MQTT")(l) && l.contains("\"op\":\"confirm\""));
    let verified = pos(&|l| on2("extra_feed")(l) && l.contains("verified"));
    let (w2, p2, c2, v2) = (
        warned.expect(&stdout),
        proposed.expect(&stdout),
        confirmed_by_command.expect(&stdout),
        verified.expect(&stdout),
    );
    assert!(
        w2 < p2 && p2 < c2 && c2 < v2,
        "order warning < proposal < command < verified write:\n{stdout}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("pot-002") && l.contains("anode_effect")),
        "the anode effect on pot-002 is avoided:\n{stdout}"
    );
    // pot-003's proposal is left to expire: nothing is written there.
    assert!(
        pos(&|l| l.contains("pot-003") && l.contains("expired")).is_some(),
        "{stdout}"
    );
    assert!(!lines
        .iter()
        .any(|l| l.contains("pot-003") && l.contains("verified")));
}
