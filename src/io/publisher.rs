//! One task per MQTT sink. Every message the sink carries goes to the sink's on-disk outbox
//! first and leaves it only when the broker's PUBACK for it arrives.
//!
//! rumqttc's `publish` only queues, and on a clean reconnect it silently drops what it had
//! pending (standards.md 3.4). So this task tracks acknowledgements itself: each publish it
//! hands to rumqttc is matched, in order, with the `Outgoing::Publish(pkid)` event the event
//! loop emits for it, and the later `PubAck(pkid)` acknowledges the outbox record. On any
//! connection error everything in flight goes back to the outbox and is sent again, in order,
//! after the next CONNACK.
//!
//! Every connection attempt gets a fresh rumqttc client and event loop: rumqttc keeps queued
//! events, pending requests and packet-id state across an error, and a stale `PubAck(5)` from
//! a dead connection matched against the new connection's packet 5 would acknowledge the
//! wrong record. A fresh event loop makes that impossible.
//!
//! Sinks are independent tasks with their own connection and outbox, so one broker being
//! down or slow never delays another.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    LastWill as LastWill5, Packet as Packet5, PubAckReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::config::mqtt::{Protocol, TlsFiles};
use crate::config::MqttSink;
use crate::core::model::{Priority, Ts};
use crate::core::payload::{status_payload, Identity};
use crate::metrics::Metrics;
use crate::outbox::{Class, DropReason, FsyncPolicy, NewRecord, Outbox};

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

/// Publishes handed to rumqttc and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// Live raw data at QoS 0 handed to rumqttc and not yet written to the socket, at most. Past
/// it, data waits in the outbox like everything else.
const DATA_WINDOW: usize = 64;
/// The one bounded request channel to rumqttc. At most WINDOW + DATA_WINDOW publishes plus a
/// subscribe and a status are ever queued in it, so `try_publish` never finds it full.
const CHANNEL_CAPACITY: usize = 2 * (WINDOW + DATA_WINDOW);
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Periodic status; a change of devices up/down or of the drop counters sends one at once.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// New drops send a status at most this often.
const DROPS_STATUS_GAP: Duration = Duration::from_secs(5);

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

/// Never prints the password, only whether there is one.
impl std::fmt::Debug for SinkTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkTask")
            .field("index", &self.index)
            .field("cfg", &self.cfg)
            .field("who", &self.who)
            .field("client_id", &self.client_id)
            .field("outbox", &self.outbox.dir())
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Flight {
    /// Outbox ids (None for messages sent around the outbox) in the order they were handed to
    /// rumqttc, waiting for their packet id.
    awaiting_pkid: VecDeque<(Option<(u64, Class)>, Lane)>,
    /// How many of `awaiting_pkid` are live data sent at QoS 0 around the outbox: they have
    /// their own budget, so a burst of data never takes the window from alarms.
    data_waiting: usize,
    /// Packet id → (outbox id and class, when sent).
    unacked: HashMap<u16, (Option<(u64, Class)>, Instant)>,
}

/// Which budget a publish handed to rumqttc counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Outbox records, status and commands' replies: the `WINDOW`.
    Main,
    /// Live raw data at QoS 0: `DATA_WINDOW`.
    Data,
}

/// What an event means for the record it belongs to.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Nothing to do (still waiting for its PUBACK, or not ours).
    No,
    /// Delivered as far as MQTT goes: acknowledge `id` (None: sent around the outbox).
    Yes {
        id: Option<(u64, Class)>,
        sent: Instant,
    },
}

impl Flight {
    /// Publishes in the main lane not yet settled.
    fn len(&self) -> usize {
        self.awaiting_pkid.len() + self.unacked.len() - self.data_waiting
    }
    fn clear(&mut self) {
        self.awaiting_pkid.clear();
        self.unacked.clear();
        self.data_waiting = 0;
    }
    /// A publish was handed to rumqttc: `id` is its outbox record (None around the outbox).
    fn handed(&mut self, id: Option<(u64, Class)>) {
        self.awaiting_pkid.push_back((id, Lane::Main));
    }
    /// Live data handed to rumqttc at QoS 0.
    fn handed_data(&mut self) {
        self.awaiting_pkid.push_back((None, Lane::Data));
        self.data_waiting += 1;
    }
    /// `Outgoing::Publish(pkid)`: rumqttc reports the publishes it writes in the order they
    /// were handed over (a packet-id collision reports `AwaitAck` first and this event later,
    /// still in order), so the oldest waiting record got `pkid`. QoS 0 (pkid 0) gets no
    /// PUBACK and is settled right away.
    fn on_sent(&mut self, pkid: u16) -> Settled {
        let Some((id, lane)) = self.awaiting_pkid.pop_front() else {
            return Settled::No;
        };
        if lane == Lane::Data {
            self.data_waiting -= 1;
        }
        let now = Instant::now();
        if pkid == 0 {
            return Settled::Yes { id, sent: now };
        }
        self.unacked.insert(pkid, (id, now));
        Settled::No
    }
    /// `PubAck(pkid)` for a publish of this connection.
    fn on_ack(&mut self, pkid: u16) -> Settled {
        match self.unacked.remove(&pkid) {
            Some((id, sent)) => Settled::Yes { id, sent },
            None => Settled::No,
        }
    }
}

/// What the sink needs from either protocol's event loop.
#[derive(Debug)]
enum Ev {
    ConnAck,
    /// `Outgoing::Publish(pkid)`: the next publish handed over got this packet id.
    Sent(u16),
    /// PUBACK; `refused` holds the MQTT 5 reason when the broker did not accept it.
    Acked {
        pkid: u16,
        refused: Option<String>,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
    },
    Other,
}

/// MQTT 5 publish properties.
#[derive(Debug, Default)]
struct Props {
    expiry_s: Option<u32>,
    schema: Option<String>,
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

enum Loop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

struct Conn {
    client: Client,
    events: Loop,
    connected: bool,
}

impl Client {
    fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        props: Props,
    ) -> Result<(), String> {
        match self {
            Client::V4(c) => {
                let q = if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                c.try_publish(topic, q, retain, payload)
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let q = if qos == 0 {
                    QoS5::AtMostOnce
                } else {
                    QoS5::AtLeastOnce
                };
                let properties = PublishProperties {
                    message_expiry_interval: props.expiry_s,
                    user_properties: props
                        .schema
                        .map(|s| vec![("schema".to_string(), s)])
                        .unwrap_or_default(),
                    content_type: Some("application/json".into()),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, q, retain, payload, properties)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            Client::V5(c) => c
                .try_subscribe(topic, QoS5::AtLeastOnce)
                .map_err(|e| e.to_string()),
        }
    }

    fn disconnect(&self) {
        let _ = match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Client::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        };
    }
}

impl Loop {
    async fn poll(&mut self) -> Result<Ev, String> {
        match self {
            Loop::V4(el) => match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => Ok(Ev::ConnAck),
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                Ok(Event::Incoming(Packet::PubAck(a))) => Ok(Ev::Acked {
                    pkid: a.pkid,
                    refused: None,
                }),
                Ok(Event::Incoming(Packet::Publish(p))) => Ok(Ev::Publish {
                    topic: p.topic,
                    payload: p.payload.to_vec(),
                }),
                Ok(_) => Ok(Ev::Other),
                Err(e) => Err(e.to_string()),
            },
            Loop::V5(el) => match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(Packet5::ConnAck(_))) => Ok(Ev::ConnAck),
                Ok(rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid))) => Ok(Ev::Sent(pkid)),
                Ok(rumqttc::v5::Event::Incoming(Packet5::PubAck(a))) => Ok(Ev::Acked {
                    pkid: a.pkid,
                    refused: match a.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => None,
                        other => Some(format!("{other:?}")),
                    },
                }),
                Ok(rumqttc::v5::Event::Incoming(Packet5::Publish(p))) => Ok(Ev::Publish {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                }),
                Ok(_) => Ok(Ev::Other),
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Bounds the replay of a backlog after a reconnect to `rate` messages per second.
#[derive(Debug)]
struct Throttle {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    fn new(rate: u32) -> Throttle {
        let rate = f64::from(rate.max(1));
        let burst = (rate / 10.0).max(1.0);
        Throttle {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }
    fn reset(&mut self) {
        self.tokens = self.burst;
        self.last = Instant::now();
    }
    fn available(&mut self) -> usize {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
        self.tokens.floor() as usize
    }
    fn take(&mut self) {
        self.tokens -= 1.0;
    }
    /// When the next token is there.
    fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// Per-connection state.
#[derive(Debug)]
struct Session {
    flight: Flight,
    connected_at: Ts,
    /// Still draining records stored before this connection (rate-limited).
    replaying: bool,
    throttle: Throttle,
    /// Set when the throttle stopped the pump: wake up then.
    wake_at: Option<Instant>,
}

/// Drops this task counted itself (the outbox counts its own full/expired drops).
#[derive(Debug, Default)]
struct OwnDrops {
    /// Append failed (I/O): by class index.
    io: [u64; 4],
    /// MQTT 5 data older than `data_expiry` when its turn came.
    expired_unsent: [u64; 4],
    /// Refused by the broker for good (MQTT 5 reason code).
    refused: [u64; 4],
}

/// The last status sent, to send again on change.
#[derive(Debug, Default, PartialEq)]
struct StatusKey {
    up: usize,
    down: usize,
    drops: u64,
}

/// Loads the TLS settings into a rustls client config (ring provider, CA from `ca_file`,
/// optional client certificate for mutual TLS).
pub fn tls_config(files: &TlsFiles) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::{self, PemObject};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    // Once per process; a second install (another sink) reports AlreadyInstalled, harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &str, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {path}: {e}"))
    };
    let ca = read(&files.ca_file, "ca_file")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| format!("ca_file {}: {e}", files.ca_file))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca_file {}: {e}", files.ca_file))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "ca_file {} holds no PEM certificate",
            files.ca_file
        ));
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &files.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_path, key_path)) => {
            let pem = read(cert_path, "client_cert")?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client_cert {cert_path}: {e}"))?;
            if chain.is_empty() {
                return Err(format!("client_cert {cert_path} holds no PEM certificate"));
            }
            let pem = read(key_path, "client_key")?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
                pem::Error::NoItemsFound => {
                    format!("client_key {key_path} holds no PEM private key")
                }
                e => format!("client_key {key_path}: {e}"),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert/client_key: {e}"))
        }
    }
}

/// The `schema` field of a JSON payload, for the MQTT 5 user property.
fn schema_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Only {
        schema: Option<String>,
    }
    serde_json::from_slice::<Only>(payload).ok()?.schema
}

impl SinkTask {
    fn sink_metrics(&self) -> Option<&crate::metrics::SinkMetrics> {
        self.metrics.sinks.get(self.index)
    }

    fn offline_payload(&self) -> Vec<u8> {
        status_payload(&self.who, false, self.clock.now(), None, None, None, None)
    }

    /// A fresh client and event loop for one connection attempt. TCP_NODELAY: while raw data
    /// streams, Nagle can hold a small alarm publish back until the broker's delayed ACK of the
    /// previous segment (up to 40 ms on Linux); brokers need the same towards subscribers
    /// (docs/MQTT.md, "Latency").
    fn connect(&self) -> Result<Conn, String> {
        let transport = match &self.cfg.tls {
            Some(files) => Some(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(files)?),
            ))),
            None => None,
        };
        let keep_alive = Duration::from_millis(self.cfg.keep_alive_ms.max(0) as u64);
        let status_topic = self.who.agent_topic("status");
        let (client, events) = match self.cfg.protocol {
            Protocol::V311 => {
                let mut o =
                    MqttOptions::new(&self.client_id, &self.cfg.url.host, self.cfg.url.port);
                o.set_keep_alive(keep_alive);
                // Clean sessions: the outbox, not the broker session, survives a reconnect.
                o.set_clean_session(true);
                o.set_inflight(WINDOW as u16);
                o.set_request_channel_capacity(CHANNEL_CAPACITY);
                o.set_max_packet_size(1 << 20, 1 << 20);
                o.set_last_will(LastWill::new(
                    status_topic,
                    self.offline_payload(),
                    QoS::AtLeastOnce,
                    true,
                ));
                if let Some(u) = &self.cfg.username {
                    o.set_credentials(u, self.password.as_deref().unwrap_or(""));
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (c, mut e) = rumqttc::AsyncClient::new(o, CHANNEL_CAPACITY);
                let mut net = e.network_options();
                net.set_tcp_nodelay(true);
                e.set_network_options(net);
                (Client::V4(c), Loop::V4(Box::new(e)))
            }
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(
                    &self.client_id,
                    &self.cfg.url.host,
                    self.cfg.url.port,
                );
                o.set_keep_alive(keep_alive);
                o.set_clean_start(true);
                o.set_session_expiry_interval(Some(0));
                o.set_outgoing_inflight_upper_limit(WINDOW as u16);
                o.set_request_channel_capacity(CHANNEL_CAPACITY);
                o.set_max_packet_size(Some(1 << 20));
                o.set_last_will(LastWill5::new(
                    status_topic,
                    self.offline_payload(),
                    QoS5::AtLeastOnce,
                    true,
                    None,
                ));
                if let Some(u) = &self.cfg.username {
                    o.set_credentials(u, self.password.as_deref().unwrap_or(""));
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let mut net = o.network_options();
                net.set_tcp_nodelay(true);
                o.set_network_options(net);
                let (c, e) = rumqttc::v5::AsyncClient::new(o, CHANNEL_CAPACITY);
                (Client::V5(c), Loop::V5(Box::new(e)))
            }
        };
        Ok(Conn {
            client,
            events,
            connected: false,
        })
    }

    pub async fn run(self, cancel: CancellationToken) {
        Runner {
            t: self,
            own_drops: OwnDrops::default(),
            last_status: None,
        }
        .run(cancel)
        .await
    }
}

/// The running sink: the task's parts plus what only the loop needs.
struct Runner {
    t: SinkTask,
    own_drops: OwnDrops,
    last_status: Option<(Instant, StatusKey)>,
}

impl Runner {
    /// Appends to the outbox. An fsync can take milliseconds on slow storage, so an append
    /// that syncs runs under `block_in_place`: the runtime moves other tasks off this worker
    /// instead of stalling them (on a current-thread runtime it just runs inline). With an
    /// interval policy at most one append per interval syncs, so appends run inline rather
    /// than paying the hand-off on every record.
    /// Returns false when the message should have been stored but the outbox could not take
    /// it (disk full, unwritable).
    fn store(&mut self, m: &Message) -> bool {
        if !self.t.cfg.carries(m.class, m.priority) && !self.is_reply(m) {
            return true;
        }
        let now = self.t.clock.now();
        let may_sync = match self.t.cfg.outbox.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Alarms => m.class == Class::Alarm,
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => false,
        };
        let rec = NewRecord {
            class: m.class,
            topic: &m.topic,
            payload: &m.payload,
            retain: m.retain,
            qos: 1,
        };
        let outbox = &mut self.t.outbox;
        let multi_thread = tokio::runtime::Handle::try_current()
            .map(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
            .unwrap_or(false);
        let result = if may_sync && multi_thread {
            tokio::task::block_in_place(|| outbox.append(rec, now))
        } else {
            outbox.append(rec, now)
        };
        match result {
            Ok(_) => true,
            Err(crate::outbox::OutboxError::Full { class, .. }) => {
                // Counted by the outbox per class and reported in the status.
                warn!(sink = %self.t.cfg.name, class = class.as_str(), "outbox full; message dropped");
                true
            }
            Err(e) => {
                // The outbox is unusable (disk full, read-only): say so loudly, keep running.
                error!(sink = %self.t.cfg.name, error = %e, "outbox append failed");
                if let Some(sm) = self.t.sink_metrics() {
                    sm.outbox_write_errors.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
        }
    }

    /// An alarm the outbox could not take still goes out while the broker is connected (QoS 1,
    /// without durability); otherwise it is lost and counted.
    fn store_or_send(&mut self, m: &Message, conn: Option<&Conn>, flight: &mut Flight) {
        if self.send_live_data(m, conn, flight) {
            return;
        }
        if self.store(m) {
            return;
        }
        if m.class == Class::Alarm {
            if let Some(c) = conn.filter(|c| c.connected) {
                let props = self.props(m.class, Some(&m.payload), 0);
                if c.client
                    .publish(m.topic.clone(), 1, m.retain, m.payload.clone(), props)
                    .is_ok()
                {
                    flight.handed(None);
                    warn!(sink = %self.t.cfg.name, topic = %m.topic, "outbox unusable: alarm sent directly, without durability");
                    return;
                }
            }
        }
        self.own_drops.io[m.class.index()] += 1;
    }

    /// Raw data with `data_qos = 0` goes straight to a connected broker at QoS 0: no disk
    /// write, no PUBACK to wait for, and no place in the window alarms use. While the broker
    /// is away (or the data lane is full) it is kept in the outbox and replayed like the rest.
    fn send_live_data(&mut self, m: &Message, conn: Option<&Conn>, flight: &mut Flight) -> bool {
        if m.class != Class::Data
            || self.t.cfg.data_qos != 0
            || flight.data_waiting >= DATA_WINDOW
            || !self.t.cfg.carries(m.class, m.priority)
        {
            return false;
        }
        let Some(c) = conn.filter(|c| c.connected) else {
            return false;
        };
        let props = self.props(m.class, Some(&m.payload), 0);
        if c.client
            .publish(m.topic.clone(), 0, m.retain, m.payload.clone(), props)
            .is_err()
        {
            return false;
        }
        flight.handed_data();
        if let Some(sm) = self.t.sink_metrics() {
            sm.published.fetch_add(1, Ordering::Relaxed);
            sm.bytes
                .fetch_add(m.payload.len() as u64, Ordering::Relaxed);
        }
        true
    }

    /// Replies to commands answer something this sink received: always carried.
    fn is_reply(&self, m: &Message) -> bool {
        m.topic == self.t.who.agent_topic("cmd/reply")
    }

    async fn run(mut self, cancel: CancellationToken) {
        let cmd_topic = self.t.who.agent_topic("cmd");
        let reconnect_max = Duration::from_millis(self.t.cfg.reconnect_max_ms.max(1000) as u64);
        let mut conn: Option<Conn> = None;
        let mut ever_connected = false;
        let mut session = Session {
            flight: Flight::default(),
            connected_at: 0,
            replaying: false,
            throttle: Throttle::new(self.t.cfg.replay_rate),
            wake_at: None,
        };
        let mut failures: u32 = 0;
        let mut retry_at: Option<Instant> = None;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(c) = conn.as_ref().filter(|c| c.connected) {
                self.pump(&c.client, &mut session);
            }
            let can_connect = retry_at.is_none_or(|t| Instant::now() >= t);
            if conn.is_none() && can_connect {
                retry_at = None;
                match self.t.connect() {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        failures += 1;
                        let wait = reconnect_delay(failures, reconnect_max);
                        error!(sink = %self.t.cfg.name, broker = %self.t.cfg.url, error = %e, retry_in_ms = wait.as_millis() as u64, "cannot set up the connection");
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
            let wake = session.wake_at;
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.shutdown(conn.take(), &mut session.flight).await;
                    return;
                }
                msg = self.t.rx.recv() => match msg {
                    Some(m) => self.store_or_send(&m, conn.as_ref(), &mut session.flight),
                    None => {
                        self.shutdown(conn.take(), &mut session.flight).await;
                        return;
                    }
                },
                _ = housekeeping.tick() => self.housekeeping(conn.as_ref().filter(|c| c.connected).map(|c| &c.client), &mut session.flight),
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
                _ = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {
                    session.wake_at = None;
                }
                ev = poll(conn.as_mut()), if conn.is_some() => match ev {
                    Ok(Ev::ConnAck) => {
                        let Some(c) = conn.as_mut() else { continue };
                        c.connected = true;
                        failures = 0;
                        session.flight.clear();
                        // What waited for the first connection of this run is not a replay of
                        // anything; after a disconnection, what waited is (restart backlog is
                        // flagged by the outbox itself).
                        session.connected_at = if ever_connected { self.t.clock.now() } else { i64::MIN };
                        ever_connected = true;
                        session.replaying = true;
                        session.throttle.reset();
                        session.wake_at = None;
                        self.t.outbox.requeue_in_flight();
                        info!(sink = %self.t.cfg.name, broker = %self.t.cfg.url, backlog = self.t.outbox.stats().depth, "connected to broker");
                        if let Some(sm) = self.t.sink_metrics() { sm.connected.store(true, Ordering::Relaxed); }
                        // Subscriptions do not survive a clean reconnect: subscribe every time.
                        if let Err(e) = c.client.subscribe(&cmd_topic) {
                            warn!(sink = %self.t.cfg.name, error = %e, "cannot subscribe to the command topic");
                        }
                        // Current status goes straight out, ahead of any backlog: it is
                        // regenerated on every connect, so there is nothing to keep.
                        let payload = self.status_json(true);
                        if c.client.publish(self.t.who.agent_topic("status"), 1, true, payload, self.props(Class::Status, None, 0)).is_ok() {
                            session.flight.handed(None);
                        }
                        self.last_status = Some((Instant::now(), self.status_key()));
                    }
                    Ok(Ev::Sent(pkid)) => {
                        let settled = session.flight.on_sent(pkid);
                        self.settle(settled, None);
                    }
                    Ok(Ev::Acked { pkid, refused }) => {
                        let settled = session.flight.on_ack(pkid);
                        self.settle(settled, refused);
                    }
                    Ok(Ev::Publish { topic, payload }) => {
                        if topic == cmd_topic {
                            let cmd = InboundCommand { sink: self.t.index, payload };
                            if self.t.commands.try_send(cmd).is_err() {
                                warn!(sink = %self.t.cfg.name, "command dropped: the engine is busy");
                            }
                        }
                    }
                    Ok(Ev::Other) => {}
                    Err(e) => {
                        let was_connected = conn.as_ref().is_some_and(|c| c.connected);
                        if was_connected {
                            warn!(sink = %self.t.cfg.name, broker = %self.t.cfg.url, error = %e, "connection to broker lost");
                        }
                        // Dropped with its client: nothing of it can reach the next connection.
                        conn = None;
                        if let Some(sm) = self.t.sink_metrics() { sm.connected.store(false, Ordering::Relaxed); }
                        session.flight.clear();
                        session.wake_at = None;
                        self.t.outbox.requeue_in_flight();
                        failures += 1;
                        let wait = reconnect_delay(failures, reconnect_max);
                        if failures == 1 || failures.is_power_of_two() {
                            warn!(sink = %self.t.cfg.name, broker = %self.t.cfg.url, error = %e, retry_in_ms = wait.as_millis() as u64, failures, "broker unreachable");
                        }
                        retry_at = Some(Instant::now() + wait);
                    }
                }
            }
        }
    }

    fn settle(&mut self, settled: Settled, refused: Option<String>) {
        let Settled::Yes { id, sent } = settled else {
            return;
        };
        self.acked(id, refused);
        if let Some(sm) = self.t.sink_metrics() {
            let us = sent.elapsed().as_micros() as u64;
            sm.puback_latency_us_last.store(us, Ordering::Relaxed);
            sm.puback_latency_us_sum.fetch_add(us, Ordering::Relaxed);
        }
    }

    /// The broker acknowledged (or refused) a publish.
    fn acked(&mut self, id: Option<(u64, Class)>, refused: Option<String>) {
        if let Some(reason) = &refused {
            // MQTT 5 only. The broker will not take this message (not authorised, bad topic,
            // quota): resending it forever would pin the outbox, so it is dropped, counted and
            // logged as an error.
            error!(sink = %self.t.cfg.name, reason = %reason, "broker refused a message; dropped");
        }
        let Some((id, class)) = id else { return };
        if refused.is_some() {
            self.own_drops.refused[class.index()] += 1;
        }
        match self.t.outbox.ack(id) {
            Ok(_) => {}
            Err(e) => {
                warn!(sink = %self.t.cfg.name, error = %e, "cannot record an acknowledgement")
            }
        }
        if let Some(sm) = self.t.sink_metrics() {
            sm.acked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn props(&self, class: Class, payload: Option<&[u8]>, age_ms: i64) -> Props {
        if self.t.cfg.protocol != Protocol::V5 {
            return Props::default();
        }
        let expiry_s = match (class, self.t.cfg.data_expiry_ms) {
            (Class::Data, Some(ms)) => Some(((ms - age_ms).max(1000) / 1000) as u32),
            _ => None,
        };
        Props {
            expiry_s,
            schema: payload.and_then(schema_of),
        }
    }

    /// Hands records to rumqttc while the window has room; a backlog from before this
    /// connection goes at most `replay_rate` per second.
    fn pump(&mut self, client: &Client, session: &mut Session) {
        if session.wake_at.is_some() {
            return;
        }
        while session.flight.len() < WINDOW {
            let mut room = WINDOW - session.flight.len();
            if session.replaying {
                let tokens = session.throttle.available();
                if tokens == 0 {
                    session.wake_at = Some(session.throttle.next_at());
                    return;
                }
                room = room.min(tokens);
            }
            let records = match self.t.outbox.next_unsent(room) {
                Ok(r) => r,
                Err(e) => {
                    error!(sink = %self.t.cfg.name, error = %e, "cannot read the outbox");
                    return;
                }
            };
            if records.is_empty() {
                session.replaying = false;
                return;
            }
            let now = self.t.clock.now();
            for r in records {
                let replayed = r.replayed || r.created < session.connected_at;
                if replayed {
                    session.throttle.take();
                } else {
                    session.replaying = false;
                }
                let age = now.saturating_sub(r.created);
                if r.class == Class::Data
                    && self.t.cfg.protocol == Protocol::V5
                    && self.t.cfg.data_expiry_ms.is_some_and(|ms| age >= ms)
                {
                    // Raw data past its expiry is worthless to consumers: not sent.
                    self.own_drops.expired_unsent[r.class.index()] += 1;
                    let _ = self.t.outbox.ack(r.id);
                    continue;
                }
                let props = self.props(r.class, Some(&r.payload), age);
                let payload = if replayed {
                    mark_replayed(&r.payload)
                } else {
                    r.payload
                };
                let len = payload.len() as u64;
                match client.publish(r.topic, r.qos, r.retain, payload, props) {
                    Ok(()) => {
                        session.flight.handed(Some((r.id, r.class)));
                        if let Some(sm) = self.t.sink_metrics() {
                            sm.published.fetch_add(1, Ordering::Relaxed);
                            sm.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        // Cannot happen while the event loop lives (the channel holds more
                        // than the window); the record stays in flight in the outbox and is
                        // sent again after the next reconnect.
                        error!(sink = %self.t.cfg.name, error = %e, "cannot hand a message to the MQTT client");
                        return;
                    }
                }
            }
        }
    }

    fn drops_by_class(&self) -> [u64; 4] {
        let d = self.t.outbox.stats().drops;
        let mut out = [0u64; 4];
        for c in Class::EVICTION_ORDER {
            let i = c.index();
            out[i] = d.get(c, DropReason::Full)
                + d.get(c, DropReason::Expired)
                + self.own_drops.io[i]
                + self.own_drops.expired_unsent[i]
                + self.own_drops.refused[i];
        }
        out
    }

    fn status_key(&self) -> StatusKey {
        let up = self.t.metrics.devices_up();
        StatusKey {
            up,
            down: self.t.metrics.devices.len() - up,
            drops: self.drops_by_class().iter().sum(),
        }
    }

    /// The status payload: the core contract plus this sink's outbox and drop counters.
    fn status_json(&self, online: bool) -> Vec<u8> {
        let key = self.status_key();
        let st = self.t.outbox.stats();
        let now = self.t.clock.now();
        let base = status_payload(
            &self.t.who,
            online,
            now,
            Some(&self.t.config_hash),
            Some(key.up),
            Some(key.down),
            Some(st.depth as u64),
        );
        let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&base) else {
            return base;
        };
        let down: Vec<&str> = self
            .t
            .metrics
            .devices
            .iter()
            .filter(|d| !d.up.load(Ordering::Relaxed))
            .map(|d| d.name.as_str())
            .take(100)
            .collect();
        let drops = self.drops_by_class();
        let by = |c: Class| drops[c.index()];
        let reason = |r: DropReason| -> u64 {
            Class::EVICTION_ORDER
                .iter()
                .map(|c| st.drops.get(*c, r))
                .sum()
        };
        m.insert("sink".into(), json!(self.t.cfg.name));
        m.insert("down".into(), json!(down));
        m.insert("outbox_bytes".into(), json!(st.bytes));
        m.insert(
            "outbox_oldest_age_s".into(),
            json!(st.oldest_age_ms(now).map(|ms| ms / 1000)),
        );
        m.insert(
            "drops".into(),
            json!({
                "alarm": by(Class::Alarm),
                "status": by(Class::Status),
                "summary": by(Class::Summary),
                "data": by(Class::Data),
            }),
        );
        m.insert(
            "drop_reasons".into(),
            json!({
                "full": reason(DropReason::Full),
                "expired": reason(DropReason::Expired)
                    + self.own_drops.expired_unsent.iter().sum::<u64>(),
                "io": self.own_drops.io.iter().sum::<u64>(),
                "refused": self.own_drops.refused.iter().sum::<u64>(),
            }),
        );
        serde_json::to_vec(&Value::Object(m)).unwrap_or(base)
    }

    fn housekeeping(&mut self, client: Option<&Client>, flight: &mut Flight) {
        let now = self.t.clock.now();
        let expired = self.t.outbox.expire(now);
        if expired > 0 {
            warn!(sink = %self.t.cfg.name, expired, "outbox records expired unsent");
        }
        if let Err(e) = self.t.outbox.sync_if_due(now) {
            warn!(sink = %self.t.cfg.name, error = %e, "outbox sync failed");
        }
        let st = self.t.outbox.stats();
        let drops: u64 = self.drops_by_class().iter().sum();
        if let Some(sm) = self.t.metrics.sinks.get(self.t.index) {
            sm.outbox_depth.store(st.depth as u64, Ordering::Relaxed);
            sm.outbox_bytes.store(st.bytes, Ordering::Relaxed);
            sm.dropped.store(drops, Ordering::Relaxed);
        }
        // Periodic status, and at once when devices come or go or something was dropped.
        let Some(client) = client else { return };
        if !self.t.cfg.carry.contains(&Class::Status) {
            return;
        }
        let key = self.status_key();
        let due = match &self.last_status {
            None => true,
            Some((at, last)) => {
                at.elapsed() >= STATUS_INTERVAL
                    || (last.up, last.down) != (key.up, key.down)
                    // A steady eviction of data would otherwise send one every tick.
                    || (last.drops != key.drops && at.elapsed() >= DROPS_STATUS_GAP)
            }
        };
        if due && flight.len() < WINDOW {
            let payload = self.status_json(true);
            let props = self.props(Class::Status, Some(&payload), 0);
            if client
                .publish(self.t.who.agent_topic("status"), 1, true, payload, props)
                .is_ok()
            {
                flight.handed(None);
            }
            self.last_status = Some((Instant::now(), key));
        }
    }

    /// Stores what is still queued, tells the broker we are going offline, and waits briefly
    /// for the acknowledgements already on their way.
    async fn shutdown(&mut self, conn: Option<Conn>, flight: &mut Flight) {
        while let Ok(m) = self.t.rx.try_recv() {
            self.store(&m);
        }
        if let Some(mut c) = conn.filter(|c| c.connected) {
            let payload = self.t.offline_payload();
            if c.client
                .publish(
                    self.t.who.agent_topic("status"),
                    1,
                    true,
                    payload,
                    Props::default(),
                )
                .is_ok()
            {
                flight.handed(None);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while flight.len() > 0 {
                match tokio::time::timeout_at(deadline, c.events.poll()).await {
                    Ok(Ok(Ev::Sent(pkid))) => {
                        let settled = flight.on_sent(pkid);
                        self.settle(settled, None);
                    }
                    Ok(Ok(Ev::Acked { pkid, refused })) => {
                        let settled = flight.on_ack(pkid);
                        self.settle(settled, refused);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            c.client.disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), c.events.poll()).await;
        }
        if let Err(e) = self.t.outbox.flush() {
            warn!(sink = %self.t.cfg.name, error = %e, "outbox flush failed at shutdown");
        }
    }
}

async fn poll(conn: Option<&mut Conn>) -> Result<Ev, String> {
    match conn {
        Some(c) => c.events.poll().await,
        None => std::future::pending().await,
    }
}

fn reconnect_delay(failures: u32, max: Duration) -> Duration {
    let exp = RECONNECT_MIN.saturating_mul(1 << failures.min(10).saturating_sub(1));
    let capped = exp.min(max);
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
    use super::*;

    fn rec(id: u64) -> Option<(u64, Class)> {
        Some((id, Class::Alarm))
    }

    fn settled_id(s: Settled) -> Option<Option<(u64, Class)>> {
        match s {
            Settled::Yes { id, .. } => Some(id),
            Settled::No => None,
        }
    }

    #[test]
    fn acks_match_records_by_packet_id_in_any_order() {
        let mut f = Flight::default();
        for id in [10, 11, 12] {
            f.handed(rec(id));
        }
        f.handed(None); // a status sent around the outbox
        assert_eq!(f.on_sent(1), Settled::No);
        assert_eq!(f.on_sent(2), Settled::No);
        assert_eq!(f.on_sent(3), Settled::No);
        assert_eq!(f.on_sent(4), Settled::No);
        assert_eq!(f.len(), 4);
        // Out-of-order acks still find their own record.
        assert_eq!(settled_id(f.on_ack(3)), Some(rec(12)));
        assert_eq!(settled_id(f.on_ack(1)), Some(rec(10)));
        assert_eq!(settled_id(f.on_ack(4)), Some(None));
        // A duplicate or unknown ack settles nothing.
        assert_eq!(f.on_ack(1), Settled::No);
        assert_eq!(f.on_ack(9), Settled::No);
        assert_eq!(settled_id(f.on_ack(2)), Some(rec(11)));
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn a_reused_packet_id_after_its_ack_maps_to_the_new_record() {
        let mut f = Flight::default();
        f.handed(rec(1));
        f.handed(rec(2));
        f.on_sent(1);
        // Record 2 collided on pkid 1 (rumqttc said AwaitAck); its Publish event only comes
        // after the ack for the first holder of pkid 1.
        assert_eq!(settled_id(f.on_ack(1)), Some(rec(1)));
        f.on_sent(1);
        assert_eq!(settled_id(f.on_ack(1)), Some(rec(2)));
    }

    #[test]
    fn qos0_settles_when_written_and_strays_are_ignored() {
        let mut f = Flight::default();
        assert_eq!(f.on_sent(5), Settled::No, "nothing was waiting");
        f.handed(rec(7));
        assert_eq!(settled_id(f.on_sent(0)), Some(rec(7)));
        assert_eq!(f.len(), 0);
    }

    #[tokio::test]
    async fn the_replay_throttle_holds_its_rate() {
        let mut t = Throttle::new(1000);
        assert_eq!(t.available(), 100, "burst of a tenth of the rate");
        let mut sent = 0;
        let start = Instant::now();
        while sent < 300 {
            let n = t.available();
            if n == 0 {
                tokio::time::sleep_until(t.next_at()).await;
                continue;
            }
            for _ in 0..n {
                t.take();
            }
            sent += n;
        }
        let took = start.elapsed();
        // (300 - 100) / 1000 = 0.2 s.
        assert!(
            took >= Duration::from_millis(190) && took <= Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let max = Duration::from_secs(2);
        assert!(reconnect_delay(1, max) <= Duration::from_millis(600));
        assert!(reconnect_delay(1, max) >= Duration::from_millis(400));
        for f in 5..40 {
            let d = reconnect_delay(f, max);
            assert!(
                d <= Duration::from_millis(2_400) && d >= Duration::from_millis(1_600),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_schema_property_comes_from_the_payload() {
        assert_eq!(
            schema_of(br#"{"schema":"alsentry/alarm/1","x":[1]}"#).as_deref(),
            Some("alsentry/alarm/1")
        );
        assert_eq!(schema_of(b"{}"), None);
        assert_eq!(schema_of(b"not json"), None);
    }

    #[test]
    fn tls_config_reports_missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca_file: dir.path().join("none.pem").display().to_string(),
            client: None,
        };
        assert!(tls_config(&files)
            .unwrap_err()
            .contains("cannot read the ca_file"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").unwrap();
        let files = TlsFiles {
            ca_file: empty.display().to_string(),
            client: None,
        };
        assert!(tls_config(&files)
            .unwrap_err()
            .contains("holds no PEM certificate"));
    }

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
