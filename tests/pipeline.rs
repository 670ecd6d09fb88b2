//! End to end, hermetic: an in-process Modbus device → alsentry → the embedded MQTT broker →
//! a real subscriber. Ports are all 0; readiness is signalled, never slept for.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use alsentry::broker::EmbeddedBroker;
use alsentry::clock::{Clock, SystemClock};
use alsentry::config::Config;
use support::modbus::{f32_words, Device, Served};
use support::mqtt::Subscriber;

fn config(
    cells: &Served,
    kiln: &Served,
    broker: &EmbeddedBroker,
    state: &std::path::Path,
    extra: &str,
) -> Config {
    let text = format!(
        r#"
[agent]
id = "gw-test"
site = "qingzhen"
area = "potline-1"
state_dir = "{state}"

[mqtt]
url = "{url}"
topic_root = "alsentry"

[templates.cell]
tags = [
  {{ name = "voltage",    table = "input",   address = 0,  type = "f32", order = "CDAB", unit = "V" }},
  {{ name = "current",    table = "input",   address = 2,  type = "f32", order = "CDAB", unit = "kA" }},
  {{ name = "bath_temp",  table = "input",   address = 4,  type = "i16", scale = 0.1, unit = "degC" }},
  {{ name = "feed_count", table = "holding", address = 10, type = "u32" }},
]

[[devices]]
name = "pot-{{unit:03}}"
template = "cell"
endpoint = "tcp://{cells}"
units = "1-3"
poll = "200ms"
timeout = "300ms"
backoff_max = "2s"

[[devices]]
name = "kiln-1"
endpoint = "tcp://{kiln}"
unit = 1
poll = "200ms"
tags = [
  {{ name = "flue_temp", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "degC" }},
  {{ name = "draft",     table = "holding", address = 1, type = "i16", unit = "Pa" }},
]

[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
message = "Anode effect on {{device}}: {{value}} V"
{extra}
"#,
        state = state.display(),
        url = broker.url(),
        cells = cells.addr,
        kiln = kiln.addr,
    );
    Config::from_str(std::path::Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn serve_cells(d: &Device, voltage: f32) {
    for unit in 1..=3 {
        d.set_input(unit, 0, &f32_words(voltage, "CDAB"));
        d.set_input(unit, 2, &f32_words(512.5, "CDAB"));
        d.set_input(unit, 4, &[9_580]); // 958.0 degC as i16 x0.1
        d.set_holding(unit, 10, &[0x0001, 0x86A0]); // 100000 as u32 ABCD
    }
}

/// Rules whose limits every value crosses at once, so each value shows up in an alarm payload.
const PROBES: &str = r#"
[[rules]]
name = "probe_current"
template = "cell"
tag = "current"
type = "high"
limit = -1e9
priority = "low"
[[rules]]
name = "probe_bath"
template = "cell"
tag = "bath_temp"
type = "high"
limit = -1e9
priority = "low"
[[rules]]
name = "probe_feed"
template = "cell"
tag = "feed_count"
type = "high"
limit = -1e9
priority = "low"
[[rules]]
name = "probe_draft"
devices = ["kiln-1"]
tag = "draft"
type = "low"
limit = 1e9
priority = "low"
"#;

async fn broker_and_sub(filter: &str) -> (EmbeddedBroker, Subscriber) {
    let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap();
    let sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "test-sub", filter).await;
    (broker, sub)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_values_are_published_and_the_anode_effect_alarm_follows_the_contract() {
    let cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    kiln.device.set_holding(1, 0, &[11_505, (-250i16) as u16]);
    let (broker, mut sub) = broker_and_sub("alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&cells, &kiln, &broker, state.path(), PROBES);
    let clock: std::sync::Arc<dyn Clock> = SystemClock::new();
    let running = alsentry::app::start(cfg, clock).await.unwrap();

    // Every served value arrives decoded: f32 CDAB, scaled i16, u32, signed i16.
    let w = Duration::from_secs(10);
    let t = |d: &str, r: &str| format!("alsentry/qingzhen/potline-1/{d}/alarm/{r}");
    let topics = [
        t("pot-002", "probe_current"),
        t("pot-001", "probe_bath"),
        t("pot-003", "probe_feed"),
        t("kiln-1", "probe_draft"),
    ];
    let got = sub
        .wait_all(w, &topics.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(got[&topics[0]].json()["value"].as_f64(), Some(512.5));
    let bath = got[&topics[1]].json()["value"].as_f64().unwrap();
    assert!((bath - 958.0).abs() < 1e-9, "bath {bath}");
    assert_eq!(got[&topics[2]].json()["value"].as_f64(), Some(100_000.0));
    let j = got[&topics[3]].json();
    assert_eq!(j["value"].as_f64(), Some(-250.0));
    for k in [
        "id", "ts", "device", "tag", "rule", "priority", "state", "value", "limit", "unit",
        "quality", "message",
    ] {
        assert!(j.get(k).is_some(), "field {k} missing in {j}");
    }
    assert_eq!(j["unit"], "Pa");
    assert_eq!(j["quality"], "good");

    // Voltage above 8 V: the alarm fires only after the 2 s on-delay.
    cells.device.set_input(2, 0, &f32_words(9.5, "CDAB"));
    let raised_at = std::time::Instant::now();
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("pot-002/alarm/anode_effect"))
        .await
        .expect("anode effect");
    let waited = raised_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1_800),
        "fired after {waited:?}, before the on-delay"
    );
    let j = m.json();
    assert_eq!(j["state"], "active_unacked");
    assert_eq!(j["priority"], "critical");
    assert_eq!(j["device"], "pot-002");
    assert_eq!(j["tag"], "voltage");
    assert_eq!(j["limit"].as_f64(), Some(8.0));
    assert_eq!(j["value"].as_f64(), Some(9.5));
    assert_eq!(j["message"], "Anode effect on pot-002: 9.5 V");
    let ts = j["ts"].as_str().unwrap();
    assert!(
        ts.ends_with('Z') && ts.len() == 24,
        "RFC 3339 UTC with ms: {ts}"
    );

    // Inside the deadband (7.6 V) it stays active; below 7.5 V it clears.
    cells.device.set_input(2, 0, &f32_words(7.6, "CDAB"));
    assert!(
        sub.wait_for(Duration::from_millis(1_500), |m| m
            .topic
            .ends_with("pot-002/alarm/anode_effect"))
            .await
            .is_none(),
        "cleared inside the deadband"
    );
    cells.device.set_input(2, 0, &f32_words(7.3, "CDAB"));
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("pot-002/alarm/anode_effect"))
        .await
        .expect("clear");
    assert_eq!(m.json()["state"], "returned_unacked");

    // An operator acknowledges over MQTT and sees the retained state change.
    sub.publish(
        "alsentry/qingzhen/potline-1/_agent/gw-test/cmd",
        br#"{"op":"ack","device":"pot-002","rule":"anode_effect","by":"shift-a"}"#,
    )
    .await;
    let got = sub
        .wait_all(
            w,
            &[
                t("pot-002", "anode_effect").as_str(),
                "alsentry/qingzhen/potline-1/_agent/gw-test/cmd/reply",
            ],
        )
        .await;
    let m = &got[&t("pot-002", "anode_effect")];
    assert_eq!(m.json()["state"], "normal");
    assert_eq!(m.json()["acked_by"], "shift-a");
    assert_eq!(
        got["alsentry/qingzhen/potline-1/_agent/gw-test/cmd/reply"].json()["ok"],
        true
    );

    // A console that connects late sees the current state from the retained messages.
    let mut late = Subscriber::connect(
        "127.0.0.1",
        broker.addr.port(),
        "late-console",
        "alsentry/+/+/+/alarm/#",
    )
    .await;
    let m = late
        .wait_for(w, |m| m.topic.ends_with("pot-002/alarm/anode_effect"))
        .await
        .expect("retained state");
    assert!(m.retain);
    assert_eq!(m.json()["state"], "normal");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_device_returns_without_restart_and_never_slows_the_others() {
    let mut cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    kiln.device.set_holding(1, 0, &[11_505, 0]);
    let (broker, _sub) = broker_and_sub("alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&cells, &kiln, &broker, state.path(), "");
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let m = running.metrics.clone();
    let ok = |i: usize| m.devices[i].polls_ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(ok(0) > 0 && ok(3) > 0, "all devices polled");

    cells.stop();
    let kiln_before = kiln.device.reads_of(1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let kiln_reads = kiln.device.reads_of(1) - kiln_before;
    // 200 ms poll over 4 s is 20 polls; the dead cells must not slow the kiln down.
    assert!(
        kiln_reads >= 16,
        "kiln polled {kiln_reads} times in 4 s while the cells were gone"
    );
    assert!(
        !m.devices[0].up.load(Ordering::Relaxed),
        "ok={} failed={} reads_after_stop={}",
        ok(0),
        m.devices[0].polls_failed.load(Ordering::Relaxed),
        cells.device.reads_of(1)
    );

    let before = ok(0);
    cells.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ok(0) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "pot-001 did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(m.devices[0].up.load(Ordering::Relaxed));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_unit_costs_the_others_only_its_timeout() {
    let cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    cells.device.silence(2, true);
    let (broker, _sub) = broker_and_sub("alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = config(&cells, &kiln, &broker, state.path(), "");
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (cells.device.reads_of(1), cells.device.reads_of(3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = (
        cells.device.reads_of(1) - before.0,
        cells.device.reads_of(3) - before.1,
    );
    // Units 1 and 3 share the link with the silent unit 2 (2 reads per poll, 5 polls/s).
    assert!(
        after.0 >= 28 && after.1 >= 28,
        "healthy units read {after:?} times in 4 s"
    );
    assert!(
        running.metrics.devices[1]
            .polls_failed
            .load(Ordering::Relaxed)
            >= 1
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_register_inside_a_block_never_blinds_the_rest() {
    let dev = Device::default();
    // Tags at 0, 1 and 2; the device does not serve register 1.
    dev.set_holding(1, 0, &[100, 0, 300]);
    dev.unmap(1, 1);
    let cells = Served::start(dev).await;
    let (broker, mut sub) = broker_and_sub("alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{}"
[mqtt]
url = "{}"
[[devices]]
name = "plc"
endpoint = "tcp://{}"
poll = "200ms"
tags = [
  {{ name = "a", table = "holding", address = 0 }},
  {{ name = "b", table = "holding", address = 1 }},
  {{ name = "c", table = "holding", address = 2 }},
]
[[rules]]
name = "c_high"
devices = ["plc"]
tag = "c"
type = "high"
limit = 250
"#,
        state.path().display(),
        broker.url(),
        cells.addr
    );
    let cfg = Config::from_str(std::path::Path::new("t.toml"), &text).unwrap();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("plc/alarm/c_high")
        })
        .await
        .expect("c read despite the hole");
    assert_eq!(m.json()["value"].as_f64(), Some(300.0));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = cells.device.reads();
    let late = &reads[reads.len() - 4..];
    assert!(
        late.iter()
            .all(|(_, _, start, count)| !(*start..start + count).contains(&1)),
        "planner still reads register 1: {late:?}"
    );
    running.stop().await;
}
