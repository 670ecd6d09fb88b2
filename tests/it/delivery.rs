//! Delivery over the embedded broker: ordering, a full outbox, several brokers, status,
//! crashes (SIGKILL of the binary) and restarts, commands, secrets, payload schemas, and an
//! outbox that cannot be created or written. The same subject against Mosquitto (outages,
//! a broker killed, QoS as published, TLS, MQTT 5) is in tests/interop/delivery.rs.
//! Ports are all picked free; readiness is waited for, not slept for.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alsentry::clock::{Clock, SystemClock};
use alsentry::metrics::Metrics;
use alsentry::outbox::{Class, NewRecord, Outbox, OutboxOptions};
use serde_json::Value;

use crate::support::agent::{Agent, Dev};
use crate::support::broker::{embedded, embedded_with_sub};
use crate::support::delivery::{
    assert_consecutive, check_object, collect, msg, one_cell_agent, schema_check, schema_path,
    seqs, set_volts, settled_transitions, sink_task, toggle, ALARMS, CMD, REPLY, STATUS,
};
use crate::support::harness::{
    alarm_states, collect_timed, device_index, fault_agent, polls_ok, run_watched, stop_checked,
};
use crate::support::modbus::{Device, Served};
use crate::support::mqtt::Subscriber;
use crate::support::net::{BlackHole, Proc, Proxy};

// (1) Everything the agent produces reaches the broker, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transition_arrives_in_order_through_the_embedded_broker() {
    let t0 = Instant::now();
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub1", ALARMS).await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let cfg = one_cell_agent(state.path(), &dev, &sinks, 3).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    toggle(&dev.device, 8, Duration::from_millis(300)).await;
    let total = settled_transitions(&running.metrics).await;
    assert!(total >= 40, "only {total} transitions produced");
    let got = collect(&mut sub, Duration::from_secs(15), |g| {
        g.len() as u64 >= total
    })
    .await;
    let s = seqs(&got);
    assert_eq!(s.len() as u64, total, "received {} of {total}", s.len());
    assert_consecutive(&s);
    for m in &got {
        schema_check("alarm", &m.json());
        assert!(
            m.json().get("replayed").is_none(),
            "live message flagged replayed"
        );
    }
    running.stop().await;
    eprintln!("(1) {total} transitions in order in {:?}", t0.elapsed());
}

// (4) A tiny outbox during an outage: summaries are dropped first, alarms kept; the status
// says what was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_summaries_keeps_alarms_and_says_so_in_status() {
    let t0 = Instant::now();
    // The sink reaches the broker through a proxy that is cut until everything is queued, and
    // the subscriber is in place before the sink can connect.
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub4", "alsentry/#").await;
    let proxy = Proxy::start(broker.addr).await;
    proxy.set_up(false);
    let text = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreconnect_max = \"1s\"\noutbox = {{ max_size = \"4KiB\" }}\n",
        proxy.addr
    );
    let cfg = Agent::new("gw").sinks(&text).build();
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = Outbox::open(
        dir.path(),
        cfg.sinks[0].outbox_options(),
        SystemClock::new().now(),
    )
    .unwrap();
    let metrics = Metrics::new(Vec::<String>::new(), vec!["plant".to_string()]);
    let (task, tx, _crx) = sink_task(&cfg, 0, outbox, metrics.clone());
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(task.run(cancel.clone()));
    // ~300-byte records: 4 KiB holds about 13.
    for i in 0..20 {
        tx.send(msg(Class::Summary, "alsentry/s/a/pot-1/summary", i, 230))
            .await
            .unwrap();
    }
    for i in 0..10 {
        tx.send(msg(Class::Alarm, "alsentry/s/a/pot-1/alarm/hi1", i, 230))
            .await
            .unwrap();
    }
    for i in 20..30 {
        tx.send(msg(Class::Summary, "alsentry/s/a/pot-1/summary", i, 230))
            .await
            .unwrap();
    }
    // Everything is stored (the sink handles its queue in order; wait for the depth).
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.sinks[0].dropped.load(Ordering::Relaxed) < 10 {
        assert!(
            Instant::now() < deadline,
            "nothing dropped from a 4 KiB outbox"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set_up(true);
    let mut alarms = BTreeSet::new();
    let mut summaries = 0;
    let mut status: Option<Value> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while alarms.len() < 10 || status.is_none() {
        let m = tokio::time::timeout_at(deadline, sub.rx.recv())
            .await
            .expect("alarms and a status within 20 s")
            .unwrap();
        let j = m.json();
        if m.topic.ends_with("/alarm/hi1") {
            alarms.insert(j["n"].as_u64().unwrap());
        } else if m.topic.ends_with("/summary") {
            summaries += 1;
        } else if m.topic == STATUS && j["status"] == "online" {
            status = Some(j);
        }
    }
    let status = status.unwrap();
    schema_check("status", &status);
    assert_eq!(alarms.len(), 10, "every alarm kept");
    let dropped = status["drops"]["summary"].as_u64().unwrap();
    assert!(dropped >= 10, "status: {status}");
    assert_eq!(status["drops"]["alarm"], 0, "status: {status}");
    assert_eq!(status["drop_reasons"]["full"].as_u64(), Some(dropped));
    // Whatever was not dropped arrives (the status may come before the last summaries).
    let rest = collect(&mut sub, Duration::from_millis(500), |_| false).await;
    let _ = rest;
    assert!(summaries as u64 <= 30 - dropped);
    cancel.cancel();
    let _ = handle.await;
    eprintln!(
        "(4) {dropped} summaries dropped, 10/10 alarms delivered in {:?}",
        t0.elapsed()
    );
}

// (5) Two brokers, one hanging: the other still gets every alarm within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_broker_never_delays_the_other() {
    let t0 = Instant::now();
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let plant = embedded().await;
    let hole = BlackHole::start().await;
    let mut sub = Subscriber::connect("127.0.0.1", plant.addr.port(), "sub5", ALARMS).await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[mqtt]]\nname = \"plant\"\nurl = \"{}\"\n[[mqtt]]\nname = \"province\"\nurl = \"mqtt://{}\"\ncarry = [\"alarm\", \"summary\"]\nmin_priority = \"high\"\n",
        plant.url(),
        hole.addr
    );
    let cfg = one_cell_agent(state.path(), &dev, &sinks, 2).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let mut worst = Duration::ZERO;
    for round in 0..6 {
        set_volts(&dev.device, if round % 2 == 0 { 9.0 } else { 7.0 });
        let changed = Instant::now();
        let got = collect(&mut sub, Duration::from_secs(5), |g| g.len() >= 2).await;
        assert_eq!(got.len(), 2, "round {round}: {got:?}");
        worst = worst.max(changed.elapsed());
    }
    // One poll (100 ms) plus delivery; the hanging broker must not add its timeouts.
    assert!(worst < Duration::from_secs(2), "slowest delivery {worst:?}");
    assert!(!running.metrics.sinks[1].connected.load(Ordering::Relaxed));
    assert!(running.metrics.sinks[0].connected.load(Ordering::Relaxed));
    running.stop().await;
    eprintln!(
        "(5) slowest delivery with the other broker hanging: {worst:?} (test {:?})",
        t0.elapsed()
    );
}

// Filtering: the provincial broker gets critical/high alarms only, no status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broker_gets_only_what_it_carries() {
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let plant = embedded().await;
    let province = embedded().await;
    let mut psub = Subscriber::connect("127.0.0.1", plant.addr.port(), "p", "alsentry/#").await;
    let mut vsub = Subscriber::connect("127.0.0.1", province.addr.port(), "v", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!(
        "[[mqtt]]\nname = \"plant\"\nurl = \"{}\"\n[[mqtt]]\nname = \"province\"\nurl = \"{}\"\ncarry = [\"alarm\", \"summary\"]\nmin_priority = \"high\"\n",
        plant.url(),
        province.url()
    );
    let cfg = one_cell_agent(state.path(), &dev, &sinks, 2).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    toggle(&dev.device, 2, Duration::from_millis(300)).await;
    let total = settled_transitions(&running.metrics).await;
    let p = collect(&mut psub, Duration::from_secs(10), |g| {
        g.len() as u64 >= total
    })
    .await;
    assert_eq!(p.len() as u64, total);
    let v = collect(&mut vsub, Duration::from_secs(2), |_| false).await;
    assert_eq!(v.len() as u64, total / 2, "critical hi1 only: {v:?}");
    assert!(v.iter().all(|m| m.topic.ends_with("/hi1")));
    // Status (retained): the plant has the periodic one, the province does not carry it.
    let mut ps = Subscriber::connect("127.0.0.1", plant.addr.port(), "ps", STATUS).await;
    let st = ps
        .wait_for(Duration::from_secs(2), |m| m.topic == STATUS)
        .await
        .expect("plant status");
    assert_eq!(st.json()["status"], "online");
    schema_check("status", &st.json());
    drop(psub);
    running.stop().await;
    let mut late = Subscriber::connect("127.0.0.1", province.addr.port(), "l", "alsentry/#").await;
    // Only the retained offline will/status of the connection (not carried otherwise).
    while let Some(m) = late.wait_for(Duration::from_millis(500), |_| true).await {
        if m.topic == STATUS {
            assert_eq!(m.json()["status"], "offline");
        }
    }
}

// Status: sent on connect, and at once (not after 30 s) when a device goes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_device_going_down_at_once() {
    let mut dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub-st", STATUS).await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let cfg = one_cell_agent(state.path(), &dev, &sinks, 1).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let up = sub
        .wait_for(Duration::from_secs(10), |m| m.json()["devices_up"] == 1)
        .await
        .expect("status with the device up");
    schema_check("status", &up.json());
    assert_eq!(up.json()["status"], "online");
    assert_eq!(up.json()["sink"], "plant");
    dev.stop();
    let gone = Instant::now();
    let down = sub
        .wait_for(Duration::from_secs(10), |m| m.json()["devices_down"] == 1)
        .await
        .expect("status with the device down");
    let j = down.json();
    schema_check("status", &j);
    assert_eq!(j["down"], serde_json::json!(["pot-1"]));
    assert!(
        gone.elapsed() < Duration::from_secs(5),
        "status came {:?} after the device went away",
        gone.elapsed()
    );
    running.stop().await;
    let off = sub
        .wait_for(Duration::from_secs(5), |m| m.json()["status"] == "offline")
        .await
        .expect("offline status on shutdown");
    schema_check("status", &off.json());
}

pub(crate) fn spawn_agent(
    cfg: &Path,
    extra_env: &[(&str, &str)],
) -> (Proc, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alsentry"));
    cmd.args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
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

pub(crate) fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("no line with {needle:?}; got:\n{}", seen.join("\n")),
        }
    }
}

/// Writes `n` alarm records into the outbox of the sink named "plant" under `state`, as a
/// previous run of the agent would have left them.
fn prefill(state: &Path, n: u64) {
    let (mut ob, _) = Outbox::open(
        &state.join("outbox").join("plant"),
        OutboxOptions::default(),
        alsentry::clock::wall_ms(),
    )
    .unwrap();
    for i in 0..n {
        let payload = format!(r#"{{"schema":"alsentry/alarm/1","id":"pre-{i}","seq":{i}}}"#);
        ob.append(
            NewRecord {
                class: Class::Alarm,
                topic: "alsentry/s/a/pot-1/alarm/pre",
                payload: payload.as_bytes(),
                retain: false,
                qos: 1,
            },
            alsentry::clock::wall_ms(),
        )
        .unwrap();
    }
    ob.flush().unwrap();
}

// (3b) SIGKILL while publishes are on the wire but not acknowledged: sent again after restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_unacknowledged_publishes_sends_them_again() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let state = dir.path().join("state");
    prefill(&state, 1000);
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub3b", ALARMS).await;
    // The broker receives every publish; only its CONNACK (4 bytes) reaches the agent.
    let proxy = Proxy::start(broker.addr).await;
    proxy.limit_replies(Some(4));
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreplay_rate = 1000\n",
        proxy.addr
    );
    let cfg_path = one_cell_agent(&state, &dev, &sinks, 1).write(dir.path());
    let (mut agent, lines) = spawn_agent(&cfg_path, &[]);
    wait_line(&lines, "connected to broker", Duration::from_secs(15));
    // One window goes out; then nothing more (no PUBACK frees a place in it).
    let mut first = collect(&mut sub, Duration::from_secs(2), |g| g.len() >= 63).await;
    first.extend(collect(&mut sub, Duration::from_millis(300), |_| false).await);
    let first: BTreeSet<u64> = first
        .iter()
        .filter(|m| m.topic.ends_with("/alarm/pre"))
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    // One window (64, the online status included) went out and waits for PUBACKs forever.
    assert!(
        (32..=64).contains(&first.len()),
        "{} publishes without PUBACK",
        first.len()
    );
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    drop(agent);
    proxy.limit_replies(None);
    let (_agent, _lines) = spawn_agent(&cfg_path, &[]);
    let mut all = BTreeSet::new();
    // Distinct records: delivery is at least once, so a record may come more than once (a
    // reconnect while the broker still holds the killed agent's session resends the window).
    let mut again = BTreeSet::new();
    let mut received_again = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while all.len() < 1000 {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await else {
            panic!("only {} of 1000 arrived after the restart", all.len());
        };
        if m.topic.ends_with("/alarm/pre") {
            let n = m.json()["seq"].as_u64().unwrap();
            if first.contains(&n) {
                again.insert(n);
                received_again += 1;
            }
            all.insert(n);
        }
    }
    assert_eq!(again, first, "every unacknowledged record sent again");
    eprintln!(
        "(3b) {} unacknowledged publishes resent ({received_again} received), 1000/1000 delivered (test {:?})",
        first.len(),
        t0.elapsed()
    );
}

// (3) SIGKILL with 1,000 records in the outbox and a torn record at its end (as a power cut
// mid-write leaves it), restart: the torn record is skipped and reported, all the rest delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_backlog_of_1000_then_restart_delivers_everything() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    // The agent reaches the broker through a proxy that stays cut during the first run: a
    // broker that is down, at an address the test keeps (a port released now and bound again
    // later could be taken meanwhile by another test's broker).
    let broker = embedded().await;
    let proxy = Proxy::start(broker.addr).await;
    proxy.set_up(false);
    let state = dir.path().join("state");
    // The backlog, written through the outbox API where the agent's sink keeps it.
    prefill(&state, 1000);
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreconnect_max = \"1s\"\nreplay_rate = 1000\n",
        proxy.addr
    );
    let cfg_path = one_cell_agent(&state, &dev, &sinks, 3).write(dir.path());
    // First run: broker down. The agent reopens the backlog, adds its own transitions, dies.
    let (mut agent, lines) = spawn_agent(&cfg_path, &[]);
    wait_line(
        &lines,
        "outbox reopened with a backlog",
        Duration::from_secs(15),
    );
    toggle(&dev.device, 3, Duration::from_millis(300)).await;
    wait_line(&lines, "broker unreachable", Duration::from_secs(15));
    agent.0.kill().unwrap(); // SIGKILL
    agent.0.wait().unwrap();
    drop(agent);
    // A torn last record: the header of a frame (copied from the segment's first record) with
    // its body missing.
    let seg_dir = state.join("outbox").join("plant");
    let newest = std::fs::read_dir(&seg_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
        .expect("a segment file");
    let head: Vec<u8> = std::fs::read(&newest).unwrap()[..24].to_vec();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(&head)
        .unwrap();
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub3", ALARMS).await;
    proxy.set_up(true);
    let restarted = Instant::now();
    let (_agent, lines) = spawn_agent(&cfg_path, &[]);
    let seen = wait_line(
        &lines,
        "outbox had damaged records",
        Duration::from_secs(15),
    );
    assert!(
        seen.iter().any(|l| l.contains("torn=1")),
        "the torn record is reported at open: {seen:?}"
    );
    let mut pre = BTreeSet::new();
    let mut order = Vec::new();
    let mut live = 0;
    let mut first: Option<Instant> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while pre.len() < 1000 {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await else {
            panic!("only {} of 1000 backlog records arrived", pre.len());
        };
        let j = m.json();
        if m.topic.ends_with("/alarm/pre") {
            assert_eq!(j["replayed"], true, "{j}");
            let n = j["seq"].as_u64().unwrap();
            if pre.insert(n) {
                order.push(n);
            }
            first.get_or_insert_with(Instant::now);
        } else {
            live += 1;
        }
    }
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "backlog out of order"
    );
    // replay_rate = 1000/s with a burst of 100: the backlog takes about 0.9 s, not less.
    let replay = first.unwrap().elapsed();
    assert!(
        replay >= Duration::from_millis(700),
        "backlog replayed in {replay:?}, faster than replay_rate"
    );
    // The transitions the killed agent stored come after the prefilled backlog.
    let more = collect(&mut sub, Duration::from_secs(10), |g| g.len() >= 18).await;
    assert!(
        live + more.len() >= 18,
        "the first run's 18 transitions: got {}",
        live + more.len()
    );
    eprintln!(
        "(3) 1000 backlog records (replayed over {replay:?}) + {} transitions delivered {:?} after restart (test {:?})",
        live + more.len(),
        restarted.elapsed(),
        t0.elapsed()
    );
}

// (7) Every command op and every malformed command gets the right reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_gets_the_right_reply() {
    let t0 = Instant::now();
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub7", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let latch = "[[rules]]\nname = \"latch\"\ndevices = [\"pot-1\"]\ntag = \"voltage\"\ntype = \"high\"\nlimit = 8.0\nlatching = true\npriority = \"high\"\n";
    let cfg = one_cell_agent(state.path(), &dev, &sinks, 1)
        .rule(latch)
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    for rule in ["hi1", "latch"] {
        sub.wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with(&format!("/alarm/{rule}"))
        })
        .await
        .expect("active");
    }
    async fn ask(sub: &mut Subscriber, cmd: &str) -> Value {
        sub.publish(CMD, cmd.as_bytes()).await;
        let m = sub
            .wait_for(Duration::from_secs(10), |m| m.topic == REPLY)
            .await
            .unwrap_or_else(|| panic!("no reply to {cmd}"));
        let j = m.json();
        schema_check("cmd-reply", &j);
        j
    }
    let cmd = |op: &str, rule: &str, extra: &str| {
        format!(
            r#"{{"op":"{op}","device":"pot-1","rule":"{rule}","by":"shift-a","request_id":"{op}-{rule}"{extra}}}"#
        )
    };
    let ok = |j: &Value, state: Option<&str>| {
        assert_eq!(j["ok"], true, "{j}");
        if let Some(s) = state {
            assert_eq!(j["state"], s, "{j}");
        }
    };
    let j = ask(&mut sub, &cmd("ack", "hi1", r#","note":"checked""#)).await;
    ok(&j, Some("active_acked"));
    assert_eq!(j["request_id"], "ack-hi1");
    let j = ask(&mut sub, &cmd("shelve", "hi1", r#","duration":"1h""#)).await;
    ok(&j, Some("shelved"));
    let j = ask(&mut sub, &cmd("unshelve", "hi1", "")).await;
    ok(&j, None);
    assert!(j["state"].as_str().unwrap().starts_with("active_"), "{j}");
    let j = ask(&mut sub, &cmd("out_of_service", "hi1", "")).await;
    ok(&j, Some("out_of_service"));
    let j = ask(&mut sub, &cmd("return_to_service", "hi1", "")).await;
    ok(&j, None);
    // Reset applies to a latched alarm: acknowledged, then the condition clears.
    let j = ask(&mut sub, &cmd("reset", "hi1", "")).await;
    assert_eq!(j["ok"], false, "reset of a non-latching rule: {j}");
    let j = ask(&mut sub, &cmd("ack", "latch", "")).await;
    ok(&j, Some("active_acked"));
    set_volts(&dev.device, 7.0);
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alarm/latch") && m.json()["cause"] == "condition"
        })
        .await
        .expect("latched");
    assert_eq!(m.json()["state"], "latched", "{}", m.json());
    let j = ask(&mut sub, &cmd("reset", "latch", "")).await;
    ok(&j, Some("normal"));

    for (bad, expect) in [
        ("{not json", "malformed JSON"),
        (
            r#"{"op":"explode","device":"pot-1","rule":"hi1","by":"b"}"#,
            "unknown op",
        ),
        (
            r#"{"op":"ack","device":"pot-9","rule":"hi1","by":"b"}"#,
            "unknown alarm",
        ),
        (
            r#"{"op":"ack","device":"pot-1","rule":"hi1","by":"b","sudo":true}"#,
            "unknown field",
        ),
        (
            r#"{"op":"shelve","device":"pot-1","rule":"hi1","by":"b","duration":"30d"}"#,
            "between 1s and 7d",
        ),
    ] {
        let j = ask(&mut sub, bad).await;
        assert_eq!(j["ok"], false, "{bad}: {j}");
        let e = j["error"].as_str().unwrap_or_default();
        assert!(e.contains(expect), "{bad}: {e}");
    }
    running.stop().await;
    eprintln!("(7) commands in {:?}", t0.elapsed());
}

// (8) The MQTT password never reaches the logs, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_debug_logs() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-Pa55-do-not-log-7f2c";
    let pw = dir.path().join("mqtt.pw");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let broker = embedded().await;
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let sinks = format!(
        "[mqtt]\nurl = \"{}\"\nusername = \"gw\"\npassword_file = \"{}\"\n",
        broker.url(),
        pw.display()
    );
    let cfg_path = one_cell_agent(&dir.path().join("state"), &dev, &sinks, 1).write(dir.path());
    let (agent, lines) = spawn_agent(&cfg_path, &[("RUST_LOG", "debug")]);
    let mut seen = wait_line(&lines, "connected to broker", Duration::from_secs(15));
    seen.extend(wait_line(&lines, "alarm", Duration::from_secs(10)));
    // A graceful stop too, so the shutdown path (offline status, disconnect) is logged.
    let status = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    seen.extend(wait_line(&lines, "stopped", Duration::from_secs(15)));
    drop(agent);
    // Until stderr closes.
    while let Ok(l) = lines.recv_timeout(Duration::from_secs(2)) {
        seen.push(l);
    }
    assert!(
        seen.iter().any(|l| l.contains("DEBUG")),
        "debug logging is on: {seen:?}"
    );
    for l in &seen {
        assert!(!l.contains(secret), "secret in log line: {l}");
        assert!(!l.contains("s3cr3t"), "part of the secret in: {l}");
    }
    eprintln!(
        "(8) {} log lines, no secret ({:?})",
        seen.len(),
        t0.elapsed()
    );
}

#[test]
fn schemas_are_valid_and_accept_documented_examples() {
    for name in [
        "alarm",
        "status",
        "summary",
        "command",
        "cmd-reply",
        "report",
        "data-meta",
        "data-compact",
    ] {
        let text = std::fs::read_to_string(schema_path(name)).unwrap();
        let s: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            s["required"].is_array() && s["properties"].is_object(),
            "{name}"
        );
        for ex in s["examples"].as_array().expect("examples") {
            check_object(name, &s, ex);
        }
    }
    // The command examples are accepted by the agent's own parser.
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path("command")).unwrap()).unwrap();
    for ex in s["examples"].as_array().unwrap() {
        let bytes = serde_json::to_vec(ex).unwrap();
        alsentry::core::command::parse(&bytes, 0).unwrap_or_else(|e| panic!("{ex}: {e:?}"));
    }
    // A summary must be refused when a tag lacks a required statistic.
    let bad = serde_json::json!({"schema":"alsentry/summary/1","agent":"gw","site":"s","area":"a",
        "device":"pot-1","ts":"2026-01-01T00:00:00.000Z","interval_s":60,
        "tags":{"voltage":{"min":4.1,"max":4.3,"mean":4.2,"last":4.2,"count":60}}});
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path("summary")).unwrap()).unwrap();
    let r = std::panic::catch_unwind(|| check_object("summary", &s, &bad));
    assert!(r.is_err(), "missing good_ratio accepted");
}

/// Issue 21: the KPI names are the same in the code, the schema and docs/MQTT.md: a summary
/// built by the agent's code passes the schema, its kpi keys are exactly the schema's
/// (required) ones, and each is in the docs' table.
#[test]
fn a_real_summary_matches_the_schema_and_the_docs() {
    use alsentry::core::engine::{DeviceSummary, TagSummary};
    use std::sync::Arc;
    let stats = |xs: &[f64]| {
        let mut t = TagSummary::default();
        for &x in xs {
            t.count += 1;
            t.good += 1;
            t.sum += x;
            t.sum_sq += x * x;
            t.min = t.min.min(x);
            t.max = t.max.max(x);
            t.last = Some(x);
        }
        t
    };
    let s = DeviceSummary {
        device: Arc::from("pot-017"),
        from: 1_764_345_600_000,
        to: 1_764_346_200_000,
        tags: vec![
            (
                Arc::from("voltage"),
                Arc::from("V"),
                stats(&[4.12, 4.2, 4.31]),
            ),
            (Arc::from("current"), Arc::from("kA"), stats(&[500.2])),
        ],
    };
    let who = alsentry::core::payload::Identity {
        topic_root: "alsentry".into(),
        agent: "gw".into(),
        site: "s".into(),
        area: "a".into(),
    };
    let j: Value = serde_json::from_slice(&alsentry::core::payload::summary_payload(
        &who, &s, 0.93, 0.98,
    ))
    .unwrap();
    schema_check("summary", &j);
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(schema_path("summary")).unwrap()).unwrap();
    let sent: BTreeSet<&str> = j["kpi"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let required: BTreeSet<&str> = schema["properties"]["kpi"]["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let documented: BTreeSet<&str> = schema["properties"]["kpi"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sent, required);
    assert_eq!(sent, documented);
    let top: BTreeSet<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
    let top_documented: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "replayed")
        .collect();
    assert_eq!(top, top_documented);
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/MQTT.md"),
    )
    .unwrap();
    for k in &sent {
        assert!(docs.contains(&format!("`{k}`")), "docs/MQTT.md lacks {k}");
        assert!(
            docs.contains(&format!("\"{k}\":")),
            "docs/MQTT.md example lacks {k}"
        );
    }
    for old in [
        "pseudo_resistance_uohm_mean",
        "dc_energy_vs_benchmark",
        "\"noise_mv\"",
    ] {
        assert!(!docs.contains(old), "docs/MQTT.md still names {old}");
    }
}

// ---------------------------------------------------------------------------------------------
// The outbox cannot be created or written
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_cannot_exist_is_a_clear_start_error() {
    let t_case = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // Root ignores permissions, so use a path that cannot be a directory for anyone: one whose
    // parent is a regular file.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let state = file.join("state");
    let dev = Device::default();
    let served = Served::start(dev).await;
    let d = Dev::tcp("plc", served.addr)
        .unit(1)
        .poll("200ms")
        .timeout("300ms")
        .backoff_max("1s")
        .tags(r#"[{ name = "x", table = "holding", address = 0 }]"#);
    // No broker needed: start must fail before connecting anywhere.
    let cfg = fault_agent(&state, "mqtt://127.0.0.1:9").device(d).build();
    let err = match tokio::time::timeout(
        Duration::from_secs(5),
        alsentry::app::start(cfg, SystemClock::new()),
    )
    .await
    .expect("start answers within 5 s")
    {
        Ok(r) => {
            r.stop().await;
            panic!("started with an impossible state_dir");
        }
        Err(e) => format!("{e:#}"),
    };
    println!("start error: {err}");
    assert!(
        err.contains(&state.display().to_string()),
        "the error names the path: {err}"
    );
    assert!(
        err.to_lowercase().contains("not a directory"),
        "the error says why: {err}"
    );
    println!("case took {:?}", t_case.elapsed());
}

#[test]
fn a_full_disk_under_the_outbox_does_not_stop_polling_and_recovers() {
    run_watched(full_disk_case(false));
}

/// Regression (found by this suite): a failed outbox append was counted in `dropped` and then
/// overwritten by the store's own eviction count every 500 ms, so alarms lost on a full disk
/// vanished from `alsentry_outbox_dropped_total`. The publisher now adds its own drops.
#[test]
fn messages_lost_on_a_full_disk_stay_counted() {
    run_watched(full_disk_case(true));
}

async fn full_disk_case(check_counter: bool) {
    let t_case = Instant::now();
    let dev_full = Path::new("/dev/full");
    assert!(dev_full.exists(), "this test needs /dev/full (Linux)");
    let dev = Device::default();
    dev.set_holding(1, 0, &[100]);
    let served = Served::start(dev.clone()).await;
    let (broker, mut sub) = embedded_with_sub("rel-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let d = Dev::tcp("plc", served.addr)
        .unit(1)
        .poll("200ms")
        .timeout("300ms")
        .backoff_max("1s")
        .tags(r#"[{ name = "x", table = "holding", address = 0 }]"#);
    let rule = r#"
[[rules]]
name = "hi"
devices = ["plc"]
tag = "x"
type = "high"
limit = 500
priority = "high"
"#;
    let cfg = fault_agent(state.path(), &broker.url())
        .device(d)
        .rule(rule)
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let sink = running.metrics.sinks[0].name.clone();
    let outbox_dir = state.path().join("outbox").join(&sink);
    assert!(outbox_dir.is_dir(), "{}", outbox_dir.display());
    // Nothing was queued yet (no alarm), so no segment exists: every segment the store may
    // create next is a link to /dev/full, so writes fail with ENOSPC like on a full disk.
    let links: Vec<PathBuf> = (1..=64u64)
        .map(|id| outbox_dir.join(format!("{id:020}.seg")))
        .collect();
    for l in &links {
        assert!(!l.exists(), "{} already exists", l.display());
        std::os::unix::fs::symlink(dev_full, l).unwrap();
    }
    // The store deletes a segment it could not write; a full disk stays full, so the links
    // are put back as soon as they go.
    let keep_full = Arc::new(AtomicBool::new(true));
    let relinker = {
        let (links, keep_full) = (links.clone(), keep_full.clone());
        tokio::spawn(async move {
            while keep_full.load(Ordering::SeqCst) {
                for l in &links {
                    if std::fs::symlink_metadata(l).is_err() {
                        let _ = std::os::unix::fs::symlink("/dev/full", l);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let dropped = || running.metrics.sinks[0].dropped.load(Ordering::Relaxed);
    let write_errors = || {
        running.metrics.sinks[0]
            .outbox_write_errors
            .load(Ordering::Relaxed)
    };
    let transitions = || running.metrics.alarm_transitions.load(Ordering::Relaxed);
    let idx = device_index(&running, "plc");

    let mut msgs = Vec::new();
    let mut max_dropped = 0;
    let rounds = 3;
    for round in 0..rounds {
        let before = transitions();
        dev.set_holding(1, 0, &[if round % 2 == 0 { 900 } else { 100 }]);
        let t = Instant::now();
        while transitions() == before {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round}: no alarm transition"
            );
            msgs.extend(collect_timed(&mut sub, Duration::from_millis(50)).await);
            max_dropped = max_dropped.max(dropped());
        }
        // Polling goes on while the disk is full.
        let ok = polls_ok(&running, idx);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            msgs.extend(collect_timed(&mut sub, Duration::from_millis(50)).await);
            max_dropped = max_dropped.max(dropped());
        }
        assert!(
            polls_ok(&running, idx) >= ok + 3,
            "round {round}: polling stalled on a full disk"
        );
    }
    let delivered = alarm_states(&msgs, "plc", "hi");
    println!(
        "{rounds} alarm transitions while the disk was full: delivered {delivered:?}, \
         dropped counter max {max_dropped}, now {}",
        dropped()
    );
    // The failure is visible in the metrics (alsentry_outbox_write_errors_total), and with the
    // broker connected the alarms still go out, directly, without durability.
    assert!(
        write_errors() >= rounds as u64,
        "the failed appends were never reported"
    );
    if check_counter {
        // Every alarm is either delivered or counted as dropped; a counter never goes down.
        assert_eq!(
            dropped() as usize + delivered.len(),
            rounds,
            "each lost alarm is counted"
        );
        assert_eq!(
            delivered.len(),
            rounds,
            "alarms reach a connected broker even when the disk is full"
        );
        assert!(max_dropped <= dropped());
    }
    // The sink task and the rest of the agent are still there (no crash loop, no exit).
    assert!(running.tasks.len() >= 2);

    // Space comes back: the very next alarm is stored and delivered.
    keep_full.store(false, Ordering::SeqCst);
    relinker.await.unwrap();
    for l in &links {
        let _ = std::fs::remove_file(l);
    }
    dev.set_holding(1, 0, &[100]);
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == "alsentry/s/a/plc/alarm/hi"
        })
        .await
        .expect("an alarm is delivered once the disk has room again");
    println!("after recovery: {}", String::from_utf8_lossy(&m.payload));
    assert_eq!(m.json()["state"], "returned_unacked");
    stop_checked(running).await;
    println!("case took {:?}", t_case.elapsed());
}
