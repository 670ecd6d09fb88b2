//! Commands that cannot be replayed (issue 14): a command delivered with RETAIN set is refused
//! with a reply and never executed (at a restart the broker hands the retained one over
//! again); an oversized retained command is dropped and counted and the connection stays; a
//! `request_id` seen before gets the first reply again; a burst larger than the command queue
//! gets exactly one reply per command.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::delivery::{one_cell_agent, set_volts, CMD, REPLY};
use crate::support::modbus::{Device, Served};
use crate::support::mqtt::Subscriber;
use alsentry::clock::SystemClock;
use rumqttc::QoS;

fn cmd(op: &str, id: &str, extra: &str) -> String {
    format!(
        r#"{{"op":"{op}","device":"pot-1","rule":"hi1","by":"shift-a","request_id":"{id}"{extra}}}"#
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

async fn retained_publish(sub: &Subscriber, payload: Vec<u8>) {
    sub.client
        .publish(CMD, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_is_never_executed_again_at_a_restart() {
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let broker = crate::support::broker::embedded().await;
    let mut sub =
        Subscriber::connect("127.0.0.1", broker.addr.port(), "c-sub1", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let agent = one_cell_agent(state.path(), &dev, &sinks, 1);
    let running = alsentry::app::start(agent.build(), SystemClock::new())
        .await
        .unwrap();
    sub.wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("active");
    // Someone publishes out_of_service retained. However the broker forwards it live, the
    // operator then returns the alarm to service.
    retained_publish(&sub, cmd("out_of_service", "oos-1", "").into_bytes()).await;
    let live = reply_to(&mut sub, "oos-1").await;
    let j = {
        sub.publish(CMD, cmd("return_to_service", "rts-1", "").as_bytes())
            .await;
        reply_to(&mut sub, "rts-1").await
    };
    if live["ok"] == true {
        assert_eq!(j["ok"], true, "{j}");
    }
    crate::support::harness::stop_checked(running).await;

    // At the restart the broker delivers the retained command again, RETAIN set: refused with
    // a reply saying so, and the alarm stays in service.
    let running = alsentry::app::start(agent.build(), SystemClock::new())
        .await
        .unwrap();
    let j = reply_to(&mut sub, "oos-1").await;
    assert_eq!(j["ok"], false, "{j}");
    assert!(j["error"].as_str().unwrap().contains("RETAIN"), "{j}");
    assert_eq!(j["op"], "out_of_service");
    sub.publish(CMD, cmd("ack", "ack-2", "").as_bytes()).await;
    let j = reply_to(&mut sub, "ack-2").await;
    assert_eq!(
        (&j["ok"], &j["state"]),
        (&true.into(), &"active_acked".into()),
        "in service: {j}"
    );

    // An oversized command replaces the retained one. Live it is answered; when the broker
    // hands it over from its retained store (the next start) it is dropped and counted, and
    // the connection stays up.
    retained_publish(&sub, vec![b' '; 200 * 1024]).await;
    let j = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic == REPLY && m.json()["ok"] == false
        })
        .await
        .expect("a reply to the live oversized command")
        .json();
    assert!(
        j["error"].as_str().unwrap().contains("larger than 4096"),
        "{j}"
    );
    crate::support::harness::stop_checked(running).await;
    let running = alsentry::app::start(agent.build(), SystemClock::new())
        .await
        .unwrap();
    let m = &running.metrics.sinks[0];
    crate::support::harness::wait_until(
        Duration::from_secs(10),
        "the oversized command counted",
        || m.commands_retained_oversized.load(Ordering::Relaxed) == 1,
    )
    .await;
    let published = m.published.load(Ordering::Relaxed);
    assert!(m.connected.load(Ordering::Relaxed));
    set_volts(&dev.device, 7.0);
    let alarm = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alarm/hi1") && m.json()["state"] == "normal"
        })
        .await
        .expect("alarms still delivered");
    assert_eq!(alarm.json()["prev_state"], "active_acked");
    assert!(m.published.load(Ordering::Relaxed) > published);
    crate::support::harness::stop_checked(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_3000_commands_gets_exactly_one_reply_each_and_duplicates_the_first() {
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let broker = crate::support::broker::embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "c-sub2", REPLY).await;
    let mut alarms = Subscriber::connect(
        "127.0.0.1",
        broker.addr.port(),
        "c-sub3",
        "alsentry/+/+/+/alarm/#",
    )
    .await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let running = alsentry::app::start(
        one_cell_agent(state.path(), &dev, &sinks, 1).build(),
        SystemClock::new(),
    )
    .await
    .unwrap();
    alarms
        .wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("active");
    // A duplicate: the same request_id twice gets the first reply twice, executed once.
    sub.publish(CMD, cmd("ack", "dup", "").as_bytes()).await;
    let first = reply_to(&mut sub, "dup").await;
    assert_eq!(first["ok"], true, "{first}");
    sub.publish(CMD, cmd("ack", "dup", "").as_bytes()).await;
    let again = reply_to(&mut sub, "dup").await;
    assert_eq!(
        again, first,
        "the first reply again, not 'nothing to acknowledge'"
    );

    let n = 3_000;
    let t0 = std::time::Instant::now();
    let publisher = sub.client.clone();
    tokio::spawn(async move {
        for i in 0..n {
            let c = cmd("shelve", &format!("b-{i}"), r#","duration":"1h""#);
            publisher
                .publish(CMD, QoS::AtLeastOnce, false, c.into_bytes())
                .await
                .unwrap();
        }
    });
    let mut replies: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while replies.len() < n {
        let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await else {
            panic!("{} of {n} commands answered", replies.len());
        };
        let j = m.json();
        if let Some(id) = j["request_id"].as_str().filter(|id| id.starts_with("b-")) {
            replies.entry(id.to_string()).or_default().push(j);
        }
    }
    // Nothing more comes: exactly one reply each.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.rx.recv()).await {
        let j = m.json();
        if let Some(id) = j["request_id"].as_str() {
            replies.entry(id.to_string()).or_default().push(j);
        }
    }
    let twice: Vec<_> = replies.iter().filter(|(_, r)| r.len() != 1).collect();
    assert!(twice.is_empty(), "more than one reply: {twice:?}");
    let busy = replies
        .values()
        .filter(|r| {
            r[0]["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("busy: "))
        })
        .count();
    let ok = replies.values().filter(|r| r[0]["ok"] == true).count();
    assert_eq!(replies.len(), n);
    assert!(ok > 0, "some shelves ran");
    assert_eq!(
        running.metrics.sinks[0]
            .commands_busy
            .load(Ordering::Relaxed),
        busy as u64
    );
    eprintln!(
        "{n} commands: {ok} ok, {busy} busy, {} other refusals; all answered in {:?}",
        n - ok - busy,
        t0.elapsed()
    );
    crate::support::harness::stop_checked(running).await;
}

/// A command from inside the agent (`CommandOrigin::Local`, for an operator page): the same
/// checks and reply, back to the caller; the transition names the operator on the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_command_is_answered_to_its_caller() {
    let dev = Served::start(Device::default()).await;
    set_volts(&dev.device, 9.0);
    let broker = crate::support::broker::embedded().await;
    let mut sub =
        Subscriber::connect("127.0.0.1", broker.addr.port(), "c-sub4", "alsentry/#").await;
    let state = tempfile::tempdir().unwrap();
    let sinks = format!("[mqtt]\nurl = \"{}\"\n", broker.url());
    let running = alsentry::app::start(
        one_cell_agent(state.path(), &dev, &sinks, 1).build(),
        SystemClock::new(),
    )
    .await
    .unwrap();
    sub.wait_for(Duration::from_secs(10), |m| m.topic.ends_with("/alarm/hi1"))
        .await
        .expect("active");
    let reply = running
        .command(cmd("ack", "local-1", "").as_bytes())
        .await
        .unwrap();
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.state.as_deref(), Some("active_acked"));
    let m = sub
        .wait_for(Duration::from_secs(10), |m| {
            m.topic.ends_with("/alarm/hi1") && m.json()["state"] == "active_acked"
        })
        .await
        .expect("the transition");
    assert_eq!(m.json()["acked_by"], "shift-a");
    assert!(
        sub.wait_for(Duration::from_millis(300), |m| m.topic == REPLY)
            .await
            .is_none(),
        "no MQTT reply to a local command"
    );
    let reply = running
        .command(br#"{"op":"explode","by":"x"}"#)
        .await
        .unwrap();
    assert!(!reply.ok && reply.error.unwrap().contains("unknown op"));
    crate::support::harness::stop_checked(running).await;
}
