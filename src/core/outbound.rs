//! What leaves the agent. Everything the engine publishes is an [`Outbound`], typed; it is
//! spelled into a wire [`Message`] (topic, payload bytes, class) once per sink identity, and the
//! sinks only move those bytes. Topics and payloads are built in [`super::payload`].

use std::sync::Arc;

use super::command::Reply;
use super::engine::{AlarmEvent, DeviceSummary};
use super::model::Priority;
use super::payload::{alarm_payload, summary_payload, Identity};

/// What a message is. Decides which sinks carry it (`carry`), its fsync treatment and the
/// order in which a full outbox evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Alarm transitions: dropped last, fsynced first.
    Alarm,
    /// Device / daemon status, and replies to commands.
    Status,
    /// Periodic summaries.
    Summary,
    /// Raw data: the first to go when the outbox is full.
    Data,
}

impl Class {
    /// All classes, in the order they are evicted when the outbox is full (first = first to go).
    pub const EVICTION_ORDER: [Class; 4] =
        [Class::Data, Class::Summary, Class::Status, Class::Alarm];

    /// A dense index (0..4) for per-class tables.
    pub fn index(self) -> usize {
        match self {
            Class::Alarm => 0,
            Class::Status => 1,
            Class::Summary => 2,
            Class::Data => 3,
        }
    }

    /// Higher means more important (kept longer).
    pub fn rank(self) -> u8 {
        match self {
            Class::Data => 0,
            Class::Summary => 1,
            Class::Status => 2,
            Class::Alarm => 3,
        }
    }

    /// A stable, lower-case name used in metrics and in the `carry` key.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Alarm => "alarm",
            Class::Status => "status",
            Class::Summary => "summary",
            Class::Data => "data",
        }
    }
}

/// A message spelled for one sink identity, ready for the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub class: Class,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// For alarms: lets a sink filter by priority.
    pub priority: Option<Priority>,
}

/// Everything the engine task publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// One alarm transition, numbered by the agent's event sequence.
    Alarm { seq: u64, event: AlarmEvent },
    /// One device's statistics over the last summary interval.
    Summary {
        summary: DeviceSummary,
        current_efficiency: f64,
        rectifier_efficiency: f64,
    },
    /// Raw values of one poll. The payload names no topic root, so it is encoded once, before
    /// the sinks are known (see [`super::payload::DataFilter`]): at 10 Hz x 400 devices this
    /// runs 4,000 times a second.
    Data { device: String, payload: Vec<u8> },
    /// Raw values of one poll in the compact form ([`super::compact`]), for the sinks with
    /// `data_payload = "compact"` only.
    DataCompact { device: String, payload: Vec<u8> },
    /// What a device's compact messages hold (retained on `{device}/data/meta`), for the same
    /// sinks; an empty payload clears it (a device removed by a reload).
    DataMeta { device: String, payload: Vec<u8> },
    /// The answer to an operator command, for the sink the command came from.
    Reply(Reply),
    /// One disposal audit event (docs/DISPOSAL.md): carried like an alarm (QoS 1, evicted
    /// last), never retained.
    Audit(super::action::Audit),
}

impl Outbound {
    pub fn class(&self) -> Class {
        match self {
            Outbound::Alarm { .. } => Class::Alarm,
            Outbound::Summary { .. } => Class::Summary,
            Outbound::Data { .. } | Outbound::DataCompact { .. } | Outbound::DataMeta { .. } => {
                Class::Data
            }
            Outbound::Reply(_) => Class::Status,
            Outbound::Audit(_) => Class::Alarm,
        }
    }

    /// The message as the sinks of identity `who` publish it.
    pub fn render(&self, who: &Identity) -> Message {
        let (topic, payload) = self.spell(who);
        self.message(topic, payload)
    }

    /// Like [`Outbound::render`], moving an already encoded payload instead of copying it.
    pub fn into_message(self, who: &Identity) -> Message {
        match self {
            Outbound::Data { device, payload } => Message {
                class: Class::Data,
                topic: who.data_topic(&device),
                payload,
                retain: false,
                priority: None,
            },
            Outbound::DataCompact { device, payload } => Message {
                class: Class::Data,
                topic: who.compact_data_topic(&device),
                payload,
                retain: false,
                priority: None,
            },
            other => other.render(who),
        }
    }

    /// Which data payload a sink must have chosen to get this message: Some(true) for the
    /// compact form and its meta, Some(false) for the full form, None for everything else.
    pub fn compact_form(&self) -> Option<bool> {
        match self {
            Outbound::Data { .. } => Some(false),
            Outbound::DataCompact { .. } | Outbound::DataMeta { .. } => Some(true),
            _ => None,
        }
    }

    fn spell(&self, who: &Identity) -> (String, Vec<u8>) {
        match self {
            Outbound::Alarm { seq, event } => (
                who.alarm_topic(&event.device, &event.rule),
                alarm_payload(who, *seq, event),
            ),
            Outbound::Summary {
                summary,
                current_efficiency,
                rectifier_efficiency,
            } => (
                who.summary_topic(&summary.device),
                summary_payload(who, summary, *current_efficiency, *rectifier_efficiency),
            ),
            Outbound::Data { device, payload } => (who.data_topic(device), payload.clone()),
            Outbound::DataCompact { device, payload } => {
                (who.compact_data_topic(device), payload.clone())
            }
            Outbound::DataMeta { device, payload } => {
                (who.data_meta_topic(device), payload.clone())
            }
            Outbound::Reply(reply) => (
                who.agent_topic(REPLY_LEAF),
                serde_json::to_vec(reply).unwrap_or_default(),
            ),
            Outbound::Audit(a) => (
                who.agent_topic(super::action::audit::AUDIT_LEAF),
                a.payload(&who.agent, &who.site, &who.area),
            ),
        }
    }

    fn message(&self, topic: String, payload: Vec<u8>) -> Message {
        Message {
            class: self.class(),
            topic,
            payload,
            // Alarm topics hold each alarm's current state for late subscribers, meta topics
            // what a device's compact data means.
            retain: matches!(self, Outbound::Alarm { .. } | Outbound::DataMeta { .. }),
            priority: match self {
                Outbound::Alarm { event, .. } => Some(event.priority),
                _ => None,
            },
        }
    }
}

/// Command replies go to `<agent topic>/cmd/reply`.
pub const REPLY_LEAF: &str = "cmd/reply";

/// Sinks that publish under the same identity get the same bytes: each message is spelled once
/// per distinct identity and shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Identities {
    /// Distinct identities, in the order of their first sink.
    groups: Vec<(Identity, Vec<usize>)>,
    /// Sink index → index in `groups`.
    of_sink: Vec<usize>,
}

impl Identities {
    /// `sinks`: the identity of each sink, in sink order.
    pub fn new(sinks: &[Identity]) -> Identities {
        let mut groups: Vec<(Identity, Vec<usize>)> = Vec::new();
        let mut of_sink = Vec::with_capacity(sinks.len());
        for (i, who) in sinks.iter().enumerate() {
            match groups.iter().position(|(g, _)| g == who) {
                Some(gi) => {
                    groups[gi].1.push(i);
                    of_sink.push(gi);
                }
                None => {
                    of_sink.push(groups.len());
                    groups.push((who.clone(), vec![i]));
                }
            }
        }
        Identities { groups, of_sink }
    }

    /// `msg` spelled for every identity: (the sinks that publish it, the message).
    pub fn spell_all(&self, msg: Outbound) -> Vec<(&[usize], Arc<Message>)> {
        let mut out = Vec::with_capacity(self.groups.len());
        let Some(((last, last_sinks), rest)) = self.groups.split_last() else {
            return out;
        };
        for (who, sinks) in rest {
            out.push((sinks.as_slice(), Arc::new(msg.render(who))));
        }
        out.push((last_sinks.as_slice(), Arc::new(msg.into_message(last))));
        out
    }

    /// `msg` spelled for the identity of one sink (e.g. a reply to what it received).
    pub fn spell_for(&self, sink: usize, msg: Outbound) -> Option<Arc<Message>> {
        let (who, _) = self.groups.get(*self.of_sink.get(sink)?)?;
        Some(Arc::new(msg.into_message(who)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::{Cause, Transition};
    use crate::core::command::REPLY_SCHEMA;
    use crate::core::model::Quality;

    fn who(root: &str) -> Identity {
        Identity {
            topic_root: root.into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        }
    }

    fn alarm() -> Outbound {
        Outbound::Alarm {
            seq: 7,
            event: AlarmEvent {
                device: Arc::from("pot-001"),
                rule: Arc::from("anode_effect"),
                tag: Arc::from("voltage"),
                unit: Arc::from("V"),
                priority: Priority::Critical,
                transition: Transition {
                    from: "normal",
                    to: "active_unacked",
                    at: 1_000,
                    cause: Cause::Condition,
                    by: None,
                    note: None,
                },
                value: Some(12.5),
                limit: Some(8.0),
                quality: Quality::Good,
                message: "AE".into(),
                since: 1_000,
                active_since: Some(1_000),
                acked_by: None,
                shelved_until: None,
            },
        }
    }

    #[test]
    fn each_kind_has_its_class_topic_and_retain_flag() {
        let w = who("alsentry");
        let a = alarm().render(&w);
        assert_eq!(a.class, Class::Alarm);
        assert_eq!(a.topic, "alsentry/s/a/pot-001/alarm/anode_effect");
        assert!(a.retain);
        assert_eq!(a.priority, Some(Priority::Critical));
        let j: serde_json::Value = serde_json::from_slice(&a.payload).unwrap();
        assert_eq!(j["id"], "gw-7");

        let d = Outbound::Data {
            device: "pot-001".into(),
            payload: b"{}".to_vec(),
        };
        let m = d.clone().into_message(&w);
        assert_eq!(m, d.render(&w));
        assert_eq!(
            (m.class, m.topic.as_str(), m.retain, m.priority),
            (Class::Data, "alsentry/s/a/pot-001/data", false, None)
        );

        let r = Outbound::Reply(Reply {
            schema: REPLY_SCHEMA,
            ok: true,
            request_id: Some("r1".into()),
            op: Some("ack".into()),
            device: None,
            rule: None,
            state: None,
            error: None,
            ts: "t".into(),
        })
        .render(&w);
        assert_eq!(r.class, Class::Status);
        assert_eq!(r.topic, "alsentry/s/a/_agent/gw/cmd/reply");
        assert!(!r.retain);
    }

    #[test]
    fn compact_data_and_its_meta_are_data_under_the_data_topic_and_only_the_meta_is_retained() {
        let w = who("alsentry");
        let c = Outbound::DataCompact {
            device: "pot-001".into(),
            payload: b"{}".to_vec(),
        };
        let m = c.clone().into_message(&w);
        assert_eq!(m, c.render(&w));
        assert_eq!(
            (m.class, m.topic.as_str(), m.retain),
            (Class::Data, "alsentry/s/a/pot-001/data/compact", false)
        );
        let meta = Outbound::DataMeta {
            device: "pot-001".into(),
            payload: b"{}".to_vec(),
        };
        assert_eq!(meta.compact_form(), Some(true));
        let m = meta.into_message(&w);
        assert_eq!(
            (m.class, m.topic.as_str(), m.retain),
            (Class::Data, "alsentry/s/a/pot-001/data/meta", true)
        );
        assert_eq!(c.compact_form(), Some(true));
        assert_eq!(
            Outbound::Data {
                device: "d".into(),
                payload: vec![]
            }
            .compact_form(),
            Some(false)
        );
        assert_eq!(alarm().compact_form(), None);
    }

    #[test]
    fn a_message_is_spelled_once_per_identity_and_in_each_sinks_own_root() {
        let ids = Identities::new(&[who("plant"), who("province"), who("plant")]);
        let spelled = ids.spell_all(Outbound::Data {
            device: "pot-001".into(),
            payload: b"{}".to_vec(),
        });
        let got: Vec<(Vec<usize>, &str)> = spelled
            .iter()
            .map(|(s, m)| (s.to_vec(), m.topic.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![0, 2], "plant/s/a/pot-001/data"),
                (vec![1], "province/s/a/pot-001/data"),
            ]
        );
        let for_province = ids.spell_for(1, alarm()).unwrap();
        assert!(for_province.topic.starts_with("province/"));
        assert!(ids.spell_for(3, alarm()).is_none());
        assert!(Identities::new(&[]).spell_all(alarm()).is_empty());
    }
}
