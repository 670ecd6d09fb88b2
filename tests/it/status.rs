//! The agent's status and its counters: what the pure session machines, the device-health
//! owner, the typed status and the shared counter lease look like from outside, through a real
//! agent, a real broker and a real Modbus device.

use std::path::Path;
use std::time::Duration;

use crate::support::modbus::{Device, Served};
use crate::support::mqtt::Subscriber;
use alsentry::broker::EmbeddedBroker;
use alsentry::clock::SystemClock;
use alsentry::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STATUS: &str = "alsentry/s/a/_agent/gw/status";

/// `pot-1` on a served device (voltage in holding 0, u16 × 0.1 V, `hi` above 8 V) and `pot-2`
/// on a port where nothing listens.
fn agent_toml(state: &Path, served: &Served, broker: &str, http: u16, dead: u16) -> String {
    format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[mqtt]
url = "{broker}"

[http]
listen = "127.0.0.1:{http}"

[[devices]]
name = "pot-1"
endpoint = "tcp://{addr}"
unit = 1
poll = "100ms"
timeout = "500ms"
tags = [ {{ name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" }} ]

[[devices]]
name = "pot-2"
endpoint = "tcp://127.0.0.1:{dead}"
unit = 1
poll = "100ms"
timeout = "500ms"
backoff_max = "1s"
tags = [ {{ name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" }} ]

[[rules]]
name = "hi"
devices = ["pot-1"]
tag = "voltage"
type = "high"
limit = 8.0
priority = "high"
"#,
        state = state.display(),
        addr = served.addr,
    )
}

fn config(text: &str) -> Config {
    Config::from_str(Path::new("arch_session.toml"), text).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

async fn embedded() -> EmbeddedBroker {
    crate::support::broker::embedded().await
}

async fn http_get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string()
}

/// The keys of a JSON object as written, in order, duplicates kept: a string at depth 1 that
/// follows `{` or `,`.
fn top_level_keys(raw: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut depth, mut prev) = (0, ' ');
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut text = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => text.extend(chars.next()),
                        '"' => break,
                        c => text.push(c),
                    }
                }
                if depth == 1 && (prev == '{' || prev == ',') {
                    keys.push(text);
                }
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
        if !c.is_whitespace() {
            prev = c;
        }
    }
    keys
}

/// The status is one typed struct serialized once: every field of docs/MQTT.md, each once, in
/// the documented order. Its device counts come from the pollers (the owners of that state),
/// and `/readyz` and `/metrics` agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_is_typed_and_its_device_counts_come_from_the_pollers() {
    let served = Served::start(Device::default()).await;
    served.device.set_holding(1, 0, &[70]);
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "as-status", STATUS).await;
    let state = tempfile::tempdir().unwrap();
    let http = crate::support::net::free_port();
    let dead = crate::support::net::free_port();
    let cfg = config(&agent_toml(
        state.path(),
        &served,
        &broker.url(),
        http,
        dead,
    ));
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();

    let msg = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.json()["devices_up"] == 1 && m.json()["devices_down"] == 1
        })
        .await
        .expect("a status with pot-1 up and pot-2 down");
    let raw = String::from_utf8(msg.payload.clone()).unwrap();
    let order = [
        "schema",
        "agent",
        "status",
        "ts",
        "version",
        "config_hash",
        "devices_up",
        "devices_down",
        "down",
        "sink",
        "outbox_depth",
        "outbox_bytes",
        "outbox_oldest_age_s",
        "drops",
        "drop_reasons",
        "dead_lettered",
        "restore",
    ];
    assert_eq!(
        top_level_keys(&raw),
        order,
        "every field once, in order: {raw}"
    );
    let j = msg.json();
    assert_eq!(j["status"], "online");
    assert_eq!(j["down"], serde_json::json!(["pot-2"]));
    assert_eq!(j["sink"], "plant");
    assert_eq!(j["restore"]["state_file"], "none", "a first start: {raw}");
    for k in ["alarm", "status", "summary", "data"] {
        assert!(j["drops"][k].is_u64(), "{raw}");
    }
    for k in ["full", "expired", "io", "refused"] {
        assert!(j["drop_reasons"][k].is_u64(), "{raw}");
    }

    let ready: serde_json::Value = serde_json::from_str(&http_get(http, "/readyz").await).unwrap();
    assert_eq!(ready["devices_up"], 1, "{ready}");
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("alsentry_device_up{device=\"pot-1\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("alsentry_device_up{device=\"pot-2\"} 0\n"));

    // pot-1 goes silent: the status says so within a housekeeping tick, not at the next 30 s
    // period.
    served.device.silence(1, true);
    let gone = sub
        .wait_for(Duration::from_secs(5), |m| m.json()["devices_up"] == 0)
        .await
        .expect("a status with no device up");
    assert_eq!(gone.json()["down"], serde_json::json!(["pot-1", "pot-2"]));
    running.stop().await;
}

/// The event `seq` lease now uses the outbox's durable format; a lease written as text by an
/// earlier release is read once and continued, so ids never repeat across the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_lease_written_by_an_older_release_is_continued() {
    let served = Served::start(Device::default()).await;
    served.device.set_holding(1, 0, &[70]);
    let broker = embedded().await;
    let mut sub = Subscriber::connect(
        "127.0.0.1",
        broker.addr.port(),
        "as-seq",
        "alsentry/s/a/pot-1/alarm/#",
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    std::fs::write(state.path().join("seq.lease"), "12000\n").unwrap();
    let http = crate::support::net::free_port();
    let dead = crate::support::net::free_port();
    let cfg = config(&agent_toml(
        state.path(),
        &served,
        &broker.url(),
        http,
        dead,
    ));
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    served.device.set_holding(1, 0, &[95]);
    let alarm = sub
        .wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi"))
        .await
        .expect("the hi alarm");
    assert_eq!(alarm.json()["seq"], 12_000, "{}", alarm.json());
    assert_eq!(alarm.json()["id"], "gw-12000");
    running.stop().await;
    let lease = std::fs::read(state.path().join("seq.lease")).unwrap();
    assert_eq!(lease.len(), 12, "rewritten as one checksummed entry");
}
