//! The engine side of the agent end to end: what leaves it, per sink.

use std::time::Duration;

use crate::support::modbus::{f32_words, Device, Served};
use crate::support::mqtt::Subscriber;
use alsentry::broker::EmbeddedBroker;
use alsentry::clock::SystemClock;
use alsentry::config::Config;

async fn broker() -> EmbeddedBroker {
    crate::support::broker::embedded().await
}

/// An engine task on `cfg` with its inputs, as `app` wires one: its data and alarm messages go
/// to the one sink channel returned, batches in through the sender returned.
struct EngineUnderTest {
    task: alsentry::app::engine::EngineTask,
    inputs: alsentry::app::engine::Inputs,
    batches: tokio::sync::mpsc::Sender<alsentry::core::engine::SampleBatch>,
    sink: tokio::sync::mpsc::Receiver<std::sync::Arc<alsentry::io::publisher::Message>>,
    /// Held, not used: a dropped sender makes its `recv()` arm of the engine's `select!` ready
    /// with `None` on every turn, and the loop spins; the reload receiver is held so that the
    /// engine's reload requests do not fail.
    _held: Vec<Box<dyn std::any::Any + Send>>,
}

fn engine_under_test(
    cfg: &Config,
    state: &std::path::Path,
    clock: std::sync::Arc<dyn alsentry::clock::Clock>,
    metrics: std::sync::Arc<alsentry::metrics::Metrics>,
    recorder: Option<alsentry::io::record::Recorder>,
    batch_room: usize,
) -> EngineUnderTest {
    use alsentry::app::engine::{EngineTask, Inputs, Outlets, Shared};
    use alsentry::core::engine::Engine;
    use alsentry::io::http::AlarmSnapshot;
    use alsentry::io::seq::SeqLease;
    use tokio::sync::{mpsc, watch};

    let (sink_tx, sink) = mpsc::channel(1024);
    let (batches, batch_rx) = mpsc::channel(batch_room);
    let (commands, command_rx) = mpsc::channel(1);
    let (control, control_rx) = mpsc::channel(1);
    let (reloads, reload_rx) = mpsc::channel(1);
    let task = EngineTask::new(
        cfg,
        Engine::new(&cfg.spec),
        SeqLease::open(state, Default::default(), 0).unwrap(),
        Outlets::new(cfg, vec![sink_tx]),
        Shared {
            clock,
            metrics,
            alarms: watch::channel(AlarmSnapshot::default()).0,
            recorder,
            reloads,
            history: None,
            pulse: alsentry::io::health::Pulse::new(Default::default(), Default::default()),
            report: None,
        },
    );
    let inputs = Inputs {
        batches: batch_rx,
        commands: command_rx,
        control: control_rx,
        queries: mpsc::channel(1).1,
    };
    EngineUnderTest {
        task,
        inputs,
        batches,
        sink,
        _held: vec![Box::new(commands), Box::new(control), Box::new(reload_rx)],
    }
}

/// Regression: raw data went out under the first sink's `topic_root` on every sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_data_reaches_each_sink_under_its_own_topic_root() {
    let cells = Served::start(Device::default()).await;
    cells.device.set_input(1, 0, &f32_words(4.25, "ABCD"));
    let (plant, province) = (broker().await, broker().await);
    let mut plant_sub = Subscriber::connect("127.0.0.1", plant.addr.port(), "plant-sub", "#").await;
    let mut province_sub =
        Subscriber::connect("127.0.0.1", province.addr.port(), "prov-sub", "#").await;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[[mqtt]]
name = "plant"
url = "{plant}"
topic_root = "plant"

[[mqtt]]
name = "province"
url = "{province}"
topic_root = "province"

[data]
mode = "poll"

[[devices]]
name = "pot-001"
endpoint = "tcp://{cells}"
unit = 1
poll = "100ms"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]
"#,
        state = state.path().display(),
        plant = plant.url(),
        province = province.url(),
        cells = cells.addr,
    );
    let cfg = Config::from_str(std::path::Path::new("two-roots.toml"), &text).unwrap();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let w = Duration::from_secs(10);
    let is_data = |m: &crate::support::mqtt::Msg| m.topic.ends_with("/pot-001/data");
    let on_plant = plant_sub.wait_for(w, is_data).await.expect("data on plant");
    let on_province = province_sub
        .wait_for(w, is_data)
        .await
        .expect("data on province");
    running.stop().await;
    assert_eq!(on_plant.topic, "plant/s/a/pot-001/data");
    assert_eq!(on_province.topic, "province/s/a/pot-001/data");
    for m in [&on_plant, &on_province] {
        assert_eq!(m.json()["values"]["voltage"]["v"], 4.25, "{}", m.topic);
    }
}

/// Live and replay drive the engine the same way (one driver: batching, tick grid). Batches go
/// through the real engine task with `[record]` on, on a manual clock at each batch's source
/// time; replaying the recording gives byte for byte the alarm payloads published live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_to_the_alarm_payloads_published_live() {
    use alsentry::clock::ManualClock;
    use alsentry::core::engine::SampleBatch;
    use alsentry::core::model::{BadReason, Quality};
    use alsentry::metrics::Metrics;
    use alsentry::replay::{run_replay, ReplayOptions};

    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[mqtt]
url = "mqtt://127.0.0.1:1"

[data]
mode = "poll"

[alarms]
comm_loss_delay = "1s"

[record]
dir = "{state}/record"
max_size = "8KiB"
max_files = 1000

[[devices]]
name = "pot-{{unit:03}}"
endpoint = "tcp://127.0.0.1:1"
units = "1-2"
poll = "100ms"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]

[[rules]]
name = "anode_effect"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "1s"
off_delay = "2s"
priority = "critical"

[[rules]]
name = "voltage_high"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 6.0
"#,
        state = state.path().display()
    );
    let cfg = Config::from_str(std::path::Path::new("rec.toml"), &text).unwrap();
    let rc = cfg.record.clone().unwrap();
    let t0: i64 = 1_767_225_600_000;
    let clock = ManualClock::new(t0);
    let (recorder, writer) = alsentry::io::record::recorder(&rc, &cfg, 4096);
    let writer = tokio::task::spawn_blocking(move || writer.run());
    let metrics = Metrics::new(cfg.devices.iter().map(|d| d.name.clone()), []);
    let EngineUnderTest {
        task,
        inputs,
        batches: batch_tx,
        mut sink,
        _held,
    } = engine_under_test(
        &cfg,
        state.path(),
        clock.clone(),
        metrics,
        Some(recorder),
        16,
    );
    let engine = tokio::spawn(task.run(inputs, tokio_util::sync::CancellationToken::new()));

    // 60 s at 10 Hz, the two cells 37 ms apart: an anode effect on pot-001 (5-12 s); on pot-002
    // a spike shorter than the on-delay (20.0-20.7 s), then an effect with a short dip the
    // off-delay rides through (30-45 s, dip 38.0-38.5 s) and a silent spell (50-52 s).
    let volts = |unit: u8, s: f64| -> (f64, Quality) {
        let high = match unit {
            1 => (5.0..12.0).contains(&s),
            _ => {
                (20.0..20.7).contains(&s)
                    || ((30.0..45.0).contains(&s) && !(38.0..38.5).contains(&s))
            }
        };
        if unit == 2 && (50.0..52.0).contains(&s) {
            return (f64::NAN, Quality::Bad(BadReason::Timeout));
        }
        (if high { 9.5 } else { 4.2 }, Quality::Good)
    };
    let mut live = Vec::new();
    for step in 0..600i64 {
        for unit in 1..=2u8 {
            let ts = t0 + step * 100 + i64::from(unit - 1) * 37;
            let (v, q) = volts(unit, (ts - t0) as f64 / 1000.0);
            // Live evaluates on arrival; here arrival is the source time.
            clock.set(ts);
            let batch = SampleBatch {
                device: u32::from(unit - 1),
                ts,
                values: vec![(0, v, q)],
            };
            batch_tx.send(batch).await.unwrap();
            // The batch's raw data is its readiness signal: it has been applied.
            loop {
                let m = tokio::time::timeout(Duration::from_secs(5), sink.recv())
                    .await
                    .expect("the engine keeps up")
                    .unwrap();
                if m.topic.ends_with("/data") {
                    break;
                }
                live.push(m);
            }
        }
    }
    drop(batch_tx);
    tokio::time::timeout(Duration::from_secs(10), engine)
        .await
        .unwrap()
        .unwrap();
    while let Ok(m) = sink.try_recv() {
        live.push(m);
    }
    writer.await.unwrap();
    let live: Vec<String> = live
        .iter()
        .filter(|m| m.topic.contains("/alarm/"))
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let states: Vec<String> = live
        .iter()
        .map(|p| {
            let j: serde_json::Value = serde_json::from_str(p).unwrap();
            format!("{} {} {}", j["device"], j["rule"], j["state"])
        })
        .collect();
    // What the scenario must raise, so that the comparison below compares something.
    assert!(
        states.iter().filter(|s| s.contains("anode_effect")).count() >= 4
            && states.iter().any(|s| s.contains("comm_loss")),
        "{states:#?}"
    );

    let mut out = Vec::new();
    let report = run_replay(
        &cfg,
        &ReplayOptions::new(vec![state.path().join("record")]),
        &mut out,
    )
    .unwrap();
    assert_eq!(report.bad_rows, 0, "{:?}", report.problems);
    assert!(report.files > 1, "the recording rotated");
    // The same payloads, byte for byte, but for the ids: replay has its own (issue 15).
    let replayed: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| l.replace("\"id\":\"gw-replay-", "\"id\":\"gw-"))
        .collect();
    assert_eq!(replayed, live);
}

/// A 16-tag cell of float32 registers read in one request (issue 22's harness): tag name,
/// unit, value.
const CELL16: [(&str, &str, f32); 16] = [
    ("voltage", "V", 4.123),
    ("current", "kA", 502.7445),
    ("bath_temp", "degC", 957.3),
    ("alumina", "wt%", 2.45),
    ("resistance", "uOhm", 4.9187),
    ("noise", "mV", 12.6),
    ("beam", "mm", 183.25),
    ("superheat", "degC", 8.7),
    ("liquidus", "degC", 948.6),
    ("metal_height", "cm", 21.4),
    ("bath_height", "cm", 18.9),
    ("anode_drop", "mV", 312.5),
    ("cathode_drop", "mV", 287.1),
    ("shell_temp", "degC", 312.8),
    ("feed_rate", "kg/h", 31.75),
    ("ae_frequency", "1/d", 0.05),
];

/// Bytes of an MQTT 3.1.1 QoS 0 PUBLISH: fixed header, topic, payload.
fn publish_bytes(topic: &str, payload: usize) -> usize {
    let rest = 2 + topic.len() + payload;
    let varint = match rest {
        0..=127 => 1,
        128..=16_383 => 2,
        _ => 3,
    };
    1 + varint + rest
}

fn ts_ms(rfc3339: &str) -> i64 {
    let t = humantime::parse_rfc3339(rfc3339).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Issue 22: `data_payload = "compact"` on the provincial sink. Through the embedded broker a
/// subscriber gets the retained meta and the compact messages and rebuilds from them exactly
/// the values the plant sink's full payload carries for the same polls (the simulator's cell
/// on the shipped template, and a 16-float32 cell); the meta is sent again when the sink
/// reconnects, stays retained for a late subscriber, and neither sink gets the other's form.
/// Prints what each form costs per message (docs/MQTT.md quotes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_data_and_its_retained_meta_rebuild_the_full_values_through_the_broker() {
    use crate::support::agent::{Agent, Dev};
    use crate::support::delivery::schema_check;
    use crate::support::net::Proxy;
    use alsentry::core::compact::expand;
    use std::collections::HashMap;

    let sim = crate::support::harness::start_sim(
        r#"
[plant]
seed = 42
tick = "100ms"
line_current_ka = 500.0
[[groups]]
id = "potline"
kind = "cell"
name = "pot-{unit:03}"
listen = "127.0.0.1:5020"
units = "1"
"#,
    )
    .await;
    let cell16 = Served::start(Device::default()).await;
    for (i, (_, _, v)) in CELL16.iter().enumerate() {
        cell16
            .device
            .set_input(1, 2 * i as u16, &f32_words(*v, "ABCD"));
    }
    let tags: Vec<String> = CELL16
        .iter()
        .enumerate()
        .map(|(i, (name, unit, _))| {
            format!(
                "{{ name = \"{name}\", table = \"input\", address = {}, type = \"f32\", unit = \"{unit}\" }}",
                2 * i
            )
        })
        .collect();
    let (plant, province) = (broker().await, broker().await);
    let province_link = Proxy::start(province.addr).await;
    let mut plant_sub = Subscriber::connect("127.0.0.1", plant.addr.port(), "plant-sub", "#").await;
    let mut province_sub =
        Subscriber::connect("127.0.0.1", province.addr.port(), "prov-sub", "#").await;
    let state = tempfile::tempdir().unwrap();
    let cfg = Agent::new("gw-qz-01")
        .at("qingzhen", "potline-1")
        .state_dir(state.path())
        .shipped_templates()
        .sinks(&format!(
            "[[mqtt]]\nname = \"plant\"\nurl = \"{}\"\n\n[[mqtt]]\nname = \"province\"\nurl = \"mqtt://{}\"\ndata_payload = \"compact\"\n",
            plant.url(),
            province_link.addr
        ))
        .section("[data]\nmode = \"poll\"")
        .device(Dev::sim(&sim, "pot-001").poll("250ms"))
        .device(
            Dev::tcp("pot-016", cell16.addr)
                .unit(1)
                .poll("250ms")
                .tags(&format!("[ {} ]", tags.join(", "))),
        )
        .build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let w = Duration::from_secs(10);
    let devices = ["pot-001", "pot-016"];
    let meta_topic = |d: &str| format!("alsentry/qingzhen/potline-1/{d}/data/meta");
    let metas = province_sub
        .wait_all(w, &devices.map(meta_topic).each_ref().map(String::as_str))
        .await;
    let got =
        crate::support::harness::collect_timed(&mut province_sub, Duration::from_secs(3)).await;
    let full =
        crate::support::harness::collect_timed(&mut plant_sub, Duration::from_millis(500)).await;

    // Every compact message rebuilds to the full payload of the same poll.
    let mut fulls: HashMap<(String, i64), serde_json::Value> = HashMap::new();
    let mut full_bytes: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (_, m) in &full {
        assert!(
            !m.topic.contains("/data/"),
            "the plant sink takes the full form only: {}",
            m.topic
        );
        if let Some(d) = m
            .topic
            .strip_suffix("/data")
            .and_then(|t| t.rsplit('/').next())
        {
            let j = m.json();
            schema_check("data", &j);
            fulls.insert((d.to_string(), ts_ms(j["ts"].as_str().unwrap())), j);
            full_bytes
                .entry(d.to_string())
                .or_default()
                .push((m.payload.len(), publish_bytes(&m.topic, m.payload.len())));
        }
    }
    let mut matched: HashMap<String, usize> = HashMap::new();
    let mut compact_bytes: HashMap<String, Vec<(usize, usize)>> = HashMap::new();
    for (_, m) in &got {
        assert!(
            !m.topic.ends_with("/data"),
            "the province sink takes the compact form only"
        );
        let Some(d) = m
            .topic
            .strip_suffix("/data/compact")
            .and_then(|t| t.rsplit('/').next())
        else {
            continue;
        };
        let j = m.json();
        schema_check("data-compact", &j);
        compact_bytes
            .entry(d.to_string())
            .or_default()
            .push((m.payload.len(), publish_bytes(&m.topic, m.payload.len())));
        let meta = &metas[&meta_topic(d)];
        let values = expand(&meta.payload, &m.payload).unwrap_or_else(|e| panic!("{d}: {e}"));
        if let Some(f) = fulls.get(&(d.to_string(), j["ts"].as_i64().unwrap())) {
            assert_eq!(serde_json::Value::Object(values), f["values"], "{d}");
            *matched.entry(d.to_string()).or_default() += 1;
        }
    }
    for d in devices {
        let meta = metas[&meta_topic(d)].json();
        schema_check("data-meta", &meta);
        assert_eq!(meta["device"], d);
        assert!(
            matched.get(d).copied().unwrap_or(0) >= 3,
            "{d}: only {matched:?} compact messages matched a full one"
        );
    }
    let cell16_meta = metas[&meta_topic("pot-016")].json();
    let names: Vec<&str> = cell16_meta["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, CELL16.map(|t| t.0));

    // The link drops and comes back: the sink sends every meta again, ahead of the data.
    province_link.set_up(false);
    province_link.set_up(true);
    let again = province_sub
        .wait_for(w, |m| m.topic == meta_topic("pot-016"))
        .await
        .expect("the meta again after the reconnect");
    assert_eq!(again.payload, metas[&meta_topic("pot-016")].payload);
    running.stop().await;

    // Retained: a consumer that connects later gets every meta at once.
    let mut late = Subscriber::connect(
        "127.0.0.1",
        province.addr.port(),
        "late-sub",
        "alsentry/+/+/+/data/meta",
    )
    .await;
    // The broker sends retained messages in its own order: take them all, then look.
    let retained = late
        .wait_all(w, &devices.map(meta_topic).each_ref().map(String::as_str))
        .await;
    for d in devices {
        assert!(retained[&meta_topic(d)].retain, "{d}");
    }

    println!("bytes per data message (payload / MQTT 3.1.1 QoS 0 PUBLISH with topic), mean:");
    let mean = |xs: &[(usize, usize)], f: fn(&(usize, usize)) -> usize| {
        xs.iter().map(f).sum::<usize>() as f64 / xs.len().max(1) as f64
    };
    for (d, what) in [
        ("pot-001", "cell template (27 tags, simulator values)"),
        ("pot-016", "16 float32 tags"),
    ] {
        let (f, c) = (&full_bytes[d], &compact_bytes[d]);
        let (fp, fw, cp, cw) = (
            mean(f, |x| x.0),
            mean(f, |x| x.1),
            mean(c, |x| x.0),
            mean(c, |x| x.1),
        );
        println!(
            "  {what}: full {fp:.0} / {fw:.0}, compact {cp:.0} / {cw:.0}: {:.0} % / {:.0} % of full ({} and {} messages); meta {} bytes once",
            100.0 * cp / fp,
            100.0 * cw / fw,
            f.len(),
            c.len(),
            metas[&meta_topic(d)].payload.len()
        );
        assert!(
            cw < fw / 2.0,
            "{what}: compact {cw} is not under half of {fw}"
        );
    }
}

/// Polls answered together cost the engine a turn or two, not one each: when the first of a
/// burst of batches wakes it, the engine lets the other pollers of that wake-up run first, and
/// their data messages leave together. Without that yield the runtime switched to the engine
/// after nearly every poller, a turn and an MQTT write per poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn batches_of_pollers_woken_together_share_one_engine_turn() {
    use std::sync::atomic::Ordering;

    use alsentry::core::engine::SampleBatch;
    use alsentry::core::model::Quality;
    use alsentry::metrics::Metrics;

    const POLLERS: u32 = 40;
    let state = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[agent]
id = "gw"
site = "s"
area = "a"
state_dir = "{state}"

[mqtt]
url = "mqtt://127.0.0.1:1"

[data]
mode = "poll"

[[devices]]
name = "pot-{{unit:03}}"
endpoint = "tcp://127.0.0.1:1"
units = "1-{POLLERS}"
poll = "1s"
tags = [ {{ name = "voltage", table = "input", address = 0, type = "f32", unit = "V" }} ]

[[rules]]
name = "anode_effect"
devices = ["pot-*"]
tag = "voltage"
type = "high"
limit = 8.0
"#,
        state = state.path().display()
    );
    let cfg = Config::from_str(std::path::Path::new("turns.toml"), &text).unwrap();
    let metrics = Metrics::new(cfg.devices.iter().map(|d| d.name.clone()), []);
    // Room for every batch of the burst (`app` gives its engine 4096).
    let EngineUnderTest {
        task,
        inputs,
        batches: batch_tx,
        mut sink,
        _held,
    } = engine_under_test(
        &cfg,
        state.path(),
        SystemClock::new(),
        metrics.clone(),
        None,
        256,
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let engine = tokio::spawn(task.run(inputs, cancel.clone()));

    // Rounds of pollers woken by one event (as replies read in one turn of the IO driver),
    // each sending its batch the way a poller does: without waiting.
    const ROUNDS: u64 = 5;
    let clock = SystemClock::new();
    let now = || alsentry::clock::Clock::now(&*clock);
    let before = metrics.engine_turns.load(Ordering::Relaxed);
    let started = now();
    for _ in 0..ROUNDS {
        let go = std::sync::Arc::new(tokio::sync::Notify::new());
        let mut pollers = Vec::new();
        for device in 0..POLLERS {
            let (armed, tx) = (go.clone().notified_owned(), batch_tx.clone());
            let ts = now();
            pollers.push(tokio::spawn(async move {
                armed.await;
                tx.try_send(SampleBatch {
                    device,
                    ts,
                    values: vec![(0, 4.2, Quality::Good)],
                })
                .map_err(|_| "the engine's channel is full")
            }));
        }
        // Woken from a task on the runtime's worker, as the IO driver wakes pollers there.
        tokio::spawn(async move { go.notify_waiters() });
        let mut data = 0;
        while data < POLLERS {
            let m = tokio::time::timeout(Duration::from_secs(5), sink.recv())
                .await
                .expect("every batch's data message")
                .unwrap();
            if m.topic.ends_with("/data") {
                data += 1;
            }
        }
        for p in pollers {
            p.await.unwrap().unwrap();
        }
    }
    // Stopped, the engine has counted its last turn (it counts a turn at its end).
    cancel.cancel();
    engine.await.unwrap();
    let turns = metrics.engine_turns.load(Ordering::Relaxed) - before;
    // The engine also turns on its 250 ms grid tick: one more turn for each grid step the
    // rounds spanned (a tick may fire a few ms late, hence the margin before the start).
    let tick = alsentry::core::driver::TICK_MS;
    let ticks = (now() / tick - (started - 20) / tick) as u64;
    // A burst takes one turn, or two when some pollers run only after the engine's yield
    // (measured: 8 turns for 5 rounds with the yield, 162 without).
    assert!(
        turns <= 2 * ROUNDS + ticks,
        "{ROUNDS} rounds of {POLLERS} batches sent together took {turns} engine turns ({ticks} grid ticks)"
    );
}
