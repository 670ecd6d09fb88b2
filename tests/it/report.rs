//! The daily energy and emissions report (issue 20, docs/REPORT.md): a replayed day with known
//! anode effects gives the count, minutes and CO2e of the documented formula computed here by
//! hand; the live agent keeps the partial day across a restart and publishes a day that ended
//! while it was down, retained, in the schema.

use std::path::Path;
use std::time::Duration;

use alsentry::clock::SystemClock;
use alsentry::config::Config;
use alsentry::replay::{run_replay, ReplayOptions};
use serde_json::Value;

use crate::support::delivery::schema_check;
use crate::support::modbus::{Device, Served};
use crate::support::mqtt::Subscriber;

/// 2026-11-27T16:00:00Z: midnight of 2026-11-28 in Shanghai (UTC+8, no DST).
const DAY0: i64 = 1_795_795_200_000;
const H: i64 = 3_600_000;

const REPLAY_CFG: &str = r#"
[agent]
id = "gw-rep"
site = "qingzhen"
area = "potline-1"
timezone = "Asia/Shanghai"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[alarms]
comm_loss = false

[templates.cell]
tags = [
  { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" },
  { name = "current", table = "input", address = 2, type = "f32", unit = "kA" },
]

[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-2"

# The shipped preset's anode-effect rule (config/templates/cell-rules.toml).
[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "3s"
priority = "critical"
"#;

/// (start offset from DAY0, seconds of V = 25 V) for pot-001's anode effects.
const AES: [(i64, i64); 2] = [(3 * H, 90), (15 * H + 30 * 60_000, 40)];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn a_replayed_day_gives_the_hand_computed_anode_effects_and_co2e() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("alsentry.toml");
    std::fs::write(&cfg_path, REPLAY_CFG).unwrap();
    let cfg = Config::load(&cfg_path).unwrap();
    // One local day every 10 s, both cells, plus the first sample of the next day (which ends
    // the day). pot-001: 4.20 V at 400 kA but for the two effects at 25 V; pot-002: 4.00 V at
    // 400 kA, and its link down (no rows) from 12:00 to 18:00.
    let mut csv = String::from("ts,device,tag,value\n");
    let (mut v1_sum, mut v1_n, mut v2_sum, mut v2_n) = (0.0, 0u64, 0.0, 0u64);
    let mut t = DAY0;
    while t <= DAY0 + 24 * H {
        let in_ae = AES
            .iter()
            .any(|&(s, d)| t >= DAY0 + s && t < DAY0 + s + d * 1000);
        let v1 = if in_ae { 25.0 } else { 4.2 };
        csv += &format!("{t},pot-001,voltage,{v1}\n{t},pot-001,current,400\n");
        let down = (DAY0 + 12 * H..DAY0 + 18 * H).contains(&t);
        if !down {
            csv += &format!("{t},pot-002,voltage,4.0\n{t},pot-002,current,400\n");
        }
        if t < DAY0 + 24 * H {
            v1_sum += v1;
            v1_n += 1;
            if !down {
                v2_sum += 4.0;
                v2_n += 1;
            }
        }
        t += 10_000;
    }
    let input = dir.path().join("day.csv");
    std::fs::write(&input, csv).unwrap();
    let out_dir = dir.path().join("reports");
    let opts = ReplayOptions {
        report_dir: Some(out_dir.clone()),
        ..ReplayOptions::new(vec![input])
    };
    let report = run_replay(&cfg, &opts, &mut std::io::sink()).unwrap();
    assert_eq!(report.bad_rows, 0);
    // Two days of three files each: the whole day, and the partial next one.
    assert_eq!(report.report_files.len(), 6, "{:?}", report.report_files);
    let read = |day: &str, dev: &str| -> Value {
        let p = out_dir.join(day).join(format!("{dev}.json"));
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        schema_check("report", &v);
        v
    };
    let p1 = read("2026-11-28", "pot-001");
    assert_eq!(p1["partial"], false);
    assert_eq!(p1["from"], "2026-11-27T16:00:00.000Z");
    assert_eq!(p1["to"], "2026-11-28T16:00:00.000Z");
    // By hand (docs/REPORT.md): an effect is the alarm's active span, from 3 s (the on-delay)
    // after the first sample at 25 V to the first sample back at 4.2 V: 87 s and 37 s.
    let ae = &p1["anode_effects"];
    assert_eq!(ae["count"], 2);
    assert_eq!(ae["source"], "alarm");
    let minutes = (87.0 + 37.0) / 60.0;
    assert!(close(ae["minutes"].as_f64().unwrap(), minutes), "{ae}");
    assert!(close(ae["mean_duration_s"].as_f64().unwrap(), 62.0), "{ae}");
    assert!(close(ae["per_pot_day"].as_f64().unwrap(), 2.0));
    // Slope method: MP = I × 24 h × CE / 2980 Ah/kg; E = S × AEM × MP; CO2e = Σ E × GWP.
    let mp = 400.0 * 24.0 * 0.93 / 2980.0;
    let cf4 = 0.143 * minutes * mp;
    let c2f6 = 0.0173 * minutes * mp;
    let co2e = (cf4 * 7390.0 + c2f6 * 12200.0) / 1000.0;
    let pfc = &p1["pfc"];
    assert!(close(pfc["production_t"].as_f64().unwrap(), mp), "{pfc}");
    assert!(close(pfc["cf4_kg"].as_f64().unwrap(), cf4), "{pfc}");
    assert!(close(pfc["co2e_t"].as_f64().unwrap(), co2e), "{pfc}");
    // Energy: the mean of the good voltage samples through the summary's formula.
    let v1 = v1_sum / v1_n as f64;
    let e = &p1["energy"];
    assert!(close(e["voltage_mean_v"].as_f64().unwrap(), v1), "{e}");
    assert!(close(
        e["energy_ac_kwh_t"].as_f64().unwrap(),
        2980.0 * v1 / 0.93 / 0.98
    ));
    assert_eq!(e["benchmark_kwh_t"], 13000.0);
    assert_eq!(e["baseline_kwh_t"], 13350.0);
    assert_eq!(p1["coverage"]["share"], 1.0);
    // pot-002: no effect, and a 6-hour gap the coverage shows: each good sample covers the
    // time to the next one, at most 1 min (coverage_gap), so the last one before the gap
    // covers 50 s past 12:00.
    let p2 = read("2026-11-28", "pot-002");
    assert_eq!(p2["anode_effects"]["count"], 0);
    assert_eq!(p2["pfc"]["co2e_t"], 0.0);
    let share = p2["coverage"]["share"].as_f64().unwrap();
    assert!(close(share, (18.0 + 50.0 / 3600.0) / 24.0), "{share}");
    assert!(close(
        p2["energy"]["voltage_mean_v"].as_f64().unwrap(),
        v2_sum / v2_n as f64
    ));
    // The area: the sums over its cells.
    let a = read("2026-11-28", "_area");
    assert_eq!(
        (a["pots"].as_u64(), a["pot_days"].as_f64()),
        (Some(2), Some(2.0))
    );
    assert_eq!(a["anode_effects"]["count"], 2);
    assert!(close(
        a["anode_effects"]["per_pot_day"].as_f64().unwrap(),
        1.0
    ));
    assert!(close(a["pfc"]["co2e_t"].as_f64().unwrap(), co2e));
    assert!(close(a["pfc"]["production_t"].as_f64().unwrap(), 2.0 * mp));
    // The next day holds one sample: written, and marked partial.
    assert_eq!(read("2026-11-29", "pot-001")["partial"], true);
}

fn live_config(state: &Path, served: &Served, broker: std::net::SocketAddr) -> Config {
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[mqtt]
url = "mqtt://{broker}"

[alarms]
comm_loss = false

[report]
save_interval = "1s"

[[devices]]
name = "pot-1"
endpoint = "tcp://{addr}"
unit = 1
poll = "100ms"
timeout = "500ms"
tags = [
  {{ name = "voltage", table = "holding", address = 0, type = "u16", scale = 0.1, unit = "V" }},
  {{ name = "current", table = "holding", address = 1, type = "u16", unit = "kA" }},
]

[[rules]]
name = "anode_effect"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
priority = "critical"
"#,
        state = state.display(),
        addr = served.addr,
    );
    Config::from_str(Path::new("report.toml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn saved(state: &Path) -> Value {
    let text = std::fs::read_to_string(state.join("report-state.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Raises an anode effect on pot-1 and waits for its alarm to become active and clear.
async fn anode_effect(dev: &Device, sub: &mut Subscriber) {
    dev.set_holding(1, 0, &[250]);
    let on = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alarm/anode_effect") && m.json()["state"] == "active_unacked"
        })
        .await;
    assert!(on.is_some(), "no anode-effect alarm");
    tokio::time::sleep(Duration::from_millis(600)).await;
    dev.set_holding(1, 0, &[42]);
    let off = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alarm/anode_effect") && m.json()["state"] == "returned_unacked"
        })
        .await;
    assert!(off.is_some(), "the anode-effect alarm did not clear");
}

/// A restart in the middle of a day loses nothing of it: the partial day is in
/// `report-state.json` after a clean stop, the next run goes on from it, and a day that ended
/// while the agent was down is published, retained, when it starts.
#[test]
fn a_restart_keeps_the_partial_day_and_publishes_a_day_that_ended_meanwhile() {
    crate::support::harness::run_watched(async {
        let state_dir = tempfile::tempdir().unwrap();
        let state = state_dir.path().to_path_buf();
        let broker = crate::support::broker::embedded().await;
        let dev = Device::default();
        dev.set_holding(1, 0, &[42, 400]);
        let served = Served::start(dev.clone()).await;
        let mut sub =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "rep-1", "alsentry/#").await;

        // Run 1: one anode effect, then a clean stop.
        let running = alsentry::app::start(
            live_config(&state, &served, broker.addr),
            SystemClock::new(),
        )
        .await
        .unwrap();
        anode_effect(&dev, &mut sub).await;
        crate::support::harness::stop_checked(running).await;
        let s1 = saved(&state);
        assert_eq!(s1["version"], 1);
        let d1 = &s1["state"]["devices"]["pot-1"];
        assert_eq!(d1["alarm_ae"]["count"], 1, "{s1}");
        let n1 = d1["v_samples"].as_u64().unwrap();
        assert!(n1 > 5, "{s1}");

        // Run 2 on the same day: goes on from run 1 (a second effect: two in the day).
        let running = alsentry::app::start(
            live_config(&state, &served, broker.addr),
            SystemClock::new(),
        )
        .await
        .unwrap();
        anode_effect(&dev, &mut sub).await;
        crate::support::harness::stop_checked(running).await;
        let s2 = saved(&state);
        let d2 = &s2["state"]["devices"]["pot-1"];
        assert_eq!(s2["state"]["day"], s1["state"]["day"]);
        assert_eq!(d2["alarm_ae"]["count"], 2, "{s2}");
        let n2 = d2["v_samples"].as_u64().unwrap();
        assert!(n2 > n1, "samples of run 1 kept: {n2} after {n1}");

        // Down across midnight: the saved day is over when the agent starts again; its report
        // is published at start, retained, with both runs' figures.
        let mut s3 = s2.clone();
        s3["state"]["day"] = serde_json::json!({
            "date": "2026-01-01", "start": 1_767_225_600_000i64, "end": 1_767_312_000_000i64
        });
        std::fs::write(state.join("report-state.json"), s3.to_string()).unwrap();
        let running = alsentry::app::start(
            live_config(&state, &served, broker.addr),
            SystemClock::new(),
        )
        .await
        .unwrap();
        let mut late = Subscriber::connect(
            "127.0.0.1",
            broker.addr.port(),
            "rep-2",
            "alsentry/s/a/+/report/daily",
        )
        .await;
        let mut got = std::collections::BTreeMap::new();
        while got.len() < 2 {
            let m = late
                .wait_for(Duration::from_secs(10), |m| {
                    m.topic.ends_with("/report/daily")
                })
                .await
                .expect("the daily reports");
            got.insert(m.topic.clone(), m.json());
        }
        // Retained: a subscriber that comes later (the plant's, after a restart) gets it too.
        let mut later = Subscriber::connect(
            "127.0.0.1",
            broker.addr.port(),
            "rep-3",
            "alsentry/s/a/pot-1/report/daily",
        )
        .await;
        let kept = later
            .wait_for(Duration::from_secs(10), |m| m.retain)
            .await
            .expect("the retained report");
        assert_eq!(kept.json()["day"], "2026-01-01");
        crate::support::harness::stop_checked(running).await;
        let cell = &got["alsentry/s/a/pot-1/report/daily"];
        let area = &got["alsentry/s/a/_area/report/daily"];
        schema_check("report", cell);
        schema_check("report", area);
        assert_eq!(cell["day"], "2026-01-01");
        assert_eq!(cell["anode_effects"]["count"], 2);
        assert_eq!(cell["coverage"]["samples"].as_u64(), Some(n2));
        assert_eq!(area["anode_effects"]["count"], 2);
        // The new day started empty.
        let s4 = saved(&state);
        assert_ne!(s4["state"]["day"]["date"], "2026-01-01");
        assert_eq!(s4["state"]["devices"]["pot-1"]["alarm_ae"]["count"], 0);
    });
}

/// A crash (the runtime dropped without the shutdown path, as a power cut) loses at most
/// `save_interval` of the day: an anode effect seen more than that before the crash is in the
/// file the next start reads.
#[test]
fn a_crash_loses_at_most_the_save_interval() {
    let state_dir = tempfile::tempdir().unwrap();
    let state = state_dir.path().to_path_buf();
    let dev = Device::default();
    dev.set_holding(1, 0, &[42, 400]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let st = state.clone();
    rt.block_on(async move {
        let broker = crate::support::broker::embedded().await;
        let served = Served::start(dev.clone()).await;
        let mut sub =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "rep-c", "alsentry/#").await;
        let running =
            alsentry::app::start(live_config(&st, &served, broker.addr), SystemClock::new())
                .await
                .unwrap();
        anode_effect(&dev, &mut sub).await;
        // Saved by the periodic save (1 s here) while running, not by a stop.
        let t0 = std::time::Instant::now();
        let count = || {
            std::fs::read_to_string(st.join("report-state.json"))
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["state"]["devices"]["pot-1"]["alarm_ae"]["count"].as_u64())
        };
        while count() != Some(1) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "not saved while running"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Then gone without the shutdown path.
        std::mem::forget(running);
        std::mem::forget(served);
    });
    rt.shutdown_background();
    let s = saved(&state);
    assert_eq!(
        s["state"]["devices"]["pot-1"]["alarm_ae"]["count"], 1,
        "{s}"
    );
}
