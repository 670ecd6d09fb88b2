//! A real MQTT subscriber for tests: collects every message on a filter.

#![allow(dead_code)]

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// QoS as delivered (the lower of the publish's and the subscription's).
    pub qos: u8,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

pub struct Subscriber {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Msg>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Subscriber {
    /// Connects and subscribes; returns once the SUBACK arrived.
    pub async fn connect(host: &str, port: u16, id: &str, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::channel(1);
        let filter = filter.to_string();
        let c2 = client.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos as u8,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .expect("subscribed within 10 s");
        Subscriber { client, rx, task }
    }

    /// The next message matching `pred`, within `within`.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) if pred(&m) => return Some(m),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    /// The latest message on each of `topics`, waiting until all have arrived.
    pub async fn wait_all(
        &mut self,
        within: Duration,
        topics: &[&str],
    ) -> std::collections::HashMap<String, Msg> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = std::collections::HashMap::new();
        while !topics.iter().all(|t| seen.contains_key(*t)) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(m)) => {
                    seen.insert(m.topic.clone(), m);
                }
                _ => panic!(
                    "only {:?} of {topics:?} arrived",
                    seen.keys().collect::<Vec<_>>()
                ),
            }
        }
        seen
    }

    pub async fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
    }
}
