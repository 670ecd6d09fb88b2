//! One task per MQTT sink. Every message the sink carries goes to the sink's on-disk outbox
//! first and leaves it only when the broker's PUBACK for it arrives.
//!
//! rumqttc's `publish` only queues, and on a clean reconnect it silently drops what it had
//! pending (docs/MQTT.md). So the sink tracks acknowledgements itself: its [`Session`] (a pure
//! state machine in `session.rs`) matches each publish handed to rumqttc, in order, with the
//! `Outgoing::Publish(pkid)` event the event loop emits for it, and the later `PubAck(pkid)`
//! acknowledges the outbox record. On any connection error everything in flight goes back to
//! the outbox and is sent again, in order, after the next CONNACK. The session also decides
//! when to reconnect, how fast a backlog is replayed and when a status is due; this task only
//! turns network events into session calls and the session's answers into I/O.
//!
//! Every connection attempt gets a fresh rumqttc client and event loop: rumqttc keeps queued
//! events, pending requests and packet-id state across an error, and a stale `PubAck(5)` from
//! a dead connection matched against the new connection's packet 5 would acknowledge the
//! wrong record. A fresh event loop makes that impossible.
//!
//! Sinks are independent tasks with their own connection and outbox, so one broker being
//! down or slow never delays another.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill as LastWill5, Packet as Packet5, PubAckReason, PublishProperties,
};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::backoff;
use super::health::DeviceHealth;
use super::inbound::{admit, Admitted, BurstGate};
use super::session::{Session, SessionConfig, Settled, StatusKey};
use super::sparkplug;

mod data_meta;
mod sparkplug_sink;
use crate::clock::{self, Clock, Mono};
use crate::config::mqtt::{Protocol, TlsFiles};
use crate::config::MqttSink;
use crate::core::command;
use crate::core::outbound::REPLY_LEAF;
use crate::core::payload::{
    ClassCounts, DropReasons, Identity, OnlineStatus, RestoreReport, StatusPayload,
    STATUS_DOWN_NAMES,
};
use crate::core::report::REPORT_LEAF;
use crate::metrics::{Metrics, SinkMetrics};
use crate::outbox::{Class, DropReason, FsyncPolicy, NewRecord, Outbox};
use crate::telemetry::{
    emit, AlarmSentWithoutDurability, BrokerConnected, BrokerDisconnected, ClientOp, ClientRefused,
    CommandDropReason, CommandDropped, ConnectionSetupFailed, DeadLettered, OutboxError,
    OutboxExpired, OutboxFull, OutboxLevels, OutboxOp, OutboxWriteFailed, PublishSettled,
    Published,
};

/// What the engine task hands to a sink (defined with the other outbound types in core).
pub use crate::core::outbound::Message;

/// Commands handed to the engine task, with where they came from (io/inbound.rs).
pub use super::inbound::{CommandOrigin, InboundCommand};

/// Publishes handed to rumqttc and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// Live raw data at QoS 0 handed to rumqttc and not yet written to the socket, at most. Past
/// it, data waits in the outbox like everything else.
const DATA_WINDOW: usize = 64;
/// The one bounded request channel to rumqttc. At most WINDOW + DATA_WINDOW publishes plus a
/// subscribe and a status are ever queued in it, so `try_publish` never finds it full.
const CHANNEL_CAPACITY: usize = 2 * (WINDOW + DATA_WINDOW);
/// Requests rumqttc writes per flush: after one, those already queued (never waited for) go
/// out in the same write syscall. Covers every publish that can be queued (the window, the
/// data lane and a status).
const REQUEST_BATCH: usize = WINDOW + DATA_WINDOW + 1;
/// Engine messages taken from the inbox per turn of the sink's loop when they are raw data
/// (one is taken otherwise), so that a burst of polls reaches rumqttc as one batch.
const DATA_BURST: usize = DATA_WINDOW;
/// Largest MQTT packet the client writes (and reads); a bigger publish would end the connection.
const MAX_PACKET: usize = 1 << 20;
/// Connections in a row that may end with the same record the oldest in flight before it is
/// taken for a message the broker refuses and moved to the dead-letter file (docs/MQTT.md,
/// "Poison messages"). Low enough that the rest waits seconds, high enough that a broker
/// restarted a few times in a row does not move a good message aside.
pub const POISON_ATTEMPTS: u32 = 5;
/// The first status waits for every device to be polled once, at most this long, so that it
/// does not say "all devices down" just because none was polled yet.
pub const FIRST_CYCLE_MAX: Duration = Duration::from_secs(30);
/// The largest packet MQTT can carry (a remaining length of 268,435,455 bytes plus the fixed
/// header). rumqttc treats an incoming packet over its limit as a fatal connection error, and
/// the broker delivers a retained one again after every reconnect: a reconnect loop. So the
/// limit is the protocol's own, and the sink drops an oversized command itself (io/inbound.rs).
/// Such a packet is held in memory while it is read; brokers bound it lower (Mosquitto's
/// `message_size_limit`, docs/MQTT.md).
const MAX_INCOMING_PACKET: usize = 268_435_455 + 5;
/// Periodic status (the session decides when).
pub use super::session::STATUS_INTERVAL;

/// An outbox record in flight: its id and class.
type RecordId = (u64, Class);

/// Why a message did not go out live: `Refused` gives it back to be stored; `Lost` only if the
/// MQTT client kept what it was handed (it gives a refused publish back).
enum SendLive {
    Refused(Arc<Message>),
    Lost(Class),
}

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
    /// Which devices answer, from the pollers that own that state (for the status).
    pub health: watch::Receiver<DeviceHealth>,
    /// The hash of the configuration in force (the supervisor sends a new one after a
    /// reload; a status goes out at once then).
    pub config_hash: watch::Receiver<String>,
    pub password: Option<String>,
    /// What this start restored of the alarm state, for the status.
    pub restore: Option<RestoreReport>,
    /// `format = "sparkplug"`: what the edge node declares (None: the JSON format).
    pub sparkplug: Option<crate::io::sparkplug::Model>,
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
        /// RETAIN as delivered (see io/inbound.rs).
        retain: bool,
    },
    Other,
}

/// MQTT 5 publish properties.
#[derive(Debug, Default)]
struct Props {
    expiry_s: Option<u32>,
    schema: Option<String>,
    /// A Sparkplug (protobuf) payload: no JSON content type.
    binary: bool,
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
        self.publish_parts(topic, qos, retain, payload, props)
            .map_err(|_| {
                "refused by the client (queue full or closed, or an invalid topic)".to_string()
            })
    }

    /// `publish`, giving the topic and payload back when the client's queue refuses them (full
    /// or closed), so the caller can still store the message it handed over. (`None` only if
    /// the client returned something else than the publish it was given.)
    fn publish_parts(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        props: Props,
    ) -> Result<(), Option<(String, Vec<u8>)>> {
        match self {
            Client::V4(c) => {
                let q = if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                };
                c.try_publish(topic, q, retain, payload)
                    .map_err(|e| match e {
                        rumqttc::ClientError::Request(rumqttc::Request::Publish(p))
                        | rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(p)) => {
                            Some((p.topic, Vec::from(p.payload)))
                        }
                        _ => None,
                    })
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
                    content_type: (!props.binary).then(|| "application/json".into()),
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, q, retain, payload, properties)
                    .map_err(|e| match e {
                        rumqttc::v5::ClientError::Request(rumqttc::v5::Request::Publish(p))
                        | rumqttc::v5::ClientError::TryRequest(rumqttc::v5::Request::Publish(p)) => {
                            String::from_utf8(Vec::from(p.topic))
                                .ok()
                                .map(|topic| (topic, Vec::from(p.payload)))
                        }
                        _ => None,
                    })
            }
        }
    }

    fn subscribe(&self, topic: &str) -> Result<(), String> {
        match self {
            Client::V4(c) => c
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|e| e.to_string()),
            // Retain-As-Published: a command published retained arrives with RETAIN set even
            // on a live subscription, so it is refused like one from the retained store.
            Client::V5(c) => c
                .try_subscribe_many([Filter {
                    preserve_retain: true,
                    ..Filter::new(topic, QoS5::AtLeastOnce)
                }])
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
                    retain: p.retain,
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
                    retain: p.retain,
                }),
                Ok(_) => Ok(Ev::Other),
                Err(e) => Err(e.to_string()),
            },
        }
    }
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

/// Why no broker would take a publish of `payload_len` bytes on `topic`, if none would: MQTT
/// forbids an empty topic, wildcards in a published topic, U+0000 (brokers refuse the other
/// control characters too), and the client refuses a packet over [`MAX_PACKET`].
pub fn unpublishable(topic: &str, payload_len: usize) -> Option<String> {
    if topic.is_empty() {
        return Some("empty topic".into());
    }
    if topic.contains(['+', '#']) {
        return Some("wildcard in a published topic".into());
    }
    if let Some(c) = topic.chars().find(|c| c.is_control()) {
        return Some(format!("control character U+{:04X} in the topic", c as u32));
    }
    // Fixed header, topic length, packet id and MQTT 5 properties fit in 1 KiB.
    if topic.len() + payload_len + 1024 > MAX_PACKET {
        return Some(format!(
            "{payload_len} bytes of payload: over the {MAX_PACKET}-byte packet limit"
        ));
    }
    None
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
    fn offline_payload(&self) -> Vec<u8> {
        StatusPayload::offline(&self.who, self.clock.now()).to_vec()
    }

    /// A fresh client and event loop for one connection attempt.
    fn connect(&self, sparkplug_will: Option<&sparkplug::Out>) -> Result<Conn, String> {
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
                o.set_max_request_batch(REQUEST_BATCH);
                o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_PACKET);
                o.set_last_will(match sparkplug_will {
                    // NDEATH: QoS 1, not retained (Sparkplug 3.0).
                    Some(w) => LastWill::new(&w.topic, w.payload.clone(), QoS::AtLeastOnce, false),
                    None => {
                        LastWill::new(status_topic, self.offline_payload(), QoS::AtLeastOnce, true)
                    }
                });
                if let Some(u) = &self.cfg.username {
                    o.set_credentials(u, self.password.as_deref().unwrap_or(""));
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (c, mut e) = rumqttc::AsyncClient::new(o, CHANNEL_CAPACITY);
                e.set_network_options(v311_network_options());
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
                o.set_max_request_batch(REQUEST_BATCH);
                o.set_max_packet_size(Some(MAX_INCOMING_PACKET as u32));
                o.set_last_will(match sparkplug_will {
                    Some(w) => {
                        LastWill5::new(&w.topic, w.payload.clone(), QoS5::AtLeastOnce, false, None)
                    }
                    None => LastWill5::new(
                        status_topic,
                        self.offline_payload(),
                        QoS5::AtLeastOnce,
                        true,
                        None,
                    ),
                });
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

    pub async fn run(mut self, cancel: CancellationToken) {
        let sp = self
            .sparkplug
            .take()
            .map(|model| sparkplug_sink::Sp::new(&self, &model));
        let reconnect_max = Duration::from_millis(self.cfg.reconnect_max_ms.max(1000) as u64);
        let seed = backoff::seed(&self.client_id, self.clock.now() as u64);
        let session = Session::new(
            SessionConfig {
                window: WINDOW,
                data_window: DATA_WINDOW,
                replay_rate: self.cfg.replay_rate,
                reconnect_max,
                seed,
            },
            self.clock.mono(),
        );
        let metrics = self.metrics.clone();
        let fallback = SinkMetrics::default();
        let sm = metrics.sink(self.index).unwrap_or(&fallback);
        let started = self.clock.mono();
        Runner {
            t: self,
            sm,
            session,
            own_drops: OwnDrops::default(),
            started,
            burst: BurstGate::default(),
            sp,
            metas: data_meta::DataMetas::default(),
        }
        .run(cancel)
        .await
    }
}

/// The running sink: the task's parts plus what only the loop needs.
struct Runner<'m> {
    t: SinkTask,
    sm: &'m SinkMetrics,
    session: Session<RecordId>,
    own_drops: OwnDrops,
    started: Mono,
    /// Commands streaming in are read before the engine's messages are stored.
    burst: BurstGate,
    /// `format = "sparkplug"`: the edge-node session and what it waits to send.
    sp: Option<sparkplug_sink::Sp>,
    /// The retained meta messages of compact data, sent again on every connection.
    metas: data_meta::DataMetas,
}

impl Runner<'_> {
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
        if self.sp.is_some() && m.class == Class::Summary && !m.topic.ends_with(REPORT_LEAF) {
            // Sparkplug has no place for summaries; the daily report becomes metrics
            // (docs/SPARKPLUG.md).
            return true;
        }
        let rerouted;
        let m = match self.sp_store(m) {
            Some(r) => {
                rerouted = r;
                &rerouted
            }
            None => m,
        };
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
                emit(OutboxFull {
                    sink: &self.t.cfg.name,
                    class: class.as_str(),
                });
                true
            }
            Err(e) => {
                // The outbox is unusable (disk full, read-only): say so loudly, keep running.
                emit(OutboxWriteFailed {
                    sink: self.sm,
                    error: &e,
                });
                false
            }
        }
    }

    /// An alarm the outbox could not take still goes out while the broker is connected (QoS 1,
    /// without durability); otherwise it is lost and counted.
    fn store_or_send(&mut self, m: Arc<Message>, conn: Option<&Conn>) {
        if data_meta::is_data_meta(&m) {
            // Kept and sent like the status, not stored: it goes again on every connection.
            if self.sp.is_none() && self.t.cfg.carries(m.class, m.priority) {
                self.metas.offer(&m);
            }
            return;
        }
        let m = match self.send_live_data(m, conn) {
            Ok(()) => return,
            Err(SendLive::Refused(m)) => m,
            Err(SendLive::Lost(class)) => {
                self.own_drops.io[class.index()] += 1;
                return;
            }
        };
        if self.store(&m) {
            return;
        }
        if m.class == Class::Alarm {
            if let Some(c) = conn.filter(|c| c.connected) {
                let props = self.props(m.class, Some(&m.payload), 0);
                if c.client
                    .publish(m.topic.clone(), 1, m.retain, m.payload.clone(), props)
                    .is_ok()
                {
                    self.session.handed(None);
                    emit(Published {
                        sink: self.sm,
                        bytes: m.payload.len(),
                    });
                    emit(AlarmSentWithoutDurability {
                        sink: &self.t.cfg.name,
                        topic: &m.topic,
                    });
                    return;
                }
            }
        }
        self.own_drops.io[m.class.index()] += 1;
    }

    /// Raw data with `data_qos = 0` goes straight to a connected broker at QoS 0: no disk
    /// write, no PUBACK to wait for, and no place in the window alarms use. While the broker
    /// is away (or the data lane is full) it is kept in the outbox and replayed like the rest.
    fn send_live_data(&mut self, m: Arc<Message>, conn: Option<&Conn>) -> Result<(), SendLive> {
        if m.class != Class::Data
            || data_meta::is_data_meta(&m)
            || self.metas.holds_back(&m)
            || self.sp.is_some()
            || self.t.cfg.data_qos != 0
            || !self.session.data_has_room()
            || !self.t.cfg.carries(m.class, m.priority)
        {
            return Err(SendLive::Refused(m));
        }
        let Some(c) = conn.filter(|c| c.connected) else {
            return Err(SendLive::Refused(m));
        };
        let props = self.props(m.class, Some(&m.payload), 0);
        let bytes = m.payload.len();
        // Usually this sink holds the only reference (the engine let go of it): the payload is
        // handed to the client as it is, not copied (rumqttc still copies the topic).
        match Arc::try_unwrap(m) {
            Ok(Message {
                class,
                topic,
                payload,
                retain,
                priority,
            }) => {
                if let Err(back) = c.client.publish_parts(topic, 0, retain, payload, props) {
                    return Err(match back {
                        Some((topic, payload)) => SendLive::Refused(Arc::new(Message {
                            class,
                            topic,
                            payload,
                            retain,
                            priority,
                        })),
                        None => {
                            // Cannot happen with the rumqttc we build against: it gives every
                            // refused publish back. Said loudly should an upgrade change that.
                            tracing::error!(sink = %self.t.cfg.name, "the MQTT client kept a publish it refused: one data message lost");
                            SendLive::Lost(class)
                        }
                    });
                }
            }
            Err(m) => {
                if c.client
                    .publish(m.topic.clone(), 0, m.retain, m.payload.clone(), props)
                    .is_err()
                {
                    return Err(SendLive::Refused(m));
                }
            }
        }
        self.session.handed_data();
        emit(Published {
            sink: self.sm,
            bytes,
        });
        Ok(())
    }

    /// Replies to commands answer something this sink received: always carried.
    fn is_reply(&self, m: &Message) -> bool {
        m.topic == self.t.who.agent_topic("cmd/reply")
    }

    async fn run(mut self, cancel: CancellationToken) {
        let cmd_topic = self.t.who.agent_topic("cmd");
        let clock = self.t.clock.clone();
        let mut conn: Option<Conn> = None;
        let mut housekeeping = tokio::time::interval(Duration::from_millis(500));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(c) = conn.as_ref().filter(|c| c.connected) {
                if self.sp.is_some() {
                    self.sp_pump(&c.client);
                } else {
                    self.pump(&c.client);
                }
            }
            if conn.is_none() && self.session.should_connect(clock.mono()) {
                let will = self.sp.as_mut().map(|sp| sp.will(&self.t));
                match self.t.connect(will.as_ref()) {
                    Ok(c) => {
                        self.session.connecting();
                        conn = Some(c);
                    }
                    Err(e) => {
                        let lost = self.session.lost(clock.mono());
                        emit(ConnectionSetupFailed {
                            sink: &self.t.cfg.name,
                            broker: &self.t.cfg.url,
                            error: &e,
                            retry_in: lost.retry_in,
                        });
                    }
                }
            }
            let engine_messages = self.burst.open(clock.mono());
            let wake = match (self.session.next_wake(), self.burst.wake()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // Biased, the network before the engine's messages, which also wait while commands
            // stream in (io/inbound.rs, `BurstGate`): a command burst is taken off the wire
            // (and answered, `busy` if need be) faster than the outbox stores what it causes.
            // Timers first: they are rarely ready.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.shutdown(conn.take()).await;
                    return;
                }
                _ = housekeeping.tick() => {
                    self.housekeeping(conn.as_ref().filter(|c| c.connected).map(|c| &c.client));
                }
                Ok(()) = self.t.config_hash.changed() => {
                    // A reload was applied: say so now, not at the next periodic status.
                    if let Some(c) = conn.as_ref().filter(|c| c.connected) {
                        // Not before the first poll cycle either: a reload at start must not
                        // publish every device down.
                        if self.sp.is_none()
                            && self.t.cfg.carry.contains(&Class::Status)
                            && self.session.has_room()
                            && self.first_cycle_done()
                        {
                            self.send_status(&c.client);
                        }
                    }
                }
                _ = clock::sleep_until(&*clock, wake.unwrap_or(Mono::ZERO)), if wake.is_some() => {}
                ev = poll(conn.as_mut()), if conn.is_some() => match ev {
                    Ok(Ev::ConnAck) => {
                        let Some(c) = conn.as_mut() else { continue };
                        c.connected = true;
                        self.session.connack(clock.mono(), clock.now());
                        self.t.outbox.requeue_in_flight();
                        emit(BrokerConnected {
                            sink: self.sm,
                            broker: &self.t.cfg.url,
                            backlog: self.t.outbox.stats().depth,
                        });
                        // Subscriptions do not survive a clean reconnect: subscribe every time.
                        if let Err(e) = c.client.subscribe(&cmd_topic) {
                            emit(ClientRefused { sink: &self.t.cfg.name, op: ClientOp::Subscribe, error: &e });
                        }
                        if self.sp.is_some() {
                            // No JSON status on a Sparkplug sink: NBIRTH/NDEATH say it.
                            self.sp_connack(&c.client);
                            continue;
                        }
                        self.metas.connected();
                        // Current status goes straight out, ahead of any backlog: it is
                        // regenerated on every connect, so there is nothing to keep. Not before
                        // the first poll cycle: the retained status (offline, from the Last
                        // Will or the last stop) stays until the counts mean something.
                        if self.first_cycle_done() {
                            self.send_status(&c.client);
                        }
                    }
                    Ok(Ev::Sent(pkid)) => {
                        let settled = self.session.sent(pkid, clock.mono());
                        self.settle(settled, None, false);
                    }
                    Ok(Ev::Acked { pkid, refused }) => {
                        let settled = self.session.acked(pkid, clock.mono());
                        self.settle(settled, refused, true);
                    }
                    Ok(Ev::Publish { topic, payload, retain }) => {
                        if topic == cmd_topic {
                            self.command(payload, retain);
                        } else if self.sp.is_some() {
                            self.sp_inbound(&topic, &payload, retain);
                        }
                    }
                    Ok(Ev::Other) => {}
                    Err(e) => {
                        // Dropped with its client: nothing of it can reach the next connection.
                        conn = None;
                        if let Some(sp) = self.sp.as_mut() {
                            sp.lost();
                        }
                        let lost = self.session.lost(clock.mono());
                        if lost.was_connected {
                            self.suspect_poison();
                        }
                        self.t.outbox.requeue_in_flight();
                        emit(BrokerDisconnected {
                            sink: self.sm,
                            broker: &self.t.cfg.url,
                            error: &e,
                            was_connected: lost.was_connected,
                            failures: lost.failures,
                            retry_in: lost.retry_in,
                        });
                    }
                },
                msg = self.t.rx.recv(), if engine_messages => match msg {
                    Some(m) => self.take_messages(m, conn.as_ref()),
                    None => {
                        self.shutdown(conn.take()).await;
                        return;
                    }
                },
            }
        }
    }

    /// Stores or sends `first`, then, while the messages are raw data going out live, those
    /// already waiting behind it (never waiting for more): rumqttc then writes them in one
    /// flush. Anything else ends the turn as before, so the network is read between two
    /// stored messages.
    fn take_messages(&mut self, first: Arc<Message>, conn: Option<&Conn>) {
        let mut m = first;
        for _ in 1..DATA_BURST {
            match self.send_live_data(m, conn) {
                Ok(()) => {}
                Err(SendLive::Refused(back)) => {
                    self.store_or_send(back, conn);
                    return;
                }
                Err(SendLive::Lost(class)) => self.own_drops.io[class.index()] += 1,
            }
            match self.t.rx.try_recv() {
                Ok(next) => m = next,
                Err(_) => return,
            }
        }
        self.store_or_send(m, conn);
    }

    /// A publish on the command topic: to the engine task, which answers it; answered `busy`
    /// here when the engine's queue is full, so that no command goes unanswered.
    fn command(&mut self, payload: Vec<u8>, retain: bool) {
        self.burst.on_command(self.t.clock.mono());
        let cmd = match admit(self.t.index, retain, payload) {
            Admitted::Command(c) => c,
            Admitted::DroppedRetainedOversized => {
                emit(CommandDropped {
                    sink: self.sm,
                    reason: CommandDropReason::RetainedOversized,
                });
                return;
            }
        };
        let Err(e) = self.t.commands.try_send(cmd) else {
            return;
        };
        let cmd = match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        };
        emit(CommandDropped {
            sink: self.sm,
            reason: CommandDropReason::Busy,
        });
        let reply = command::busy(&cmd.payload, self.t.clock.now());
        let m = Message {
            class: Class::Status,
            topic: self.t.who.agent_topic(REPLY_LEAF),
            payload: serde_json::to_vec(&reply).unwrap_or_default(),
            retain: false,
            priority: None,
        };
        self.store(&m);
    }

    /// A connection ended: the oldest record in flight may be one the broker refuses. Past
    /// [`POISON_ATTEMPTS`] connections in a row it is moved aside, so the rest flows.
    fn suspect_poison(&mut self) {
        let Some((id, attempts)) = self.t.outbox.delivery_failed() else {
            return;
        };
        if attempts >= POISON_ATTEMPTS {
            let why = format!(
                "the broker dropped the connection {attempts} times in a row with this message the oldest in flight"
            );
            self.dead_letter(id, None, &why);
        }
    }

    /// Moves record `id` to the dead-letter file and says so.
    fn dead_letter(&mut self, id: u64, topic: Option<&str>, why: &str) {
        let now = self.t.clock.now();
        let result = self.t.outbox.dead_letter(id, why, now);
        let error = result
            .as_ref()
            .err()
            .map(|e| e as &dyn crate::telemetry::LogValue);
        emit(DeadLettered {
            sink: self.sm,
            id,
            topic,
            why,
            error,
        });
    }

    /// A publish was settled by the broker (or refused for good); `puback` when a PUBACK
    /// settled it (not a QoS 0 write).
    fn settle(
        &mut self,
        settled: Option<Settled<RecordId>>,
        refused: Option<String>,
        puback: bool,
    ) {
        let Some(s) = settled else {
            return;
        };
        if let Some((id, class)) = s.id {
            if refused.is_some() {
                self.own_drops.refused[class.index()] += 1;
            }
            if let Err(e) = self.t.outbox.ack(id) {
                emit(OutboxError {
                    sink: &self.t.cfg.name,
                    what: OutboxOp::Ack,
                    error: &e,
                });
            }
        }
        emit(PublishSettled {
            sink: self.sm,
            latency: s.latency,
            puback,
            refused: refused.as_deref(),
        });
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
            binary: false,
        }
    }

    /// The next records to send, as many as the session gives room for; None when there is
    /// no room, nothing left (the replay is over) or the outbox cannot be read.
    fn next_records(&mut self) -> Option<Vec<crate::outbox::StoredRecord>> {
        let room = self.session.room(self.t.clock.mono());
        if room == 0 {
            return None;
        }
        let records = match self.t.outbox.next_unsent(room) {
            Ok(r) => r,
            Err(e) => {
                emit(OutboxError {
                    sink: &self.t.cfg.name,
                    what: OutboxOp::Read,
                    error: &e,
                });
                return None;
            }
        };
        if records.is_empty() {
            self.session.drained();
            return None;
        }
        Some(records)
    }

    /// Hands outbox records to rumqttc while the session gives room (the window, and the
    /// replay rate for a backlog from before this connection).
    fn pump(&mut self, client: &Client) {
        self.send_metas(client);
        loop {
            let Some(records) = self.next_records() else {
                return;
            };
            let now = self.t.clock.now();
            for r in records {
                let replayed = self.session.is_replay(r.created, r.replayed);
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
                if let Some(why) = unpublishable(&r.topic, r.payload.len()) {
                    // No broker takes it: sending would only end the connection.
                    self.dead_letter(r.id, Some(&r.topic), &why);
                    continue;
                }
                let props = self.props(r.class, Some(&r.payload), age);
                let payload = if replayed {
                    mark_replayed(&r.payload)
                } else {
                    r.payload
                };
                let len = payload.len();
                match client.publish(r.topic, r.qos, r.retain, payload, props) {
                    Ok(()) => {
                        self.session.handed(Some((r.id, r.class)));
                        emit(Published {
                            sink: self.sm,
                            bytes: len,
                        });
                    }
                    Err(e) => {
                        // Cannot happen while the event loop lives (the channel holds more
                        // than the window); the record stays in flight in the outbox and is
                        // sent again after the next reconnect.
                        emit(ClientRefused {
                            sink: &self.t.cfg.name,
                            op: ClientOp::Publish,
                            error: &e,
                        });
                        return;
                    }
                }
            }
        }
    }

    /// The compact data's meta messages that are due, around the outbox and ahead of it (a
    /// backlog of compact data is readable once they are in), while the window has room.
    fn send_metas(&mut self, client: &Client) {
        while self.session.has_room() {
            let Some((topic, payload)) = self.metas.next() else {
                return;
            };
            // The status's properties: a schema, and no expiry (a retained meta must stay).
            let props = self.props(Class::Status, Some(&payload), 0);
            let bytes = payload.len();
            if client
                .publish(topic.clone(), 1, true, payload, props)
                .is_err()
            {
                self.metas.retry(topic);
                return;
            }
            self.session.handed(None);
            emit(Published {
                sink: self.sm,
                bytes,
            });
        }
    }

    /// Drops by class: the outbox's own (full, expired) plus this task's.
    fn drops_by_class(&self) -> ClassCounts {
        let d = self.t.outbox.stats().drops;
        let by = |c: Class| {
            let i = c.index();
            d.get(c, DropReason::Full)
                + d.get(c, DropReason::Expired)
                + self.own_drops.io[i]
                + self.own_drops.expired_unsent[i]
                + self.own_drops.refused[i]
        };
        ClassCounts {
            alarm: by(Class::Alarm),
            status: by(Class::Status),
            summary: by(Class::Summary),
            data: by(Class::Data),
        }
    }

    fn status_key(&self) -> StatusKey {
        let health = self.t.health.borrow();
        StatusKey {
            up: health.up(),
            down: health.down(),
            // A message moved aside is news like a drop: a status says so within seconds.
            drops: self.drops_by_class().total()
                + self.t.outbox.stats().dead_lettered.iter().sum::<u64>(),
        }
    }

    /// The online status: the agent, its devices (from their owner) and this sink's outbox.
    fn status_payload(&self) -> Vec<u8> {
        let now = self.t.clock.now();
        let st = self.t.outbox.stats();
        let health = self.t.health.borrow();
        let config_hash = self.t.config_hash.borrow().clone();
        let reason = |r: DropReason| -> u64 {
            Class::EVICTION_ORDER
                .iter()
                .map(|c| st.drops.get(*c, r))
                .sum()
        };
        let own = &self.own_drops;
        StatusPayload::online(
            &self.t.who,
            now,
            OnlineStatus {
                version: env!("CARGO_PKG_VERSION"),
                config_hash: &config_hash,
                devices_up: health.up(),
                devices_down: health.down(),
                down: health.down_names().take(STATUS_DOWN_NAMES).collect(),
                sink: &self.t.cfg.name,
                outbox_depth: st.depth as u64,
                outbox_bytes: st.bytes,
                outbox_oldest_age_s: st.oldest_age_ms(now).map(|ms| ms / 1000),
                drops: self.drops_by_class(),
                drop_reasons: DropReasons {
                    full: reason(DropReason::Full),
                    expired: reason(DropReason::Expired) + own.expired_unsent.iter().sum::<u64>(),
                    io: own.io.iter().sum(),
                    refused: own.refused.iter().sum(),
                },
                dead_lettered: st.dead_lettered.iter().sum(),
                restore: self.t.restore,
            },
        )
        .to_vec()
    }

    /// Publishes the online status around the outbox and tells the session.
    fn send_status(&mut self, client: &Client) {
        let key = self.status_key();
        let payload = self.status_payload();
        let props = self.props(Class::Status, Some(&payload), 0);
        let bytes = payload.len();
        if client
            .publish(self.t.who.agent_topic("status"), 1, true, payload, props)
            .is_ok()
        {
            self.session.handed(None);
            emit(Published {
                sink: self.sm,
                bytes,
            });
        }
        self.session.status_sent(self.t.clock.mono(), key);
    }

    /// Every device was polled once (or [`FIRST_CYCLE_MAX`] passed): statuses may go out.
    fn first_cycle_done(&self) -> bool {
        self.t.health.borrow().first_cycle_done()
            || self.t.clock.mono().since(self.started) >= FIRST_CYCLE_MAX
    }

    /// A status when the session says one is due and the window has room.
    fn status_if_due(&mut self, client: Option<&Client>) {
        let Some(client) = client else { return };
        if self.sp.is_some() {
            return;
        }
        if !self.t.cfg.carry.contains(&Class::Status) || !self.first_cycle_done() {
            return;
        }
        if self
            .session
            .status_due(self.t.clock.mono(), self.status_key())
            && self.session.has_room()
        {
            self.send_status(client);
        }
    }

    fn housekeeping(&mut self, client: Option<&Client>) {
        let now = self.t.clock.now();
        let expired = self.t.outbox.expire(now);
        if expired > 0 {
            emit(OutboxExpired {
                sink: &self.t.cfg.name,
                expired,
            });
        }
        if let Err(e) = self.t.outbox.sync_if_due(now) {
            emit(OutboxError {
                sink: &self.t.cfg.name,
                what: OutboxOp::Sync,
                error: &e,
            });
        }
        let st = self.t.outbox.stats();
        emit(OutboxLevels {
            sink: self.sm,
            depth: st.depth as u64,
            bytes: st.bytes,
            dropped: self.drops_by_class().total(),
        });
        self.sp_health();
        // Periodic status, and on the next tick when devices come or go or something was
        // dropped (ticking, not waking on each device change, keeps a gateway that takes 100
        // units down at once to one status).
        self.status_if_due(client);
    }

    /// Stores what is still queued, tells the broker we are going offline, and waits briefly
    /// for the acknowledgements already on their way.
    async fn shutdown(&mut self, conn: Option<Conn>) {
        while let Ok(m) = self.t.rx.try_recv() {
            self.store(&m);
        }
        if let Some(mut c) = conn.filter(|c| c.connected) {
            // Sparkplug: NDEATH, then DISCONNECT (the 3.1.1 way; a clean DISCONNECT sends no
            // Will).
            let (topic, payload, retain) = match self.sp_death() {
                Some(d) => (d.topic, d.payload, false),
                None => (
                    self.t.who.agent_topic("status"),
                    self.t.offline_payload(),
                    true,
                ),
            };
            let bytes = payload.len();
            if c.client
                .publish(topic, 1, retain, payload, Props::default())
                .is_ok()
            {
                self.session.handed(None);
                emit(Published {
                    sink: self.sm,
                    bytes,
                });
            }
            let clock = self.t.clock.clone();
            let events = &mut c.events;
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while self.session.in_flight() > 0 {
                    match events.poll().await {
                        Ok(Ev::Sent(pkid)) => {
                            let settled = self.session.sent(pkid, clock.mono());
                            self.settle(settled, None, false);
                        }
                        Ok(Ev::Acked { pkid, refused }) => {
                            let settled = self.session.acked(pkid, clock.mono());
                            self.settle(settled, refused, true);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            c.client.disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), c.events.poll()).await;
        }
        if let Err(e) = self.t.outbox.flush() {
            emit(OutboxError {
                sink: &self.t.cfg.name,
                what: OutboxOp::Flush,
                error: &e,
            });
        }
    }
}

async fn poll(conn: Option<&mut Conn>) -> Result<Ev, String> {
    match conn {
        Some(c) => c.events.poll().await,
        None => std::future::pending().await,
    }
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

/// The broker socket of an MQTT 3.1.1 sink. Nagle stays on for QoS 0 data, so the messages of
/// many polls share a TCP segment and the broker wakes once for them, not once per poll (at
/// 400 cells @ 10 Hz, about a tenth of the wakes; issue 22). Every other packet (QoS 1 alarms,
/// acks, pings) is pushed out at its flush (vendor/rumqttc.patch), so it never waits behind
/// Nagle for the broker's delayed ACK of the segment before it, up to 40 ms on Linux
/// (docs/MQTT.md, "Latency"). MQTT 5 sinks keep TCP_NODELAY on.
fn v311_network_options() -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(false);
    net.set_tcp_push_urgent(true);
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish the client's queue refuses comes back whole (topic and payload), so live data
    /// handed over without a copy can still be stored: nothing is lost when the queue is full.
    #[test]
    fn a_refused_publish_gives_its_topic_and_payload_back() {
        let (v4, _events) = rumqttc::AsyncClient::new(MqttOptions::new("t", "127.0.0.1", 1), 1);
        let (v5, _events5) =
            rumqttc::v5::AsyncClient::new(rumqttc::v5::MqttOptions::new("t", "127.0.0.1", 1), 1);
        for client in [Client::V4(v4), Client::V5(v5)] {
            let publish = |n: u8| {
                client.publish_parts(
                    format!("a/{n}/data"),
                    0,
                    false,
                    vec![n; 700],
                    Props::default(),
                )
            };
            // Nothing drains the queue of one: the first fills it, the second is refused.
            assert_eq!(publish(1), Ok(()));
            assert_eq!(
                publish(2),
                Err(Some(("a/2/data".to_string(), vec![2; 700])))
            );
        }
    }

    /// Publishes already queued when the event loop takes one leave in the same flush: the
    /// broker side gets all of them though the loop was polled for the first one only
    /// (vendor/rumqttc.patch; upstream flushes, one write system call, per publish).
    #[tokio::test]
    async fn publishes_already_queued_leave_in_one_flush() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let broker = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 2];
            s.read_exact(&mut connect).await.unwrap();
            assert_eq!(connect[0], 0x10, "CONNECT first");
            let mut rest = vec![0u8; connect[1] as usize];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap(); // CONNACK, accepted
            s
        });
        let mut o = MqttOptions::new("batch", "127.0.0.1", port);
        o.set_max_request_batch(REQUEST_BATCH);
        let (client, mut events) = rumqttc::AsyncClient::new(o, CHANNEL_CAPACITY);
        let connack = events.poll().await;
        assert!(
            matches!(connack, Ok(Event::Incoming(Packet::ConnAck(_)))),
            "{connack:?}"
        );
        let mut s = broker.await.unwrap();
        const N: usize = 10;
        for i in 0..N {
            client
                .try_publish("t/d", QoS::AtMostOnce, false, vec![i as u8; 100])
                .unwrap();
        }
        let first = events.poll().await;
        assert!(
            matches!(first, Ok(Event::Outgoing(Outgoing::Publish(0)))),
            "{first:?}"
        );
        // PUBLISH: fixed header (2 bytes), topic length (2) and topic (3), payload (100).
        let want = N * (2 + 2 + 3 + 100);
        let mut got = Vec::new();
        let read_all = async {
            let mut buf = [0u8; 4096];
            while got.len() < want {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed");
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read_all)
            .await
            .expect("every queued publish written by the one poll");
        assert_eq!(got.len(), want);
        // The events still come one per publish, in order.
        for _ in 1..N {
            let ev = events.poll().await;
            assert!(
                matches!(ev, Ok(Event::Outgoing(Outgoing::Publish(0)))),
                "{ev:?}"
            );
        }
    }

    /// An alarm right behind data is not held back by Nagle: with the sink's socket options,
    /// a QoS 1 publish flushed just after a QoS 0 one (whose segment the broker has not ACKed
    /// yet) reaches the broker at once, not after its delayed ACK (~40 ms on Linux). Fails
    /// with Nagle on and no urgent push (alarms then arrive 40 ms late, most rounds).
    #[tokio::test]
    async fn an_alarm_flushed_right_after_data_is_not_held_by_nagle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // One timeline for both sides: time since `since` started.
        let since = crate::clock::Stopwatch::start();
        let broker_since = since;
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<Duration>();
        // A broker that reads packets as they come, acks QoS 1 publishes and reports when
        // each QoS 1 publish arrived.
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            loop {
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).await.is_err() {
                    return;
                }
                let (mut len, mut shift) = (0usize, 0);
                loop {
                    let mut b = [0u8; 1];
                    if s.read_exact(&mut b).await.is_err() {
                        return;
                    }
                    len |= usize::from(b[0] & 0x7f) << shift;
                    shift += 7;
                    if b[0] & 0x80 == 0 {
                        break;
                    }
                }
                let mut body = vec![0u8; len];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                match first[0] >> 4 {
                    1 => s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap(), // CONNACK
                    3 if first[0] & 0x06 == 0x02 => {
                        let at = broker_since.elapsed();
                        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                        let pkid = &body[2 + topic_len..4 + topic_len];
                        s.write_all(&[0x40, 0x02, pkid[0], pkid[1]]).await.unwrap(); // PUBACK
                        let _ = arrived_tx.send(at);
                    }
                    _ => {}
                }
            }
        });
        let mut o = MqttOptions::new("nagle", "127.0.0.1", port);
        o.set_max_request_batch(REQUEST_BATCH);
        o.set_keep_alive(Duration::ZERO);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 64);
        events.set_network_options(v311_network_options());
        let connack = events.poll().await;
        assert!(
            matches!(connack, Ok(Event::Incoming(Packet::ConnAck(_)))),
            "{connack:?}"
        );
        async fn flushed(events: &mut rumqttc::EventLoop) {
            loop {
                match tokio::time::timeout(Duration::from_secs(5), events.poll()).await {
                    Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => return,
                    Ok(Ok(_)) => {}
                    other => panic!("the publish was not sent: {other:?}"),
                }
            }
        }
        let mut delays = Vec::new();
        for round in 0..30u8 {
            client
                .try_publish("t/data", QoS::AtMostOnce, false, vec![round; 200])
                .unwrap();
            flushed(&mut events).await;
            let sent = since.elapsed();
            client
                .try_publish("t/alarm", QoS::AtLeastOnce, false, vec![round; 200])
                .unwrap();
            flushed(&mut events).await;
            // Its PUBACK comes back through the loop; wait for the broker's timestamp.
            let at = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    tokio::select! {
                        at = arrived.recv() => break at.expect("the broker reports"),
                        ev = events.poll() => { ev.expect("the connection stays up"); }
                    }
                }
            })
            .await
            .expect("the alarm reached the broker");
            delays.push(at.saturating_sub(sent));
            // Let the link go quiet, as between polls.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        delays.sort();
        let median = delays[delays.len() / 2];
        assert!(
            median < Duration::from_millis(15),
            "an alarm right after data took {median:?} (median of {}); all: {delays:?}",
            delays.len()
        );
    }

    /// A poll cancelled while the socket is full loses nothing: the publisher's select drops
    /// `poll()` whenever another branch wins, so the batch must never wait on the socket
    /// after it took a request (vendor/rumqttc.patch). Every publish reported as sent must
    /// reach the broker once it reads again.
    #[tokio::test]
    async fn a_cancelled_poll_under_backpressure_loses_no_publish() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = sock.local_addr().unwrap().port();
        let listener = sock.listen(1).unwrap();
        let broker = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 2];
            s.read_exact(&mut connect).await.unwrap();
            let mut rest = vec![0u8; connect[1] as usize];
            s.read_exact(&mut rest).await.unwrap();
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            s
        });
        let mut o = MqttOptions::new("cancel", "127.0.0.1", port);
        o.set_max_request_batch(REQUEST_BATCH);
        o.set_keep_alive(Duration::ZERO);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 4096);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_send_buffer_size(4096);
        events.set_network_options(net);
        let connack = events.poll().await;
        assert!(
            matches!(connack, Ok(Event::Incoming(Packet::ConnAck(_)))),
            "{connack:?}"
        );
        let mut s = broker.await.unwrap();
        // The broker does not read: the socket fills, writes then wait.
        const N: usize = 2000;
        const PAYLOAD: usize = 1000;
        for i in 0..N {
            client
                .try_publish("t/d", QoS::AtMostOnce, false, vec![i as u8; PAYLOAD])
                .unwrap();
        }
        let mut sent = 0;
        for _ in 0..20 * N {
            match tokio::time::timeout(Duration::from_millis(1), events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
                Ok(other) => panic!("{other:?}"),
                Err(_) => {} // cancelled, like the publisher's select does
            }
            if sent == N {
                break;
            }
        }
        assert!(sent > 0, "nothing was sent");
        // Now the broker reads: every publish reported sent must arrive.
        let drain = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => got += n,
                    _ => return got,
                }
            }
        });
        // One more publish makes the loop write and flush whatever it still buffers; its
        // event comes once the flush is done.
        client
            .try_publish("t/d", QoS::AtMostOnce, false, vec![0; PAYLOAD])
            .unwrap();
        let rest = async {
            while sent < N + 1 {
                if let Ok(Event::Outgoing(Outgoing::Publish(_))) = events.poll().await {
                    sent += 1;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), rest)
            .await
            .expect("every publish reported");
        let got = drain.await.unwrap();
        // PUBLISH: fixed header (3 bytes: remaining length > 127), topic length and topic, payload.
        let per = 3 + 2 + 3 + PAYLOAD;
        assert_eq!(
            got,
            sent * per,
            "bytes on the wire for {sent} publishes reported sent"
        );
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
