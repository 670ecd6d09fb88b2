//! Operations: reload (SIGHUP and the `reload` command) keeps alarm state and unchanged
//! links; an invalid reload is refused and the agent keeps running; SIGTERM publishes
//! `offline`; /metrics is scraped and parsed.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alsentry::clock::SystemClock;
use alsentry::config::Config;

use crate::support::agent::{Agent, Dev};
use crate::support::broker::embedded;
use crate::support::harness::wait_until;
use crate::support::modbus::{f32_words, Device, Served};
use crate::support::mqtt::Subscriber;

fn agent(
    dev: &Served,
    url: &str,
    state: &std::path::Path,
    limit: f64,
    poll: &str,
    http: Option<u16>,
) -> Agent {
    let a = Agent::new("gw-ops")
        .state_dir(state)
        .mqtt(url)
        .device(Dev::tcp("pot-1", dev.addr).poll(poll).tags(
            r#"[ { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" } ]"#,
        ))
        .rule(&format!(
            "[[rules]]\nname = \"anode_effect\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = {limit}\ndeadband = 0.5\npriority = \"critical\""
        ));
    match http {
        Some(p) => a.section(&format!("[http]\nlisten = \"127.0.0.1:{p}\"")),
        None => a,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_a_limit_keeps_the_alarm_and_refuses_a_broken_file() {
    let dev = Served::start(Device::default()).await;
    dev.device.set_input(1, 0, &f32_words(9.0, "CDAB"));
    let b = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", b.addr.port(), "ops-sub", "alsentry/#").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alsentry.toml");
    agent(&dev, &b.url(), dir.path(), 8.0, "200ms", None).write(dir.path());
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
    agent(&dev, &b.url(), dir.path(), 9.2, "200ms", None).write(dir.path());
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
    wait_until(w, "still polling after a refused reload", || {
        dev.device.reads_of(1) > before
    })
    .await;

    // Over MQTT: a valid file, with a changed poll interval, restarts only that link.
    agent(&dev, &b.url(), dir.path(), 9.2, "300ms", None).write(dir.path());
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
    let b = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", b.addr.port(), "ops-sub2", "alsentry/#").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alsentry.toml");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    agent(&dev, &b.url(), dir.path(), 8.0, "200ms", Some(http)).write(dir.path());
    let mut child = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let w = Duration::from_secs(10);
    // In either order: the first status waits for the first poll cycle, which may raise the
    // alarm first.
    let (mut online, mut alarm) = (false, false);
    while !(online && alarm) {
        let m = sub
            .wait_for(w, |m| {
                (m.topic.ends_with("/_agent/gw-ops/status") && m.json()["status"] == "online")
                    || m.topic.ends_with("/alarm/anode_effect")
            })
            .await
            .unwrap_or_else(|| panic!("online status ({online}) and alarm ({alarm})"));
        online |= m.topic.ends_with("/status");
        alarm |= m.topic.ends_with("/alarm/anode_effect");
    }

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
    agent(&dev, &b.url(), dir.path(), 9.6, "200ms", Some(http)).write(dir.path());
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
