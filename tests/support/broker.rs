//! The embedded broker (rumqttd, in-process) for hermetic tests.

use std::net::SocketAddr;

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
pub fn embedded_blocking() -> EmbeddedBroker {
    EmbeddedBroker::start().expect("the embedded broker starts")
}

/// A broker on a given address (a restart on the port an agent already knows).
pub async fn embedded_on(addr: SocketAddr) -> EmbeddedBroker {
    tokio::task::spawn_blocking(move || EmbeddedBroker::start_on(addr))
        .await
        .unwrap()
        .expect("the embedded broker starts")
}

/// A broker and a subscriber on `filter` whose subscription the broker acknowledged.
pub async fn embedded_with_sub(client_id: &str, filter: &str) -> (EmbeddedBroker, Subscriber) {
    let broker = embedded().await;
    let sub = Subscriber::connect("127.0.0.1", broker.addr.port(), client_id, filter).await;
    (broker, sub)
}
