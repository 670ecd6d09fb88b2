//! One audit event of disposal: what was proposed, confirmed, refused, written and read back,
//! by whom and when. Published on `{root}/{site}/{area}/_agent/{id}/audit` (QoS 1, through
//! the outbox) and appended to `state_dir/audit.jsonl`; schemas/audit.schema.json.

use serde::Serialize;

use super::{ActionSpec, Refusal, WriteData};
use crate::core::model::Ts;
use crate::core::time::rfc3339_ms;

pub const AUDIT_SCHEMA: &str = "alsentry/audit/1";
/// The audit topic's leaf under the agent topic.
pub const AUDIT_LEAF: &str = "audit";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A `dry_run` action: what it would have written.
    DryRun,
    Proposed,
    Confirmed,
    Expired,
    Refused,
    /// The device accepted the write.
    Written,
    /// The read-back matched.
    Verified,
    /// The write or its read-back failed, or the read-back differed.
    Failed,
    /// A kill switch was set or released.
    Kill,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    pub event: AuditKind,
    #[serde(skip)]
    pub at: Ts,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<&'static str>,
    /// The target: tag name, table, address, type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The words (coils as 0/1) written or to be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back: Option<Vec<u16>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// For `kill`: the area (absent: every action) and whether the switch is now on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_area: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_on: Option<bool>,
}

impl Audit {
    fn empty(event: AuditKind, at: Ts) -> Audit {
        Audit {
            event,
            at,
            id: None,
            action: None,
            device: None,
            rule: None,
            mode: None,
            target: None,
            table: None,
            address: None,
            value: None,
            words: None,
            function_code: None,
            read_back: None,
            attempts: None,
            reason: None,
            detail: None,
            by: None,
            expires: None,
            kill_area: None,
            kill_on: None,
        }
    }

    pub fn new(
        event: AuditKind,
        at: Ts,
        s: &ActionSpec,
        id: u64,
        device: &str,
        value: f64,
    ) -> Audit {
        Audit {
            id: Some(id),
            action: Some(s.name.clone()),
            device: Some(device.to_string()),
            rule: Some(s.rule.clone()),
            mode: Some(s.mode.as_str()),
            target: Some(s.target.name.clone()),
            table: Some(s.target.encoding.table.as_str()),
            address: Some(s.target.address),
            value: value.is_finite().then_some(value),
            ..Audit::empty(event, at)
        }
    }

    pub fn kill(at: Ts, area: Option<&str>, on: bool, by: &str) -> Audit {
        Audit {
            kill_area: area.map(str::to_string),
            kill_on: Some(on),
            by: Some(by.to_string()),
            ..Audit::empty(AuditKind::Kill, at)
        }
    }

    pub fn words(mut self, d: &WriteData) -> Audit {
        self.words = Some(d.raw());
        self.function_code = Some(d.function_code());
        self
    }

    pub fn words_raw(mut self, w: &[u16]) -> Audit {
        if !w.is_empty() {
            self.words = Some(w.to_vec());
        }
        self
    }

    pub fn refused(mut self, r: Refusal, detail: String) -> Audit {
        self.reason = Some(r.as_str());
        self.detail = Some(detail);
        self
    }

    pub fn detail(mut self, d: String) -> Audit {
        self.detail = Some(d);
        self
    }

    pub fn by(mut self, by: &str) -> Audit {
        self.by = Some(by.to_string());
        self
    }

    pub fn expires(mut self, at: Ts) -> Audit {
        self.expires = Some(rfc3339_ms(at));
        self
    }

    pub fn attempts(mut self, n: u32) -> Audit {
        self.attempts = Some(n);
        self
    }

    pub fn read_back(mut self, w: &[u16]) -> Audit {
        self.read_back = Some(w.to_vec());
        self
    }

    /// The JSON line: the event with the schema, the agent's identity and the time.
    pub fn payload(&self, agent: &str, site: &str, area: &str) -> Vec<u8> {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("schema".into(), AUDIT_SCHEMA.into());
            o.insert("agent".into(), agent.into());
            o.insert("site".into(), site.into());
            o.insert("area".into(), area.into());
            o.insert("ts".into(), rfc3339_ms(self.at).into());
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }
}
