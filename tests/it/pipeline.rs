//! End to end, hermetic: an in-process Modbus device → alsentry → the embedded MQTT broker →
//! a real subscriber: every value decoded, the alarm contract, an operator's acknowledgement,
//! retained state for a late console. Ports are all 0; readiness is signalled, never slept for.

use std::time::Duration;

use alsentry::broker::EmbeddedBroker;
use alsentry::clock::{Clock, SystemClock};

use crate::support::agent::{Agent, Dev};
use crate::support::broker::embedded_with_sub;
use crate::support::modbus::{f32_words, Device, Served};
use crate::support::mqtt::Subscriber;

/// Three cells behind one gateway (the shipped example's cell map) and one kiln, with the
/// anode-effect rule of the example.
pub(crate) fn potline_agent(
    cells: &Served,
    kiln: &Served,
    broker: &EmbeddedBroker,
    state: &std::path::Path,
) -> Agent {
    Agent::new("gw-test")
        .at("qingzhen", "potline-1")
        .state_dir(state)
        .sinks(&format!(
            "[mqtt]\nurl = \"{}\"\ntopic_root = \"alsentry\"\n",
            broker.url()
        ))
        .section(
            r#"[templates.cell]
tags = [
  { name = "voltage",    table = "input",   address = 0,  type = "f32", order = "CDAB", unit = "V" },
  { name = "current",    table = "input",   address = 2,  type = "f32", order = "CDAB", unit = "kA" },
  { name = "bath_temp",  table = "input",   address = 4,  type = "i16", scale = 0.1, unit = "degC" },
  { name = "feed_count", table = "holding", address = 10, type = "u32" },
]"#,
        )
        .device(
            Dev::tcp("pot-{unit:03}", cells.addr)
                .template("cell")
                .units("1-3")
                .poll("200ms")
                .timeout("300ms")
                .backoff_max("2s"),
        )
        .device(
            Dev::tcp("kiln-1", kiln.addr).unit(1).poll("200ms").tags(
                r#"[
  { name = "flue_temp", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "degC" },
  { name = "draft",     table = "holding", address = 1, type = "i16", unit = "Pa" },
]"#,
            ),
        )
        .rule(
            r#"[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
message = "Anode effect on {device}: {value} V""#,
        )
}

pub(crate) fn serve_cells(d: &Device, voltage: f32) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_values_are_published_and_the_anode_effect_alarm_follows_the_contract() {
    let cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    kiln.device.set_holding(1, 0, &[11_505, (-250i16) as u16]);
    let (broker, mut sub) = embedded_with_sub("test-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = potline_agent(&cells, &kiln, &broker, state.path())
        .rule(PROBES)
        .build();
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
