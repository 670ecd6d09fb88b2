//! Disposal against a Modbus server nobody here wrote (pymodbus): what the agent writes is what
//! pymodbus stores, word for word; a confirm action waits for its confirmation; dry_run and a
//! kill switch write nothing; a value the server does not keep raises the alarm.

use std::time::Duration;

use alsentry::clock::{Clock, SystemClock};

use crate::modbus::PyServer;
use crate::support::agent::{Agent, Dev};
use crate::support::broker::embedded_with_sub;
use crate::support::harness::stop_checked;
use crate::support::modbus::f32_words;
use crate::support::mqtt::Subscriber;
use crate::support::net::free_port;

const W: Duration = Duration::from_secs(15);
const AUDIT: &str = "alsentry/s/a/_agent/gw/audit";
const CMD: &str = "alsentry/s/a/_agent/gw/cmd";

/// The audit event `kind` of `action`: one seen earlier, or the next to arrive (the others are
/// kept in `seen`, since the actions run side by side).
async fn audit(
    sub: &mut Subscriber,
    seen: &mut Vec<serde_json::Value>,
    kind: &str,
    action: &str,
) -> serde_json::Value {
    let is = |j: &serde_json::Value| j["event"] == kind && j["action"] == action;
    if let Some(i) = seen.iter().position(is) {
        return seen.remove(i);
    }
    let found = sub
        .wait_for(W, |m| {
            if m.topic != AUDIT {
                return false;
            }
            let j = m.json();
            if is(&j) {
                return true;
            }
            seen.push(j);
            false
        })
        .await;
    found
        .unwrap_or_else(|| panic!("audit \"{kind}\" of {action} within {W:?}"))
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pymodbus; .ci/run runs it"]
async fn actions_write_what_pymodbus_stores_only_when_allowed() {
    let port = free_port();
    let mut py = PyServer::start(port, 1);
    py.set(1, "input", 0, &f32_words(4.2, "CDAB"));
    let (broker, mut sub) = embedded_with_sub("disposal-interop", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let auto = |name: &str, target: &str, value: &str, min: &str, max: &str| {
        format!("[[actions]]\nname = \"{name}\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"auto\"\ntarget = \"{target}\"\nvalue = {value}\nmin = {min}\nmax = {max}\n")
    };
    let actions = [
        auto("draft", "draft_setpoint", "123456.0", "0", "200000"),
        auto("trim", "trim", "-25.3", "-100", "100"),
        auto("shots", "shots", "70000", "0", "100000"),
        "[[actions]]\nname = \"extra_feed\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"confirm\"\ntarget = \"feed_request\"\nvalue = 1\nmin = 0\nmax = 1\ninterlocks = [\"not alarm_comm_loss\"]\n".to_string(),
        "[[actions]]\nname = \"preview\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"dry_run\"\ntarget = \"spare\"\nvalue = 7\nmin = 0\nmax = 10\n".to_string(),
        "[[actions]]\nname = \"horn\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"auto\"\ntarget = \"horn\"\nvalue = 1\nmin = 0\nmax = 1\narea = \"hall-2\"\n".to_string(),
        "[disposal]\nkilled_areas = [\"hall-2\"]\n".to_string(),
    ]
    .join("\n");
    let cfg = Agent::new("gw")
        .at("s", "a")
        .state_dir(state.path())
        .sinks(&format!("[mqtt]\nurl = \"{}\"\ntopic_root = \"alsentry\"\n", broker.url()))
        .section(&actions)
        .device(Dev::tcp("pot-001", format!("127.0.0.1:{port}").parse().unwrap()).unit(1).poll("200ms").timeout("1s").tags(
            r#"[
  { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" },
  { name = "feed_request", table = "holding", address = 30, type = "u16" },
  { name = "draft_setpoint", table = "holding", address = 32, type = "f32", order = "CDAB" },
  { name = "trim", table = "holding", address = 34, type = "i16", scale = 0.1 },
  { name = "shots", table = "holding", address = 36, type = "u32", order = "CDAB" },
  { name = "spare", table = "holding", address = 40, type = "u16" },
  { name = "horn", table = "coil", address = 3, type = "bool" },
]"#,
        ))
        .rule("[[rules]]\nname = \"ae_warning\"\ndevices = [\"pot-001\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 4.6\ndeadband = 0.1")
        .build();
    let clock: std::sync::Arc<dyn Clock> = SystemClock::new();
    let running = alsentry::app::start(cfg, clock).await.unwrap();
    sub.wait_for(W, |m| {
        m.topic == "alsentry/s/a/_agent/gw/status" && m.json()["status"] == "online"
    })
    .await
    .expect("online");

    let mut seen = Vec::new();
    py.set(1, "input", 0, &f32_words(5.0, "CDAB"));
    for a in ["draft", "trim", "shots"] {
        audit(&mut sub, &mut seen, "verified", a).await;
    }
    // f32 CDAB, scaled i16 and u32 CDAB, as pymodbus holds them.
    assert_eq!(py.get(1, "holding", 32, 2), [0x2000, 0x47F1]);
    assert_eq!(py.get(1, "holding", 34, 1), [(-253i16) as u16]);
    assert_eq!(py.get(1, "holding", 36, 2), [0x1170, 0x0001]);
    // dry_run: said, not written; the killed area: refused, not written.
    let d = audit(&mut sub, &mut seen, "dry_run", "preview").await;
    assert_eq!(d["words"], serde_json::json!([7]));
    let k = audit(&mut sub, &mut seen, "refused", "horn").await;
    assert_eq!(k["reason"], "kill");
    assert_eq!(py.get(1, "holding", 40, 1), [0]);
    assert_eq!(py.get(1, "coil", 3, 1), [0]);

    // confirm: nothing until the command, then written and read back.
    let p = audit(&mut sub, &mut seen, "proposed", "extra_feed").await;
    assert_eq!(py.get(1, "holding", 30, 1), [0]);
    let cmd = serde_json::json!({"op":"confirm","action":"extra_feed","device":"pot-001","by":"li.wei","proposal":p["id"]});
    sub.publish(CMD, cmd.to_string().as_bytes()).await;
    let v = audit(&mut sub, &mut seen, "verified", "extra_feed").await;
    assert_eq!(v["read_back"], serde_json::json!([1]));
    assert_eq!(py.get(1, "holding", 30, 1), [1]);

    let lines = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    for e in [
        "\"proposed\"",
        "\"confirmed\"",
        "\"written\"",
        "\"verified\"",
        "\"dry_run\"",
        "\"refused\"",
    ] {
        assert!(lines.contains(e), "{e} in the audit file:\n{lines}");
    }
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs pymodbus; .ci/run runs it"]
async fn a_value_pymodbus_does_not_keep_raises_the_alarm() {
    let port = free_port();
    let mut py = PyServer::start(port, 1);
    py.set(1, "input", 0, &f32_words(4.2, "CDAB"));
    // The controller overrides the request: the write is acknowledged, the value stays 0.
    py.stick(1, 30);
    let (broker, mut sub) = embedded_with_sub("disposal-interop-2", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Agent::new("gw")
        .at("s", "a")
        .state_dir(state.path())
        .sinks(&format!("[mqtt]\nurl = \"{}\"\ntopic_root = \"alsentry\"\n", broker.url()))
        .section("[[actions]]\nname = \"extra_feed\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"auto\"\ntarget = \"feed_request\"\nvalue = 1\nmin = 0\nmax = 1\nread_back = { attempts = 3, delay = \"100ms\" }\n")
        .device(Dev::tcp("pot-001", format!("127.0.0.1:{port}").parse().unwrap()).unit(1).poll("200ms").timeout("1s").tags(
            r#"[
  { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" },
  { name = "feed_request", table = "holding", address = 30, type = "u16" },
]"#,
        ))
        .rule("[[rules]]\nname = \"ae_warning\"\ndevices = [\"pot-001\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 4.6\ndeadband = 0.1")
        .build();
    let clock: std::sync::Arc<dyn Clock> = SystemClock::new();
    let running = alsentry::app::start(cfg, clock).await.unwrap();
    sub.wait_for(W, |m| {
        m.topic == "alsentry/s/a/_agent/gw/status" && m.json()["status"] == "online"
    })
    .await
    .expect("online");
    py.set(1, "input", 0, &f32_words(5.0, "CDAB"));
    let mut seen = Vec::new();
    audit(&mut sub, &mut seen, "written", "extra_feed").await;
    let f = audit(&mut sub, &mut seen, "failed", "extra_feed").await;
    assert_eq!(
        (&f["read_back"], &f["words"], &f["attempts"]),
        (&serde_json::json!([0]), &serde_json::json!([1]), &3.into())
    );
    let a = sub
        .wait_for(W, |m| m.topic == "alsentry/s/a/pot-001/alarm/action_failed")
        .await
        .expect("the action_failed alarm");
    assert_eq!(a.json()["state"], "active_unacked");
    assert_eq!(py.get(1, "holding", 30, 1), [0]);
    stop_checked(running).await;
}
