//! The sink's Sparkplug side (`format = "sparkplug"`): the same outbox, window and reconnects
//! as the JSON format, with the pure edge-node session (`io/sparkplug/session.rs`) turning each
//! record into Sparkplug when its turn comes (so `seq` follows what is really sent) and
//! deciding births, deaths and what arrives on NCMD, DCMD and the primary host's STATE.

use std::collections::VecDeque;

use tracing::{debug, warn};

use super::{Client, Message, Props, Runner, SinkTask};
use crate::core::outbound::{Class, REPLY_LEAF};
use crate::io::sparkplug::{BdSeqFile, Model, Out, Session};
use crate::telemetry::{emit, ClientOp, ClientRefused, OutboxError, OutboxOp, Published};

/// Request ids of commands that came through Sparkplug, remembered at most (their replies go
/// to the `Node Control/Command Reply` metric; others to the JSON reply topic).
const REMEMBERED_COMMANDS: usize = 1024;

#[derive(Debug)]
pub(super) struct Sp {
    session: Session,
    /// Births and deaths waiting for room in the window, in order (their `seq` is taken).
    pending: VecDeque<Out>,
    bd_file: BdSeqFile,
    /// bdSeq of the connection being made (its Will) and then of its NBIRTH.
    bd: u64,
    /// Request ids of the commands that came through Sparkplug.
    ids: VecDeque<String>,
    next_id: u64,
    /// The health owner's view at the last look, per device.
    up: Vec<bool>,
}

impl Sp {
    pub(super) fn new(t: &SinkTask, model: &Model) -> Sp {
        Sp {
            session: Session::new(
                &t.who.site,
                &t.who.agent,
                t.cfg.primary_host.as_deref(),
                model,
            ),
            pending: VecDeque::new(),
            bd_file: BdSeqFile::new(t.outbox.dir()),
            bd: 0,
            ids: VecDeque::new(),
            next_id: 0,
            up: vec![false; model.devices.len()],
        }
    }

    /// The NDEATH Will of the connection about to be made, with the next bdSeq.
    pub(super) fn will(&mut self, t: &SinkTask) -> Out {
        self.bd = match self.bd_file.take() {
            Ok(bd) => bd,
            Err(e) => {
                // Still a new number for this connection, just not kept across a restart.
                warn!(sink = %t.cfg.name, error = %e, "cannot keep the Sparkplug bdSeq in the state directory");
                (self.bd + 1) % 256
            }
        };
        self.session.death(self.bd, t.clock.now())
    }

    pub(super) fn lost(&mut self) {
        self.session.disconnected();
        // Births are made again after the next CONNACK.
        self.pending.clear();
    }

    /// Remembers that the command with this request id came through Sparkplug.
    fn remember(&mut self, id: String) {
        if self.ids.len() == REMEMBERED_COMMANDS {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
    }

    /// `payload` with a request id (its own, or one given here) that is remembered.
    fn tag_command(&mut self, payload: Vec<u8>) -> Vec<u8> {
        let Ok(serde_json::Value::Object(mut obj)) = serde_json::from_slice(&payload) else {
            return payload;
        };
        let id = match obj.get("request_id").and_then(|v| v.as_str()) {
            Some(id) => id.to_string(),
            None => {
                self.next_id += 1;
                let id = format!("sparkplug-{}", self.next_id);
                obj.insert("request_id".into(), id.clone().into());
                id
            }
        };
        self.remember(id);
        serde_json::to_vec(&obj).unwrap_or(payload)
    }
}

impl Runner<'_> {
    /// A reply to a command that came through Sparkplug is stored under the session's reply
    /// topic; every other message updates the session's last values and is stored as it is.
    pub(super) fn sp_store(&mut self, m: &Message) -> Option<Message> {
        let sp = self.sp.as_mut()?;
        if m.topic == self.t.who.agent_topic(REPLY_LEAF) {
            let id = serde_json::from_slice::<serde_json::Value>(&m.payload)
                .ok()
                .and_then(|v| v["request_id"].as_str().map(str::to_string))?;
            let at = sp.ids.iter().position(|x| *x == id)?;
            sp.ids.remove(at);
            return Some(Message {
                topic: sp.session.reply_topic(),
                ..m.clone()
            });
        }
        sp.session.observe(m.class, &m.payload);
        None
    }

    pub(super) fn sp_connack(&mut self, client: &Client) {
        let Some(sp) = self.sp.as_mut() else { return };
        for topic in sp.session.subscriptions() {
            if let Err(e) = client.subscribe(&topic) {
                emit(ClientRefused {
                    sink: &self.t.cfg.name,
                    op: ClientOp::Subscribe,
                    error: &e,
                });
            }
        }
        let now = self.t.clock.now();
        let births = sp.session.connected(sp.bd, now);
        sp.pending.extend(births);
    }

    pub(super) fn sp_inbound(&mut self, topic: &str, payload: &[u8], retain: bool) {
        let Some(sp) = self.sp.as_mut() else { return };
        let r = sp.session.inbound(topic, payload, self.t.clock.now());
        if let Some(why) = &r.ignored {
            debug!(sink = %self.t.cfg.name, topic, why = %why, "Sparkplug message ignored");
        }
        sp.pending.extend(r.out);
        let commands: Vec<Vec<u8>> = r.commands.into_iter().map(|c| sp.tag_command(c)).collect();
        for c in commands {
            self.command(c, retain);
        }
    }

    /// Comm loss and recovery from the health owner: DDEATH when a born device goes down.
    pub(super) fn sp_health(&mut self) {
        let Some(sp) = self.sp.as_mut() else { return };
        let now = self.t.clock.now();
        let health = self.t.health.borrow();
        for i in 0..sp.up.len() {
            let up = health.is_up(i as u32);
            if up != sp.up[i] {
                sp.up[i] = up;
                if let Some(o) = sp.session.health(i, up, now) {
                    sp.pending.push_back(o);
                }
            }
        }
    }

    /// NDEATH for a clean stop.
    pub(super) fn sp_death(&self) -> Option<Out> {
        let sp = self.sp.as_ref()?;
        Some(sp.session.death(sp.bd, self.t.clock.now()))
    }

    fn sp_publish(&mut self, client: &Client, o: Out, id: Option<(u64, Class)>) -> bool {
        let bytes = o.payload.len();
        let props = Props {
            binary: true,
            ..Props::default()
        };
        match client.publish(o.topic, o.qos, false, o.payload, props) {
            Ok(()) => {
                self.session.handed(id);
                emit(Published {
                    sink: self.sm,
                    bytes,
                });
                true
            }
            Err(e) => {
                // Cannot happen while the event loop lives (see `pump`).
                emit(ClientRefused {
                    sink: &self.t.cfg.name,
                    op: ClientOp::Publish,
                    error: &e,
                });
                false
            }
        }
    }

    /// Like `pump`: births and deaths first, then outbox records while the session gives room
    /// and the node may publish (born, the primary host online).
    pub(super) fn sp_pump(&mut self, client: &Client) {
        let Some(mut sp) = self.sp.take() else { return };
        self.sp_pump_with(client, &mut sp);
        self.sp = Some(sp);
    }

    fn sp_pump_with(&mut self, client: &Client, sp: &mut Sp) {
        let reply_topic = self.t.who.agent_topic(REPLY_LEAF);
        loop {
            while !sp.pending.is_empty() && self.session.room(self.t.clock.mono()) > 0 {
                let Some(o) = sp.pending.pop_front() else {
                    break;
                };
                if !self.sp_publish(client, o, None) {
                    return;
                }
            }
            if !sp.pending.is_empty() || !sp.session.may_publish() {
                return;
            }
            let Some(records) = self.next_records() else {
                return;
            };
            let now = self.t.clock.now();
            for r in records {
                // Keeps the replay rate's accounting; Sparkplug says `is_historical` instead.
                let _ = self.session.is_replay(r.created, r.replayed);
                if r.topic == reply_topic {
                    // A reply to a command on the agent's JSON command topic: JSON, as asked.
                    let o = Out {
                        topic: r.topic,
                        payload: r.payload,
                        qos: 1,
                    };
                    let bytes = o.payload.len();
                    if client
                        .publish(o.topic, 1, false, o.payload, Props::default())
                        .is_err()
                    {
                        return;
                    }
                    self.session.handed(Some((r.id, r.class)));
                    emit(Published {
                        sink: self.sm,
                        bytes,
                    });
                    continue;
                }
                // Alarms and replies wait for their PUBACK; data as `data_qos` says (0, the
                // specification's QoS, by default).
                let qos = if r.class == Class::Data {
                    self.t.cfg.data_qos
                } else {
                    1
                };
                let enc = sp
                    .session
                    .encode(r.class, &r.topic, &r.payload, r.created, qos, now);
                for o in enc.before {
                    if !self.sp_publish(client, o, None) {
                        return;
                    }
                }
                match enc.own {
                    Some(o) => {
                        if !self.sp_publish(client, o, Some((r.id, r.class))) {
                            return;
                        }
                    }
                    None => {
                        // Nothing to send for it (a summary, values its birth carries).
                        if let Err(e) = self.t.outbox.ack(r.id) {
                            emit(OutboxError {
                                sink: &self.t.cfg.name,
                                what: OutboxOp::Ack,
                                error: &e,
                            });
                        }
                    }
                }
            }
        }
    }
}
