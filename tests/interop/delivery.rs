//! Delivery through Mosquitto, a broker nobody here wrote: a one-minute outage, the broker
//! killed with SIGKILL, raw data at the QoS it was published with (the embedded rumqttd
//! delivers at the subscription's QoS, hiding it), mutual TLS with a CA made by openssl, and
//! MQTT 5 properties. The hermetic part of the subject is tests/it/delivery.rs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alsentry::clock::{Clock, SystemClock};
use alsentry::io::publisher::Message;
use alsentry::metrics::Metrics;
use alsentry::outbox::{Class, Outbox, OutboxOptions};

use crate::support::agent::Agent;
use crate::support::delivery::{
    all_acked, assert_consecutive, collect, msg, one_cell_agent, seqs, set_volts,
    settled_transitions, sink_task, toggle, ALARMS,
};
use crate::support::harness::wait_until;
use crate::support::modbus::{Device, Served};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::{Msg, Subscriber};
use crate::support::net::{free_port, wait_port, Proxy};
use crate::support::tools::require;

// (2) Broker unreachable for ~12 s while alarms change; all delivered in order afterwards.
// Long enough for several attempts at the capped backoff (reconnect_max 2 s); that a longer
// outage changes nothing (attempts stay at the cap, the backlog is replayed the same way) is
// the session's pure test `a_long_outage_retries_at_the_capped_backoff_then_recovers`, which
// replaced the minute this test used to wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn a_broker_outage_loses_nothing_and_keeps_the_order() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mosq = Mosquitto::start(dir.path(), port, "");
    // The agent reaches Mosquitto through a proxy the test can cut; the subscriber does not.
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let mut sub = Subscriber::connect("127.0.0.1", port, "sub2", ALARMS).await;
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreconnect_max = \"2s\"\nkeep_alive = \"5s\"\n",
        proxy.addr
    );
    let cfg = one_cell_agent(dir.path(), &dev, &sinks, 3).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    toggle(&dev.device, 3, Duration::from_millis(300)).await;
    let before = settled_transitions(&running.metrics).await;
    let got = collect(&mut sub, Duration::from_secs(10), |g| {
        g.len() as u64 >= before
    })
    .await;
    assert_eq!(got.len() as u64, before, "before the outage");
    all_acked(&running.metrics, 0).await;

    proxy.set_up(false);
    let down_at = alsentry::clock::wall_ms();
    let outage = Instant::now();
    // Alarm activity through the whole outage: a burst at the start and one at the end.
    toggle(&dev.device, 8, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(outage.elapsed())).await;
    toggle(&dev.device, 8, Duration::from_millis(300)).await;
    let total = settled_transitions(&running.metrics).await;
    assert!(total >= before + 80, "{total} transitions");
    let during = collect(&mut sub, Duration::from_millis(100), |_| false).await;
    assert!(during.is_empty(), "delivered through a cut proxy?");
    assert!(!running.metrics.sinks[0].connected.load(Ordering::Relaxed));
    assert!(
        running.metrics.sinks[0]
            .outbox_depth
            .load(Ordering::Relaxed)
            > 0
    );
    proxy.set_up(true);
    let up_at = Instant::now();

    let after = collect(&mut sub, Duration::from_secs(30), |g| {
        g.len() as u64 >= total - before
    })
    .await;
    let all: Vec<Msg> = got.iter().chain(after.iter()).cloned().collect();
    let s = seqs(&all);
    assert_eq!(s.len() as u64, total, "received {} of {total}", s.len());
    assert_consecutive(&s);
    for m in &after {
        let j = m.json();
        let ts = alsentry::clock::parse_ts(j["ts"].as_str().unwrap()).unwrap();
        assert!(ts >= down_at, "an old transition resent: {j}");
        assert_eq!(j["replayed"], true, "backlog not flagged: {j}");
    }
    eprintln!(
        "(2) {} backlog transitions delivered {:?} after a {:?} outage; total {:?}",
        after.len(),
        up_at.elapsed(),
        up_at - outage,
        t0.elapsed()
    );
    running.stop().await;
}

// (2b) The broker killed with SIGKILL (no clean disconnect, nothing persisted) while alarms
// change, then started again: every transition since the kill arrives, in order, after the
// same seq the subscriber saw last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn a_broker_killed_with_sigkill_loses_no_alarm() {
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut mosq = Mosquitto::start(dir.path(), port, "");
    // The agent goes through a proxy so that, after the restart, it reconnects only once the
    // new subscriber is in place; the proxy stays up across the kill.
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let mut sub = Subscriber::connect("127.0.0.1", port, "sub2b", ALARMS).await;
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let sinks = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreconnect_max = \"2s\"\nkeep_alive = \"5s\"\n",
        proxy.addr
    );
    let cfg = one_cell_agent(dir.path(), &dev, &sinks, 3).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    toggle(&dev.device, 3, Duration::from_millis(300)).await;
    let before = settled_transitions(&running.metrics).await;
    let got = collect(&mut sub, Duration::from_secs(10), |g| {
        g.len() as u64 >= before
    })
    .await;
    assert_eq!(got.len() as u64, before, "before the kill");
    all_acked(&running.metrics, 0).await;

    // SIGKILL, then alarm activity at once while the broker is dead.
    mosq.kill();
    let killed_at = alsentry::clock::wall_ms();
    proxy.set_up(false);
    toggle(&dev.device, 8, Duration::from_millis(300)).await;
    let total = settled_transitions(&running.metrics).await;
    assert!(total >= before + 40, "{total} transitions");
    assert!(!running.metrics.sinks[0].connected.load(Ordering::Relaxed));

    let _mosq2 = Mosquitto::start(dir.path(), port, "");
    drop(sub);
    let mut sub = Subscriber::connect("127.0.0.1", port, "sub2b-again", ALARMS).await;
    proxy.set_up(true);
    let up_at = Instant::now();
    let after = collect(&mut sub, Duration::from_secs(30), |g| {
        g.len() as u64 >= total - before
    })
    .await;
    let all: Vec<Msg> = got.iter().chain(after.iter()).cloned().collect();
    let s = seqs(&all);
    assert_eq!(s.len() as u64, total, "received {} of {total}", s.len());
    assert_consecutive(&s);
    for m in &after {
        let j = m.json();
        let ts = alsentry::clock::parse_ts(j["ts"].as_str().unwrap()).unwrap();
        assert!(ts >= killed_at, "an old transition resent: {j}");
    }
    eprintln!(
        "(2b) {} transitions after a SIGKILL of the broker delivered {:?} after its restart; total {:?}",
        after.len(),
        up_at.elapsed(),
        t0.elapsed()
    );
    running.stop().await;
}

// (4b) Raw data with the default data_qos = 0: while the broker is away it waits in the
// outbox and is delivered after the reconnect; once connected it goes out live at QoS 0, never
// written to disk, while alarms still go through the outbox at QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn raw_data_goes_live_at_qos0_and_waits_in_the_outbox_while_the_broker_is_away() {
    // Mosquitto: the embedded rumqttd delivers at the subscription's QoS, hiding the publish's.
    let t0 = Instant::now();
    let mdir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mosq = Mosquitto::start(mdir.path(), port, "");
    let mut sub = Subscriber::connect("127.0.0.1", port, "sub4b", "alsentry/#").await;
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    proxy.set_up(false);
    let text = format!(
        "[mqtt]\nurl = \"mqtt://{}\"\nreconnect_max = \"1s\"\n",
        proxy.addr
    );
    let cfg = Agent::new("gw").sinks(&text).build();
    assert_eq!(cfg.sinks[0].data_qos, 0, "the default");
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
    let data_msg = |tag: &str, n: usize| {
        Arc::new(Message {
            class: Class::Data,
            topic: "alsentry/s/a/pot-1/data".into(),
            payload: format!(r#"{{"schema":"alsentry/data/1","tag":"{tag}","n":{n}}}"#)
                .into_bytes(),
            retain: false,
            priority: None,
        })
    };
    for n in 0..5 {
        tx.send(data_msg("spooled", n)).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.sinks[0].outbox_depth.load(Ordering::Relaxed) < 5 {
        assert!(
            Instant::now() < deadline,
            "data kept while the broker is away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.set_up(true);
    let mut spooled = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while spooled.len() < 5 {
        let m = tokio::time::timeout_at(deadline, sub.rx.recv())
            .await
            .expect("the spooled data after the reconnect")
            .unwrap();
        let j = m.json();
        if m.topic.ends_with("/data") && j["tag"] == "spooled" {
            assert_eq!(m.qos, 1, "spooled data leaves the outbox on its PUBACK");
            spooled.insert(j["n"].as_u64().unwrap());
        }
    }
    // Connected now: data goes live, alarms through the outbox.
    for n in 0..200 {
        tx.send(data_msg("live", n)).await.unwrap();
        if n == 100 {
            tx.send(msg(Class::Alarm, "alsentry/s/a/pot-1/alarm/hi1", 1, 0))
                .await
                .unwrap();
        }
    }
    let mut live = BTreeSet::new();
    let mut alarm_qos = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while live.len() < 200 || alarm_qos.is_none() {
        let m = tokio::time::timeout_at(deadline, sub.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{} of 200 live data, alarm {alarm_qos:?}", live.len()))
            .unwrap();
        let j = m.json();
        if m.topic.ends_with("/data") && j["tag"] == "live" {
            assert_eq!(m.qos, 0, "live data is QoS 0");
            live.insert(j["n"].as_u64().unwrap());
        } else if m.topic.ends_with("/alarm/hi1") {
            alarm_qos = Some(m.qos);
        }
    }
    assert_eq!(alarm_qos, Some(1));
    // Nothing of the live data touched the disk; the alarm and the spooled data did.
    let mut on_disk = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            on_disk.extend(std::fs::read(&p).unwrap());
        }
    }
    let text = String::from_utf8_lossy(&on_disk);
    assert!(
        text.contains("\"spooled\""),
        "spooled data was in the outbox"
    );
    assert!(
        text.contains("alarm/hi1"),
        "the alarm went through the outbox"
    );
    assert!(
        !text.contains("\"live\""),
        "live data was written to the outbox"
    );
    cancel.cancel();
    let _ = handle.await;
    eprintln!(
        "(4b) 5 spooled data at QoS 1 after the outage, 200 live at QoS 0 not on disk, in {:?}",
        t0.elapsed()
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(require("openssl"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=alsentry test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, ext) in [("server", "san.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

// (6) Mutual TLS to Mosquitto with a CA made here, over MQTT 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto and openssl; .ci/run runs it"]
async fn mutual_tls_with_a_test_ca_over_mqtt5() {
    require("openssl");
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path();
    make_pki(pki);
    let plain = free_port();
    let tls = free_port();
    let p = |f: &str| pki.join(f).display().to_string();
    let mosq = Mosquitto::start(
        pki,
        plain,
        &format!(
            "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    );
    wait_port(tls);
    let mut sub = Subscriber::connect("127.0.0.1", plain, "sub6", "alsentry/#").await;
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 7.0);
    let sinks = format!(
        "[mqtt]\nurl = \"mqtts://localhost:{tls}\"\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\nprotocol = \"5\"\nreconnect_max = \"1s\"\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let state = pki.join("state");
    let cfg = one_cell_agent(&state, &dev, &sinks, 1).build();
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    set_volts(&dev.device, 9.0);
    let m = sub
        .wait_for(Duration::from_secs(15), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("alarm over mutual TLS");
    assert_eq!(m.json()["state"], "active_unacked");
    running.stop().await;

    // Without a client certificate the broker refuses the agent.
    let sinks = format!(
        "[mqtt]\nurl = \"mqtts://localhost:{tls}\"\nca_file = \"{}\"\nreconnect_max = \"1s\"\n",
        p("ca.pem")
    );
    let cfg = one_cell_agent(&pki.join("state2"), &dev, &sinks, 1).build();
    let attempts = |log: &str| log.matches(&format!(" on port {tls}.")).count();
    let before = attempts(&mosq.log());
    let running = alsentry::app::start(cfg, SystemClock::new()).await.unwrap();
    // Refused for sure once the agent has come back for a second try (reconnect_max 1 s).
    wait_until(Duration::from_secs(15), "two connection attempts", || {
        attempts(&mosq.log()) >= before + 2
    })
    .await;
    assert!(!running.metrics.sinks[0].connected.load(Ordering::Relaxed));
    running.stop().await;
    eprintln!("(6) mutual TLS over MQTT 5 in {:?}", t0.elapsed());
}

// MQTT 5 publishes carry the payload schema as a user property, and data an expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs mosquitto; .ci/run runs it"]
async fn mqtt5_publishes_carry_the_schema_user_property() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _mosq = Mosquitto::start(dir.path(), port, "");
    let (client, mut el) = AsyncClient::new(MqttOptions::new("v5sub", "127.0.0.1", port), 10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(1);
    let sub = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe("alsentry/#", QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.try_send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    ready.recv().await.unwrap();
    let text = format!(
        "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nprotocol = \"5\"\ndata_expiry = \"90s\"\n"
    );
    let cfg = Agent::new("gw").sinks(&text).build();
    let (outbox, _) = Outbox::open(dir.path(), OutboxOptions::default(), 0).unwrap();
    let metrics = Metrics::new(Vec::<String>::new(), vec!["plant".to_string()]);
    let (task, tx2, _crx) = sink_task(&cfg, 0, outbox, metrics);
    let cancel = tokio_util::sync::CancellationToken::new();
    let h = tokio::spawn(task.run(cancel.clone()));
    tx2.send(msg(Class::Alarm, "alsentry/s/a/pot-1/alarm/hi1", 1, 0))
        .await
        .unwrap();
    tx2.send(msg(Class::Data, "alsentry/s/a/pot-1/data", 2, 0))
        .await
        .unwrap();
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        let p = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("publishes")
            .unwrap();
        let topic = String::from_utf8_lossy(&p.topic).to_string();
        if topic.ends_with("/hi1") || topic.ends_with("/data") {
            seen.insert(topic, p.properties.unwrap_or_default());
        }
    }
    let alarm = &seen["alsentry/s/a/pot-1/alarm/hi1"];
    assert!(alarm
        .user_properties
        .contains(&("schema".to_string(), "alsentry/alarm/1".to_string())));
    assert_eq!(alarm.message_expiry_interval, None);
    let data = &seen["alsentry/s/a/pot-1/data"];
    let exp = data.message_expiry_interval.expect("data expiry");
    assert!((85..=90).contains(&exp), "{exp}");
    cancel.cancel();
    let _ = h.await;
    sub.abort();
}
