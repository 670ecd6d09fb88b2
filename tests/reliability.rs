//! Reliability suite ("Prove it"), the parts not about MQTT delivery (those are in
//! tests/delivery.rs). Hermetic: loopback only, every port bound at 0, the simulator and the
//! MQTT broker in-process. Each case asserts what an operator cares about: the right alarm,
//! the right quality, nothing lost, no panic, memory flat. RELIABILITY.md lists them with results.
//!
//! The real-time cases share one lock so that they do not steal each other's CPU on a small
//! machine (their poll-rate assertions would otherwise measure the neighbours).

// Tests wait on real time (deadlines, latencies); the clock rule of clippy.toml is for the
// agent's code.
#![allow(clippy::disallowed_methods)]

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use alsentry::app::Running;
use alsentry::broker::EmbeddedBroker;
use alsentry::clock::{parse_ts, Clock, SystemClock};
use alsentry::config::Config;
use alsentry::sim::{Scenario, SimHandle, StartOptions};
use support::modbus::{Device, Served};
use support::mqtt::{Msg, Subscriber};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Panics on runtime worker threads, i.e. inside agent or simulator tasks (the test bodies run
/// on the test's own thread, so their assertion failures are not counted).
static TASK_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_task_panics() {
    if std::env::var_os("RUST_LOG").is_some() {
        alsentry::telemetry::init(None);
    }
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let worker = std::thread::current().name().is_some_and(|n| {
                n.starts_with("tokio-rt-worker") || n.starts_with("tokio-runtime-worker")
            });
            if worker {
                TASK_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

/// Stops the agent and checks that no top-level task had panicked.
async fn stop_checked(mut running: Running) {
    running.cancel.cancel();
    let joined = tokio::time::timeout(Duration::from_secs(15), async {
        let mut panics = Vec::new();
        while let Some(r) = running.tasks.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    panics.push(format!("{e:?}"));
                }
            }
        }
        panics
    })
    .await
    .expect("the agent stops within 15 s");
    assert!(joined.is_empty(), "agent tasks panicked: {joined:?}");
}

async fn broker_and_sub() -> (EmbeddedBroker, Subscriber) {
    let broker = tokio::task::spawn_blocking(EmbeddedBroker::start)
        .await
        .unwrap()
        .unwrap();
    let sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "rel-sub", "alsentry/#").await;
    (broker, sub)
}

/// One device of a generated agent config.
struct Dev {
    name: String,
    template: Option<&'static str>,
    tags: &'static str,
    addr: SocketAddr,
    unit: u8,
    poll: &'static str,
    timeout: &'static str,
    backoff_max: &'static str,
}

impl Dev {
    fn sim(h: &SimHandle, name: &str, poll: &'static str, backoff_max: &'static str) -> Dev {
        let ep = h
            .endpoint(name)
            .unwrap_or_else(|| panic!("no sim device {name}"));
        let template = match ep.kind {
            alsentry::sim::DeviceKind::Cell => "cell",
            alsentry::sim::DeviceKind::Kiln => "kiln",
            alsentry::sim::DeviceKind::Calciner => "calciner",
        };
        Dev {
            name: name.to_string(),
            template: Some(template),
            tags: "",
            addr: ep.addr,
            unit: ep.unit,
            poll,
            timeout: "300ms",
            backoff_max,
        }
    }
}

/// An agent config whose includes resolve against the shipped templates.
fn agent_config(devs: &[Dev], broker_url: &str, state: &Path, extra: &str) -> Config {
    let mut text = format!(
        r#"
include = ["templates/cell.toml", "templates/kiln.toml", "templates/calciner.toml"]
[agent]
id = "rel"
site = "s"
area = "a"
state_dir = "{state}"
[mqtt]
url = "{broker_url}"
[alarms]
comm_loss_delay = "0s"
flood_threshold = 100000
{extra}
"#,
        state = state.display(),
    );
    for d in devs {
        text.push_str(&format!(
            "[[devices]]\nname = \"{}\"\nendpoint = \"tcp://{}\"\nunit = {}\npoll = \"{}\"\ntimeout = \"{}\"\nbackoff_max = \"{}\"\n",
            d.name, d.addr, d.unit, d.poll, d.timeout, d.backoff_max
        ));
        match d.template {
            Some(t) => text.push_str(&format!("template = \"{t}\"\n")),
            None => text.push_str(&format!("tags = {}\n", d.tags)),
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reliability-test.toml");
    Config::from_str(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

async fn start_sim(text: &str) -> SimHandle {
    let scn = Scenario::from_str(text).unwrap_or_else(|e| panic!("{e}"));
    alsentry::sim::start(
        scn,
        StartOptions {
            ephemeral_ports: true,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Every message received within `d`, with the time it arrived.
async fn collect(sub: &mut Subscriber, d: Duration) -> Vec<(Instant, Msg)> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await {
        out.push((Instant::now(), m));
    }
    out
}

/// (source ts, quality label) of one tag from the `{device}/data` messages.
fn qualities(msgs: &[(Instant, Msg)], device: &str, tag: &str) -> Vec<(i64, String)> {
    let topic = format!("alsentry/s/a/{device}/data");
    msgs.iter()
        .filter(|(_, m)| m.topic == topic)
        .filter_map(|(_, m)| {
            let j = m.json();
            let ts = parse_ts(j["ts"].as_str()?)?;
            let q = j["values"][tag]["q"].as_str()?.to_string();
            Some((ts, q))
        })
        .collect()
}

/// Alarm states published for (device, rule), in order.
fn alarm_states(msgs: &[(Instant, Msg)], device: &str, rule: &str) -> Vec<String> {
    let topic = format!("alsentry/s/a/{device}/alarm/{rule}");
    msgs.iter()
        .filter(|(_, m)| m.topic == topic)
        .filter_map(|(_, m)| m.json()["state"].as_str().map(str::to_string))
        .collect()
}

fn polls_ok(r: &Running, i: usize) -> u64 {
    r.metrics.devices[i].polls_ok.load(Ordering::Relaxed)
}

fn polls_failed(r: &Running, i: usize) -> u64 {
    r.metrics.devices[i].polls_failed.load(Ordering::Relaxed)
}

fn device_index(r: &Running, name: &str) -> usize {
    r.metrics
        .devices
        .iter()
        .position(|d| d.name == name)
        .unwrap_or_else(|| panic!("no device {name}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Flapping, slow and dead devices do not slow the healthy ones
// ---------------------------------------------------------------------------------------------

const GATEWAYS: &str = r#"
[plant]
name = "rel-links"
tick = "100ms"
[[groups]]
id = "gw"
kind = "kiln"
name = "gw-{unit:02}"
listen = "127.0.0.1:6101"
units = "1-6"
[[groups]]
id = "sl"
kind = "kiln"
name = "sl-{unit:02}"
listen = "127.0.0.1:6102"
units = "1-2"
[[groups]]
id = "solo"
kind = "kiln"
name = "solo"
listen = "127.0.0.1:6103"
units = "1"
[[faults]]
kind = "unit_silent"
devices = ["gw-02", "gw-04", "gw-06"]
at = "0s"
duration = "1h"
[[faults]]
kind = "slow_unit"
devices = ["sl-01"]
at = "0s"
duration = "1h"
params = { delay = "1s" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_slow_and_dead_devices_never_slow_the_healthy_ones() {
    let _serial = SERIAL.lock().await;
    count_task_panics();
    let panics_before = TASK_PANICS.load(Ordering::SeqCst);
    let t_case = Instant::now();
    let sim = start_sim(GATEWAYS).await;
    let flap_dev = Device::default();
    flap_dev.set_holding(1, 0, &[100, 200]);
    let mut flap = Served::start(flap_dev).await;
    let (broker, mut sub) = broker_and_sub().await;
    let state = tempfile::tempdir().unwrap();
    let mut devs: Vec<Dev> = (1..=6)
        .map(|u| Dev::sim(&sim, &format!("gw-{u:02}"), "200ms", "10s"))
        .collect();
    devs.push(Dev::sim(&sim, "sl-01", "200ms", "10s"));
    devs.push(Dev::sim(&sim, "sl-02", "200ms", "10s"));
    devs.push(Dev::sim(&sim, "solo", "200ms", "10s"));
    devs.push(Dev {
        name: "flap".into(),
        template: None,
        tags: r#"[{ name = "a", table = "holding", address = 0 }, { name = "b", table = "holding", address = 1 }]"#,
        addr: flap.addr,
        unit: 1,
        poll: "200ms",
        timeout: "300ms",
        backoff_max: "1s",
    });
    let cfg = agent_config(
        &devs,
        &broker.url(),
        state.path(),
        "[data]\nmode = \"poll\"",
    );
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let healthy = ["gw-01", "gw-03", "gw-05", "sl-02", "solo"].map(|n| device_index(&running, n));
    let dead = ["gw-02", "gw-04", "gw-06", "sl-01"].map(|n| device_index(&running, n));
    let fi = device_index(&running, "flap");

    // Warm-up: the dead units' backoff starts climbing (0.2 s doubling to 10 s). That at the
    // cap they cost the link one timeout per step is the schedule's pure test
    // `dead_units_never_slow_the_healthy_ones_much`, so this run no longer waits 8 s for it.
    let mut msgs = collect(&mut sub, Duration::from_secs(3)).await;
    let before: Vec<u64> = healthy.iter().map(|&i| polls_ok(&running, i)).collect();
    let t_measure = Instant::now();

    // Three flaps: the device vanishes for 2 s (listener and connections closed) and returns
    // on the same port. Each time it must be seen down and then answer again (within 3 s);
    // it stays up 1 s more so that its comm_loss returns.
    let mut comebacks = Vec::new();
    for cycle in 0..3 {
        flap.stop();
        msgs.extend(collect(&mut sub, Duration::from_secs(2)).await);
        let down_ok = polls_ok(&running, fi);
        assert!(
            !running.metrics.devices[fi].up.load(Ordering::Relaxed),
            "cycle {cycle}: flap still reported up 2 s after it vanished"
        );
        flap.restart().await;
        let back_at = Instant::now();
        let mut came_back = None;
        let until = back_at + Duration::from_secs(3);
        while Instant::now() < until {
            msgs.extend(collect(&mut sub, Duration::from_millis(100)).await);
            if came_back.is_none() && polls_ok(&running, fi) > down_ok {
                came_back = Some(back_at.elapsed());
            }
            if came_back.is_some_and(|c| back_at.elapsed() > c + Duration::from_secs(1)) {
                break;
            }
        }
        let came_back =
            came_back.unwrap_or_else(|| panic!("cycle {cycle}: flap did not come back within 3 s"));
        comebacks.push(came_back);
    }
    let secs = t_measure.elapsed().as_secs_f64();
    let nominal = secs / 0.2;
    let rates: Vec<(String, f64)> = healthy
        .iter()
        .zip(&before)
        .map(|(&i, &b)| {
            (
                running.metrics.devices[i].name.clone(),
                (polls_ok(&running, i) - b) as f64 / nominal,
            )
        })
        .collect();
    println!("healthy poll rate over {secs:.1} s (fraction of nominal 5/s): {rates:?}");
    println!("flap came back after {comebacks:?}");
    for (name, rate) in &rates {
        // A dead unit costs the link at most one 300 ms timeout per backoff step (8-12 s at
        // the cap): three of them take < 12 % of the gateway's time.
        assert!(
            *rate >= 0.75,
            "{name} kept only {:.0} % of its poll rate",
            rate * 100.0
        );
    }
    for &i in &dead {
        assert_eq!(
            polls_ok(&running, i),
            0,
            "{} answered?",
            running.metrics.devices[i].name
        );
        assert!(polls_failed(&running, i) >= 1);
    }
    for &i in &healthy {
        assert_eq!(
            polls_failed(&running, i),
            0,
            "{} had failed polls",
            running.metrics.devices[i].name
        );
    }

    // The right alarms: comm_loss on every dead unit and on each flap, never on a healthy one.
    for name in ["gw-02", "gw-04", "gw-06", "sl-01"] {
        assert_eq!(
            alarm_states(&msgs, name, "comm_loss")
                .first()
                .map(String::as_str),
            Some("active_unacked"),
            "{name}"
        );
    }
    for name in ["gw-01", "gw-03", "gw-05", "sl-02", "solo"] {
        assert!(
            alarm_states(&msgs, name, "comm_loss").is_empty(),
            "comm_loss on healthy {name}"
        );
    }
    let flap_states = alarm_states(&msgs, "flap", "comm_loss");
    println!("flap comm_loss transitions: {flap_states:?}");
    let raised = flap_states
        .iter()
        .filter(|s| s.as_str() == "active_unacked")
        .count();
    let returned = flap_states
        .iter()
        .filter(|s| s.as_str() == "returned_unacked")
        .count();
    assert_eq!(
        (raised, returned),
        (3, 3),
        "one comm_loss raise and return per flap: {flap_states:?}"
    );
    let q = qualities(&msgs, "flap", "a");
    assert_eq!(q.last().map(|x| x.1.as_str()), Some("good"), "{q:?}");

    stop_checked(running).await;
    sim.stop().await;
    assert_eq!(TASK_PANICS.load(Ordering::SeqCst), panics_before);
    println!("case took {:?}", t_case.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 2. Malformed and hostile replies: bad quality while they last, good values after
// ---------------------------------------------------------------------------------------------

/// (device, fault kind, params) — one device per listener, so a fault never shares a link.
const HOSTILE: [(&str, &str, &str); 8] = [
    ("tid", "hostile_reply", r#"{ mode = "wrong_tid" }"#),
    ("len", "hostile_reply", r#"{ mode = "wrong_length" }"#),
    ("fc", "hostile_reply", r#"{ mode = "wrong_fc" }"#),
    ("unasked", "hostile_reply", r#"{ mode = "unsolicited" }"#),
    ("exc", "exception", r#"{ code = 4 }"#),
    ("gwfail", "exception", r#"{ code = 11 }"#),
    ("midframe", "conn_drop", r#"{ after_bytes = 5 }"#),
    ("control", "", ""),
];

fn hostile_scenario() -> String {
    let mut s = String::from("[plant]\nname = \"rel-hostile\"\ntick = \"100ms\"\n");
    for (i, (name, _, _)) in HOSTILE.iter().enumerate() {
        s.push_str(&format!(
            "[[groups]]\nid = \"{name}\"\nkind = \"kiln\"\nname = \"{name}\"\nlisten = \"127.0.0.1:{}\"\nunits = \"1\"\n",
            6201 + i
        ));
    }
    for (name, kind, params) in HOSTILE {
        if kind.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "[[faults]]\nkind = \"{kind}\"\ndevices = [\"{name}\"]\nat = \"4s\"\nduration = \"5s\"\nparams = {params}\n"
        ));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_malformed_replies_give_bad_quality_then_recover() {
    let _serial = SERIAL.lock().await;
    count_task_panics();
    let panics_before = TASK_PANICS.load(Ordering::SeqCst);
    let t_case = Instant::now();
    let sim = start_sim(&hostile_scenario()).await;
    let (broker, mut sub) = broker_and_sub().await;
    let state = tempfile::tempdir().unwrap();
    let devs: Vec<Dev> = HOSTILE
        .iter()
        .map(|(n, _, _)| Dev::sim(&sim, n, "200ms", "1s"))
        .collect();
    let cfg = agent_config(
        &devs,
        &broker.url(),
        state.path(),
        "[data]\nmode = \"poll\"",
    );
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // Faults run from 4 s to 9 s of simulated time; watch until 14 s.
    let msgs = collect(&mut sub, Duration::from_secs(14)).await;
    let truth = sim.truth();
    let mut seen = BTreeMap::new();
    for (name, kind, _) in HOSTILE {
        let q = qualities(&msgs, name, "flue_temp");
        assert!(!q.is_empty(), "{name}: no data published");
        if kind.is_empty() {
            assert!(
                q.iter().all(|(_, l)| l == "good"),
                "control device saw {q:?}"
            );
            assert!(
                q.len() >= 50,
                "control polled only {} times in 14 s",
                q.len()
            );
            continue;
        }
        let start = truth
            .iter()
            .find(|e| e.device == name && e.phase == "start")
            .unwrap_or_else(|| panic!("{name}: fault never started"));
        let (from, to) = (start.start_ms, start.end_ms);
        let before: Vec<_> = q.iter().filter(|(t, _)| *t < from - 300).collect();
        let during: Vec<_> = q
            .iter()
            .filter(|(t, _)| *t > from + 300 && *t < to - 100)
            .collect();
        let after: Vec<_> = q.iter().filter(|(t, _)| *t > to + 2_500).collect();
        let labels: std::collections::BTreeSet<&str> =
            during.iter().map(|(_, l)| l.as_str()).collect();
        println!(
            "{name:9} before: {} good of {}, during: {labels:?} ({} samples), after: {} good of {}",
            before.iter().filter(|(_, l)| l == "good").count(),
            before.len(),
            during.len(),
            after.iter().filter(|(_, l)| l == "good").count(),
            after.len()
        );
        assert!(
            !before.is_empty() && before.iter().all(|(_, l)| l == "good"),
            "{name} before the fault: {before:?}"
        );
        // While the device misbehaves, no value it sends may pass as good.
        assert!(!during.is_empty(), "{name}: no sample during the fault");
        assert!(
            during.iter().all(|(_, l)| l != "good"),
            "{name}: a good value during the fault: {during:?}"
        );
        // After it, the agent reconnects by itself and values are good again.
        assert!(
            after.len() >= 5 && after.iter().all(|(_, l)| l == "good"),
            "{name} after the fault: {after:?}"
        );
        seen.insert(
            name,
            labels.into_iter().map(str::to_string).collect::<Vec<_>>(),
        );
    }
    println!("quality during each fault: {seen:?}");
    // The reason is the right one: the operator must tell a broken wire from a device that
    // says no.
    assert_eq!(seen["exc"], vec!["bad:exception_04"]);
    assert_eq!(seen["gwfail"], vec!["bad:exception_0b"]);
    // A device that answers (even "no") is not a communication loss; a gateway that cannot
    // reach its unit (0B) or a reply that never completes (timeout) is, and it returns.
    for (name, _, _) in HOSTILE {
        println!(
            "{name:9} comm_loss: {:?}",
            alarm_states(&msgs, name, "comm_loss")
        );
    }
    for name in ["exc", "control"] {
        assert!(alarm_states(&msgs, name, "comm_loss").is_empty(), "{name}");
    }
    for name in ["gwfail", "len"] {
        assert_eq!(
            alarm_states(&msgs, name, "comm_loss"),
            vec!["active_unacked", "returned_unacked"],
            "{name}"
        );
    }
    for name in ["tid", "fc", "unasked"] {
        assert!(
            seen[name].iter().all(|l| l == "bad:protocol_error"),
            "{name}: {:?}",
            seen[name]
        );
    }
    assert!(
        seen["midframe"]
            .iter()
            .all(|l| l == "bad:connection_lost" || l == "bad:protocol_error"),
        "{:?}",
        seen["midframe"]
    );
    stop_checked(running).await;
    sim.stop().await;
    assert_eq!(TASK_PANICS.load(Ordering::SeqCst), panics_before);
    println!("case took {:?}", t_case.elapsed());
}

/// How the crafted server misbehaves (0 = a correct Modbus TCP server).
const RAW_NORMAL: u8 = 0;
/// Bytes nobody asked for: garbage on connect, then a stray frame after every reply.
const RAW_UNASKED: u8 = 1;
/// MBAP length 2 short of the PDU sent: the tail spills into the next reply.
const RAW_SHORT_LENGTH: u8 = 2;
/// The PDU's byte count claims more registers than are sent.
const RAW_BYTE_COUNT_LIE: u8 = 3;
/// MBAP length 0xFFFF: the client would wait for 64 KiB that never come.
const RAW_HUGE_LENGTH: u8 = 4;
/// Exception replies with a code no standard defines.
const RAW_ODD_EXCEPTION: u8 = 5;
/// A well-formed reply with one register fewer than asked for.
const RAW_SHORT_REPLY: u8 = 6;

const GOOD_WORD: u16 = 1234;
const WRONG_WORD: u16 = 6666;

fn mbap(tid: u16, unit: u8, pdu: &[u8], len: Option<u16>) -> Vec<u8> {
    let len = len.unwrap_or(pdu.len() as u16 + 1);
    let mut f = tid.to_be_bytes().to_vec();
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.push(unit);
    f.extend_from_slice(pdu);
    f
}

fn read_reply(fc: u8, qty: u16, word: u16, byte_count_extra: u8) -> Vec<u8> {
    let mut pdu = vec![fc, (qty * 2) as u8 + byte_count_extra];
    for _ in 0..qty {
        pdu.extend_from_slice(&word.to_be_bytes());
    }
    pdu
}

async fn raw_connection(mut s: tokio::net::TcpStream, mode: Arc<std::sync::atomic::AtomicU8>) {
    if mode.load(Ordering::SeqCst) == RAW_UNASKED {
        let _ = s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0x07]).await;
    }
    let mut header = [0u8; 7];
    loop {
        if s.read_exact(&mut header).await.is_err() {
            return;
        }
        let tid = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let unit = header[6];
        let mut pdu = vec![0u8; len.saturating_sub(1).min(260)];
        if s.read_exact(&mut pdu).await.is_err() || pdu.len() < 5 {
            return;
        }
        let fc = pdu[0];
        let qty = u16::from_be_bytes([pdu[3], pdu[4]]).min(120);
        let out = match mode.load(Ordering::SeqCst) {
            RAW_UNASKED => {
                let mut f = mbap(tid, unit, &read_reply(fc, qty, GOOD_WORD, 0), None);
                let reply_len = f.len();
                f.extend(mbap(
                    0xBEEF,
                    unit,
                    &read_reply(fc, qty, WRONG_WORD, 0),
                    None,
                ));
                // The stray frame comes a little after the reply, when the client is idle.
                if s.write_all(&f[..reply_len]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                f.split_off(reply_len)
            }
            RAW_SHORT_LENGTH => {
                let pdu = read_reply(fc, qty, WRONG_WORD, 0);
                mbap(tid, unit, &pdu, Some(pdu.len() as u16 - 1))
            }
            RAW_BYTE_COUNT_LIE => mbap(tid, unit, &read_reply(fc, qty, WRONG_WORD, 2), None),
            RAW_HUGE_LENGTH => mbap(tid, unit, &read_reply(fc, qty, WRONG_WORD, 0), Some(0xFFFF)),
            RAW_ODD_EXCEPTION => mbap(tid, unit, &[fc | 0x80, 0x5A], None),
            RAW_SHORT_REPLY => mbap(
                tid,
                unit,
                &read_reply(fc, qty.saturating_sub(1), WRONG_WORD, 0),
                None,
            ),
            _ => mbap(tid, unit, &read_reply(fc, qty, GOOD_WORD, 0), None),
        };
        if s.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A hand-written Modbus TCP server that sends crafted MBAP frames.
async fn raw_server() -> (SocketAddr, Arc<std::sync::atomic::AtomicU8>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(RAW_NORMAL));
    let m = mode.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(raw_connection(s, m.clone()));
        }
    });
    (addr, mode)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_frames_never_pass_a_wrong_value_as_good() {
    let _serial = SERIAL.lock().await;
    count_task_panics();
    let panics_before = TASK_PANICS.load(Ordering::SeqCst);
    let t_case = Instant::now();
    let (addr, mode) = raw_server().await;
    let (broker, mut sub) = broker_and_sub().await;
    let state = tempfile::tempdir().unwrap();
    let dev = Dev {
        name: "raw".into(),
        template: None,
        tags: r#"[{ name = "x", table = "holding", address = 0 }, { name = "y", table = "holding", address = 1 }]"#,
        addr,
        unit: 1,
        poll: "200ms",
        timeout: "300ms",
        backoff_max: "1s",
    };
    let cfg = agent_config(
        &[dev],
        &broker.url(),
        state.path(),
        "[data]\nmode = \"poll\"",
    );
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let mut msgs = collect(&mut sub, Duration::from_secs(2)).await;
    let mut windows = Vec::new();
    for m in [
        RAW_UNASKED,
        RAW_SHORT_LENGTH,
        RAW_BYTE_COUNT_LIE,
        RAW_HUGE_LENGTH,
        RAW_ODD_EXCEPTION,
        RAW_SHORT_REPLY,
    ] {
        let from = alsentry::clock::wall_ms();
        mode.store(m, Ordering::SeqCst);
        msgs.extend(collect(&mut sub, Duration::from_secs(3)).await);
        mode.store(RAW_NORMAL, Ordering::SeqCst);
        windows.push((m, from, alsentry::clock::wall_ms()));
        // Back to normal between modes: the agent must find its feet each time.
        let back = Instant::now();
        loop {
            msgs.extend(collect(&mut sub, Duration::from_millis(200)).await);
            let q = qualities(&msgs, "raw", "x");
            if q.last()
                .is_some_and(|(t, l)| l == "good" && *t > windows.last().unwrap().2)
            {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(5),
                "mode {m}: no good value within 5 s of the server behaving again"
            );
        }
    }
    let topic = "alsentry/s/a/raw/data";
    let mut wrong_good = Vec::new();
    let mut per_window: BTreeMap<u8, (usize, usize)> = BTreeMap::new();
    for (_, msg) in msgs.iter().filter(|(_, m)| m.topic == topic) {
        let j = msg.json();
        let ts = parse_ts(j["ts"].as_str().unwrap()).unwrap();
        for tag in ["x", "y"] {
            let v = &j["values"][tag];
            if v["q"] == "good" && v["v"].as_f64() != Some(f64::from(GOOD_WORD)) {
                wrong_good.push(j.clone());
            }
        }
        if let Some((m, _, _)) = windows.iter().find(|(_, a, b)| ts > *a + 100 && ts < *b) {
            let e = per_window.entry(*m).or_default();
            if j["values"]["x"]["q"] == "good" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    println!("(good, bad) samples per crafted mode: {per_window:?}");
    assert!(
        wrong_good.is_empty(),
        "a wrong value passed as good: {wrong_good:?}"
    );
    for (m, _, _) in &windows {
        let (_, bad) = per_window.get(m).copied().unwrap_or_default();
        assert!(
            bad >= 1,
            "mode {m}: the agent never flagged the bad replies"
        );
    }
    let idx = device_index(&running, "raw");
    assert!(polls_ok(&running, idx) > 0 && polls_failed(&running, idx) > 0);
    stop_checked(running).await;
    assert_eq!(TASK_PANICS.load(Ordering::SeqCst), panics_before);
    println!("case took {:?}", t_case.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 3. The outbox cannot be created or written
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
    let d = Dev {
        name: "plc".into(),
        template: None,
        tags: r#"[{ name = "x", table = "holding", address = 0 }]"#,
        addr: served.addr,
        unit: 1,
        poll: "200ms",
        timeout: "300ms",
        backoff_max: "1s",
    };
    // No broker needed: start must fail before connecting anywhere.
    let cfg = agent_config(&[d], "mqtt://127.0.0.1:9", &state, "");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_outbox_does_not_stop_polling_and_recovers() {
    full_disk_case(false).await;
}

/// Regression (found by this suite): a failed outbox append was counted in `dropped` and then
/// overwritten by the store's own eviction count every 500 ms, so alarms lost on a full disk
/// vanished from `alsentry_outbox_dropped_total`. The publisher now adds its own drops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_on_a_full_disk_stay_counted() {
    full_disk_case(true).await;
}

async fn full_disk_case(check_counter: bool) {
    let _serial = SERIAL.lock().await;
    count_task_panics();
    let panics_before = TASK_PANICS.load(Ordering::SeqCst);
    let t_case = Instant::now();
    let dev_full = Path::new("/dev/full");
    assert!(dev_full.exists(), "this test needs /dev/full (Linux)");
    let dev = Device::default();
    dev.set_holding(1, 0, &[100]);
    let served = Served::start(dev.clone()).await;
    let (broker, mut sub) = broker_and_sub().await;
    let state = tempfile::tempdir().unwrap();
    let d = Dev {
        name: "plc".into(),
        template: None,
        tags: r#"[{ name = "x", table = "holding", address = 0 }]"#,
        addr: served.addr,
        unit: 1,
        poll: "200ms",
        timeout: "300ms",
        backoff_max: "1s",
    };
    let rule = r#"
[[rules]]
name = "hi"
devices = ["plc"]
tag = "x"
type = "high"
limit = 500
priority = "high"
"#;
    let cfg = agent_config(&[d], &broker.url(), state.path(), rule);
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
            msgs.extend(collect(&mut sub, Duration::from_millis(50)).await);
            max_dropped = max_dropped.max(dropped());
        }
        // Polling goes on while the disk is full.
        let ok = polls_ok(&running, idx);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            msgs.extend(collect(&mut sub, Duration::from_millis(50)).await);
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
    assert_eq!(TASK_PANICS.load(Ordering::SeqCst), panics_before);
    println!("case took {:?}", t_case.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 4. Wall-clock steps
// ---------------------------------------------------------------------------------------------
//
// The live path (`alsentry run`, app.rs) gives every task a `SystemClock`: wall time anchored
// at start and advanced by the monotonic clock. NTP slewing never reaches the engine; a step
// of more than 2 s (a gateway without a battery-backed clock that gets its time after boot) is
// followed every 10 s by `Clock::resync`, so timestamps stay right, and the engine sees one
// jump of `now`. Stepping the host clock needs CAP_SYS_TIME on a shared machine, so the live
// path is checked by construction below, and what a step does is checked where it lands: the
// engine, fed a `now` that jumps.

const T0: i64 = 1_795_881_600_000;

fn step_engine() -> alsentry::core::engine::Engine {
    let text = r#"
[agent]
id = "rel"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "plc"
endpoint = "tcp://127.0.0.1:1502"
tags = [{ name = "x", table = "holding", address = 0 }]
[[rules]]
name = "hi"
devices = ["plc"]
tag = "x"
type = "high"
limit = 500
on_delay = "3s"
"#;
    let cfg = Config::from_str(Path::new("step.toml"), text).unwrap();
    alsentry::core::engine::Engine::new(&cfg).unwrap()
}

fn sample(e: &mut alsentry::core::engine::Engine, ts: i64, v: f64) -> Vec<String> {
    let mut out = Vec::new();
    e.on_batch(
        &alsentry::core::engine::SampleBatch {
            device: 0,
            ts,
            values: vec![(0, v, alsentry::core::model::Quality::Good)],
        },
        ts,
        &mut out,
    );
    e.tick(ts, &mut out);
    out.iter()
        .filter(|ev| &*ev.rule == "hi")
        .map(|ev| ev.transition.to.to_string())
        .collect()
}

#[test]
fn the_live_clock_follows_the_monotonic_clock() {
    // SystemClock::now() = anchor + monotonic elapsed: over any interval it advances exactly
    // as much as Instant does, whatever the wall clock does meanwhile.
    let c = SystemClock::new();
    let (t0, i0) = (c.now(), Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    let (t1, i1) = (c.now(), Instant::now());
    let wall = t1 - t0;
    let mono = (i1 - i0).as_millis() as i64;
    assert!(
        (wall - mono).abs() <= 2,
        "clock {wall} ms vs monotonic {mono} ms"
    );
}

#[test]
fn clock_steps_in_the_engine_never_panic_and_never_duplicate_an_alarm() {
    // Forward: a one-hour step while the 3 s on-delay is pending.
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let at_step = sample(&mut e, T0 + 1_000 + 3_600_000, 900.0);
    // The engine trusts `now`: one hour has "passed", so the delay is over. This is why the
    // live clock must never step (see above); documented in RELIABILITY.md.
    assert_eq!(at_step, vec!["active_unacked"]);
    for k in 1..5 {
        assert!(sample(&mut e, T0 + 1_000 + 3_600_000 + k * 1_000, 900.0).is_empty());
    }
    let cleared = sample(&mut e, T0 + 3_606_000, 100.0);
    assert_eq!(cleared, vec!["returned_unacked"]);

    // Backward: a one-hour step back while the on-delay is pending. Nothing fires early, nothing
    // panics; the pending delay is measured from the (now future) time it started.
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let back = T0 + 1_000 - 3_600_000;
    let mut fired_at = None;
    for k in 1..=20 {
        let ev = sample(&mut e, back + k * 1_000, 900.0);
        if !ev.is_empty() {
            assert_eq!(ev, vec!["active_unacked"]);
            fired_at = Some(k);
            break;
        }
    }
    println!("after a 1 h backward step the 3 s on-delay fired after {fired_at:?} s of samples");
    // Once the clock has caught up with the step the alarm fires exactly once.
    let caught_up = sample(&mut e, T0 + 3_000, 900.0);
    let total = usize::from(fired_at.is_some()) + caught_up.len();
    assert_eq!(total, 1, "fires exactly once: {caught_up:?}");
}

/// FINDING (design): after a backward step of `now` the engine waits for the clock to catch
/// up before a pending on-delay can complete (src/core/alarm.rs `fire_pending_if_due`:
/// `now - pending.since` stays negative), i.e. an anode effect would be annunciated an hour
/// late. The live SystemClock never steps, so this needs an injected clock that does.
#[test]
#[ignore = "finding: a backward step of the injected clock postpones pending on-delays by the step"]
fn a_pending_on_delay_survives_a_backward_step() {
    let mut e = step_engine();
    assert!(sample(&mut e, T0, 900.0).is_empty());
    assert!(sample(&mut e, T0 + 1_000, 900.0).is_empty());
    let back = T0 + 1_000 - 3_600_000;
    let fired: Vec<String> = (1..=5)
        .flat_map(|k| sample(&mut e, back + k * 1_000, 900.0))
        .collect();
    assert_eq!(
        fired,
        vec!["active_unacked"],
        "fires within the on-delay of real time"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Soak: 400 cells + 20 kiln sections for a minute, resident memory flat
// ---------------------------------------------------------------------------------------------

const POTLINE_400: &str = r#"
[plant]
name = "rel-potline-400"
seed = 400
tick = "100ms"
line_current_ka = 500.0
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{index:03}"
host = "127.0.0.1"
ports = "15100-15499"
unit = 1
[[groups]]
id = "furnace"
kind = "kiln"
name = "kiln-{unit:02}"
listen = "127.0.0.1:5021"
units = "1-20"
"#;

/// The rules a potline gateway would run: every kind that keeps a window or running state.
const SOAK_RULES: &str = r#"
[summary]
interval = "10s"
[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
[[rules]]
name = "voltage_noise"
template = "cell"
tag = "voltage"
type = "noise"
window = "20s"
limit = 0.2
[[rules]]
name = "resistance_rise"
template = "cell"
tag = "resistance"
type = "slope"
window = "20s"
limit = 0.5
per = "min"
[[rules]]
name = "heartbeat_stale"
template = "cell"
tag = "heartbeat"
type = "stale"
max_age = "10s"
[[rules]]
name = "bath_hot"
template = "cell"
tag = "bath_temp"
type = "high"
limit = 990
[[rules]]
name = "draft_loss"
template = "kiln"
tag = "draft"
type = "high"
limit = -5
on_delay = "5s"
"#;

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// The broker for the soak. An in-process broker's own caches would be counted in this
/// process's VmRSS (rumqttd keeps up to 10 x 1 MiB of log per filter), so the soak uses a
/// private Mosquitto process when one is installed and says so when it falls back.
enum SoakBroker {
    Mosquitto(std::process::Child, u16),
    Embedded(EmbeddedBroker),
}

impl SoakBroker {
    async fn start(dir: &Path) -> SoakBroker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        match std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    assert!(
                        Instant::now() < deadline,
                        "mosquitto did not listen on {port}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                SoakBroker::Mosquitto(child, port)
            }
            Err(e) => {
                println!("soak: no mosquitto ({e}); the embedded broker's memory is counted too");
                let b = tokio::task::spawn_blocking(EmbeddedBroker::start)
                    .await
                    .unwrap()
                    .unwrap();
                SoakBroker::Embedded(b)
            }
        }
    }

    fn port(&self) -> u16 {
        match self {
            SoakBroker::Mosquitto(_, p) => *p,
            SoakBroker::Embedded(b) => b.addr.port(),
        }
    }
}

impl Drop for SoakBroker {
    fn drop(&mut self) {
        if let SoakBroker::Mosquitto(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_400_cells_memory_stays_flat() {
    let _serial = SERIAL.lock().await;
    count_task_panics();
    let panics_before = TASK_PANICS.load(Ordering::SeqCst);
    let t_case = Instant::now();
    let warmup = Duration::from_secs(
        std::env::var("ALSENTRY_SOAK_WARMUP_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30),
    );
    let measure = Duration::from_secs(
        std::env::var("ALSENTRY_SOAK_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let sim = start_sim(POTLINE_400).await;
    let state = tempfile::tempdir().unwrap();
    let broker = SoakBroker::start(state.path()).await;
    let mut sub =
        Subscriber::connect("127.0.0.1", broker.port(), "rel-soak-sub", "alsentry/#").await;
    let mut devs: Vec<Dev> = (1..=400)
        .map(|i| Dev::sim(&sim, &format!("pot-{i:03}"), "1s", "10s"))
        .collect();
    devs.extend((1..=20).map(|u| Dev::sim(&sim, &format!("kiln-{u:02}"), "1s", "10s")));
    for d in &mut devs {
        d.timeout = "500ms";
    }
    let url = format!("mqtt://127.0.0.1:{}", broker.port());
    let cfg = agent_config(&devs, &url, state.path(), SOAK_RULES);
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // The subscriber keeps draining so the broker never holds messages for it.
    let drain = tokio::spawn(async move {
        let mut n = 0usize;
        while sub.rx.recv().await.is_some() {
            n += 1;
        }
        n
    });

    tokio::time::sleep(warmup).await;
    let ok_at = |r: &Running| -> u64 { (0..420).map(|i| polls_ok(r, i)).sum() };
    let ok0 = ok_at(&running);
    let t0 = Instant::now();
    let mut samples = vec![(0u64, vm_rss_kib())];
    while t0.elapsed() < measure {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((t0.elapsed().as_secs(), vm_rss_kib()));
    }
    let secs = t0.elapsed().as_secs_f64();
    let polls = ok_at(&running) - ok0;
    let failed: u64 = (0..420).map(|i| polls_failed(&running, i)).sum();
    let up = (0..420)
        .filter(|&i| running.metrics.devices[i].up.load(Ordering::Relaxed))
        .count();
    let dropped_batches = running.metrics.batches_dropped.load(Ordering::Relaxed);
    let first = samples[0].1;
    let last = samples.last().unwrap().1;
    let max = samples.iter().map(|s| s.1).max().unwrap();
    println!("soak: warm-up {warmup:?}, measured {secs:.1} s, 420 devices, {polls} polls ({:.0}/s), {failed} failed, {up} up, {dropped_batches} batches dropped", polls as f64 / secs);
    println!("soak VmRSS samples (s, KiB): {samples:?}");
    println!(
        "soak VmRSS first {first} KiB, last {last} KiB, max {max} KiB, growth {:+.1} %",
        (last as f64 - first as f64) * 100.0 / first as f64
    );
    assert_eq!(up, 420, "every device answers");
    assert_eq!(failed, 0, "no failed poll under load");
    assert_eq!(dropped_batches, 0, "the engine kept up");
    assert!(
        polls as f64 >= 0.9 * 420.0 * secs,
        "poll rate {:.0}/s below 90 % of 420/s",
        polls as f64 / secs
    );
    // Flat: growth after warm-up below 10 % or 4 MiB, whichever is larger.
    let bound = (first / 10).max(4 * 1024);
    assert!(
        max.saturating_sub(first) < bound,
        "resident memory grew by {} KiB (bound {bound} KiB): {samples:?}",
        max - first
    );
    stop_checked(running).await;
    drain.abort();
    sim.stop().await;
    drop(broker);
    assert_eq!(TASK_PANICS.load(Ordering::SeqCst), panics_before);
    println!("case took {:?}", t_case.elapsed());
}
