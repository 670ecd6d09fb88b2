//! Alarm state and commands through Mosquitto (issue 14): a 5 MiB retained command (more than
//! the embedded broker accepts) does not disturb delivery; with MQTT 5 a command published
//! retained is refused even live (Retain-As-Published); the real binary SIGKILLed with alarms
//! acknowledged, latched and shelved comes back with the same states on the broker. The
//! hermetic part is tests/it/restart.rs and tests/it/commands.rs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use alsentry::clock::SystemClock;
use rumqttc::{AsyncClient, MqttOptions, QoS};

use crate::support::delivery::{one_cell_agent, set_volts, CMD, REPLY};
use crate::support::harness::{stop_checked, wait_until};
use crate::support::modbus::{Device, Served};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Subscriber;

fn cmd(op: &str, id: &str, rule: &str, extra: &str) -> String {
    format!(
        r#"{{"op":"{op}","device":"pot-1","rule":"{rule}","by":"shift-a","request_id":"{id}"{extra}}}"#
    )
}

async fn reply_to(sub: &mut Subscriber, id: &str) -> serde_json::Value {
    sub.wait_for(Duration::from_secs(10), |m| {
        m.topic == REPLY && m.json()["request_id"] == id
    })
    .await
    .unwrap_or_else(|| panic!("no reply to {id}"))
    .json()
}

/// A client that can publish packets up to 8 MiB; its event loop runs in the background and
/// reports each PUBACK (so a test knows the broker holds what was published).
async fn big_publisher(port: u16) -> (AsyncClient, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let mut o = MqttOptions::new("big-pub", "127.0.0.1", port);
    o.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut el) = AsyncClient::new(o, 10);
    let (acked, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = ev {
                let _ = acked.send(());
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn a_5mib_retained_command_does_not_disturb_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::private(dir.path());
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let mut sub = Subscriber::connect(
        "127.0.0.1",
        mosq.port,
        "big-sub",
        "alsentry/s/a/pot-1/alarm/#",
    )
    .await;
    let (big, mut acked) = big_publisher(mosq.port).await;
    big.publish(CMD, QoS::AtLeastOnce, true, vec![b' '; 5 << 20])
        .await
        .unwrap();
    // The broker must hold it before the agent subscribes: else it arrives live, not retained.
    tokio::time::timeout(Duration::from_secs(30), acked.recv())
        .await
        .expect("the broker acknowledged the 5 MiB retained command")
        .expect("the publisher's event loop runs");
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nreconnect_max = \"1s\"\n",
        mosq.port
    );
    let state = dir.path().join("state");
    let running = alsentry::app::start(
        one_cell_agent(&state, &dev, &sinks, 1).build(),
        SystemClock::new(),
    )
    .await
    .unwrap();
    let m = &running.metrics.sinks[0];
    // Generous: beside the other gated tests a debug build reads 5 MiB slowly.
    wait_until(
        Duration::from_secs(60),
        "the 5 MiB retained command dropped and counted",
        || m.commands_retained_oversized.load(Ordering::Relaxed) >= 1,
    )
    .await;
    assert_eq!(
        m.commands_retained_oversized.load(Ordering::Relaxed),
        1,
        "delivered once: no reconnect"
    );
    // The connection stays: every transition arrives promptly, and the command is not
    // delivered again (it would be after a reconnect).
    let t0 = Instant::now();
    for i in 0..3 {
        set_volts(&dev.device, 9.0);
        sub.wait_for(Duration::from_secs(5), |m| {
            m.json()["state"] == "active_unacked"
        })
        .await
        .unwrap_or_else(|| panic!("activation {i} delivered"));
        set_volts(&dev.device, 7.0);
        sub.wait_for(Duration::from_secs(5), |m| {
            m.json()["state"] == "returned_unacked"
        })
        .await
        .unwrap_or_else(|| panic!("return {i} delivered"));
        let r = {
            let mut c =
                Subscriber::connect("127.0.0.1", mosq.port, &format!("ack-{i}"), REPLY).await;
            let ack = cmd("ack", &format!("ack-{i}"), "hi1", "");
            c.publish(CMD, ack.as_bytes()).await;
            reply_to(&mut c, &format!("ack-{i}")).await
        };
        assert_eq!(r["ok"], true, "{r}");
    }
    assert!(m.connected.load(Ordering::Relaxed));
    assert_eq!(
        m.commands_retained_oversized.load(Ordering::Relaxed),
        1,
        "no reconnect"
    );
    eprintln!(
        "6 transitions and 3 acks with a 5 MiB retained command on the broker: {:?}",
        t0.elapsed()
    );
    stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn mqtt5_a_command_published_retained_is_refused_even_live() {
    let dir = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::private(dir.path());
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let mut sub = Subscriber::connect("127.0.0.1", mosq.port, "v5-sub", "alsentry/#").await;
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\nprotocol = \"5\"\n",
        mosq.port
    );
    let state = dir.path().join("state");
    let running = alsentry::app::start(
        one_cell_agent(&state, &dev, &sinks, 1).build(),
        SystemClock::new(),
    )
    .await
    .unwrap();
    sub.wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("active");
    sub.client
        .publish(
            CMD,
            QoS::AtLeastOnce,
            true,
            cmd("out_of_service", "oos", "hi1", "").into_bytes(),
        )
        .await
        .unwrap();
    let r = reply_to(&mut sub, "oos").await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("RETAIN"), "{r}");
    sub.publish(CMD, cmd("ack", "ack", "hi1", "").as_bytes())
        .await;
    let r = reply_to(&mut sub, "ack").await;
    assert_eq!(
        (&r["ok"], &r["state"]),
        (&true.into(), &"active_acked".into()),
        "in service: {r}"
    );
    stop_checked(running).await;
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_agent(cfg: &std::path::Path) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alsentry"))
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

/// The broker's retained alarms: "rule" → (state, acked_by, shelved_until, seq).
async fn retained(port: u16, name: &str) -> BTreeMap<String, (String, String, String, u64)> {
    let mut sub = Subscriber::connect("127.0.0.1", port, name, "alsentry/s/a/pot-1/alarm/+").await;
    let mut out = BTreeMap::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), sub.rx.recv()).await {
        if m.retain && !m.payload.is_empty() {
            let j = m.json();
            let s = |k: &str| j[k].as_str().unwrap_or("").to_string();
            out.insert(
                s("rule"),
                (
                    s("state"),
                    s("acked_by"),
                    s("shelved_until"),
                    j["seq"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn the_binary_sigkilled_comes_back_with_every_alarm_state() {
    let dir = tempfile::tempdir().unwrap();
    let mosq = Mosquitto::private(dir.path());
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let mut sub = Subscriber::connect("127.0.0.1", mosq.port, "k-sub", "alsentry/#").await;
    let sinks = format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", mosq.port);
    let state = dir.path().join("state");
    let latch = "[[rules]]\nname = \"latch\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\nlatching = true\npriority = \"high\"\n";
    let cfg = one_cell_agent(&state, &dev, &sinks, 3)
        .rule(latch)
        .write(dir.path());
    let (agent, _lines) = spawn_agent(&cfg);
    for rule in ["hi1", "hi2", "hi3", "latch"] {
        sub.wait_for(Duration::from_secs(15), |m| {
            m.topic.ends_with(&format!("/alarm/{rule}"))
        })
        .await
        .unwrap_or_else(|| panic!("{rule} active"));
    }
    sub.publish(CMD, cmd("ack", "a1", "hi1", "").as_bytes())
        .await;
    assert_eq!(reply_to(&mut sub, "a1").await["ok"], true);
    sub.publish(
        CMD,
        cmd("shelve", "s2", "hi2", r#","duration":"2h""#).as_bytes(),
    )
    .await;
    assert_eq!(reply_to(&mut sub, "s2").await["ok"], true);
    sub.publish(CMD, cmd("out_of_service", "o3", "hi3", "").as_bytes())
        .await;
    assert_eq!(reply_to(&mut sub, "o3").await["ok"], true);
    set_volts(&dev.device, 7.0);
    sub.wait_for(Duration::from_secs(10), |m| {
        m.topic.ends_with("/alarm/latch") && m.json()["state"] == "latched"
    })
    .await
    .expect("latched");
    let before = retained(mosq.port, "k-ret1").await;
    // SIGKILL right after the broker has the picture (commands are on disk before their
    // reply; the latch within 1 s, and the condition is clear so it would latch again
    // only if the state was lost).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    drop(agent);
    std::fs::remove_file(state.join("seq.lease")).unwrap();
    let (agent, lines) = spawn_agent(&cfg);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut restored_line = None;
    while restored_line.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines.recv_timeout(left).expect("the restore log line");
        if l.contains("alarm state restored") {
            restored_line = Some(l);
        }
    }
    let max_before = before.values().map(|v| v.3).max().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let r = retained(mosq.port, "k-ret2").await;
        if r.len() == before.len() && r.values().all(|v| v.3 > max_before) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "republished: {r:?} after {before:?}"
        );
    };
    let strip = |m: &BTreeMap<String, (String, String, String, u64)>| -> BTreeMap<String, (String, String, String)> {
        m.iter().map(|(k, v)| (k.clone(), (v.0.clone(), v.1.clone(), v.2.clone()))).collect()
    };
    assert_eq!(strip(&after), strip(&before), "{restored_line:?}");
    assert_eq!(
        after["hi1"].0, "normal",
        "acked, then the condition cleared"
    );
    assert!(!after["hi2"].2.is_empty(), "shelved_until kept: {after:?}");
    assert_eq!(after["hi3"].0, "out_of_service");
    assert_eq!(after["latch"].0, "latched");
    sub.publish(CMD, cmd("reset", "r4", "latch", "").as_bytes())
        .await;
    let r = reply_to(&mut sub, "r4").await;
    assert_eq!(
        (&r["ok"], &r["state"]),
        (&true.into(), &"returned_unacked".into()),
        "{r}"
    );
    drop(agent);
}

// Mosquitto queues at most `max_queued_messages` QoS 1 messages per client and drops the rest,
// unanswerable. The shipped plant.conf sets 100000, as here; with the default of 1,000 a burst
// published in 90 ms would need the agent to read over 20,000 messages a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn a_burst_of_3000_commands_through_mosquitto_gets_one_reply_each() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::net::free_port();
    let mosq = Mosquitto::start(dir.path(), port, "max_queued_messages 100000\n");
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let mut sub = Subscriber::connect("127.0.0.1", mosq.port, "burst-sub", REPLY).await;
    let mut alarms = Subscriber::connect(
        "127.0.0.1",
        mosq.port,
        "burst-alarms",
        "alsentry/s/a/pot-1/alarm/#",
    )
    .await;
    let sinks = format!("[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n", mosq.port);
    let state = dir.path().join("state");
    let running = alsentry::app::start(
        one_cell_agent(&state, &dev, &sinks, 1).build(),
        SystemClock::new(),
    )
    .await
    .unwrap();
    alarms
        .wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("active");
    let n = 3_000;
    let t0 = Instant::now();
    // A connection of its own for the burst, so the replies' subscriber only reads.
    let console = Subscriber::connect("127.0.0.1", mosq.port, "burst-pub", "nothing/here").await;
    tokio::spawn(async move {
        for i in 0..n {
            let c = cmd("shelve", &format!("b-{i}"), "hi1", r#","duration":"1h""#);
            console
                .client
                .publish(CMD, QoS::AtLeastOnce, false, c.into_bytes())
                .await
                .unwrap();
        }
        eprintln!("burst published in {:?}", t0.elapsed());
        // The connection stays until the test ends.
        std::future::pending::<()>().await;
    });
    let mut replies: BTreeMap<String, usize> = BTreeMap::new();
    let mut busy = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while replies.len() < n {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await else {
            panic!("{} of {n} commands answered\n{}", replies.len(), mosq.log());
        };
        let j = m.json();
        if let Some(id) = j["request_id"].as_str() {
            *replies.entry(id.to_string()).or_default() += 1;
            busy += usize::from(j["error"].as_str().is_some_and(|e| e.starts_with("busy: ")));
        }
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.rx.recv()).await {
        if let Some(id) = m.json()["request_id"].as_str() {
            *replies.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(replies.values().all(|&c| c == 1), "exactly one reply each");
    eprintln!(
        "{n} commands through Mosquitto: all answered once in {:?}, {busy} busy",
        t0.elapsed()
    );
    stop_checked(running).await;
}
