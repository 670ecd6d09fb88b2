//! Topics and JSON payloads. Pure: the publisher only moves the bytes.

use serde::Serialize;

use super::engine::AlarmEvent;
use super::model::Ts;
use crate::clock::rfc3339_ms;

/// Version of the payload contract, carried in every payload.
pub const ALARM_SCHEMA: &str = "alsentry/alarm/1";
pub const STATUS_SCHEMA: &str = "alsentry/status/1";

/// Who publishes: the parts of every topic that do not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub topic_root: String,
    pub agent: String,
    pub site: String,
    pub area: String,
}

impl Identity {
    pub fn alarm_topic(&self, device: &str, rule: &str) -> String {
        format!(
            "{}/{}/{}/{}/alarm/{}",
            self.topic_root, self.site, self.area, device, rule
        )
    }

    pub fn agent_topic(&self, leaf: &str) -> String {
        format!(
            "{}/{}/{}/_agent/{}/{}",
            self.topic_root, self.site, self.area, self.agent, leaf
        )
    }
}

#[derive(Debug, Serialize)]
struct AlarmPayload<'a> {
    schema: &'static str,
    id: String,
    seq: u64,
    agent: &'a str,
    site: &'a str,
    area: &'a str,
    ts: String,
    device: &'a str,
    tag: &'a str,
    rule: &'a str,
    priority: &'static str,
    state: &'static str,
    prev_state: &'static str,
    cause: &'static str,
    since: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_since: Option<String>,
    value: Option<f64>,
    limit: Option<f64>,
    unit: &'a str,
    quality: String,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shelved_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    by: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<&'a str>,
}

/// The id consumers deduplicate on: unique per agent and transition.
pub fn event_id(agent: &str, seq: u64) -> String {
    format!("{agent}-{seq}")
}

pub fn alarm_payload(who: &Identity, seq: u64, ev: &AlarmEvent) -> Vec<u8> {
    let p = AlarmPayload {
        schema: ALARM_SCHEMA,
        id: event_id(&who.agent, seq),
        seq,
        agent: &who.agent,
        site: &who.site,
        area: &who.area,
        ts: rfc3339_ms(ev.transition.at),
        device: &ev.device,
        tag: &ev.tag,
        rule: &ev.rule,
        priority: ev.priority.as_str(),
        state: ev.transition.to,
        prev_state: ev.transition.from,
        cause: ev.transition.cause.as_str(),
        since: rfc3339_ms(ev.since),
        active_since: ev.active_since.map(rfc3339_ms),
        value: ev.value.filter(|v| v.is_finite()),
        limit: ev.limit,
        unit: &ev.unit,
        quality: ev.quality.label(),
        message: &ev.message,
        acked_by: ev.acked_by.as_deref(),
        shelved_until: ev.shelved_until.map(rfc3339_ms),
        by: ev.transition.by.as_deref(),
        note: ev.transition.note.as_deref(),
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

#[derive(Debug, Serialize)]
pub struct StatusPayload<'a> {
    pub schema: &'static str,
    pub agent: &'a str,
    pub status: &'static str,
    pub ts: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices_up: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices_down: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbox_depth: Option<u64>,
}

pub fn status_payload(
    who: &Identity,
    online: bool,
    now: Ts,
    config_hash: Option<&str>,
    up: Option<usize>,
    down: Option<usize>,
    outbox_depth: Option<u64>,
) -> Vec<u8> {
    let p = StatusPayload {
        schema: STATUS_SCHEMA,
        agent: &who.agent,
        status: if online { "online" } else { "offline" },
        ts: rfc3339_ms(now),
        version: online.then_some(env!("CARGO_PKG_VERSION")),
        config_hash,
        devices_up: up,
        devices_down: down,
        outbox_depth,
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::{Cause, Transition};
    use crate::core::model::{Priority, Quality};
    use std::sync::Arc;

    #[test]
    fn alarm_payload_carries_the_contract_fields() {
        let who = Identity {
            topic_root: "alsentry".into(),
            agent: "gw-qz-01".into(),
            site: "qingzhen".into(),
            area: "potline-1".into(),
        };
        let ev = AlarmEvent {
            device: Arc::from("pot-001"),
            rule: Arc::from("anode_effect"),
            tag: Arc::from("voltage"),
            unit: Arc::from("V"),
            priority: Priority::Critical,
            transition: Transition {
                from: "normal",
                to: "active_unacked",
                at: 1_764_345_953_123,
                cause: Cause::Condition,
                by: None,
                note: None,
            },
            value: Some(12.5),
            limit: Some(8.0),
            quality: Quality::Good,
            message: "阳极效应 pot-001: 12.5 V".into(),
            since: 1_764_345_953_123,
            active_since: Some(1_764_345_953_123),
            acked_by: None,
            shelved_until: None,
        };
        assert_eq!(
            who.alarm_topic("pot-001", "anode_effect"),
            "alsentry/qingzhen/potline-1/pot-001/alarm/anode_effect"
        );
        let v: serde_json::Value = serde_json::from_slice(&alarm_payload(&who, 7, &ev)).unwrap();
        for k in [
            "id",
            "ts",
            "device",
            "tag",
            "rule",
            "priority",
            "state",
            "value",
            "limit",
            "unit",
            "quality",
            "message",
            "seq",
            "agent",
            "prev_state",
            "since",
            "schema",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["ts"], "2025-11-28T16:05:53.123Z");
        assert_eq!(v["state"], "active_unacked");
        assert_eq!(v["quality"], "good");
        assert_eq!(v["id"], "gw-qz-01-7");
        assert_eq!(v["message"], "阳极效应 pot-001: 12.5 V");
        assert_eq!(
            who.agent_topic("status"),
            "alsentry/qingzhen/potline-1/_agent/gw-qz-01/status"
        );
    }
}
