//! The embedded broker (rumqttd, in-process) for hermetic tests.

use std::collections::BTreeSet;
use std::sync::Mutex;

use alsentry::broker::EmbeddedBroker;

use super::mqtt::Subscriber;

/// A broker on a free loopback port (the crate reserves it by binding port 0); returns once
/// it accepts connections. Started off the runtime: rumqttd's start blocks.
pub async fn embedded() -> EmbeddedBroker {
    tokio::task::spawn_blocking(embedded_blocking)
        .await
        .unwrap()
}

/// `embedded` for a test without a runtime.
///
/// rumqttd binds its address itself, so the crate reserves a free port and releases it just
/// before the broker binds it. With many tests starting brokers side by side in one process,
/// two can be handed the same port: one broker binds it, the other fails, and both tests would
/// talk to the first. Ports handed out here are remembered (brokers never stop, so a port stays
/// theirs) and a repeat is a broker that did not start: start another.
pub fn embedded_blocking() -> EmbeddedBroker {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..5 {
        let broker = EmbeddedBroker::start().expect("the embedded broker starts");
        if HANDED_OUT.lock().unwrap().insert(broker.addr.port()) {
            return broker;
        }
    }
    panic!("five embedded brokers in a row got a port already in use");
}

/// A broker and a subscriber on `filter` whose subscription the broker acknowledged.
pub async fn embedded_with_sub(client_id: &str, filter: &str) -> (EmbeddedBroker, Subscriber) {
    let broker = embedded().await;
    let sub = Subscriber::connect("127.0.0.1", broker.addr.port(), client_id, filter).await;
    (broker, sub)
}
