//! What the delivery tests share (tests/it/delivery.rs, and tests/interop/delivery.rs against
//! Mosquitto): one cell whose voltage the test drives, alarm collection and ordering checks, a
//! bare sink task, and the payload check against schemas/.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use alsentry::clock::SystemClock;
use alsentry::config::Config;
use alsentry::io::publisher::{InboundCommand, Message, SinkTask};
use alsentry::metrics::Metrics;
use alsentry::outbox::{Class, Outbox};
use serde_json::Value;

use super::agent::{Agent, Dev};
use super::modbus::{Device, Served};
use super::mqtt::{Msg, Subscriber};

pub const ALARMS: &str = "alsentry/+/+/+/alarm/#";
pub const STATUS: &str = "alsentry/s/a/_agent/gw/status";
pub const CMD: &str = "alsentry/s/a/_agent/gw/cmd";
pub const REPLY: &str = "alsentry/s/a/_agent/gw/cmd/reply";

/// One cell whose voltage (holding 0, u16 x0.1 V) the test drives, and `n` high-voltage rules
/// on it (`hi1` critical, the others low), so one crossing makes `n` transitions.
pub fn one_cell_agent(state: &Path, device: &Served, sinks: &str, n_rules: usize) -> Agent {
    let mut a = Agent::new("gw")
        .state_dir(state)
        .sinks(sinks)
        // These tests are about delivery: keep flood handling (which holds back low-priority
        // alarms) out of the way.
        .section("[alarms]\nflood_threshold = 100000")
        .device(
            Dev::tcp("pot-1", device.addr)
                .unit(1)
                .poll("100ms")
                .timeout("500ms")
                .tags(r#"[ { name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" } ]"#),
        );
    for i in 1..=n_rules {
        let prio = if i == 1 { "critical" } else { "low" };
        a = a.rule(&format!(
            "[[rules]]\nname = \"hi{i}\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\npriority = \"{prio}\""
        ));
    }
    a
}

pub fn set_volts(d: &Device, v: f64) {
    d.set_holding(1, 0, &[(v * 10.0).round() as u16]);
}

/// Crosses the 8 V limit `n` times each way, `period` apart.
pub async fn toggle(d: &Device, n: usize, period: Duration) {
    for _ in 0..n {
        set_volts(d, 9.0);
        tokio::time::sleep(period).await;
        set_volts(d, 7.0);
        tokio::time::sleep(period).await;
    }
}

/// Collects alarm messages until `done` says so or `within` runs out.
pub async fn collect(
    sub: &mut Subscriber,
    within: Duration,
    mut done: impl FnMut(&[Msg]) -> bool,
) -> Vec<Msg> {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    while !done(&got) {
        match tokio::time::timeout_at(deadline, sub.rx.recv()).await {
            Ok(Some(m)) => {
                if m.topic.contains("/alarm/") {
                    got.push(m);
                }
            }
            _ => break,
        }
    }
    got
}

pub fn seqs(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter()
        .map(|m| m.json()["seq"].as_u64().expect("seq"))
        .collect()
}

/// Transitions settle once the engine stopped producing them for a while (700 ms: seven polls
/// of the 100 ms cell). Bounded: the stimulus has stopped, so they settle within 30 s.
pub async fn settled_transitions(m: &Metrics) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last = m.alarm_transitions.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = m.alarm_transitions.load(Ordering::Relaxed);
        if now == last {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alarm transitions did not settle"
        );
        last = now;
    }
}

/// Waits until sink `sink`'s outbox is empty: every alarm stored so far was acknowledged by
/// the broker. A test that cuts the link once its subscriber has the messages must wait for
/// this too: the subscriber can have a message whose PUBACK is still on its way to the agent,
/// and the agent rightly resends such a message after the cut (QoS 1), which then reads as an
/// old transition resent. The depth is refreshed every 500 ms, so call it after the
/// transitions settled (`settled_transitions` waits 700 ms of quiet).
pub async fn all_acked(m: &Metrics, sink: usize) {
    super::harness::wait_until(Duration::from_secs(10), "every alarm acknowledged", || {
        m.sinks[sink].outbox_depth.load(Ordering::Relaxed) == 0
    })
    .await;
}

pub fn assert_consecutive(s: &[u64]) {
    for w in s.windows(2) {
        assert_eq!(w[1], w[0] + 1, "out of order or missing: {s:?}");
    }
}

/// The sink task of `cfg.sinks[index]` alone, fed by the returned sender.
pub fn sink_task(
    cfg: &Config,
    index: usize,
    outbox: Outbox,
    metrics: Arc<Metrics>,
) -> (
    SinkTask,
    tokio::sync::mpsc::Sender<Arc<Message>>,
    tokio::sync::mpsc::Receiver<InboundCommand>,
) {
    let s = &cfg.sinks[index];
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let (ctx, crx) = tokio::sync::mpsc::channel(16);
    let who = alsentry::core::payload::Identity {
        topic_root: s.topic_root.clone(),
        agent: cfg.agent.id.clone(),
        site: cfg.agent.site.clone(),
        area: cfg.agent.area.clone(),
    };
    let task = SinkTask {
        index,
        cfg: s.clone(),
        who,
        client_id: format!("alsentry-test-{index}"),
        outbox,
        rx,
        commands: ctx,
        clock: SystemClock::new(),
        health: alsentry::io::health::channel(cfg.devices.iter().map(|d| d.name.clone())).1,
        metrics,
        config_hash: tokio::sync::watch::channel("test".to_string()).1,
        password: None,
        restore: None,
        sparkplug: None,
    };
    (task, tx, crx)
}

/// A message of `class` on `topic`, numbered `n`, padded with `pad` bytes.
pub fn msg(class: Class, topic: &str, n: usize, pad: usize) -> Arc<Message> {
    let schema = match class {
        Class::Alarm => "alsentry/alarm/1",
        _ => "alsentry/summary/1",
    };
    Arc::new(Message {
        class,
        topic: topic.into(),
        payload: format!(
            r#"{{"schema":"{schema}","n":{n},"pad":"{}"}}"#,
            "x".repeat(pad)
        )
        .into_bytes(),
        retain: false,
        priority: (class == Class::Alarm).then_some(alsentry::core::model::Priority::High),
    })
}

pub fn schema_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("schemas/{name}.schema.json"))
}

/// A small check against our JSON Schemas: every required key is present and every present
/// key that the schema types has a value of that type (one level, plus `properties` of
/// nested objects). Enough to catch a payload drifting from its documented contract.
pub fn schema_check(name: &str, v: &Value) {
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path(name)).unwrap()).unwrap();
    check_object(name, &schema, v);
}

fn type_ok(t: &Value, v: &Value) -> bool {
    match t {
        Value::String(t) => match t.as_str() {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => false,
        },
        Value::Array(ts) => ts.iter().any(|t| type_ok(t, v)),
        _ => true,
    }
}

pub fn check_object(name: &str, schema: &Value, v: &Value) {
    assert!(v.is_object(), "{name}: not an object: {v}");
    for k in schema["required"].as_array().into_iter().flatten() {
        let k = k.as_str().unwrap();
        assert!(
            v.get(k).is_some(),
            "{name}: required \"{k}\" missing in {v}"
        );
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, p) in props {
            let Some(val) = v.get(k) else { continue };
            if let Some(t) = p.get("type") {
                assert!(type_ok(t, val), "{name}: \"{k}\" should be {t}: {val}");
            }
            if let Some(c) = p.get("const") {
                assert_eq!(val, c, "{name}: \"{k}\"");
            }
            if let Some(e) = p["enum"].as_array() {
                assert!(e.contains(val), "{name}: \"{k}\" = {val} not in {e:?}");
            }
            if val.is_object() && p.get("properties").is_some() {
                check_object(&format!("{name}.{k}"), p, val);
            }
            if let (Some(ap), Some(map)) = (p.get("additionalProperties"), val.as_object()) {
                if ap.get("properties").is_some() {
                    for (kk, vv) in map {
                        check_object(&format!("{name}.{k}.{kk}"), ap, vv);
                    }
                }
            }
        }
    }
}
