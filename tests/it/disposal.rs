//! Disposal (issue 17, docs/DISPOSAL.md) end to end against an in-process Modbus device that
//! accepts writes: a confirm action writes only after its confirmation, reads back and is
//! audited on MQTT and in the audit file; dry_run never writes; a false interlock blocks the
//! write; the kill switch stops every action; a read-back that differs raises an alarm; f32
//! CDAB, scaled i16 and u32 values land on the right words.

use std::path::Path;
use std::time::Duration;

use alsentry::clock::{Clock, SystemClock};

use crate::support::agent::{Agent, Dev};
use crate::support::broker::embedded_with_sub;
use crate::support::delivery::schema_check;
use crate::support::harness::stop_checked;
use crate::support::modbus::{f32_words, Device, Served};
use crate::support::mqtt::{Msg, Subscriber};

const W: Duration = Duration::from_secs(10);
const AUDIT: &str = "alsentry/s/a/_agent/gw/audit";
const CMD: &str = "alsentry/s/a/_agent/gw/cmd";

const TAGS: &str = r#"[
  { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" },
  { name = "ae", table = "input", address = 7, type = "u16" },
  { name = "feed_request", table = "holding", address = 30, type = "u16" },
  { name = "draft_setpoint", table = "holding", address = 32, type = "f32", order = "CDAB" },
  { name = "trim", table = "holding", address = 34, type = "i16", scale = 0.1 },
  { name = "shots", table = "holding", address = 36, type = "u32", order = "CDAB" },
  { name = "horn", table = "coil", address = 0, type = "bool" },
]"#;

const RULE: &str = r#"[[rules]]
name = "ae_warning"
devices = ["pot-001"]
tag = "voltage"
type = "high"
limit = 4.6
deadband = 0.1"#;

fn agent(dev: &Served, broker_url: &str, state: &Path, actions: &str) -> Agent {
    Agent::new("gw")
        .at("s", "a")
        .state_dir(state)
        .sinks(&format!(
            "[mqtt]\nurl = \"{broker_url}\"\ntopic_root = \"alsentry\"\n"
        ))
        .section(actions)
        .device(
            Dev::tcp("pot-001", dev.addr)
                .unit(1)
                .poll("100ms")
                .timeout("500ms")
                .tags(TAGS),
        )
        .rule(RULE)
}

fn volts(d: &Device, v: f32) {
    d.set_input(1, 0, &f32_words(v, "CDAB"));
}

/// The next audit event of `kind`, checked against its schema.
async fn audit(sub: &mut Subscriber, kind: &str) -> serde_json::Value {
    let m = sub
        .wait_for(W, |m| m.topic == AUDIT && m.json()["event"] == kind)
        .await
        .unwrap_or_else(|| panic!("an audit event \"{kind}\" within {W:?}"));
    assert!(!m.retain, "audit events are not retained");
    assert_eq!(m.qos, 1, "audit events go at QoS 1");
    let j = m.json();
    schema_check("audit", &j);
    j
}

fn audit_file(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events_in_file(state: &Path) -> Vec<String> {
    audit_file(state)
        .iter()
        .map(|j| j["event"].as_str().unwrap_or("").to_string())
        .collect()
}

async fn start(
    actions: &str,
) -> (
    Served,
    alsentry::broker::EmbeddedBroker,
    Subscriber,
    tempfile::TempDir,
    alsentry::app::Running,
) {
    start_with(actions, |_| {}).await
}

/// Starts the agent on a device prepared by `prepare`, once it is online (its first poll done,
/// its command topic subscribed).
async fn start_with(
    actions: &str,
    prepare: impl FnOnce(&Device),
) -> (
    Served,
    alsentry::broker::EmbeddedBroker,
    Subscriber,
    tempfile::TempDir,
    alsentry::app::Running,
) {
    let dev = Served::start(Device::default()).await;
    volts(&dev.device, 4.2);
    prepare(&dev.device);
    let (broker, sub) = embedded_with_sub("disposal-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = agent(&dev, &broker.url(), state.path(), actions).build();
    let clock: std::sync::Arc<dyn Clock> = SystemClock::new();
    let running = alsentry::app::start(cfg, clock).await.unwrap();
    // Online: the agent subscribed to its command topic before it said so.
    let mut sub = sub;
    sub.wait_for(W, |m| {
        m.topic == "alsentry/s/a/_agent/gw/status" && m.json()["status"] == "online"
    })
    .await
    .expect("the agent online");
    (dev, broker, sub, state, running)
}

fn alarm_of(m: &Msg, rule: &str) -> bool {
    m.topic == format!("alsentry/s/a/pot-001/alarm/{rule}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_action_is_written_only_after_its_confirmation_read_back_and_audited() {
    let (dev, _broker, mut sub, state, running) = start(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "confirm"
target = "feed_request"
value = 1
min = 0
max = 1
interlocks = ["ae == 0", "not alarm_comm_loss"]
confirm_within = "1m""#,
    )
    .await;
    volts(&dev.device, 5.0);
    let p = audit(&mut sub, "proposed").await;
    assert_eq!(
        (&p["action"], &p["device"], &p["mode"], &p["target"]),
        (
            &"extra_feed".into(),
            &"pot-001".into(),
            &"confirm".into(),
            &"feed_request".into()
        )
    );
    assert!(p["expires"].is_string());
    // Proposed is not written: nothing reached the device.
    assert!(dev.device.writes().is_empty(), "{:?}", dev.device.writes());
    assert_eq!(dev.device.holding(1, 30, 1), [0]);

    // A confirmation naming another proposal is refused; the right one is taken.
    let id = p["id"].as_u64().unwrap();
    sub.publish(
        CMD,
        format!(
            r#"{{"op":"confirm","action":"extra_feed","device":"pot-001","by":"li.wei","proposal":{},"request_id":"c1"}}"#,
            id + 1
        )
        .as_bytes(),
    )
    .await;
    let r = sub
        .wait_for(W, |m| m.topic.ends_with("cmd/reply"))
        .await
        .unwrap();
    assert_eq!(r.json()["ok"], false, "{}", r.json());
    assert!(dev.device.writes().is_empty());
    sub.publish(
        CMD,
        format!(
            r#"{{"op":"confirm","action":"extra_feed","device":"pot-001","by":"li.wei","proposal":{id},"request_id":"c2"}}"#
        )
        .as_bytes(),
    )
    .await;
    let c = audit(&mut sub, "confirmed").await;
    assert_eq!((&c["by"], c["id"].as_u64()), (&"li.wei".into(), Some(id)));
    let w = audit(&mut sub, "written").await;
    assert_eq!(w["words"], serde_json::json!([1]));
    let v = audit(&mut sub, "verified").await;
    assert_eq!(v["read_back"], serde_json::json!([1]));
    assert_eq!(dev.device.holding(1, 30, 1), [1]);
    // One write, FC 06, at the target.
    assert_eq!(dev.device.writes(), [(1, 6, 30, vec![1])]);

    // The audit file holds the same story, in order.
    assert_eq!(
        events_in_file(state.path()),
        ["proposed", "confirmed", "written", "verified"]
    );
    for j in audit_file(state.path()) {
        schema_check("audit", &j);
        assert_eq!(j["id"].as_u64(), Some(id));
    }
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_never_writes() {
    let (dev, _broker, mut sub, state, running) = start(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "dry_run"
target = "feed_request"
value = 1
min = 0
max = 1"#,
    )
    .await;
    volts(&dev.device, 5.0);
    let d = audit(&mut sub, "dry_run").await;
    assert_eq!(
        (&d["words"], &d["function_code"]),
        (&serde_json::json!([1]), &6.into())
    );
    // Nothing to confirm, and a confirmation writes nothing.
    sub.publish(
        CMD,
        br#"{"op":"confirm","action":"extra_feed","device":"pot-001","by":"x"}"#,
    )
    .await;
    let r = sub
        .wait_for(W, |m| m.topic.ends_with("cmd/reply"))
        .await
        .unwrap();
    assert_eq!(r.json()["ok"], false);
    assert!(dev.device.writes().is_empty());
    assert_eq!(dev.device.holding(1, 30, 1), [0]);
    assert_eq!(events_in_file(state.path()), ["dry_run"]);
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_interlock_blocks_the_write_with_an_audit_event_and_an_alarm() {
    // The anode effect is already on (ae = 1) when the warning comes: the first poll, done
    // before the agent says it is online, saw it.
    let (dev, _broker, mut sub, state, running) = start_with(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "auto"
target = "feed_request"
value = 1
min = 0
max = 1
interlocks = ["ae == 0"]"#,
        |d| d.set_input(1, 7, &[1]),
    )
    .await;
    volts(&dev.device, 5.0);
    let r = audit(&mut sub, "refused").await;
    assert_eq!(r["reason"], "interlock");
    assert!(r["detail"].as_str().unwrap().contains("ae == 0"), "{r}");
    let a = sub
        .wait_for(W, |m| alarm_of(m, "action_failed"))
        .await
        .expect("the action_failed alarm");
    assert_eq!(a.json()["state"], "active_unacked");
    assert!(dev.device.writes().is_empty());
    assert_eq!(events_in_file(state.path()), ["proposed", "refused"]);
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_stops_every_action() {
    let (dev, _broker, mut sub, state, running) = start(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "auto"
target = "feed_request"
value = 1
min = 0
max = 1
[[actions]]
name = "horn"
rule = "ae_warning"
enabled = true
mode = "auto"
target = "horn"
value = 1
min = 0
max = 1"#,
    )
    .await;
    sub.publish(CMD, br#"{"op":"kill","by":"shift-lead"}"#)
        .await;
    let k = audit(&mut sub, "kill").await;
    assert_eq!(
        (&k["kill_on"], &k["by"]),
        (&true.into(), &"shift-lead".into())
    );
    volts(&dev.device, 5.0);
    for _ in 0..2 {
        let r = audit(&mut sub, "refused").await;
        assert_eq!(r["reason"], "kill");
    }
    assert!(dev.device.writes().is_empty());
    // Kept for the next start.
    let saved = std::fs::read_to_string(state.path().join("kill.json")).unwrap();
    assert!(saved.contains("\"all\":true"), "{saved}");

    // Released: the next activation writes both.
    sub.publish(CMD, br#"{"op":"release_kill","by":"shift-lead"}"#)
        .await;
    audit(&mut sub, "kill").await;
    volts(&dev.device, 4.2);
    sub.wait_for(W, |m| {
        alarm_of(m, "ae_warning") && m.json()["state"] == "returned_unacked"
    })
    .await
    .expect("returned");
    volts(&dev.device, 5.0);
    audit(&mut sub, "verified").await;
    audit(&mut sub, "verified").await;
    let mut w = dev.device.writes();
    w.sort();
    assert_eq!(w, [(1, 5, 0, vec![1]), (1, 6, 30, vec![1])]);
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_back_that_differs_raises_an_alarm() {
    let (dev, _broker, mut sub, state, running) = start(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "auto"
target = "feed_request"
value = 1
min = 0
max = 1
read_back = { attempts = 3, delay = "100ms" }"#,
    )
    .await;
    // The controller takes the write but keeps its own value.
    dev.device.stick(1, 30);
    volts(&dev.device, 5.0);
    audit(&mut sub, "written").await;
    let f = audit(&mut sub, "failed").await;
    assert_eq!(
        (&f["read_back"], &f["words"], &f["attempts"]),
        (&serde_json::json!([0]), &serde_json::json!([1]), &3.into())
    );
    let a = sub
        .wait_for(W, |m| alarm_of(m, "action_failed"))
        .await
        .expect("the action_failed alarm");
    let j = a.json();
    assert_eq!(
        (&j["state"], &j["priority"]),
        (&"active_unacked".into(), &"high".into())
    );
    assert_eq!(
        events_in_file(state.path()),
        ["proposed", "written", "failed"]
    );
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_times_out_leaves_the_device_polled() {
    let (dev, _broker, mut sub, _state, running) = start(
        r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "auto"
target = "feed_request"
value = 1
min = 0
max = 1"#,
    )
    .await;
    dev.device.deaf_to_writes(1);
    volts(&dev.device, 5.0);
    let f = audit(&mut sub, "failed").await;
    assert!(
        f["detail"].as_str().unwrap_or("").contains("write failed"),
        "{f}"
    );
    // The write's timeout dropped the connection: the link must connect again and poll on
    // (it spun without polling when the schedule was not told).
    let before = dev.device.reads_of(1);
    let deadline = tokio::time::Instant::now() + W;
    while dev.device.reads_of(1) < before + 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no poll within {W:?} after the failed write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f32_cdab_scaled_i16_and_u32_are_written_to_the_right_words() {
    let action = |name: &str, target: &str, value: &str, min: &str, max: &str| {
        format!(
            "[[actions]]\nname = \"{name}\"\nrule = \"ae_warning\"\nenabled = true\nmode = \"auto\"\ntarget = \"{target}\"\nvalue = {value}\nmin = {min}\nmax = {max}\n"
        )
    };
    let actions = [
        action("draft", "draft_setpoint", "123456.0", "0", "200000"),
        action("trim", "trim", "-25.3", "-100", "100"),
        action("shots", "shots", "70000", "0", "100000"),
    ]
    .join("\n");
    let (dev, _broker, mut sub, _state, running) = start(&actions).await;
    volts(&dev.device, 5.0);
    for _ in 0..3 {
        audit(&mut sub, "verified").await;
    }
    let mut w = dev.device.writes();
    w.sort_by_key(|x| x.2);
    assert_eq!(
        w,
        [
            // 123456.0f32 = 0x47F12000, CDAB: low word first.
            (1, 16, 32, vec![0x2000, 0x47F1]),
            // -25.3 at scale 0.1: -253.
            (1, 6, 34, vec![(-253i16) as u16]),
            // 70000 = 0x0001_1170, CDAB.
            (1, 16, 36, vec![0x1170, 0x0001]),
        ]
    );
    assert_eq!(
        dev.device.holding(1, 32, 6),
        [0x2000, 0x47F1, (-253i16) as u16, 0, 0x1170, 0x0001]
    );
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_station_lists_a_proposal_and_an_operator_confirms_it() {
    let dev = Served::start(Device::default()).await;
    volts(&dev.device, 4.2);
    let (broker, mut sub) = embedded_with_sub("disposal-st", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let users = crate::station::users(state.path());
    let cfg = agent(
        &dev,
        &broker.url(),
        state.path(),
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nusers = \"{}\"\n{}",
            users.display(),
            r#"[[actions]]
name = "extra_feed"
rule = "ae_warning"
enabled = true
mode = "confirm"
target = "feed_request"
value = 1
min = 0
max = 1"#
        ),
    )
    .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let addr = running.http.expect("the HTTP listener");
    volts(&dev.device, 5.0);
    let p = audit(&mut sub, "proposed").await;

    let mut viewer = crate::support::web::Station::new(addr);
    assert_eq!(
        viewer.login("zhang.min", "potline-view-1").await.status,
        200
    );
    let list = viewer.get("/api/actions").await.json();
    assert_eq!(list["proposals"][0]["id"], p["id"], "{list}");
    assert_eq!(list["proposals"][0]["action"], "extra_feed");
    assert_eq!(list["audit"][0]["event"], "proposed");
    // A viewer may look, not confirm.
    let extra = serde_json::json!({ "action": "extra_feed", "proposal": p["id"] });
    let r = viewer.act("confirm", "pot-001", "", extra.clone()).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(dev.device.writes().is_empty());

    let mut op = crate::support::web::Station::new(addr);
    assert_eq!(op.login("li.wei", "potline-op-1").await.status, 200);
    let r = op.act("confirm", "pot-001", "", extra).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = audit(&mut sub, "confirmed").await;
    assert_eq!(c["by"], "li.wei");
    audit(&mut sub, "verified").await;
    assert_eq!(dev.device.writes(), [(1, 6, 30, vec![1])]);
    let list = op.get("/api/actions").await.json();
    assert_eq!(list["proposals"], serde_json::json!([]));
    assert_eq!(list["audit"][0]["event"], "verified");
    stop_checked(running).await;
}
