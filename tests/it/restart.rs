//! Alarm state across restarts (issue 14): every state, who acknowledged and until when a
//! shelve runs survive a clean stop and a crash-like stop; the broker's retained alarm topics
//! equal what the agent holds; restored alarms answer commands; a removed rule's retained
//! topics are cleared; `seq` keeps increasing when the lease is deleted or corrupted.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::support::modbus::{Device, Served};
use crate::support::mqtt::Subscriber;
use alsentry::broker::EmbeddedBroker;
use alsentry::clock::SystemClock;
use alsentry::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALARMS: &str = "alsentry/s/a/+/alarm/+";
const CMD: &str = "alsentry/s/a/_agent/gw/cmd";
const REPLY: &str = "alsentry/s/a/_agent/gw/cmd/reply";
const STATUS: &str = "alsentry/s/a/_agent/gw/status";

/// Six cells on one Modbus server (units 1..6, voltage in holding 0 as u16 × 0.1 V): `hi`
/// (above 8 V) on every cell, `lat` (latching, above 8 V) on pot-2 unless `with_lat` is false.
fn config(
    state: &Path,
    served: &Served,
    broker: &EmbeddedBroker,
    http: u16,
    with_lat: bool,
) -> Config {
    let mut devices = String::new();
    for u in 1..=6 {
        devices += &format!(
            r#"
[[devices]]
name = "pot-{u}"
endpoint = "tcp://{addr}"
unit = {u}
poll = "100ms"
timeout = "500ms"
tags = [ {{ name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" }} ]
"#,
            addr = served.addr
        );
    }
    let lat = if with_lat {
        "[[rules]]\nname = \"lat\"\ndevices = [\"pot-2\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\nlatching = true\npriority = \"critical\"\n"
    } else {
        ""
    };
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[mqtt]
url = "mqtt://{broker}"

[http]
listen = "127.0.0.1:{http}"
{devices}
[[rules]]
name = "hi"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
priority = "high"

{lat}
"#,
        state = state.display(),
        broker = broker.addr,
    );
    Config::from_str(Path::new("restart.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn volts(dev: &Device, unit: u8, v: f64) {
    dev.set_holding(unit, 0, &[(v * 10.0).round() as u16]);
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

/// Sends a command and returns its reply (matched by `request_id`).
async fn command(sub: &mut Subscriber, id: &str, body: &str) -> serde_json::Value {
    let payload = format!(r#"{{"request_id":"{id}",{body}}}"#);
    sub.publish(CMD, payload.as_bytes()).await;
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == REPLY && m.json()["request_id"] == id
        })
        .await
        .unwrap_or_else(|| panic!("no reply to {payload}"));
    m.json()
}

/// What a fresh subscriber gets from the broker's retained store: topic → payload (JSON).
async fn retained(broker: &EmbeddedBroker, name: &str) -> BTreeMap<String, serde_json::Value> {
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), name, ALARMS).await;
    let mut out = BTreeMap::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(700), sub.rx.recv()).await {
        if m.retain && !m.payload.is_empty() {
            out.insert(m.topic.clone(), m.json());
        }
    }
    out
}

/// (state, acked_by, shelved_until) of every retained alarm topic, by "device/rule".
fn states(r: &BTreeMap<String, serde_json::Value>) -> BTreeMap<String, (String, String, String)> {
    r.values()
        .map(|j| {
            (
                format!(
                    "{}/{}",
                    j["device"].as_str().unwrap(),
                    j["rule"].as_str().unwrap()
                ),
                (
                    j["state"].as_str().unwrap_or("").to_string(),
                    j["acked_by"].as_str().unwrap_or("").to_string(),
                    j["shelved_until"].as_str().unwrap_or("").to_string(),
                ),
            )
        })
        .collect()
}

/// The alarms /alarms shows, by "device/rule" → state.
async fn shown(http: u16) -> BTreeMap<String, String> {
    let body = http_get(http, "/alarms").await;
    let j: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    j.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["device"].as_str().unwrap(),
                    a["rule"].as_str().unwrap()
                ),
                a["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Waits until the broker's retained alarms are in the states of `want`, each published with a
/// `seq` above `above`; returns them and the highest `seq` among them.
async fn settle(
    broker: &EmbeddedBroker,
    want: &BTreeMap<String, &str>,
    above: u64,
) -> (BTreeMap<String, serde_json::Value>, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    static ROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    loop {
        let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = retained(broker, &format!("r-settle-{round}")).await;
        let got = states(&r);
        let newer = r
            .values()
            .all(|j| j["seq"].as_u64().is_some_and(|n| n > above));
        if newer
            && want
                .iter()
                .all(|(k, v)| got.get(k).map(|s| s.0.as_str()) == Some(*v))
        {
            let seq = r
                .values()
                .filter_map(|j| j["seq"].as_u64())
                .max()
                .unwrap_or(0);
            return (r, seq);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "want {want:?}, got {got:?}"
        );
    }
}

/// Drives six alarms into the six states of the issue, through real polls and commands.
async fn make_states(
    dev: &Device,
    broker: &EmbeddedBroker,
    sub: &mut Subscriber,
) -> (BTreeMap<String, serde_json::Value>, u64) {
    for u in 1..=5 {
        volts(dev, u, 9.0);
    }
    volts(dev, 6, 7.0);
    let active: BTreeMap<String, &str> = (1..=5)
        .map(|u| (format!("pot-{u}/hi"), "active_unacked"))
        .chain([("pot-2/lat".to_string(), "active_unacked")])
        .collect();
    settle(broker, &active, 0).await;
    // pot-2: returns; `hi` goes to RTNUN, the latching `lat` to latched.
    volts(dev, 2, 7.0);
    let r = command(
        sub,
        "a3",
        r#""op":"ack","device":"pot-3","rule":"hi","by":"shift-a""#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        sub,
        "s4",
        r#""op":"shelve","device":"pot-4","rule":"hi","by":"shift-b","duration":"2h""#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = command(
        sub,
        "o5",
        r#""op":"out_of_service","device":"pot-5","rule":"hi","by":"tech""#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let want: BTreeMap<String, &str> = [
        ("pot-1/hi", "active_unacked"),
        ("pot-2/hi", "returned_unacked"),
        ("pot-2/lat", "latched"),
        ("pot-3/hi", "active_acked"),
        ("pot-4/hi", "shelved"),
        ("pot-5/hi", "out_of_service"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    settle(broker, &want, 0).await
}

#[test]
fn alarm_state_survives_a_clean_stop_and_a_crash_and_the_broker_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let http = crate::support::net::free_port();
    // Phase 1 on a runtime of its own, dropped without the shutdown path: a crash-like stop.
    let dev = Device::default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (broker, served, before, seq1) = rt.block_on(async {
        let broker = crate::support::broker::embedded().await;
        let served = Served::start(dev.clone()).await;
        let running = alsentry::app::start(
            config(&state, &served, &broker, http, true),
            SystemClock::new(),
        )
        .await
        .unwrap();
        let mut sub =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "r-sub1", "alsentry/#").await;
        let (before, seq) = make_states(&dev, &broker, &mut sub).await;
        // Condition-driven changes are saved within 1 s; commands before their reply.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        std::mem::forget(running);
        (broker, served, before, seq)
    });
    rt.shutdown_background();
    let before_states = states(&before);
    assert_eq!(before_states.len(), 6, "{before_states:?}");
    assert_eq!(before_states["pot-3/hi"].1, "shift-a");
    assert!(!before_states["pot-4/hi"].2.is_empty());

    crate::support::harness::run_watched(async move {
        // The Modbus server died with the first runtime: serve the same registers again.
        drop(served);
        let served = Served::start(dev.clone()).await;
        // Phase 2: the lease deleted, restart after the crash.
        std::fs::remove_file(state.join("seq.lease")).unwrap();
        let mut sub =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "r-sub2", "alsentry/#").await;
        let running = alsentry::app::start(
            config(&state, &served, &broker, http, true),
            SystemClock::new(),
        )
        .await
        .unwrap();
        let want: BTreeMap<String, &str> = before_states
            .iter()
            .map(|(k, v)| (k.clone(), v.0.as_str()))
            .collect();
        let (_, seq2) = settle(&broker, &want, seq1).await;
        assert!(
            seq2 > seq1,
            "seq went on after the lease was deleted: {seq2} after {seq1}"
        );
        let after = retained(&broker, "r-ret2").await;
        assert_eq!(
            states(&after),
            before_states,
            "the same states after a crash"
        );
        // The broker's retained alarms equal what /alarms shows (hidden ones are not shown).
        let visible: BTreeMap<String, String> = states(&after)
            .into_iter()
            .filter(|(_, s)| {
                !["normal", "shelved", "out_of_service", "suppressed"].contains(&s.0.as_str())
            })
            .map(|(k, s)| (k, s.0))
            .collect();
        assert_eq!(shown(http).await, visible);
        let status = sub
            .wait_for(Duration::from_secs(5), |m| {
                // Not a status of the first start still queued: this start's, which read the file.
                m.topic == STATUS && m.json()["restore"]["state_file"] == "read"
            })
            .await
            .expect("a status with the restore report");
        // The six, and a comm-loss alarm that a slow poll raised meanwhile, if any.
        let restored = status.json()["restore"]["restored"].as_u64().unwrap();
        assert!(restored >= 6, "{}", status.json());
        assert_eq!(status.json()["restore"]["dropped"], 0);
        assert_eq!(status.json()["restore"]["state_file"], "read");
        // Clean stop, the lease garbled; restart.
        crate::support::harness::stop_checked(running).await;
        std::fs::write(state.join("seq.lease"), b"garbage, not a lease").unwrap();
        let running = alsentry::app::start(
            config(&state, &served, &broker, http, true),
            SystemClock::new(),
        )
        .await
        .unwrap();
        let (_, seq3) = settle(&broker, &want, seq2).await;
        assert!(
            seq3 > seq2,
            "seq went on after the lease was garbled: {seq3} after {seq2}"
        );
        let after = retained(&broker, "r-ret3").await;
        assert_eq!(
            states(&after),
            before_states,
            "the same states after a clean stop"
        );
        // What was restored answers commands like before.
        let r = command(
            &mut sub,
            "a1",
            r#""op":"ack","device":"pot-1","rule":"hi","by":"shift-c""#,
        )
        .await;
        assert_eq!(
            (&r["ok"], &r["state"]),
            (&true.into(), &"active_acked".into()),
            "{r}"
        );
        let r = command(
            &mut sub,
            "r2",
            r#""op":"reset","device":"pot-2","rule":"lat","by":"shift-c""#,
        )
        .await;
        assert_eq!(
            (&r["ok"], &r["state"]),
            (&true.into(), &"returned_unacked".into()),
            "{r}"
        );
        let r = command(
            &mut sub,
            "a2",
            r#""op":"ack","device":"pot-2","rule":"hi","by":"shift-c""#,
        )
        .await;
        assert_eq!(
            (&r["ok"], &r["state"]),
            (&true.into(), &"normal".into()),
            "{r}"
        );
        let r = command(
            &mut sub,
            "u4",
            r#""op":"unshelve","device":"pot-4","rule":"hi","by":"shift-c""#,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        let r = command(
            &mut sub,
            "o5",
            r#""op":"return_to_service","device":"pot-5","rule":"hi","by":"tech""#,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        crate::support::harness::stop_checked(running).await;

        // Phase 4: `lat` removed from the configuration: its retained topic is cleared.
        let running = alsentry::app::start(
            config(&state, &served, &broker, http, false),
            SystemClock::new(),
        )
        .await
        .unwrap();
        // The clear and the status saying so may come in either order (the status waits for
        // the first poll cycle).
        let mut status = None;
        let mut cleared = false;
        while status.is_none() || !cleared {
            let m = sub
                .wait_for(Duration::from_secs(10), |m| {
                    (m.topic == STATUS && m.json()["restore"]["dropped"] == 1)
                        || (m.topic == "alsentry/s/a/pot-2/alarm/lat" && m.payload.is_empty())
                })
                .await
                .unwrap_or_else(|| {
                    panic!("status with one alarm dropped: {}, the removed rule's retained topic cleared: {cleared}", status.is_some())
                });
            if m.topic == STATUS {
                status = Some(m);
            } else {
                cleared = true;
            }
        }
        let status = status.unwrap();
        assert_eq!(status.json()["restore"]["cleared"], 1, "{}", status.json());
        let after = retained(&broker, "r-ret4").await;
        assert!(
            !after.contains_key("alsentry/s/a/pot-2/alarm/lat"),
            "{after:?}"
        );
        assert_eq!(states(&after)["pot-1/hi"].0, "active_acked");
        crate::support::harness::stop_checked(running).await;
    });
}

/// A damaged state file never keeps the agent down: it is set aside, reported in the status,
/// and the agent starts fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_state_file_is_set_aside_and_the_agent_starts_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("alarm-state.json"),
        b"{\"version\":1,\"alarms\":[{\"dev",
    )
    .unwrap();
    let broker = crate::support::broker::embedded().await;
    let dev = Device::default();
    let served = Served::start(dev.clone()).await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "r-bad", STATUS).await;
    let http = crate::support::net::free_port();
    let running = alsentry::app::start(
        config(&state, &served, &broker, http, true),
        SystemClock::new(),
    )
    .await
    .unwrap();
    let status = sub
        .wait_for(Duration::from_secs(10), |m| m.json()["restore"].is_object())
        .await
        .expect("a status with the restore report")
        .json();
    assert_eq!(status["restore"]["state_file"], "unreadable", "{status}");
    assert_eq!(status["restore"]["restored"], 0);
    assert!(state.join("alarm-state.json.bad").exists());
    // The fresh state is written when the engine starts, readable.
    let file = state.join("alarm-state.json");
    crate::support::harness::wait_until(Duration::from_secs(10), "a fresh state file", || {
        file.exists()
    })
    .await;
    let fresh = std::fs::read(&file).unwrap();
    assert!(serde_json::from_slice::<serde_json::Value>(&fresh).is_ok());
    crate::support::harness::stop_checked(running).await;
}
