//! The Sparkplug B 3.0 edge-node session, pure: it takes the time, connection events, the
//! sink's records and what arrives on the node's topics, and returns the messages to publish
//! and the commands to hand to the engine. No sockets, files or clocks (the sink task in
//! `io/publisher.rs` does the I/O; the bdSeq file is `super::BdSeqFile`).
//!
//! What it keeps: the bdSeq of this connection, the `seq` counter shared by every BIRTH, DATA
//! and DDEATH, the alias of every metric, the last value of every metric (for births), which
//! devices are born, and the primary host's STATE. docs/SPARKPLUG.md has the mapping.

use std::collections::HashMap;

use prost::Message as _;
use serde_json::Value;

use super::model::Model;
use super::proto::{
    datatype, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueValue,
};
use crate::core::outbound::Class;
use crate::core::report::{figures_of_payload, Figure, AREA};
use crate::core::time::parse_ts;

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
pub const BD_SEQ: &str = "bdSeq";
pub const REBIRTH: &str = "Node Control/Rebirth";
/// NCMD: a full JSON operator command, as on the agent's own command topic.
pub const NODE_COMMAND: &str = "Node Control/Command";
/// NDATA: the JSON reply to the last command that came through Sparkplug.
pub const NODE_REPLY: &str = "Node Control/Command Reply";
/// Who the engine is told sent a DCMD (`by`), unless the command names someone.
pub const DCMD_BY: &str = "sparkplug";
/// The `Quality` property: the values of Sparkplug 3.0.
pub const QUALITY_GOOD: u32 = 192;
pub const QUALITY_BAD: u32 = 0;

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Out {
    pub topic: String,
    pub payload: Vec<u8>,
    /// 0 for births, DATA and DDEATH (the specification's QoS), 1 for NDEATH.
    pub qos: u8,
}

/// A value as the session keeps it; turned into the metric's datatype when encoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Num(f64),
    Bool(bool),
    Text(String),
}

/// What a metric is, for commands and properties.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Tag,
    /// `Alarms/{rule}`: the ISA-18.2 state, with properties.
    Alarm,
    /// `Alarms/{rule}/Ack` (write true).
    Ack(String),
    /// `Alarms/{rule}/Shelve` (write a duration such as "2h").
    Shelve(String),
    /// `Alarms/{rule}/Unshelve`, `/Reset` (write true).
    Op(String, &'static str),
    /// Node metrics.
    Node,
    /// A figure set from records (the daily report): null until the first one.
    Figure,
}

#[derive(Debug, Clone)]
struct Slot {
    name: String,
    alias: u64,
    datatype: u32,
    kind: Kind,
    value: Val,
    /// None: the metric has no quality (alarms, commands).
    good: Option<bool>,
    ts: i64,
    /// Alarm properties: state, priority, ack, active.
    alarm: Option<AlarmProps>,
}

#[derive(Debug, Clone, PartialEq)]
struct AlarmProps {
    state: String,
    priority: String,
    ack: bool,
    active: bool,
}

#[derive(Debug, Clone)]
struct Dev {
    name: String,
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
    born: bool,
    /// When the device was last declared dead (DDEATH): older records do not rebirth it.
    died_at: i64,
    up: bool,
}

/// What a record of the outbox becomes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Encoded {
    /// Births the record needs first (its device was not born in this session).
    pub before: Vec<Out>,
    /// The record's own message; None when there is nothing to send (then it is acknowledged
    /// at once: a summary, a record its birth already carries, a device that is dead).
    pub own: Option<Out>,
}

/// What arrived on a subscribed topic asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Inbound {
    /// To publish now (a rebirth; births after the primary host came online).
    pub out: Vec<Out>,
    /// JSON operator commands for the engine.
    pub commands: Vec<Vec<u8>>,
    /// Why something was ignored (for the log).
    pub ignored: Option<String>,
}

#[derive(Debug)]
pub struct Session {
    group: String,
    node: String,
    host: Option<String>,
    node_slots: Vec<Slot>,
    devs: Vec<Dev>,
    dev_index: HashMap<String, usize>,
    next_alias: u64,
    bd_seq: u64,
    seq: u8,
    connected: bool,
    node_born: bool,
    host_online: bool,
    /// Timestamp of the last STATE message taken (older ones are ignored).
    host_ts: i64,
    births_at: i64,
}

fn num_value(datatype: u32, x: f64) -> MetricValue {
    match datatype {
        datatype::BOOLEAN => MetricValue::BooleanValue(x != 0.0),
        // Signed types of 32 bits or less travel as their two's complement bits.
        datatype::INT8 | datatype::INT16 | datatype::INT32 => {
            MetricValue::IntValue(x as i64 as i32 as u32)
        }
        datatype::UINT8 | datatype::UINT16 | datatype::UINT32 => MetricValue::IntValue(x as u32),
        datatype::INT64 => MetricValue::LongValue(x as i64 as u64),
        datatype::UINT64 => MetricValue::LongValue(x as u64),
        datatype::FLOAT => MetricValue::FloatValue(x as f32),
        datatype::STRING => MetricValue::StringValue(x.to_string()),
        _ => MetricValue::DoubleValue(x),
    }
}

fn prop(t: u32, v: PropertyValueValue) -> PropertyValue {
    PropertyValue {
        r#type: Some(t),
        is_null: None,
        value: Some(v),
    }
}

fn value_of(datatype: u32, v: &Val) -> Option<MetricValue> {
    match v {
        Val::Null => None,
        Val::Num(x) if x.is_finite() => Some(num_value(datatype, *x)),
        Val::Num(_) => None,
        Val::Bool(b) => Some(match datatype {
            datatype::BOOLEAN => MetricValue::BooleanValue(*b),
            dt => num_value(dt, f64::from(u8::from(*b))),
        }),
        Val::Text(s) => Some(MetricValue::StringValue(s.clone())),
    }
}

impl Slot {
    fn new(name: String, alias: u64, datatype: u32, kind: Kind) -> Slot {
        let (value, good) = match (&kind, datatype) {
            (Kind::Tag, _) => (Val::Null, Some(false)),
            (Kind::Figure, _) => (Val::Null, None),
            (_, datatype::BOOLEAN) => (Val::Bool(false), None),
            (_, datatype::STRING) => (Val::Text(String::new()), None),
            _ => (Val::Null, None),
        };
        Slot {
            name,
            alias,
            datatype,
            kind,
            value,
            good,
            ts: 0,
            alarm: None,
        }
    }

    /// The metric: on births with name and alias, on DATA with the alias only.
    fn metric(&self, birth: bool, historical: bool) -> Metric {
        let value = value_of(self.datatype, &self.value);
        let mut keys = Vec::new();
        let mut values = Vec::new();
        if let Some(good) = self.good {
            keys.push("Quality".to_string());
            let q = if good && value.is_some() {
                QUALITY_GOOD
            } else {
                QUALITY_BAD
            };
            values.push(prop(datatype::INT32, PropertyValueValue::IntValue(q)));
        }
        if let Some(a) = &self.alarm {
            for (k, v) in [
                (
                    "state",
                    prop(
                        datatype::STRING,
                        PropertyValueValue::StringValue(a.state.clone()),
                    ),
                ),
                (
                    "priority",
                    prop(
                        datatype::STRING,
                        PropertyValueValue::StringValue(a.priority.clone()),
                    ),
                ),
                (
                    "ack",
                    prop(datatype::BOOLEAN, PropertyValueValue::BooleanValue(a.ack)),
                ),
                (
                    "active",
                    prop(
                        datatype::BOOLEAN,
                        PropertyValueValue::BooleanValue(a.active),
                    ),
                ),
            ] {
                keys.push(k.to_string());
                values.push(v);
            }
        }
        Metric {
            name: birth.then(|| self.name.clone()),
            alias: Some(self.alias),
            timestamp: Some(self.ts.max(0) as u64),
            datatype: Some(self.datatype),
            is_historical: historical.then_some(true),
            is_null: value.is_none().then_some(true),
            properties: (!keys.is_empty()).then_some(PropertySet { keys, values }),
            value,
            ..Default::default()
        }
    }
}

/// ISA-18.2 reading of our alarm state labels (docs/MQTT.md): acknowledged unless waiting
/// for an acknowledgement; active while the condition is abnormal.
fn alarm_props(state: &str, priority: &str) -> AlarmProps {
    AlarmProps {
        state: state.to_string(),
        priority: priority.to_string(),
        ack: !matches!(state, "active_unacked" | "returned_unacked"),
        active: matches!(state, "active_unacked" | "active_acked"),
    }
}

impl Session {
    /// `group`: `[agent] site`; `node`: `[agent] id`; `host`: the primary host, if any.
    pub fn new(group: &str, node: &str, host: Option<&str>, model: &Model) -> Session {
        let mut s = Session {
            group: group.to_string(),
            node: node.to_string(),
            host: host.map(str::to_string),
            node_slots: Vec::new(),
            devs: Vec::new(),
            dev_index: HashMap::new(),
            // Alias 0 is left unused: some hosts read 0 as "no alias".
            next_alias: 1,
            bd_seq: 0,
            seq: 0,
            connected: false,
            node_born: false,
            host_online: host.is_none(),
            host_ts: i64::MIN,
            births_at: i64::MIN,
        };
        let mut node = vec![
            (NODE_COMMAND.to_string(), datatype::STRING, Kind::Node),
            (NODE_REPLY.to_string(), datatype::STRING, Kind::Node),
        ];
        node.extend(
            model
                .node
                .iter()
                .map(|m| (m.name.clone(), m.datatype, Kind::Figure)),
        );
        for (name, dt, kind) in node {
            let alias = s.alias();
            s.node_slots.push(Slot::new(name, alias, dt, kind));
        }
        for d in &model.devices {
            let mut dev = Dev {
                name: d.name.clone(),
                slots: Vec::new(),
                by_name: HashMap::new(),
                born: false,
                died_at: i64::MIN,
                up: false,
            };
            for (tag, dt) in &d.tags {
                let alias = s.alias();
                dev.push(Slot::new(tag.clone(), alias, *dt, Kind::Tag));
            }
            for rule in &d.alarms {
                s.add_alarm(&mut dev, rule);
            }
            for (name, dt) in &d.figures {
                let alias = s.alias();
                dev.push(Slot::new(name.clone(), alias, *dt, Kind::Figure));
            }
            s.dev_index.insert(dev.name.clone(), s.devs.len());
            s.devs.push(dev);
        }
        s
    }

    fn alias(&mut self) -> u64 {
        let a = self.next_alias;
        self.next_alias += 1;
        a
    }

    fn add_alarm(&mut self, dev: &mut Dev, rule: &str) {
        let base = format!("Alarms/{rule}");
        let metrics = [
            (base.clone(), datatype::STRING, Kind::Alarm),
            (
                format!("{base}/Ack"),
                datatype::BOOLEAN,
                Kind::Ack(rule.into()),
            ),
            (
                format!("{base}/Shelve"),
                datatype::STRING,
                Kind::Shelve(rule.into()),
            ),
            (
                format!("{base}/Unshelve"),
                datatype::BOOLEAN,
                Kind::Op(rule.into(), "unshelve"),
            ),
            (
                format!("{base}/Reset"),
                datatype::BOOLEAN,
                Kind::Op(rule.into(), "reset"),
            ),
        ];
        for (name, dt, kind) in metrics {
            let alias = self.alias();
            let mut slot = Slot::new(name, alias, dt, kind);
            if slot.kind == Kind::Alarm {
                slot.value = Val::Text("normal".into());
                slot.alarm = Some(alarm_props("normal", ""));
            }
            dev.push(slot);
        }
    }

    /// `spBv1.0/{group}/{kind}/{node}[/{device}]`.
    pub fn topic(&self, kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("{NAMESPACE}/{}/{kind}/{}/{d}", self.group, self.node),
            None => format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node),
        }
    }

    /// The primary host's STATE topic, if one is configured.
    pub fn state_topic(&self) -> Option<String> {
        self.host.as_ref().map(|h| format!("{NAMESPACE}/STATE/{h}"))
    }

    /// What to subscribe to (QoS 1) after every CONNACK.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out = vec![self.topic("NCMD", None), self.topic("DCMD", Some("+"))];
        out.extend(self.state_topic());
        out
    }

    /// The NDEATH for `bd_seq`: the MQTT Will of the connection that will carry that bdSeq.
    pub fn death(&self, bd_seq: u64, now: i64) -> Out {
        let p = Payload {
            timestamp: Some(now.max(0) as u64),
            metrics: vec![Metric {
                name: Some(BD_SEQ.into()),
                timestamp: Some(now.max(0) as u64),
                datatype: Some(datatype::INT64),
                value: Some(MetricValue::LongValue(bd_seq)),
                ..Default::default()
            }],
            ..Default::default()
        };
        Out {
            topic: self.topic("NDEATH", None),
            payload: p.encode_to_vec(),
            qos: 1,
        }
    }

    /// The bdSeq of the current (or last) connection.
    pub fn bd_seq(&self) -> u64 {
        self.bd_seq
    }

    /// CONNACK of the connection whose Will carries `bd_seq`: births now, or once the primary
    /// host says it is online.
    pub fn connected(&mut self, bd_seq: u64, now: i64) -> Vec<Out> {
        self.connected = true;
        self.bd_seq = bd_seq;
        self.node_born = false;
        for d in &mut self.devs {
            d.born = false;
        }
        if self.host.is_some() {
            // A retained STATE arrives after the subscription; until then nothing is sent.
            self.host_online = false;
            self.host_ts = i64::MIN;
            return Vec::new();
        }
        self.births(now)
    }

    pub fn disconnected(&mut self) {
        self.connected = false;
        self.node_born = false;
        for d in &mut self.devs {
            d.born = false;
        }
    }

    /// Records may be published: connected, born, and the primary host (if any) online.
    pub fn may_publish(&self) -> bool {
        self.connected && self.node_born && self.host_online
    }

    /// When the current births were sent: records made before are history.
    pub fn births_at(&self) -> i64 {
        self.births_at
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn payload(&mut self, metrics: Vec<Metric>, now: i64) -> Vec<u8> {
        Payload {
            timestamp: Some(now.max(0) as u64),
            metrics,
            seq: Some(self.next_seq()),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// NBIRTH (seq 0) and a DBIRTH for every device that has served good values.
    fn births(&mut self, now: i64) -> Vec<Out> {
        self.seq = 0;
        self.births_at = now;
        self.node_born = true;
        let ts = now.max(0) as u64;
        let mut metrics = vec![
            Metric {
                name: Some(BD_SEQ.into()),
                timestamp: Some(ts),
                datatype: Some(datatype::INT64),
                value: Some(MetricValue::LongValue(self.bd_seq)),
                ..Default::default()
            },
            // Never aliased (Sparkplug 3.0).
            Metric {
                name: Some(REBIRTH.into()),
                timestamp: Some(ts),
                datatype: Some(datatype::BOOLEAN),
                value: Some(MetricValue::BooleanValue(false)),
                ..Default::default()
            },
        ];
        for s in &mut self.node_slots {
            if s.ts == 0 {
                s.ts = now;
            }
        }
        metrics.extend(self.node_slots.iter().map(|s| s.metric(true, false)));
        let nbirth = Out {
            topic: self.topic("NBIRTH", None),
            payload: self.payload(metrics, now),
            qos: 0,
        };
        let mut out = vec![nbirth];
        for i in 0..self.devs.len() {
            self.devs[i].born = false;
            if self.devs[i].up {
                out.push(self.dbirth(i, now));
            }
        }
        out
    }

    fn dbirth(&mut self, i: usize, now: i64) -> Out {
        let dev = &mut self.devs[i];
        dev.born = true;
        for s in &mut dev.slots {
            if s.ts == 0 {
                s.ts = now;
            }
        }
        let metrics = dev.slots.iter().map(|s| s.metric(true, false)).collect();
        let topic = self.topic("DBIRTH", Some(&self.devs[i].name.clone()));
        Out {
            topic,
            payload: self.payload(metrics, now),
            qos: 0,
        }
    }

    /// Keeps the newest value of every metric a message of the engine carries (called when the
    /// message is stored, before the outbox, so births carry current values even while the
    /// primary host is away and the records wait).
    pub fn observe(&mut self, class: Class, payload: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return;
        };
        match class {
            Class::Data => {
                let Some(i) = self.device_of(&v) else { return };
                let ts = v["ts"].as_str().and_then(parse_ts).unwrap_or(0);
                let dev = &mut self.devs[i];
                let mut any_good = false;
                for (tag, val, good) in data_values(&v) {
                    if let Some(&k) = dev.by_name.get(tag) {
                        let s = &mut dev.slots[k];
                        s.value = val;
                        s.good = Some(good);
                        s.ts = ts;
                        any_good |= good;
                    }
                }
                if any_good {
                    dev.up = true;
                }
            }
            Class::Alarm => {
                let Some(i) = self.device_of(&v) else { return };
                let Some(rule) = v["rule"].as_str() else {
                    return;
                };
                if !self.devs[i].by_name.contains_key(&format!("Alarms/{rule}")) {
                    // A rule this model did not list (added by a reload): declared by the
                    // device's next birth.
                    let mut dev = std::mem::replace(&mut self.devs[i], Dev::empty());
                    self.add_alarm(&mut dev, rule);
                    dev.born = false;
                    self.devs[i] = dev;
                }
                let dev = &mut self.devs[i];
                if let Some(&k) = dev.by_name.get(&format!("Alarms/{rule}")) {
                    let state = v["state"].as_str().unwrap_or("normal");
                    let priority = v["priority"].as_str().unwrap_or("");
                    let s = &mut dev.slots[k];
                    s.value = Val::Text(state.into());
                    s.alarm = Some(alarm_props(state, priority));
                    s.ts = v["ts"].as_str().and_then(parse_ts).unwrap_or(0);
                }
            }
            Class::Summary => {
                self.apply_report(&v);
            }
            Class::Status => {}
        }
    }

    /// Sets the figures of a daily report (`alsentry/report/1`) on its cell's device metrics
    /// or, for the area (`_area`), on the node metrics. Returns (None = node / Some(device),
    /// the slots set); None when it is not a report or not of a cell this model declared.
    fn apply_report(&mut self, v: &Value) -> Option<(Option<usize>, Vec<usize>)> {
        let figures = figures_of_payload(v)?;
        let ts = v["ts"].as_str().and_then(parse_ts).unwrap_or(0);
        let device = v["device"].as_str()?;
        let (target, slots) = if device == AREA {
            (None, &mut self.node_slots)
        } else {
            let i = self.device_of(v)?;
            (Some(i), &mut self.devs[i].slots)
        };
        let mut set = Vec::new();
        for (name, f) in figures {
            let Some(k) = slots
                .iter()
                .position(|s| s.kind == Kind::Figure && s.name == name)
            else {
                continue;
            };
            let s = &mut slots[k];
            s.value = match f {
                // A count is far below 2^53: exact as f64, written as UInt64.
                Figure::U64(x) => Val::Num(x as f64),
                Figure::F64(x) => Val::Num(x),
                Figure::Bool(b) => Val::Bool(b),
                Figure::Text(t) => Val::Text(t),
            };
            s.ts = ts;
            set.push(k);
        }
        (!set.is_empty()).then_some((target, set))
    }

    fn device_of(&self, v: &Value) -> Option<usize> {
        v["device"]
            .as_str()
            .and_then(|d| self.dev_index.get(d))
            .copied()
    }

    /// Device `i` (in model order) started or stopped answering: DDEATH if it was born.
    /// `up` is the health owner's view.
    pub fn health(&mut self, i: usize, up: bool, now: i64) -> Option<Out> {
        if i >= self.devs.len() {
            return None;
        }
        let was = self.devs[i].up;
        self.devs[i].up = up;
        if up || !was {
            return None;
        }
        self.devs[i].died_at = now;
        if !(self.devs[i].born && self.may_publish()) {
            self.devs[i].born = false;
            return None;
        }
        self.devs[i].born = false;
        let topic = self.topic("DDEATH", Some(&self.devs[i].name.clone()));
        let payload = self.payload(Vec::new(), now);
        Some(Out {
            topic,
            payload,
            qos: 0,
        })
    }

    /// An outbox record (a JSON message of the engine) as Sparkplug. `created`: when the
    /// record was stored; records older than the current births go out `is_historical`.
    /// `qos`: what this class is published with.
    pub fn encode(
        &mut self,
        class: Class,
        topic: &str,
        payload: &[u8],
        created: i64,
        qos: u8,
        now: i64,
    ) -> Encoded {
        let mut enc = Encoded::default();
        let historical = created < self.births_at;
        if class == Class::Status && topic == self.topic("NDATA", None) {
            // A reply to a command that came through Sparkplug (see `reply_topic`).
            let Some(k) = self.node_slots.iter().position(|s| s.name == NODE_REPLY) else {
                return enc;
            };
            let text = String::from_utf8_lossy(payload).into_owned();
            let s = &mut self.node_slots[k];
            s.value = Val::Text(text);
            s.ts = created;
            let m = s.metric(false, false);
            enc.own = Some(Out {
                topic: topic.to_string(),
                payload: self.payload(vec![m], now),
                qos,
            });
            return enc;
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            return enc;
        };
        if class == Class::Summary {
            return self.encode_report(&v, historical, qos, now);
        }
        let Some(i) = self.device_of(&v) else {
            return enc;
        };
        let metrics: Vec<Metric> = match class {
            Class::Data => {
                let ts = v["ts"].as_str().and_then(parse_ts).unwrap_or(created);
                let good = data_values(&v).any(|(_, _, g)| g);
                if !self.devs[i].born {
                    if !good || created <= self.devs[i].died_at {
                        return enc;
                    }
                    self.devs[i].up = true;
                    enc.before.push(self.dbirth(i, now));
                    if !historical {
                        // The birth carries these values (or newer ones).
                        return enc;
                    }
                }
                let dev = &self.devs[i];
                data_values(&v)
                    .filter_map(|(tag, val, good)| {
                        let k = *dev.by_name.get(tag)?;
                        let mut s = dev.slots[k].clone();
                        s.value = val;
                        s.good = Some(good);
                        s.ts = ts;
                        Some(s.metric(false, historical))
                    })
                    .collect()
            }
            Class::Alarm => {
                let Some(rule) = v["rule"].as_str() else {
                    return enc;
                };
                if !self.devs[i].born {
                    // Its current state goes out with the device's next birth.
                    return enc;
                }
                let dev = &self.devs[i];
                let Some(&k) = dev.by_name.get(&format!("Alarms/{rule}")) else {
                    return enc;
                };
                let mut s = dev.slots[k].clone();
                let state = v["state"].as_str().unwrap_or("normal");
                s.value = Val::Text(state.into());
                s.alarm = Some(alarm_props(state, v["priority"].as_str().unwrap_or("")));
                s.ts = v["ts"].as_str().and_then(parse_ts).unwrap_or(created);
                vec![s.metric(false, historical)]
            }
            Class::Status | Class::Summary => return enc,
        };
        if metrics.is_empty() {
            return enc;
        }
        let topic = self.topic("DDATA", Some(&self.devs[i].name.clone()));
        enc.own = Some(Out {
            topic,
            payload: self.payload(metrics, now),
            qos,
        });
        enc
    }

    /// A daily report as NDATA (the area) or DDATA (a cell) of its figures; a cell not born
    /// gets them with its next DBIRTH.
    fn encode_report(&mut self, v: &Value, historical: bool, qos: u8, now: i64) -> Encoded {
        let mut enc = Encoded::default();
        let Some((target, set)) = self.apply_report(v) else {
            return enc;
        };
        let (topic, slots) = match target {
            None => (self.topic("NDATA", None), &self.node_slots),
            Some(i) if self.devs[i].born => {
                let name = self.devs[i].name.clone();
                (self.topic("DDATA", Some(&name)), &self.devs[i].slots)
            }
            Some(_) => return enc,
        };
        let metrics = set
            .iter()
            .map(|&k| slots[k].metric(false, historical))
            .collect();
        enc.own = Some(Out {
            topic,
            payload: self.payload(metrics, now),
            qos,
        });
        enc
    }

    /// Where a reply to a command that came through Sparkplug is stored (and then published
    /// as the `Node Control/Command Reply` metric).
    pub fn reply_topic(&self) -> String {
        self.topic("NDATA", None)
    }

    /// Sets a node metric declared in the model (`Model::node`): NDATA when born, and the
    /// value goes into every later NBIRTH.
    pub fn set_node_metric(&mut self, name: &str, value: Val, now: i64) -> Option<Out> {
        let k = self.node_slots.iter().position(|s| s.name == name)?;
        let s = &mut self.node_slots[k];
        s.value = value;
        s.ts = now;
        let m = s.metric(false, false);
        if !self.may_publish() {
            return None;
        }
        let topic = self.topic("NDATA", None);
        Some(Out {
            topic,
            payload: self.payload(vec![m], now),
            qos: 0,
        })
    }

    /// A message on a subscribed topic: NCMD, DCMD or the primary host's STATE.
    pub fn inbound(&mut self, topic: &str, payload: &[u8], now: i64) -> Inbound {
        let mut r = Inbound::default();
        if Some(topic) == self.state_topic().as_deref() {
            self.state(payload, now, &mut r);
            return r;
        }
        let ncmd = self.topic("NCMD", None);
        let dcmd_prefix = format!("{}/", self.topic("DCMD", None));
        let device = if topic == ncmd {
            None
        } else if let Some(d) = topic.strip_prefix(&dcmd_prefix) {
            match self.dev_index.get(d) {
                Some(&i) => Some(i),
                None => {
                    r.ignored = Some(format!("DCMD for unknown device \"{d}\""));
                    return r;
                }
            }
        } else {
            return r;
        };
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                r.ignored = Some(format!("{topic}: not a Sparkplug payload: {e}"));
                return r;
            }
        };
        for m in &p.metrics {
            match device {
                None => self.node_command(m, now, &mut r),
                Some(i) => self.device_command(i, m, &mut r),
            }
        }
        r
    }

    fn state(&mut self, payload: &[u8], now: i64, r: &mut Inbound) {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            r.ignored = Some("STATE: not JSON".into());
            return;
        };
        let Some(online) = v["online"].as_bool() else {
            r.ignored = Some("STATE: no \"online\"".into());
            return;
        };
        // Lenient about the timestamp's spelling (a float, or none: then it is not older).
        let ts = match (&v["timestamp"], v["timestamp"].as_f64()) {
            (Value::Number(n), _) if n.is_i64() => n.as_i64().unwrap_or(self.host_ts),
            (_, Some(f)) => f as i64,
            _ => self.host_ts,
        };
        if ts < self.host_ts {
            r.ignored = Some("STATE older than the last one taken".into());
            return;
        }
        self.host_ts = ts;
        let was = self.host_online;
        self.host_online = online;
        if online && !was && self.connected {
            r.out = self.births(now);
        } else if !online {
            // Births again when it returns, so that it gets the current picture.
            self.node_born = false;
        }
    }

    fn lookup<'a>(slots: &'a [Slot], m: &Metric) -> Option<&'a Slot> {
        match (&m.name, m.alias) {
            (Some(n), _) => slots.iter().find(|s| &s.name == n),
            (None, Some(a)) => slots.iter().find(|s| s.alias == a),
            _ => None,
        }
    }

    fn node_command(&mut self, m: &Metric, now: i64, r: &mut Inbound) {
        if m.name.as_deref() == Some(REBIRTH) {
            if m.value == Some(MetricValue::BooleanValue(true))
                && self.connected
                && self.host_online
            {
                // Same bdSeq, seq from 0, no reconnect.
                r.out.extend(self.births(now));
            }
            return;
        }
        match Self::lookup(&self.node_slots, m) {
            Some(s) if s.name == NODE_COMMAND => match &m.value {
                Some(MetricValue::StringValue(json)) => r.commands.push(json.as_bytes().to_vec()),
                _ => r.ignored = Some(format!("{NODE_COMMAND} needs a String value")),
            },
            _ => r.ignored = Some(format!("NCMD metric {:?} is not writable", m.name)),
        }
    }

    fn device_command(&mut self, i: usize, m: &Metric, r: &mut Inbound) {
        let dev = &self.devs[i];
        let Some(s) = Self::lookup(&dev.slots, m) else {
            r.ignored = Some(format!(
                "DCMD for unknown metric {:?} of {}",
                m.name, dev.name
            ));
            return;
        };
        let yes = m.value == Some(MetricValue::BooleanValue(true));
        let cmd = match (&s.kind, &m.value) {
            (Kind::Ack(rule), _) if yes => {
                serde_json::json!({"op":"ack","device":dev.name,"rule":rule,"by":DCMD_BY})
            }
            (Kind::Op(rule, op), _) if yes => {
                serde_json::json!({"op":op,"device":dev.name,"rule":rule,"by":DCMD_BY})
            }
            (Kind::Shelve(rule), Some(MetricValue::StringValue(d))) => {
                serde_json::json!({"op":"shelve","device":dev.name,"rule":rule,"by":DCMD_BY,"duration":d})
            }
            _ => {
                r.ignored = Some(format!("DCMD: {} is not writable with that value", s.name));
                return;
            }
        };
        r.commands.push(cmd.to_string().into_bytes());
    }
}

impl Dev {
    fn empty() -> Dev {
        Dev {
            name: String::new(),
            slots: Vec::new(),
            by_name: HashMap::new(),
            born: false,
            died_at: i64::MIN,
            up: false,
        }
    }

    fn push(&mut self, s: Slot) {
        self.by_name.insert(s.name.clone(), self.slots.len());
        self.slots.push(s);
    }
}

/// The values of a data payload: (tag, value, good).
fn data_values(v: &Value) -> impl Iterator<Item = (&str, Val, bool)> {
    v["values"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(tag, o)| {
            let val = match &o["v"] {
                Value::Number(n) => n.as_f64().map_or(Val::Null, Val::Num),
                Value::Bool(b) => Val::Bool(*b),
                _ => Val::Null,
            };
            let good = o["q"].as_str() == Some("good") && val != Val::Null;
            (tag.as_str(), val, good)
        })
}

#[cfg(test)]
mod tests {
    use super::super::model::DeviceModel;
    use super::*;

    fn model() -> Model {
        Model {
            node: Vec::new(),
            devices: vec![
                DeviceModel {
                    name: "pot-1".into(),
                    tags: vec![
                        ("voltage".into(), datatype::FLOAT),
                        ("count".into(), datatype::UINT16),
                        ("temp".into(), datatype::DOUBLE),
                    ],
                    alarms: vec!["high_voltage".into()],
                    figures: Vec::new(),
                },
                DeviceModel {
                    name: "pot-2".into(),
                    tags: vec![("voltage".into(), datatype::FLOAT)],
                    alarms: Vec::new(),
                    figures: Vec::new(),
                },
            ],
        }
    }

    fn data(device: &str, ts: &str, values: &[(&str, f64)]) -> Vec<u8> {
        let vals: serde_json::Map<String, Value> = values
            .iter()
            .map(|(t, v)| (t.to_string(), serde_json::json!({"v": v, "q": "good"})))
            .collect();
        serde_json::json!({"schema":"alsentry/data/1","agent":"gw","device":device,"ts":ts,"values":vals})
            .to_string()
            .into_bytes()
    }

    fn decode(o: &Out) -> Payload {
        Payload::decode(o.payload.as_slice()).unwrap()
    }

    fn by_name<'a>(p: &'a Payload, name: &str) -> &'a Metric {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no metric {name} in {p:?}"))
    }

    const T0: &str = "2026-12-06T10:00:00.000Z";
    const T0_MS: i64 = 1_796_551_200_000;

    /// A session connected with bdSeq 7 whose pot-1 has served values (stored, then pumped).
    fn born() -> (Session, Vec<Out>) {
        let mut s = Session::new("plant", "gw", None, &model());
        let mut out = s.connected(7, T0_MS);
        let rec = data(
            "pot-1",
            T0,
            &[("voltage", 4.25), ("count", 3.0), ("temp", 961.5)],
        );
        s.observe(Class::Data, &rec);
        let enc = s.encode(Class::Data, "x", &rec, T0_MS + 1, 0, T0_MS + 2);
        assert_eq!(enc.own, None, "the birth carries the first values");
        out.extend(enc.before);
        (s, out)
    }

    #[test]
    fn nbirth_comes_first_with_bdseq_seq_0_and_rebirth_false() {
        let mut s = Session::new("plant", "gw", None, &model());
        assert_eq!(
            s.subscriptions(),
            ["spBv1.0/plant/NCMD/gw", "spBv1.0/plant/DCMD/gw/+"]
        );
        let out = s.connected(7, T0_MS);
        assert_eq!(out.len(), 1, "no device has served values yet: NBIRTH only");
        assert_eq!(out[0].topic, "spBv1.0/plant/NBIRTH/gw");
        assert_eq!(out[0].qos, 0);
        let p = decode(&out[0]);
        assert_eq!(p.seq, Some(0));
        let bd = by_name(&p, BD_SEQ);
        assert_eq!(bd.datatype, Some(datatype::INT64));
        assert_eq!(bd.value, Some(MetricValue::LongValue(7)));
        let rebirth = by_name(&p, REBIRTH);
        assert_eq!(rebirth.value, Some(MetricValue::BooleanValue(false)));
        assert_eq!(rebirth.alias, None, "Rebirth is never aliased");
        assert!(s.may_publish());
    }

    #[test]
    fn dbirth_declares_every_metric_with_alias_type_value_and_quality() {
        let (_, out) = born();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].topic, "spBv1.0/plant/DBIRTH/gw/pot-1");
        let p = decode(&out[1]);
        assert_eq!(p.seq, Some(1));
        let v = by_name(&p, "voltage");
        assert_eq!(v.datatype, Some(datatype::FLOAT));
        assert_eq!(v.value, Some(MetricValue::FloatValue(4.25)));
        assert!(v.alias.is_some());
        assert_eq!(v.timestamp, Some(T0_MS as u64));
        let q = v.properties.as_ref().unwrap();
        assert_eq!(q.keys, ["Quality"]);
        assert_eq!(
            q.values[0].value,
            Some(PropertyValueValue::IntValue(QUALITY_GOOD))
        );
        assert_eq!(by_name(&p, "count").value, Some(MetricValue::IntValue(3)));
        assert_eq!(
            by_name(&p, "temp").value,
            Some(MetricValue::DoubleValue(961.5))
        );
        let alarm = by_name(&p, "Alarms/high_voltage");
        assert_eq!(alarm.value, Some(MetricValue::StringValue("normal".into())));
        let props = alarm.properties.as_ref().unwrap();
        assert_eq!(props.keys, ["state", "priority", "ack", "active"]);
        by_name(&p, "Alarms/high_voltage/Ack");
        let mut aliases: Vec<u64> = p.metrics.iter().filter_map(|m| m.alias).collect();
        let n = aliases.len();
        aliases.sort_unstable();
        aliases.dedup();
        assert_eq!(aliases.len(), n, "aliases are unique");
    }

    #[test]
    fn ddata_carries_aliases_only_and_seq_counts_up_and_wraps() {
        let (mut s, out) = born();
        let birth = decode(&out[1]);
        let alias = by_name(&birth, "voltage").alias;
        let rec = data("pot-1", "2026-12-06T10:00:01.000Z", &[("voltage", 4.5)]);
        s.observe(Class::Data, &rec);
        let enc = s.encode(Class::Data, "x", &rec, T0_MS + 1000, 0, T0_MS + 1001);
        assert!(enc.before.is_empty());
        let o = enc.own.unwrap();
        assert_eq!(o.topic, "spBv1.0/plant/DDATA/gw/pot-1");
        let p = decode(&o);
        assert_eq!(p.seq, Some(2));
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name, None);
        assert_eq!(p.metrics[0].alias, alias);
        assert_eq!(p.metrics[0].value, Some(MetricValue::FloatValue(4.5)));
        assert_eq!(p.metrics[0].is_historical, None);
        let mut last = 2;
        for _ in 0..300 {
            let o = s
                .encode(Class::Data, "x", &rec, T0_MS + 1000, 0, T0_MS + 1001)
                .own
                .unwrap();
            let seq = decode(&o).seq.unwrap();
            assert_eq!(seq, (last + 1) % 256);
            last = seq;
        }
    }

    #[test]
    fn a_rebirth_ncmd_sends_nbirth_and_dbirths_again_with_the_same_bdseq() {
        let (mut s, _) = born();
        let cmd = Payload {
            metrics: vec![Metric {
                name: Some(REBIRTH.into()),
                datatype: Some(datatype::BOOLEAN),
                value: Some(MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = s.inbound("spBv1.0/plant/NCMD/gw", &cmd.encode_to_vec(), T0_MS + 5000);
        assert_eq!(r.out.len(), 2);
        let nbirth = decode(&r.out[0]);
        assert_eq!(nbirth.seq, Some(0));
        assert_eq!(
            by_name(&nbirth, BD_SEQ).value,
            Some(MetricValue::LongValue(7))
        );
        assert_eq!(r.out[1].topic, "spBv1.0/plant/DBIRTH/gw/pot-1");
        assert_eq!(decode(&r.out[1]).seq, Some(1));
    }

    #[test]
    fn ndeath_carries_the_bdseq_and_no_seq() {
        let s = Session::new("plant", "gw", None, &model());
        let d = s.death(42, T0_MS);
        assert_eq!(d.topic, "spBv1.0/plant/NDEATH/gw");
        assert_eq!(d.qos, 1);
        let p = decode(&d);
        assert_eq!(p.seq, None);
        assert_eq!(by_name(&p, BD_SEQ).value, Some(MetricValue::LongValue(42)));
    }

    #[test]
    fn with_a_primary_host_nothing_goes_out_until_it_is_online_and_backlog_is_historical() {
        let mut s = Session::new("plant", "gw", Some("scada"), &model());
        assert_eq!(s.subscriptions()[2], "spBv1.0/STATE/scada");
        assert!(s.connected(0, T0_MS).is_empty());
        assert!(!s.may_publish());
        let rec = data("pot-1", T0, &[("voltage", 4.25)]);
        s.observe(Class::Data, &rec);
        let online = |on: bool, ts: i64| format!(r#"{{"online":{on},"timestamp":{ts}}}"#);
        let r = s.inbound(
            "spBv1.0/STATE/scada",
            online(true, 100).as_bytes(),
            T0_MS + 10,
        );
        assert_eq!(r.out.len(), 2, "NBIRTH and pot-1's DBIRTH: {r:?}");
        assert!(s.may_publish());
        // The record stored before the births goes out flagged historical.
        let enc = s.encode(Class::Data, "x", &rec, T0_MS, 0, T0_MS + 11);
        let p = decode(&enc.own.unwrap());
        assert_eq!(p.metrics[0].is_historical, Some(true));
        // An older offline STATE is ignored; a newer one stops publishing.
        let r = s.inbound(
            "spBv1.0/STATE/scada",
            online(false, 99).as_bytes(),
            T0_MS + 12,
        );
        assert!(r.ignored.is_some());
        assert!(s.may_publish());
        s.inbound(
            "spBv1.0/STATE/scada",
            online(false, 101).as_bytes(),
            T0_MS + 13,
        );
        assert!(!s.may_publish());
        let r = s.inbound(
            "spBv1.0/STATE/scada",
            online(true, 102).as_bytes(),
            T0_MS + 20,
        );
        assert_eq!(
            decode(&r.out[0]).seq,
            Some(0),
            "births again when it returns"
        );
        assert_eq!(s.births_at(), T0_MS + 20);
        // A float timestamp, or none, is taken too.
        let off = br#"{"online":false,"timestamp":103.0}"#;
        s.inbound("spBv1.0/STATE/scada", off, T0_MS + 21);
        assert!(!s.may_publish());
        let r = s.inbound("spBv1.0/STATE/scada", br#"{"online":true}"#, T0_MS + 22);
        assert_eq!(r.out.len(), 2);
    }

    #[test]
    fn comm_loss_is_ddeath_and_recovery_a_new_dbirth() {
        let (mut s, _) = born();
        assert_eq!(s.health(0, true, T0_MS + 10), None);
        let d = s.health(0, false, T0_MS + 20).unwrap();
        assert_eq!(d.topic, "spBv1.0/plant/DDEATH/gw/pot-1");
        assert_eq!(decode(&d).seq, Some(2));
        // A record from before the death does not bring it back.
        let old = data("pot-1", T0, &[("voltage", 4.0)]);
        assert_eq!(
            s.encode(Class::Data, "x", &old, T0_MS + 15, 0, T0_MS + 21),
            Encoded::default()
        );
        // Good values after it do: DBIRTH.
        let new = data("pot-1", "2026-12-06T10:00:01.000Z", &[("voltage", 4.1)]);
        s.observe(Class::Data, &new);
        let enc = s.encode(Class::Data, "x", &new, T0_MS + 1000, 0, T0_MS + 1001);
        assert_eq!(enc.before[0].topic, "spBv1.0/plant/DBIRTH/gw/pot-1");
        assert_eq!(decode(&enc.before[0]).seq, Some(3));
    }

    #[test]
    fn alarm_transitions_are_ddata_with_isa_properties() {
        let (mut s, _) = born();
        let rec = serde_json::json!({"device":"pot-1","rule":"high_voltage","state":"active_unacked","priority":"high","ts":T0})
            .to_string();
        s.observe(Class::Alarm, rec.as_bytes());
        let o = s
            .encode(Class::Alarm, "x", rec.as_bytes(), T0_MS + 3, 1, T0_MS + 4)
            .own
            .unwrap();
        assert_eq!(o.qos, 1);
        let m = &decode(&o).metrics[0];
        assert_eq!(
            m.value,
            Some(MetricValue::StringValue("active_unacked".into()))
        );
        let props = m.properties.as_ref().unwrap();
        let get = |k: &str| {
            let i = props.keys.iter().position(|x| x == k).unwrap();
            props.values[i].value.clone()
        };
        assert_eq!(get("ack"), Some(PropertyValueValue::BooleanValue(false)));
        assert_eq!(get("active"), Some(PropertyValueValue::BooleanValue(true)));
        assert_eq!(
            get("priority"),
            Some(PropertyValueValue::StringValue("high".into()))
        );
    }

    #[test]
    fn dcmd_by_alias_and_ncmd_json_become_operator_commands() {
        let (mut s, out) = born();
        let birth = decode(&out[1]);
        let ack = by_name(&birth, "Alarms/high_voltage/Ack").alias;
        let cmd = Payload {
            metrics: vec![Metric {
                alias: ack,
                datatype: Some(datatype::BOOLEAN),
                value: Some(MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = s.inbound("spBv1.0/plant/DCMD/gw/pot-1", &cmd.encode_to_vec(), T0_MS);
        let c: Value = serde_json::from_slice(&r.commands[0]).unwrap();
        assert_eq!(c["op"], "ack");
        assert_eq!(c["device"], "pot-1");
        assert_eq!(c["rule"], "high_voltage");
        let json =
            r#"{"op":"shelve","device":"pot-1","rule":"high_voltage","by":"ops","duration":"1h"}"#;
        let cmd = Payload {
            metrics: vec![Metric {
                name: Some(NODE_COMMAND.into()),
                value: Some(MetricValue::StringValue(json.into())),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = s.inbound("spBv1.0/plant/NCMD/gw", &cmd.encode_to_vec(), T0_MS);
        assert_eq!(r.commands, [json.as_bytes().to_vec()]);
        let r = s.inbound("spBv1.0/plant/DCMD/gw/nope", &cmd.encode_to_vec(), T0_MS);
        assert!(r.ignored.is_some() && r.commands.is_empty());
        // The reply comes back as the Command Reply metric.
        let o = s
            .encode(
                Class::Status,
                &s.reply_topic(),
                br#"{"ok":true}"#,
                T0_MS,
                1,
                T0_MS,
            )
            .own
            .unwrap();
        let m = &decode(&o).metrics[0];
        assert_eq!(
            m.value,
            Some(MetricValue::StringValue(r#"{"ok":true}"#.into()))
        );
    }

    #[test]
    fn node_metrics_of_the_model_are_declared_and_set() {
        let mut m = model();
        m.node.push(super::super::model::NodeMetric {
            name: "Report/Energy kWh".into(),
            datatype: datatype::DOUBLE,
        });
        let mut s = Session::new("plant", "gw", None, &m);
        let out = s.connected(0, T0_MS);
        by_name(&decode(&out[0]), "Report/Energy kWh");
        let o = s
            .set_node_metric("Report/Energy kWh", Val::Num(13_250.0), T0_MS + 1)
            .unwrap();
        assert_eq!(o.topic, "spBv1.0/plant/NDATA/gw");
        assert_eq!(
            decode(&o).metrics[0].value,
            Some(MetricValue::DoubleValue(13_250.0))
        );
    }

    /// The daily report record of a cell becomes that device's DDATA, the area's NDATA; each
    /// figure typed as declared in the births (null there until the first report).
    #[test]
    fn a_daily_report_record_becomes_typed_device_and_node_metrics() {
        use super::super::model::{figure_datatype, NodeMetric};
        use crate::core::report::FIGURES;
        let figs: Vec<(String, u32)> = FIGURES
            .iter()
            .map(|(n, k)| (n.to_string(), figure_datatype(*k)))
            .collect();
        let mut m = model();
        m.devices[0].figures = figs.clone();
        m.node = figs
            .iter()
            .map(|(name, datatype)| NodeMetric {
                name: name.clone(),
                datatype: *datatype,
            })
            .collect();
        let mut s = Session::new("plant", "gw", None, &m);
        let out = s.connected(0, T0_MS);
        let nb = decode(&out[0]);
        let day = by_name(&nb, "report/daily/day");
        assert_eq!(day.datatype, Some(datatype::STRING));
        assert_eq!(day.is_null, Some(true), "no report yet");
        let rec = data("pot-1", T0, &[("voltage", 4.25)]);
        s.observe(Class::Data, &rec);
        let db = s
            .encode(Class::Data, "x", &rec, T0_MS + 1, 0, T0_MS + 2)
            .before;
        let dbirth = decode(&db[0]);
        let count = by_name(&dbirth, "report/daily/anode_effects/count");
        assert_eq!(count.datatype, Some(datatype::UINT64));
        let report = |device: &str, count: u64| {
            serde_json::json!({"schema": "alsentry/report/1", "agent": "gw", "device": device,
                "day": "2026-12-05", "partial": false, "ts": T0, "pot_days": 1.0,
                "anode_effects": {"count": count, "per_pot_day": 2.0, "minutes": 1.5,
                    "minutes_per_pot_day": 1.5, "mean_duration_s": null, "open": 0},
                "pfc": {"co2e_t": 7.121971208053691},
                "energy": {"energy_ac_kwh_t": 13405.75},
                "coverage": {"share": 1.0, "good_ratio": 0.5}})
            .to_string()
            .into_bytes()
        };
        let topic = "alsentry/plant/a/pot-1/report/daily";
        let cell = report("pot-1", 2);
        s.observe(Class::Summary, &cell);
        let o = s
            .encode(Class::Summary, topic, &cell, T0_MS + 3, 1, T0_MS + 4)
            .own
            .unwrap();
        assert_eq!(o.topic, "spBv1.0/plant/DDATA/gw/pot-1");
        assert_eq!(o.qos, 1, "deleted from the outbox only on PUBACK");
        let p = decode(&o);
        let alias = |n: &str| {
            let k = s.devs[0].by_name[n];
            s.devs[0].slots[k].alias
        };
        let get = |n: &str| {
            p.metrics
                .iter()
                .find(|x| x.alias == Some(alias(n)))
                .unwrap_or_else(|| panic!("{n}"))
        };
        assert_eq!(
            get("report/daily/day").value,
            Some(MetricValue::StringValue("2026-12-05".into()))
        );
        assert_eq!(
            get("report/daily/anode_effects/count").value,
            Some(MetricValue::LongValue(2))
        );
        assert_eq!(
            get("report/daily/partial").value,
            Some(MetricValue::BooleanValue(false))
        );
        assert_eq!(
            get("report/daily/pfc/co2e_t").value,
            Some(MetricValue::DoubleValue(7.121971208053691))
        );
        assert_eq!(get("report/daily/pfc/co2e_t").timestamp, Some(T0_MS as u64));
        // Null in the JSON: not sent (the host keeps the birth's null).
        assert_eq!(p.metrics.len(), 12);
        let area = report("_area", 3);
        let o = s
            .encode(
                Class::Summary,
                "x/_area/report/daily",
                &area,
                T0_MS + 5,
                1,
                T0_MS + 6,
            )
            .own
            .unwrap();
        assert_eq!(o.topic, "spBv1.0/plant/NDATA/gw");
        // The next births carry the last reports.
        s.disconnected();
        let nb = decode(&s.connected(1, T0_MS + 10)[0]);
        assert_eq!(
            by_name(&nb, "report/daily/anode_effects/count").value,
            Some(MetricValue::LongValue(3))
        );
        // A summary that is not a report, or a report of a device not declared, sends nothing.
        let other = report("pot-2", 1);
        assert_eq!(
            s.encode(Class::Summary, topic, &other, T0_MS, 1, T0_MS + 11),
            Encoded::default()
        );
    }
}
