//! Polling: devices that vanish, stay silent, flap or answer slowly, registers a device does
//! not serve, exception replies, hostile and hand-crafted frames. What an operator must see:
//! bad quality while a fault lasts and good values after, the right comm-loss alarms, and the
//! healthy devices on the same link polled at their rate. Loopback only, every port bound at 0,
//! the devices in-process (test device or simulator), the embedded broker.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alsentry::clock::{parse_ts, SystemClock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::pipeline::{potline_agent, serve_cells};
use crate::support::agent::{Agent, Dev};
use crate::support::broker::embedded_with_sub;
use crate::support::harness::{
    alarm_states, collect_timed, device_index, fault_agent, polls_failed, polls_ok, qualities,
    run_watched, start_sim, stop_checked, wait_until,
};
use crate::support::modbus::{Device, Served};

// ---------------------------------------------------------------------------------------------
// A device that vanishes, a silent unit, a hole in a block
// ---------------------------------------------------------------------------------------------

#[test]
fn a_vanished_device_returns_without_restart_and_never_slows_the_others() {
    run_watched(a_vanished_device_returns_without_restart_and_never_slows_the_others_case());
}

async fn a_vanished_device_returns_without_restart_and_never_slows_the_others_case() {
    let mut cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    kiln.device.set_holding(1, 0, &[11_505, 0]);
    let (broker, _sub) = embedded_with_sub("test-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = potline_agent(&cells, &kiln, &broker, state.path()).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let m = running.metrics.clone();
    let ok = |i: usize| m.devices[i].polls_ok.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(10), "all devices polled", || {
        ok(0) > 0 && ok(3) > 0
    })
    .await;

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

#[test]
fn a_silent_unit_costs_the_others_only_its_timeout() {
    run_watched(a_silent_unit_costs_the_others_only_its_timeout_case());
}

async fn a_silent_unit_costs_the_others_only_its_timeout_case() {
    let cells = Served::start(Device::default()).await;
    let kiln = Served::start(Device::default()).await;
    serve_cells(&cells.device, 4.2);
    cells.device.silence(2, true);
    let (broker, _sub) = embedded_with_sub("test-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = potline_agent(&cells, &kiln, &broker, state.path()).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // Measured from the first round in which the link has met the silent unit.
    wait_until(
        Duration::from_secs(10),
        "the silent unit timed out once",
        || {
            running.metrics.devices[1]
                .polls_failed
                .load(Ordering::Relaxed)
                >= 1
        },
    )
    .await;
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

#[test]
fn an_unmapped_register_inside_a_block_never_blinds_the_rest() {
    run_watched(an_unmapped_register_inside_a_block_never_blinds_the_rest_case());
}

async fn an_unmapped_register_inside_a_block_never_blinds_the_rest_case() {
    let dev = Device::default();
    // Tags at 0, 1 and 2; the device does not serve register 1.
    dev.set_holding(1, 0, &[100, 0, 300]);
    dev.unmap(1, 1);
    let cells = Served::start(dev).await;
    let (broker, mut sub) = embedded_with_sub("test-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Agent::new("gw")
        .state_dir(state.path())
        .mqtt(&broker.url())
        .device(Dev::tcp("plc", cells.addr).poll("200ms").tags(
            r#"[
  { name = "a", table = "holding", address = 0 },
  { name = "b", table = "holding", address = 1 },
  { name = "c", table = "holding", address = 2 },
]"#,
        ))
        .rule("[[rules]]\nname = \"c_high\"\ndevices = [\"plc\"]\ntag = \"c\"\ntype = \"high\"\nlimit = 250")
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("plc/alarm/c_high")
        })
        .await
        .expect("c read despite the hole");
    assert_eq!(m.json()["value"].as_f64(), Some(300.0));
    // Five polls (two reads each) after the one that raised the alarm: the planner has
    // learnt the hole by then.
    let seen = cells.device.reads().len();
    wait_until(Duration::from_secs(10), "ten more reads", || {
        cells.device.reads().len() >= seen + 10
    })
    .await;
    let reads = cells.device.reads();
    let late = &reads[reads.len() - 4..];
    assert!(
        late.iter()
            .all(|(_, _, start, count)| !(*start..start + count).contains(&1)),
        "planner still reads register 1: {late:?}"
    );
    running.stop().await;
}

#[test]
fn an_exception_after_a_probe_read_leaves_no_value_behind() {
    run_watched(an_exception_after_a_probe_read_leaves_no_value_behind_case());
}

/// A block fails with 02 (register 3 unmapped), the probe reads the prefix 0-1 (values 100,
/// 200), then the longer prefix 0-2 fails with 04 (register 2: server device failure). Tags a
/// and b are then bad with exception 04, and must not carry the probe's earlier values: a
/// consumer that reads `v` without `q` would take 100 for a current reading.
async fn an_exception_after_a_probe_read_leaves_no_value_behind_case() {
    let dev = Device::default();
    dev.set_holding(1, 0, &[100, 200, 300, 400]);
    dev.unmap(1, 3);
    dev.fail_reads(
        1,
        2,
        tokio_modbus::prelude::ExceptionCode::ServerDeviceFailure,
    );
    let cells = Served::start(dev).await;
    let (broker, mut sub) = embedded_with_sub("test-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Agent::new("gw")
        .state_dir(state.path())
        .mqtt(&broker.url())
        .section("[data]\nmode = \"poll\"")
        .device(Dev::tcp("plc", cells.addr).poll("200ms").tags(
            r#"[
  { name = "a", table = "holding", address = 0 },
  { name = "b", table = "holding", address = 1 },
  { name = "c", table = "holding", address = 2 },
  { name = "d", table = "holding", address = 3 },
]"#,
        ))
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let m = sub
        .wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/plc/data"))
        .await
        .expect("a data message of plc");
    let values = &m.json()["values"];
    for tag in ["a", "b", "c"] {
        assert_eq!(values[tag]["q"], "bad:exception_04", "{tag}: {values}");
        assert!(values[tag]["v"].is_null(), "{tag} keeps a value: {values}");
    }
    // The probe read 0-1 (holding registers) before the failing read of 0-2 (else this test
    // shows nothing).
    let reads = cells.device.reads();
    let at = |span: (u16, u16)| {
        reads
            .iter()
            .position(|r| (r.0, r.1, r.2, r.3) == (1, 3, span.0, span.1))
    };
    assert!(
        matches!((at((0, 2)), at((0, 3))), (Some(a), Some(b)) if a < b),
        "reads: {reads:?}"
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Flapping, slow and dead devices do not slow the healthy ones
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

#[test]
fn flapping_slow_and_dead_devices_never_slow_the_healthy_ones() {
    run_watched(flapping_slow_and_dead_devices_never_slow_the_healthy_ones_case());
}

async fn flapping_slow_and_dead_devices_never_slow_the_healthy_ones_case() {
    let t_case = Instant::now();
    let sim = start_sim(GATEWAYS).await;
    let flap_dev = Device::default();
    flap_dev.set_holding(1, 0, &[100, 200]);
    let mut flap = Served::start(flap_dev).await;
    let (broker, mut sub) = embedded_with_sub("rel-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let sim_dev = |name: &str| {
        Dev::sim(&sim, name)
            .poll("200ms")
            .timeout("300ms")
            .backoff_max("10s")
    };
    let mut devs: Vec<Dev> = (1..=6).map(|u| sim_dev(&format!("gw-{u:02}"))).collect();
    devs.push(sim_dev("sl-01"));
    devs.push(sim_dev("sl-02"));
    devs.push(sim_dev("solo"));
    devs.push(
        Dev::tcp("flap", flap.addr)
            .unit(1)
            .poll("200ms")
            .timeout("300ms")
            .backoff_max("1s")
            .tags(r#"[{ name = "a", table = "holding", address = 0 }, { name = "b", table = "holding", address = 1 }]"#),
    );
    let cfg = fault_agent(state.path(), &broker.url())
        .devices(devs)
        .section("[data]\nmode = \"poll\"")
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let healthy = ["gw-01", "gw-03", "gw-05", "sl-02", "solo"].map(|n| device_index(&running, n));
    let dead = ["gw-02", "gw-04", "gw-06", "sl-01"].map(|n| device_index(&running, n));
    let fi = device_index(&running, "flap");

    // Warm-up: the dead units' backoff starts climbing (0.2 s doubling to 10 s). That at the
    // cap they cost the link one timeout per step is the schedule's pure test
    // `dead_units_never_slow_the_healthy_ones_much`, so this run no longer waits 8 s for it.
    let mut msgs = collect_timed(&mut sub, Duration::from_secs(3)).await;
    let before: Vec<u64> = healthy.iter().map(|&i| polls_ok(&running, i)).collect();
    let t_measure = Instant::now();

    // Three flaps: the device vanishes for 2 s (listener and connections closed) and returns
    // on the same port. Each time it must be seen down and then answer again (within 3 s);
    // it stays up 1 s more so that its comm_loss returns.
    let mut comebacks = Vec::new();
    for cycle in 0..3 {
        flap.stop();
        msgs.extend(collect_timed(&mut sub, Duration::from_secs(2)).await);
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
            msgs.extend(collect_timed(&mut sub, Duration::from_millis(100)).await);
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
    println!("case took {:?}", t_case.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Malformed and hostile replies: bad quality while they last, good values after
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

#[test]
fn hostile_and_malformed_replies_give_bad_quality_then_recover() {
    run_watched(hostile_and_malformed_replies_give_bad_quality_then_recover_case());
}

async fn hostile_and_malformed_replies_give_bad_quality_then_recover_case() {
    let t_case = Instant::now();
    let sim = start_sim(&hostile_scenario()).await;
    let (broker, mut sub) = embedded_with_sub("rel-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let devs = HOSTILE.iter().map(|(n, _, _)| {
        Dev::sim(&sim, n)
            .poll("200ms")
            .timeout("300ms")
            .backoff_max("1s")
    });
    let cfg = fault_agent(state.path(), &broker.url())
        .devices(devs)
        .section("[data]\nmode = \"poll\"")
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // Faults run from 4 s to 9 s of simulated time; watch until 14 s.
    let msgs = collect_timed(&mut sub, Duration::from_secs(14)).await;
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

#[test]
fn crafted_frames_never_pass_a_wrong_value_as_good() {
    run_watched(crafted_frames_never_pass_a_wrong_value_as_good_case());
}

async fn crafted_frames_never_pass_a_wrong_value_as_good_case() {
    let t_case = Instant::now();
    let (addr, mode) = raw_server().await;
    let (broker, mut sub) = embedded_with_sub("rel-sub", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let dev = Dev::tcp("raw", addr)
        .unit(1)
        .poll("200ms")
        .timeout("300ms")
        .backoff_max("1s")
        .tags(r#"[{ name = "x", table = "holding", address = 0 }, { name = "y", table = "holding", address = 1 }]"#);
    let cfg = fault_agent(state.path(), &broker.url())
        .device(dev)
        .section("[data]\nmode = \"poll\"")
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let mut msgs = collect_timed(&mut sub, Duration::from_secs(2)).await;
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
        msgs.extend(collect_timed(&mut sub, Duration::from_secs(3)).await);
        mode.store(RAW_NORMAL, Ordering::SeqCst);
        windows.push((m, from, alsentry::clock::wall_ms()));
        // Back to normal between modes: the agent must find its feet each time.
        let back = Instant::now();
        loop {
            msgs.extend(collect_timed(&mut sub, Duration::from_millis(200)).await);
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
    println!("case took {:?}", t_case.elapsed());
}
