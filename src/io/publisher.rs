//! One task per MQTT sink. Every message goes to the sink's on-disk outbox first and leaves
//! it only when the broker's PUBACK for it arrives.
//!
//! rumqttc's `publish` only queues, and on a clean reconnect it silently drops what it had
//! pending (standards.md 3.4). So this task tracks acknowledgements itself: each publish it
//! hands to rumqttc is matched, in order, with the `Outgoing::Publish(pkid)` event the event
//! loop emits for it, and the later `PubAck(pkid)` acknowledges the outbox record. On any
//! connection error everything in flight goes back to the outbox and is sent again, in order,
//! after the next CONNACK.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::clock::Clock;
use crate::config::MqttSink;
use crate::core::model::Priority;
use crate::core::payload::{status_payload, Identity};
use crate::metrics::Metrics;
use crate::outbox::{Class, NewRecord, Outbox};

/// A message for the brokers, built once and shared by every sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub class: Class,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// For alarms: lets a sink filter by priority.
    pub priority: Option<Priority>,
}

/// A command payload that arrived on the agent's command topic.
#[derive(Debug, Clone)]
pub struct InboundCommand {
    pub sink: usize,
    pub payload: Vec<u8>,
}

const WINDOW: usize = 64;
const CHANNEL_CAPACITY: usize = 4 * WINDOW;
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SinkTask {
    pub index: usize,
    pub cfg: MqttSink,
    pub who: Identity,
    pub client_id: String,
    pub outbox: Outbox,
    pub rx: mpsc::Receiver<Arc<Message>>,
    pub commands: mpsc::Sender<InboundCommand>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub config_hash: String,
    pub password: Option<String>,
}

#[derive(Debug, Default)]
struct Flight {
    /// Outbox ids (None for messages sent around the outbox) in the order they were handed to
    /// rumqttc, waiting for their packet id.
    awaiting_pkid: VecDeque<Option<u64>>,
    /// Packet id → (outbox id, when sent).
    unacked: HashMap<u16, (Option<u64>, Instant)>,
}

impl Flight {
    fn len(&self) -> usize {
        self.awaiting_pkid.len() + self.unacked.len()
    }
    fn clear(&mut self) {
        self.awaiting_pkid.clear();
        self.unacked.clear();
    }
}

impl SinkTask {
    fn options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(&self.client_id, &self.cfg.url.host, self.cfg.url.port);
        o.set_keep_alive(Duration::from_millis(self.cfg.keep_alive_ms as u64));
        // Clean sessions: the outbox, not the broker session, is what survives a reconnect.
        o.set_clean_session(true);
        o.set_inflight(WINDOW as u16);
        o.set_request_channel_capacity(CHANNEL_CAPACITY);
        o.set_max_packet_size(1 << 20, 1 << 20);
        let offline = status_payload(&self.who, false, self.clock.now(), None, None, None, None);
        o.set_last_will(LastWill::new(
            self.who.agent_topic("status"),
            offline,
            QoS::AtLeastOnce,
            true,
        ));
        if let (Some(u), Some(p)) = (&self.cfg.username, &self.password) {
            o.set_credentials(u, p);
        } else if let Some(u) = &self.cfg.username {
            o.set_credentials(u, "");
        }
        o
    }

    fn sink_metrics(&self) -> Option<&crate::metrics::SinkMetrics> {
        self.metrics.sinks.get(self.index)
    }

    fn store(&mut self, m: &Message) {
        let now = self.clock.now();
        let rec = NewRecord {
            class: m.class,
            topic: &m.topic,
            payload: &m.payload,
            retain: m.retain,
            qos: 1,
        };
        if let Err(e) = self.outbox.append(rec, now) {
            // The outbox is unusable (disk full, read-only): say so loudly, keep running.
            error!(sink = %self.cfg.name, error = %e, "outbox append failed; message lost");
            if let Some(sm) = self.sink_metrics() {
                sm.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let cmd_topic = self.who.agent_topic("cmd");
        let (client, mut eventloop) = AsyncClient::new(self.options(), CHANNEL_CAPACITY);
        let mut flight = Flight::default();
        let mut connected = false;
        let mut connected_at = 0i64;
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if connected {
                self.pump(&client, &mut flight, connected_at);
            }
            let can_poll = retry_at.is_none_or(|t| Instant::now() >= t);
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.shutdown(&client, &mut eventloop, &mut flight, connected).await;
                    return;
                }
                msg = self.rx.recv() => match msg {
                    Some(m) => self.store(&m),
                    None => {
                        self.shutdown(&client, &mut eventloop, &mut flight, connected).await;
                        return;
                    }
                },
                _ = housekeeping.tick() => self.housekeeping(),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if !can_poll => {
                    retry_at = None;
                }
                ev = eventloop.poll(), if can_poll => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connected = true;
                        connected_at = self.clock.now();
                        failures = 0;
                        flight.clear();
                        self.outbox.requeue_in_flight();
                        info!(sink = %self.cfg.name, broker = %self.cfg.url, backlog = self.outbox.stats().depth, "connected to broker");
                        if let Some(sm) = self.sink_metrics() { sm.connected.store(true, Ordering::Relaxed); }
                        // Subscriptions do not survive a clean reconnect: subscribe every time.
                        if let Err(e) = client.try_subscribe(cmd_topic.as_str(), QoS::AtLeastOnce) {
                            warn!(sink = %self.cfg.name, error = %e, "cannot subscribe to the command topic");
                        }
                        // Current status goes straight out, ahead of any backlog: it is regenerated on
                        // every connect, so there is nothing to keep.
                        let up = self.metrics.devices_up();
                        let down = self.metrics.devices.len() - up;
                        let payload = status_payload(&self.who, true, self.clock.now(), Some(&self.config_hash), Some(up), Some(down), Some(self.outbox.stats().depth as u64));
                        if client.try_publish(self.who.agent_topic("status"), QoS::AtLeastOnce, true, payload).is_ok() {
                            flight.awaiting_pkid.push_back(None);
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(id) = flight.awaiting_pkid.pop_front() {
                            flight.unacked.insert(pkid, (id, Instant::now()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some((id, sent)) = flight.unacked.remove(&ack.pkid) {
                            if let Some(id) = id {
                                if let Err(e) = self.outbox.ack(id) {
                                    warn!(sink = %self.cfg.name, error = %e, "cannot record an acknowledgement");
                                }
                            }
                            if let Some(sm) = self.sink_metrics() {
                                sm.acked.fetch_add(1, Ordering::Relaxed);
                                let us = sent.elapsed().as_micros() as u64;
                                sm.puback_latency_us_last.store(us, Ordering::Relaxed);
                                sm.puback_latency_us_sum.fetch_add(us, Ordering::Relaxed);
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if p.topic == cmd_topic {
                            let cmd = InboundCommand { sink: self.index, payload: p.payload.to_vec() };
                            if self.commands.try_send(cmd).is_err() {
                                warn!(sink = %self.cfg.name, "command dropped: the engine is busy");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if connected {
                            warn!(sink = %self.cfg.name, broker = %self.cfg.url, error = %e, "connection to broker lost");
                        }
                        connected = false;
                        if let Some(sm) = self.sink_metrics() { sm.connected.store(false, Ordering::Relaxed); }
                        flight.clear();
                        self.outbox.requeue_in_flight();
                        failures += 1;
                        let wait = reconnect_delay(failures);
                        if failures == 1 || failures.is_power_of_two() {
                            warn!(sink = %self.cfg.name, broker = %self.cfg.url, error = %e, retry_in_ms = wait.as_millis() as u64, failures, "broker unreachable");
                        }
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
        }
    }

    /// Hands records to rumqttc while the window has room.
    fn pump(&mut self, client: &AsyncClient, flight: &mut Flight, connected_at: i64) {
        while flight.len() < WINDOW {
            let room = WINDOW - flight.len();
            let records = match self.outbox.next_unsent(room) {
                Ok(r) => r,
                Err(e) => {
                    error!(sink = %self.cfg.name, error = %e, "cannot read the outbox");
                    return;
                }
            };
            if records.is_empty() {
                return;
            }
            for r in records {
                let replayed = r.replayed || r.created < connected_at;
                let payload = if replayed {
                    mark_replayed(&r.payload)
                } else {
                    r.payload
                };
                let len = payload.len() as u64;
                let qos = if r.qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                match client.try_publish(r.topic, qos, r.retain, payload) {
                    Ok(()) => {
                        flight.awaiting_pkid.push_back(Some(r.id));
                        if let Some(sm) = self.sink_metrics() {
                            sm.published.fetch_add(1, Ordering::Relaxed);
                            sm.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        debug!(sink = %self.cfg.name, error = %e, "request channel full; retrying later");
                        self.outbox.requeue_in_flight();
                        return;
                    }
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = self.clock.now();
        let expired = self.outbox.expire(now);
        if expired > 0 {
            warn!(sink = %self.cfg.name, expired, "outbox records expired unsent");
        }
        if let Err(e) = self.outbox.sync_if_due(now) {
            warn!(sink = %self.cfg.name, error = %e, "outbox sync failed");
        }
        let st = self.outbox.stats();
        if let Some(sm) = self.metrics.sinks.get(self.index) {
            sm.outbox_depth.store(st.depth as u64, Ordering::Relaxed);
            sm.outbox_bytes.store(st.bytes, Ordering::Relaxed);
            sm.dropped.store(st.drops.total(), Ordering::Relaxed);
        }
    }

    /// Stores what is still queued, tells the broker we are going offline, and waits briefly
    /// for the acknowledgements already on their way.
    async fn shutdown(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        flight: &mut Flight,
        connected: bool,
    ) {
        while let Ok(m) = self.rx.try_recv() {
            self.store(&m);
        }
        if connected {
            let payload =
                status_payload(&self.who, false, self.clock.now(), None, None, None, None);
            let _ = client.try_publish(
                self.who.agent_topic("status"),
                QoS::AtLeastOnce,
                true,
                payload,
            );
            flight.awaiting_pkid.push_back(None);
            let deadline = Instant::now() + Duration::from_secs(2);
            while flight.len() > 0 {
                match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                        if let Some(id) = flight.awaiting_pkid.pop_front() {
                            flight.unacked.insert(pkid, (id, Instant::now()));
                        }
                    }
                    Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                        if let Some((Some(id), _)) = flight.unacked.remove(&ack.pkid) {
                            let _ = self.outbox.ack(id);
                        }
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
        }
        if let Err(e) = self.outbox.flush() {
            warn!(sink = %self.cfg.name, error = %e, "outbox flush failed at shutdown");
        }
    }
}

fn reconnect_delay(failures: u32) -> Duration {
    let exp = RECONNECT_MIN.saturating_mul(1 << failures.min(10).saturating_sub(1));
    let capped = exp.min(RECONNECT_MAX);
    // Cheap jitter without a generator: the sub-second part of the clock.
    let frac = (crate::clock::wall_ms().rem_euclid(1000) as f64) / 1000.0;
    capped.mul_f64(0.8 + 0.4 * frac)
}

/// Adds `"replayed":true` to a JSON object payload, so consumers can tell backlog from live.
pub fn mark_replayed(payload: &[u8]) -> Vec<u8> {
    let trimmed = payload.iter().rposition(|b| !b.is_ascii_whitespace());
    match trimmed {
        Some(end) if payload[end] == b'}' && payload.first() == Some(&b'{') => {
            let mut out = Vec::with_capacity(payload.len() + 16);
            out.extend_from_slice(&payload[..end]);
            if payload[..end]
                .iter()
                .any(|b| !b.is_ascii_whitespace() && *b != b'{')
            {
                out.extend_from_slice(b",\"replayed\":true}");
            } else {
                out.extend_from_slice(b"\"replayed\":true}");
            }
            out
        }
        _ => payload.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::mark_replayed;

    #[test]
    fn replayed_flag_is_added_to_json_objects_only() {
        assert_eq!(
            mark_replayed(br#"{"a":1}"#),
            br#"{"a":1,"replayed":true}"#.to_vec()
        );
        assert_eq!(mark_replayed(b"{}"), br#"{"replayed":true}"#.to_vec());
        assert_eq!(mark_replayed(b"plain"), b"plain".to_vec());
        let v: serde_json::Value =
            serde_json::from_slice(&mark_replayed(b"{\"x\":[1,2]}  ")).unwrap();
        assert_eq!(v["replayed"], true);
    }
}
