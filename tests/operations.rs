//! Operations: reload (SIGHUP and the `reload` command) keeps alarm state and unchanged
//! links; an invalid reload is refused and the agent keeps running; SIGTERM publishes
//! `offline`; /metrics is scraped and parsed.

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alsentry::broker::EmbeddedBroker;
use alsentry::clock::SystemClock;
use alsentry::config::Config;
use support::modbus::{f32_words, Device, Served};
use support::mqtt::Subscriber;

fn config_text(
    dev: &Served,
    url: &str,
    state: &std::path::Path,
    limit: f64,
    poll: &str,
    http: Option<u16>,
) -> String {
    let http = http
        .map(|p| format!("[http]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[agent]
id = "gw-ops"
site = "s"
area = "a"
state_dir = "{}"
[mqtt]
url = "{url}"
{http}
[[devices]]
name = "pot-1"
endpoint = "tcp://{}"
poll = "{poll}"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" }} ]
[[rules]]
name = "anode_effect"
devices = ["pot-1"]
tag = "voltage"
type = "high"
limit = {limit}
deadband = 0.5
priority = "critical"
"#,
        state.display(),
        dev.addr
    )
}

async fn broker() -> EmbeddedBroker {
    tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_limit_keeps_the_alarm_and_refuses_a_broken_file() {
    let dev = Served::start(Device::default()).await;
    dev.device.set_input(1, 0, &f32_words(9.0, "CDAB"));
    let b = broker().await;
    let mut sub = Subscriber::connect("127.0.0.1", b.addr.port(), "ops-sub", "alsentry/#").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alsentry.toml");
    std::fs::write(
        &path,
        config_text(&dev, &b.url(), dir.path(), 8.0, "200ms", None),
    )
    .unwrap();
    let running = alsentry::app::start(Config::load(&path).unwrap(), SystemClock::new())
        .await
        .unwrap();
    let w = Duration::from_secs(10);
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("/alarm/anode_effect"))
        .await
        .expect("alarm");
    assert_eq!(m.json()["state"], "active_unacked");
    sub.publish(
        "alsentry/s/a/_agent/gw-ops/cmd",
        br#"{"op":"ack","device":"pot-1","rule":"anode_effect","by":"op"}"#,
    )
    .await;
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("/alarm/anode_effect"))
        .await
        .expect("ack");
    assert_eq!(m.json()["state"], "active_acked");

    // Raise the limit to 9.2: 9.0 V is inside the new deadband, so the acknowledged alarm stays.
    let reads_before = dev.device.reads_of(1);
    std::fs::write(
        &path,
        config_text(&dev, &b.url(), dir.path(), 9.2, "200ms", None),
    )
    .unwrap();
    let msg = running.reload().await.expect("reload applied");
    assert!(msg.contains("1 links kept"), "{msg}");
    assert!(
        sub.wait_for(Duration::from_secs(2), |m| m
            .topic
            .ends_with("/alarm/anode_effect"))
            .await
            .is_none(),
        "state kept, nothing republished"
    );
    // 8.6 V is below the new limit minus the deadband: the alarm clears, under the new limit.
    dev.device.set_input(1, 0, &f32_words(8.6, "CDAB"));
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("/alarm/anode_effect"))
        .await
        .expect("clear");
    assert_eq!(
        m.json()["state"],
        "normal",
        "an acknowledged alarm that clears goes to normal"
    );
    assert_eq!(m.json()["limit"].as_f64(), Some(9.2));
    assert!(dev.device.reads_of(1) > reads_before, "polling went on");

    // A broken file is refused with its problems; the agent keeps running the old config.
    std::fs::write(&path, "[agent]\nid = \"gw-ops\"\nsite = 5\n").unwrap();
    let err = running.reload().await.expect_err("broken config refused");
    assert!(err.contains("alsentry.toml:3:8: agent.site"), "{err}");
    let before = dev.device.reads_of(1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        dev.device.reads_of(1) > before,
        "still polling after a refused reload"
    );

    // Over MQTT: a valid file, with a changed poll interval, restarts only that link.
    std::fs::write(
        &path,
        config_text(&dev, &b.url(), dir.path(), 9.2, "300ms", None),
    )
    .unwrap();
    sub.publish(
        "alsentry/s/a/_agent/gw-ops/cmd",
        br#"{"op":"reload","by":"ops","request_id":"r1"}"#,
    )
    .await;
    let r = sub
        .wait_for(w, |m| m.topic.ends_with("/cmd/reply"))
        .await
        .expect("reply");
    assert_eq!(r.json()["ok"], true, "{}", r.json());
    assert_eq!(r.json()["request_id"], "r1");
    assert!(
        r.json()["state"].as_str().unwrap().contains("1 restarted"),
        "{}",
        r.json()
    );
    running.stop().await;
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_metrics_reloads_on_sighup_and_publishes_offline_on_sigterm() {
    let dev = Served::start(Device::default()).await;
    dev.device.set_input(1, 0, &f32_words(9.0, "CDAB"));
    let b = broker().await;
    let mut sub = Subscriber::connect("127.0.0.1", b.addr.port(), "ops-sub2", "alsentry/#").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alsentry.toml");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &path,
        config_text(&dev, &b.url(), dir.path(), 8.0, "200ms", Some(http)),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w = Duration::from_secs(10);
    let online = sub
        .wait_for(w, |m| {
            m.topic.ends_with("/_agent/gw-ops/status") && m.json()["status"] == "online"
        })
        .await;
    assert!(online.is_some(), "online status");
    sub.wait_for(w, |m| m.topic.ends_with("/alarm/anode_effect"))
        .await
        .expect("alarm");

    // /metrics parses as Prometheus text and counts the polls.
    let deadline = Instant::now() + w;
    let body = loop {
        let (code, body) = http_get(http, "/metrics");
        if code == 200 && body.contains("alsentry_polls_total{device=\"pot-1\",result=\"ok\"}") {
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics: {code} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut samples = std::collections::HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').expect("name value");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        samples.insert(name.to_string(), v);
    }
    assert!(samples["alsentry_polls_total{device=\"pot-1\",result=\"ok\"}"] >= 1.0);
    assert_eq!(
        samples["alsentry_alarms{state=\"active_unacked\",priority=\"critical\"}"],
        1.0
    );
    assert_eq!(http_get(http, "/readyz").0, 200);
    assert!(http_get(http, "/alarms").1.contains("anode_effect"));

    // SIGHUP with a changed limit: the alarm clears under the new limit without a restart.
    std::fs::write(
        &path,
        config_text(&dev, &b.url(), dir.path(), 9.6, "200ms", Some(http)),
    )
    .unwrap();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let m = sub
        .wait_for(w, |m| m.topic.ends_with("/alarm/anode_effect"))
        .await
        .expect("clear after SIGHUP");
    assert_eq!(m.json()["state"], "returned_unacked");

    // SIGTERM: a clean stop that says `offline`.
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let offline = sub
        .wait_for(w, |m| {
            m.topic.ends_with("/_agent/gw-ops/status") && m.json()["status"] == "offline"
        })
        .await;
    assert!(offline.is_some(), "offline status on SIGTERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit: {status}");
}
