//! The agent watching itself (issue 15): a message the broker refuses does not wedge its sink
//! (dead-letter file), and the counters and status say so.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use alsentry::clock::{Clock, SystemClock};
use alsentry::metrics::Metrics;
use alsentry::outbox::{Class, Outbox, DEAD_LETTER_FILE};
use serde_json::Value;

use crate::support::agent::Agent;
use crate::support::broker::embedded;
use crate::support::delivery::{msg, schema_check, sink_task, STATUS};
use crate::support::mqtt::Subscriber;
use crate::support::net::RefusingProxy;

/// Sends one alarm on `bad_topic`, then ten on a good topic, to a sink whose broker is reached
/// at `url`; returns once the ten good ones and a status counting one dead-lettered message
/// arrived, with the dead-letter file's lines and the metrics.
async fn poison_then_ten(
    url: &str,
    broker_port: u16,
    bad_topic: &str,
) -> (Vec<Value>, std::sync::Arc<Metrics>, Value) {
    let mut sub = Subscriber::connect("127.0.0.1", broker_port, "sub-poison", "alsentry/#").await;
    let text = format!("[mqtt]\nurl = \"mqtt://{url}\"\nreconnect_max = \"1s\"\n");
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
    tx.send(msg(Class::Alarm, bad_topic, 0, 10)).await.unwrap();
    for i in 1..=10 {
        tx.send(msg(Class::Alarm, "alsentry/s/a/pot-1/alarm/hi1", i, 10))
            .await
            .unwrap();
    }
    let mut good = BTreeSet::new();
    let mut status = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while good.len() < 10 || status.is_none() {
        let m = tokio::time::timeout_at(deadline, sub.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("10 later alarms and a status within 30 s; got {good:?}"))
            .unwrap();
        let j = m.json();
        if m.topic == "alsentry/s/a/pot-1/alarm/hi1" {
            good.insert(j["n"].as_u64().unwrap());
        } else if m.topic == STATUS && j["dead_lettered"] == 1 {
            status = Some(j);
        }
    }
    let status = status.unwrap();
    schema_check("status", &status);
    cancel.cancel();
    let _ = handle.await;
    let lines = std::fs::read_to_string(dir.path().join(DEAD_LETTER_FILE))
        .expect("the dead-letter file in the outbox folder")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, metrics, status)
}

// Issue 15: one alarm on a topic the broker refused (it dropped the connection at that
// publish, every time) stayed at the head of the outbox, and 0 of the later alarms arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_keeps_refusing_is_moved_aside_and_later_alarms_flow() {
    let broker = embedded().await;
    let proxy = RefusingProxy::start(broker.addr, "pot-poison").await;
    let bad = "alsentry/s/a/pot-poison/alarm/hi1";
    let (lines, metrics, _status) =
        poison_then_ten(&proxy.addr.to_string(), broker.addr.port(), bad).await;
    let refused = proxy.refused.load(Ordering::SeqCst);
    assert_eq!(
        refused,
        alsentry::io::publisher::POISON_ATTEMPTS as usize,
        "refused once per connection, up to the bound"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["topic"], bad);
    assert_eq!(lines[0]["class"], "alarm");
    assert!(lines[0]["reason"]
        .as_str()
        .unwrap()
        .contains("dropped the connection"));
    let sink = &metrics.sinks[0];
    assert_eq!(sink.dead_lettered.load(Ordering::Relaxed), 1);
}

// A topic no broker takes (a NUL from a device name that once passed `check`) is moved
// aside at once, without costing a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_broker_takes_is_moved_aside_unsent() {
    let broker = embedded().await;
    let bad = "alsentry/s/a/pot\u{0}-1/alarm/hi1";
    let (lines, metrics, _status) =
        poison_then_ten(&broker.addr.to_string(), broker.addr.port(), bad).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["topic"], bad);
    assert!(lines[0]["reason"].as_str().unwrap().contains("U+0000"));
    let sink = &metrics.sinks[0];
    assert_eq!(sink.dead_lettered.load(Ordering::Relaxed), 1);
}

// Issue 15: `alsentry_sink_published_total`, `_acked_total` and `_bytes_total` left the status
// out: a sink that had published only its status said 0, 0, 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_counts_in_published_acked_and_bytes() {
    let broker = embedded().await;
    let mut sub = Subscriber::connect("127.0.0.1", broker.addr.port(), "sub-count", STATUS).await;
    let text = format!("[mqtt]\nurl = \"mqtt://{}\"\n", broker.addr);
    let cfg = Agent::new("gw").sinks(&text).build();
    let dir = tempfile::tempdir().unwrap();
    let (outbox, _) = Outbox::open(
        dir.path(),
        cfg.sinks[0].outbox_options(),
        SystemClock::new().now(),
    )
    .unwrap();
    let metrics = Metrics::new(Vec::<String>::new(), vec!["plant".to_string()]);
    let (task, _tx, _crx) = sink_task(&cfg, 0, outbox, metrics.clone());
    let cancel = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(task.run(cancel.clone()));
    let status = tokio::time::timeout(Duration::from_secs(10), sub.rx.recv())
        .await
        .expect("a status within 10 s")
        .unwrap();
    let sink = &metrics.sinks[0];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.acked.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "status never acked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sink.published.load(Ordering::Relaxed), 1);
    assert_eq!(sink.acked.load(Ordering::Relaxed), 1);
    assert_eq!(
        sink.bytes.load(Ordering::Relaxed),
        status.payload.len() as u64
    );
    cancel.cancel();
    let _ = handle.await;
}
