//! `[[mqtt]] format = "sparkplug"` end to end, hermetic: an in-process Modbus device, the
//! embedded broker, the agent in-process, and a subscriber decoding what arrives with the
//! crate's codec (tests/interop/sparkplug.rs decodes with an independent library).

use std::time::Duration;

use alsentry::clock::SystemClock;
use alsentry::io::sparkplug::proto::{datatype, Metric, MetricValue, Payload};
use prost::Message as _;

use crate::support::broker::embedded;
use crate::support::harness::{polls_ok, wait_until};
use crate::support::modbus::Served;
use crate::support::mqtt::{Msg, Subscriber};
use crate::support::sparkplug::{serve, set, sparkplug_agent};

const WAIT: Duration = Duration::from_secs(15);

fn decode(m: &Msg) -> Payload {
    Payload::decode(m.payload.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", m.topic))
}

fn named<'a>(p: &'a Payload, name: &str) -> &'a Metric {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name}: {p:?}"))
}

/// The next message on `topic`, decoded.
async fn next_on(sub: &mut Subscriber, topic: &str) -> Payload {
    let m = sub
        .wait_for(WAIT, |m| m.topic == topic)
        .await
        .unwrap_or_else(|| panic!("nothing on {topic}"));
    decode(&m)
}

/// A DDATA of pot-1 whose `alias` metric has `value`.
async fn ddata_with(sub: &mut Subscriber, alias: Option<u64>, value: &MetricValue) -> Payload {
    let m = sub
        .wait_for(WAIT, |m| {
            m.topic == "spBv1.0/s/DDATA/gw/pot-1"
                && decode(m)
                    .metrics
                    .iter()
                    .any(|x| x.alias == alias && x.value.as_ref() == Some(value))
        })
        .await
        .unwrap_or_else(|| panic!("no DDATA with {value:?}"));
    decode(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_come_first_then_ddata_follows_the_modbus_values_and_a_rebirth_ncmd_works() {
    let dev = Served::start(serve(7.0, 3, 961.5)).await;
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "spsub", "spBv1.0/#").await;
    let state = tempfile::tempdir().unwrap();
    let sink = format!(
        "[mqtt]\nurl = \"{}\"\nformat = \"sparkplug\"\n",
        broker.url()
    );
    let cfg = sparkplug_agent(state.path(), &dev, &sink).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();

    // NBIRTH before anything else, with bdSeq 0 (a fresh state directory) and seq 0.
    // (Under load a first connection can be cut before its CONNACK, and the broker then
    // publishes its Will, NDEATH: allowed. No birth or data may come before the NBIRTH.)
    let mut before = Vec::new();
    let first = loop {
        let m = sub.wait_for(WAIT, |_| true).await.expect("an NBIRTH");
        if m.topic == "spBv1.0/s/NBIRTH/gw" {
            break m;
        }
        before.push(m.topic);
    };
    assert!(
        before.iter().all(|t| t == "spBv1.0/s/NDEATH/gw"),
        "before the NBIRTH: {before:?}"
    );
    // (The QoS as published is checked against Mosquitto, tests/interop/sparkplug.rs: the
    // embedded broker delivers at the subscription's QoS.)
    let nbirth = decode(&first);
    assert_eq!(nbirth.seq, Some(0));
    let bd = match named(&nbirth, "bdSeq").value {
        Some(MetricValue::LongValue(bd)) => bd,
        ref other => panic!("bdSeq {other:?}"),
    };
    // bdSeq 0 on a fresh state directory, one more per connection attempt before this one.
    if before.is_empty() {
        assert_eq!(bd, 0);
    }
    assert_eq!(
        named(&nbirth, "Node Control/Rebirth").value,
        Some(MetricValue::BooleanValue(false))
    );

    // DBIRTH with every metric, typed, with the served values.
    let dbirth = next_on(&mut sub, "spBv1.0/s/DBIRTH/gw/pot-1").await;
    assert_eq!(dbirth.seq, Some(1));
    let v = named(&dbirth, "voltage");
    assert_eq!(v.datatype, Some(datatype::DOUBLE));
    assert_eq!(v.value, Some(MetricValue::DoubleValue(7.0)));
    let count = named(&dbirth, "count");
    assert_eq!(count.datatype, Some(datatype::UINT16));
    assert_eq!(count.value, Some(MetricValue::IntValue(3)));
    let temp = named(&dbirth, "temp");
    assert_eq!(temp.datatype, Some(datatype::FLOAT));
    assert_eq!(temp.value, Some(MetricValue::FloatValue(961.5)));
    let alarm = named(&dbirth, "Alarms/hi");
    assert_eq!(alarm.value, Some(MetricValue::StringValue("normal".into())));

    // A change on the device: DDATA by alias with the new values.
    set(&dev.device, 9.0, 4, 962.25);
    let d = ddata_with(&mut sub, v.alias, &MetricValue::DoubleValue(9.0)).await;
    assert!(
        d.metrics.iter().all(|m| m.name.is_none()),
        "DATA carries aliases only"
    );
    assert!(d.seq.unwrap() >= 2);
    let new_temp = MetricValue::FloatValue(962.25);
    if !d
        .metrics
        .iter()
        .any(|m| m.alias == temp.alias && m.value.as_ref() == Some(&new_temp))
    {
        ddata_with(&mut sub, temp.alias, &new_temp).await;
    }
    // The alarm raised by it, with its ISA-18.2 state.
    ddata_with(
        &mut sub,
        alarm.alias,
        &MetricValue::StringValue("active_unacked".into()),
    )
    .await;

    // Node Control/Rebirth: NBIRTH again with the same bdSeq and seq 0, then the DBIRTH.
    let rebirth = Payload {
        metrics: vec![Metric {
            name: Some("Node Control/Rebirth".into()),
            datatype: Some(datatype::BOOLEAN),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    sub.publish("spBv1.0/s/NCMD/gw", &rebirth.encode_to_vec())
        .await;
    let again = next_on(&mut sub, "spBv1.0/s/NBIRTH/gw").await;
    assert_eq!(again.seq, Some(0));
    assert_eq!(
        named(&again, "bdSeq").value,
        Some(MetricValue::LongValue(bd))
    );
    let dbirth = next_on(&mut sub, "spBv1.0/s/DBIRTH/gw/pot-1").await;
    assert_eq!(
        named(&dbirth, "voltage").value,
        Some(MetricValue::DoubleValue(9.0))
    );

    // An operator command on DCMD: acknowledge the alarm by its alias.
    let ack_alias = named(&dbirth, "Alarms/hi/Ack").alias;
    let ack = Payload {
        metrics: vec![Metric {
            alias: ack_alias,
            datatype: Some(datatype::BOOLEAN),
            value: Some(MetricValue::BooleanValue(true)),
            ..Default::default()
        }],
        ..Default::default()
    };
    sub.publish("spBv1.0/s/DCMD/gw/pot-1", &ack.encode_to_vec())
        .await;
    ddata_with(
        &mut sub,
        alarm.alias,
        &MetricValue::StringValue("active_acked".into()),
    )
    .await;

    // A JSON operator command on NCMD: the engine's reply comes back as NDATA.
    let shelve = r#"{"op":"shelve","device":"pot-1","rule":"hi","by":"ops","duration":"1h","request_id":"r1"}"#;
    let cmd = Payload {
        metrics: vec![Metric {
            name: Some("Node Control/Command".into()),
            datatype: Some(datatype::STRING),
            value: Some(MetricValue::StringValue(shelve.into())),
            ..Default::default()
        }],
        ..Default::default()
    };
    sub.publish("spBv1.0/s/NCMD/gw", &cmd.encode_to_vec()).await;
    let reply_alias = named(&again, "Node Control/Command Reply").alias;
    let ndata = next_on(&mut sub, "spBv1.0/s/NDATA/gw").await;
    let Some(MetricValue::StringValue(reply)) = &ndata.metrics[0].value else {
        panic!("{ndata:?}")
    };
    assert_eq!(ndata.metrics[0].alias, reply_alias);
    let reply: serde_json::Value = serde_json::from_str(reply).unwrap();
    assert_eq!(
        (reply["ok"].as_bool(), reply["request_id"].as_str()),
        (Some(true), Some("r1"))
    );
    ddata_with(
        &mut sub,
        alarm.alias,
        &MetricValue::StringValue("shelved".into()),
    )
    .await;

    // Commands stay accepted on the agent's JSON command topic, answered there in JSON.
    let mut json = Subscriber::connect(
        "127.0.0.1",
        broker.addr.port(),
        "console",
        "alsentry/s/a/_agent/gw/cmd/reply",
    )
    .await;
    json.publish(
        "alsentry/s/a/_agent/gw/cmd",
        br#"{"op":"unshelve","device":"pot-1","rule":"hi","by":"ops","request_id":"j1"}"#,
    )
    .await;
    let r = json.wait_for(WAIT, |_| true).await.expect("a JSON reply");
    assert_eq!(r.json()["request_id"], "j1");
    assert_eq!(r.json()["ok"], true);

    // Comm loss: DDEATH; recovery: DBIRTH.
    dev.device.silence(1, true);
    next_on(&mut sub, "spBv1.0/s/DDEATH/gw/pot-1").await;
    dev.device.silence(1, false);
    next_on(&mut sub, "spBv1.0/s/DBIRTH/gw/pot-1").await;

    running.stop().await;
    // A clean stop says NDEATH with the bdSeq of the last NBIRTH.
    let death = next_on(&mut sub, "spBv1.0/s/NDEATH/gw").await;
    assert_eq!(death.seq, None);
    assert_eq!(
        named(&death, "bdSeq").value,
        Some(MetricValue::LongValue(bd))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_primary_host_is_offline_data_waits_and_arrives_historical_after() {
    let dev = Served::start(serve(7.0, 0, 20.0)).await;
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "host", "spBv1.0/#").await;
    let state_topic = "spBv1.0/STATE/scada";
    let state = |online: bool, ts: u64| format!(r#"{{"online":{online},"timestamp":{ts}}}"#);
    // The host's STATE is retained, as Sparkplug 3.0 says.
    sub.client
        .publish(state_topic, rumqttc::QoS::AtLeastOnce, true, state(true, 1))
        .await
        .unwrap();
    let st = tempfile::tempdir().unwrap();
    let sink = format!(
        "[mqtt]\nurl = \"{}\"\nformat = \"sparkplug\"\nprimary_host = \"scada\"\n",
        broker.url()
    );
    let cfg = sparkplug_agent(st.path(), &dev, &sink).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    let dbirth = next_on(&mut sub, "spBv1.0/s/DBIRTH/gw/pot-1").await;
    let count_alias = named(&dbirth, "count").alias;

    // The host goes offline; the device keeps changing.
    sub.client
        .publish(
            state_topic,
            rumqttc::QoS::AtLeastOnce,
            true,
            state(false, 2),
        )
        .await
        .unwrap();
    let outage: Vec<u16> = (10..16).collect();
    for &c in &outage {
        set(&dev.device, 7.0, c, 20.0);
        // Two polls each, so that every value is read.
        let from = polls_ok(&running, 0);
        wait_until(WAIT, "two polls", || polls_ok(&running, 0) >= from + 2).await;
    }
    // Nothing of the last value went out while the host was away.
    let last = MetricValue::IntValue(u32::from(*outage.last().unwrap()));
    let early = sub
        .wait_for(Duration::from_millis(300), |m| {
            m.topic.contains("DATA")
                && decode(m)
                    .metrics
                    .iter()
                    .any(|x| x.alias == count_alias && x.value.as_ref() == Some(&last))
        })
        .await;
    assert!(
        early.is_none(),
        "published while the primary host was offline"
    );

    // Back online: births first, then the backlog flagged historical, nothing lost.
    sub.client
        .publish(state_topic, rumqttc::QoS::AtLeastOnce, true, state(true, 3))
        .await
        .unwrap();
    let nbirth = next_on(&mut sub, "spBv1.0/s/NBIRTH/gw").await;
    assert_eq!(nbirth.seq, Some(0));
    let mut seen: Vec<u32> = Vec::new();
    let mut historical = 0;
    while seen.last() != Some(&u32::from(*outage.last().unwrap())) {
        let m = sub
            .wait_for(WAIT, |m| m.topic == "spBv1.0/s/DDATA/gw/pot-1")
            .await
            .unwrap_or_else(|| panic!("the backlog stopped at {seen:?}"));
        for x in decode(&m).metrics {
            if x.alias == count_alias {
                if let Some(MetricValue::IntValue(c)) = x.value {
                    seen.push(c);
                    if x.is_historical == Some(true) {
                        historical += 1;
                    }
                }
            }
        }
    }
    for c in &outage[1..] {
        assert!(seen.contains(&u32::from(*c)), "{c} lost: {seen:?}");
    }
    assert!(
        historical >= outage.len() - 1,
        "{historical} historical of {seen:?}"
    );
    running.stop().await;
}

/// A metric value as a report figure (the datatypes the report declares).
fn as_figure(m: &Metric) -> Option<alsentry::core::report::Figure> {
    use alsentry::core::report::Figure;
    if m.is_null == Some(true) {
        return None;
    }
    match (m.datatype?, m.value.as_ref()?) {
        (datatype::STRING, MetricValue::StringValue(s)) => Some(Figure::Text(s.clone())),
        (datatype::UINT64, MetricValue::LongValue(x)) => Some(Figure::U64(*x)),
        (datatype::DOUBLE, MetricValue::DoubleValue(x)) => Some(Figure::F64(*x)),
        (datatype::BOOLEAN, MetricValue::BooleanValue(b)) => Some(Figure::Bool(*b)),
        other => panic!("{} has {other:?}", m.name.as_deref().unwrap_or("?")),
    }
}

/// What a host knows of one edge node or device: the last value of every metric by name.
#[derive(Default)]
struct Host {
    names: std::collections::HashMap<u64, String>,
    values: std::collections::HashMap<String, Option<alsentry::core::report::Figure>>,
}

impl Host {
    fn take(&mut self, p: &Payload) {
        for m in &p.metrics {
            if let (Some(n), Some(a)) = (&m.name, m.alias) {
                self.names.insert(a, n.clone());
            }
            let name = m
                .name
                .clone()
                .or_else(|| m.alias.and_then(|a| self.names.get(&a).cloned()));
            if let Some(n) = name.filter(|n| n.starts_with("report/daily/")) {
                self.values.insert(n, as_figure(m));
            }
        }
    }

    /// Every figure of the JSON report, with the same value (and nothing else set).
    fn matches(&self, json: &serde_json::Value) -> bool {
        let want = alsentry::core::report::figures_of_payload(json).expect("a report");
        want.iter()
            .all(|(n, f)| self.values.get(n) == Some(&Some(f.clone())))
            && self.values.values().flatten().count() == want.len()
    }
}

/// Issue 20: with a Sparkplug sink, a day's report goes out as metrics with the JSON report's
/// values: the cell's figures as pot-1's device metrics, the area's as node metrics, typed.
/// The day closed while the agent was down (as in it::report), so it is published at start,
/// through both sinks' outboxes, a JSON and a Sparkplug sink on one broker.
#[test]
fn a_day_s_report_arrives_as_metrics_with_the_json_report_s_values() {
    crate::support::harness::run_watched(async {
        let device = serve(4.2, 3, 961.5);
        let dev = Served::start(device.clone()).await;
        let broker = embedded().await;
        let state = tempfile::tempdir().unwrap();
        let sinks = format!(
            "[[mqtt]]\nname = \"json\"\nurl = \"{0}\"\n[[mqtt]]\nname = \"sp\"\nurl = \"{0}\"\nformat = \"sparkplug\"\n",
            broker.url()
        );
        let cfg = || sparkplug_agent(state.path(), &dev, &sinks).build();

        // Run 1: some samples of the day, saved at a clean stop.
        let mut sub =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "sprep1", "spBv1.0/#").await;
        let running = alsentry::app::start(cfg(), SystemClock::new())
            .await
            .unwrap();
        next_on(&mut sub, "spBv1.0/s/DBIRTH/gw/pot-1").await;
        // A change (data go out by exception): batches after the birth's have been polled.
        set(&device, 4.3, 3, 961.5);
        next_on(&mut sub, "spBv1.0/s/DDATA/gw/pot-1").await;
        crate::support::harness::stop_checked(running).await;
        let file = state.path().join("report-state.json");
        let mut saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(
            saved["state"]["devices"]["pot-1"]["v_samples"].as_u64() > Some(0),
            "{saved}"
        );
        // Down across midnight: that day is over when the agent starts again.
        saved["state"]["day"] = serde_json::json!({
            "date": "2026-01-01", "start": 1_767_225_600_000i64, "end": 1_767_312_000_000i64
        });
        std::fs::write(&file, saved.to_string()).unwrap();

        // Run 2: the JSON reports (retained) and the Sparkplug metrics.
        let mut sp =
            Subscriber::connect("127.0.0.1", broker.addr.port(), "sprep2", "spBv1.0/#").await;
        let running = alsentry::app::start(cfg(), SystemClock::new())
            .await
            .unwrap();
        let mut json = Subscriber::connect(
            "127.0.0.1",
            broker.addr.port(),
            "sprep3",
            "+/+/+/+/report/daily",
        )
        .await;
        let mut reports = std::collections::BTreeMap::new();
        while reports.len() < 2 {
            let m = json
                .wait_for(WAIT, |m| m.topic.ends_with("/report/daily"))
                .await
                .expect("the JSON reports");
            let device = m.json()["device"].as_str().unwrap_or_default().to_string();
            reports.insert(device, m.json());
        }
        let (cell, area) = (&reports["pot-1"], &reports["_area"]);
        assert_eq!(cell["day"], "2026-01-01");
        let (mut node, mut pot) = (Host::default(), Host::default());
        let deadline = tokio::time::Instant::now() + WAIT;
        while !(node.matches(area) && pot.matches(cell)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no metrics equal to the JSON"
            );
            let Some(m) = sub_next(&mut sp, deadline).await else {
                continue;
            };
            match m.topic.as_str() {
                "spBv1.0/s/NBIRTH/gw" | "spBv1.0/s/NDATA/gw" => node.take(&decode(&m)),
                "spBv1.0/s/DBIRTH/gw/pot-1" | "spBv1.0/s/DDATA/gw/pot-1" => pot.take(&decode(&m)),
                _ => {}
            }
        }
        // Typed as declared: a count is UInt64, the day a String.
        assert_eq!(
            pot.values["report/daily/anode_effects/count"],
            Some(alsentry::core::report::Figure::U64(
                cell["anode_effects"]["count"].as_u64().unwrap()
            ))
        );
        crate::support::harness::stop_checked(running).await;
    });
}

async fn sub_next(sub: &mut Subscriber, deadline: tokio::time::Instant) -> Option<Msg> {
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    sub.wait_for(left, |_| true).await
}
