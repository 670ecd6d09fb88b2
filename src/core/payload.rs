//! Topics and JSON payloads. Pure: the publisher only moves the bytes.

use serde::Serialize;

use super::engine::AlarmEvent;
use super::model::{Quality, Ts};
use super::time::{push_rfc3339_ms, rfc3339_ms};

/// A number as published: the shortest text that reads back to it, and for a value that is
/// exactly a float32 (an f32 register decoded without scaling) the float32's own shortest
/// form: `4.1`, not `4.099999904632568`, the same bits widened to f64. Both read back to the
/// same float32, so nothing the device sent is lost. Non-finite values serialize as null.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num(pub f64);

impl Serialize for Num {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match as_f32(self.0) {
            Some(f) => s.serialize_f32(f),
            None => s.serialize_f64(self.0),
        }
    }
}

/// The float32 a value was widened from, if it is exactly one.
fn as_f32(v: f64) -> Option<f32> {
    let f = v as f32;
    (f.is_finite() && f64::from(f) == v).then_some(f)
}

/// [`Num`] as text, for terminals and messages (exponent form when very small or large).
pub fn number_text(v: f64) -> String {
    let sci = v != 0.0 && !(1e-4..1e15).contains(&v.abs());
    match (as_f32(v), sci) {
        (Some(f), false) => f.to_string(),
        (Some(f), true) => format!("{f:e}"),
        (None, false) => v.to_string(),
        (None, true) => format!("{v:e}"),
    }
}

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
        [
            &*self.topic_root,
            &self.site,
            &self.area,
            device,
            "alarm",
            rule,
        ]
        .join("/")
    }

    pub fn agent_topic(&self, leaf: &str) -> String {
        [
            &*self.topic_root,
            &self.site,
            &self.area,
            "_agent",
            &self.agent,
            leaf,
        ]
        .join("/")
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
    value: Option<Num>,
    limit: Option<Num>,
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

/// The id of a transition found by `alsentry replay`: its own namespace, so that a replayed
/// transition is never taken for (or deduplicated against) a live one with the same `seq`.
pub fn replay_event_id(agent: &str, seq: u64) -> String {
    format!("{agent}-replay-{seq}")
}

pub fn alarm_payload(who: &Identity, seq: u64, ev: &AlarmEvent) -> Vec<u8> {
    alarm_payload_with_id(who, event_id(&who.agent, seq), seq, ev)
}

/// [`alarm_payload`] with an explicit `id` (replay's, [`replay_event_id`]).
pub fn alarm_payload_with_id(who: &Identity, id: String, seq: u64, ev: &AlarmEvent) -> Vec<u8> {
    let p = AlarmPayload {
        schema: ALARM_SCHEMA,
        id,
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
        value: ev.value.filter(|v| v.is_finite()).map(Num),
        limit: ev.limit.map(Num),
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

/// The agent's status (`alsentry/status/1`), published retained by each sink: the online
/// form on every connection and on changes, the short offline form as the Last Will and at a
/// clean shutdown. Built once, serialized once (schemas/status.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusPayload<'a> {
    pub schema: &'static str,
    pub agent: &'a str,
    pub status: &'static str,
    pub ts: String,
    /// Absent in the offline form.
    #[serde(flatten)]
    pub online: Option<OnlineStatus<'a>>,
}

/// What the online form adds: the agent, its devices and the publishing sink's outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnlineStatus<'a> {
    pub version: &'static str,
    pub config_hash: &'a str,
    pub devices_up: usize,
    pub devices_down: usize,
    /// Names of the devices not answering (first [`STATUS_DOWN_NAMES`]).
    pub down: Vec<&'a str>,
    /// The `[[mqtt]]` sink this status was published by.
    pub sink: &'a str,
    pub outbox_depth: u64,
    pub outbox_bytes: u64,
    /// Age of the oldest record waiting; null when the outbox is empty.
    pub outbox_oldest_age_s: Option<i64>,
    /// Messages this sink will never deliver, per class, since start.
    pub drops: ClassCounts,
    /// The same drops by reason.
    pub drop_reasons: DropReasons,
    /// Messages the broker refused again and again, moved to the dead-letter file of this
    /// sink's outbox (kept, not dropped), since start.
    pub dead_lettered: u64,
    /// What this start restored of the previous run's alarm state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreReport>,
}

/// What a start did with the previous run's alarm state (`restore` in the status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// "read", "none" (first start) or "unreadable" (set aside, started fresh).
    pub state_file: &'static str,
    /// Alarm instances whose state was taken over.
    pub restored: u64,
    /// Saved instances whose device or rule no longer exists.
    pub dropped: u64,
    /// Retained alarm topics of the sink cleared because their instance no longer exists.
    pub cleared: u64,
}

/// Most device names listed in `down`.
pub const STATUS_DOWN_NAMES: usize = 100;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub alarm: u64,
    pub status: u64,
    pub summary: u64,
    pub data: u64,
}

impl ClassCounts {
    pub fn total(&self) -> u64 {
        self.alarm + self.status + self.summary + self.data
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DropReasons {
    /// Evicted to keep the outbox under `max_size`.
    pub full: u64,
    /// Older than `max_age`, or MQTT 5 data past `data_expiry` when its turn came.
    pub expired: u64,
    /// The outbox could not store it (disk full, unwritable).
    pub io: u64,
    /// Refused by an MQTT 5 broker for good.
    pub refused: u64,
}

impl<'a> StatusPayload<'a> {
    pub fn offline(who: &'a Identity, now: Ts) -> StatusPayload<'a> {
        StatusPayload {
            schema: STATUS_SCHEMA,
            agent: &who.agent,
            status: "offline",
            ts: rfc3339_ms(now),
            online: None,
        }
    }

    pub fn online(who: &'a Identity, now: Ts, online: OnlineStatus<'a>) -> StatusPayload<'a> {
        StatusPayload {
            schema: STATUS_SCHEMA,
            agent: &who.agent,
            status: "online",
            ts: rfc3339_ms(now),
            online: Some(online),
        }
    }

    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_spelled_as_documented_in_strings_that_never_grew() {
        let who = Identity {
            topic_root: "alsentry".into(),
            agent: "gw-qz-01".into(),
            site: "qingzhen".into(),
            area: "potline-1".into(),
        };
        let topics = [
            (
                who.data_topic("pot-042"),
                "alsentry/qingzhen/potline-1/pot-042/data",
            ),
            (
                who.compact_data_topic("pot-042"),
                "alsentry/qingzhen/potline-1/pot-042/data/compact",
            ),
            (
                who.data_meta_topic("pot-042"),
                "alsentry/qingzhen/potline-1/pot-042/data/meta",
            ),
            (
                who.summary_topic("pot-042"),
                "alsentry/qingzhen/potline-1/pot-042/summary",
            ),
            (
                who.alarm_topic("pot-042", "anode_effect"),
                "alsentry/qingzhen/potline-1/pot-042/alarm/anode_effect",
            ),
            (
                who.agent_topic("status"),
                "alsentry/qingzhen/potline-1/_agent/gw-qz-01/status",
            ),
        ];
        for (topic, want) in topics {
            assert_eq!(topic, want);
            // std's join allocates the exact length once (an implementation detail this
            // checks, so a change to it shows here).
            assert_eq!(topic.capacity(), topic.len(), "{topic}");
        }
        // An empty part keeps its separator, as format! did.
        let bare = Identity {
            topic_root: String::new(),
            ..who
        };
        assert_eq!(bare.data_topic("p"), "/qingzhen/potline-1/p/data");
    }

    #[test]
    fn status_payload_has_every_documented_field_once_in_order() {
        let who = Identity {
            topic_root: "alsentry".into(),
            agent: "gw-qz-01".into(),
            site: "qingzhen".into(),
            area: "potline-1".into(),
        };
        let online = StatusPayload::online(
            &who,
            1_764_345_960_000,
            OnlineStatus {
                version: "0.1.0",
                config_hash: "9f2c41d0",
                devices_up: 95,
                devices_down: 1,
                down: vec!["pot-042"],
                sink: "plant",
                outbox_depth: 0,
                outbox_bytes: 0,
                outbox_oldest_age_s: None,
                drops: ClassCounts {
                    summary: 12,
                    data: 3400,
                    ..Default::default()
                },
                drop_reasons: DropReasons {
                    full: 3412,
                    ..Default::default()
                },
                dead_lettered: 0,
                restore: None,
            },
        );
        // The example of docs/MQTT.md, byte for byte.
        assert_eq!(
            String::from_utf8(online.to_vec()).unwrap(),
            concat!(
                r#"{"schema":"alsentry/status/1","agent":"gw-qz-01","status":"online","ts":"2025-11-28T16:06:00.000Z","#,
                r#""version":"0.1.0","config_hash":"9f2c41d0","devices_up":95,"devices_down":1,"down":["pot-042"],"#,
                r#""sink":"plant","outbox_depth":0,"outbox_bytes":0,"outbox_oldest_age_s":null,"#,
                r#""drops":{"alarm":0,"status":0,"summary":12,"data":3400},"#,
                r#""drop_reasons":{"full":3412,"expired":0,"io":0,"refused":0},"dead_lettered":0}"#
            )
        );
        assert_eq!(
            String::from_utf8(StatusPayload::offline(&who, 1_764_346_152_004).to_vec()).unwrap(),
            r#"{"schema":"alsentry/status/1","agent":"gw-qz-01","status":"offline","ts":"2025-11-28T16:09:12.004Z"}"#
        );
    }
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

pub const SUMMARY_SCHEMA: &str = "alsentry/summary/1";
pub const DATA_SCHEMA: &str = "alsentry/data/1";

/// National benchmark and baseline for AC energy of liquid aluminium (NDRC 2021-2025), kWh/t.
pub const ENERGY_BENCHMARK_KWH_T: f64 = 13_000.0;
pub const ENERGY_BASELINE_KWH_T: f64 = 13_350.0;
/// Faraday's constant for aluminium: 3F/M = 2,980 Ah/kg, so DC kWh/t = 2980 * V / CE.
pub const AH_PER_KG: f64 = 2_980.0;

/// Energy per tonne of aluminium from a mean cell voltage: (DC, AC) kWh/t, DC = 2980 * V / CE
/// and AC = DC / rectifier efficiency (docs/DOMAIN.md B). The one place this formula lives:
/// the summary's KPIs and the daily report (`core::report`) both call it.
pub fn energy_kwh_t(voltage: f64, ce: f64, rectifier: f64) -> (f64, f64) {
    let dc = AH_PER_KG * voltage / ce;
    (dc, dc / rectifier)
}

impl Identity {
    pub fn summary_topic(&self, device: &str) -> String {
        [&*self.topic_root, &self.site, &self.area, device, "summary"].join("/")
    }

    /// Built for every data message: `join` sizes the String once (`format!` grew it).
    pub fn data_topic(&self, device: &str) -> String {
        [&*self.topic_root, &self.site, &self.area, device, "data"].join("/")
    }
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// The tags (name, unit) the cell KPIs are computed from; `check` warns about a cell that
/// lacks them or has them in other units.
pub const KPI_VOLTAGE: (&str, &str) = ("voltage", "V");
pub const KPI_CURRENT: (&str, &str) = ("current", "kA");

/// Cell KPIs over a summary interval. Field order is the payload's key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellKpi {
    pub baseline_kwh_t: f64,
    pub benchmark_kwh_t: f64,
    pub current_efficiency: f64,
    pub energy_ac_kwh_t: Option<f64>,
    pub energy_dc_kwh_t: Option<f64>,
    pub pseudo_resistance_uohm: Option<f64>,
    pub voltage_noise_mv: Option<f64>,
    pub vs_benchmark_pct: Option<f64>,
}

/// Cell KPIs from the interval's voltage and current: mean pseudo-resistance
/// R = (V - 1.65) / I, noise (standard deviation of voltage), and the DC/AC energy estimate
/// against the benchmark. None for a device without both tags.
pub fn cell_kpi(
    tags: &[(
        std::sync::Arc<str>,
        std::sync::Arc<str>,
        super::engine::TagSummary,
    )],
    ce: f64,
    rectifier: f64,
) -> Option<CellKpi> {
    let find = |n: &str| {
        tags.iter()
            .find(|(name, _, _)| &**name == n)
            .map(|(_, _, s)| s)
    };
    let v = find(KPI_VOLTAGE.0)?;
    let i = find(KPI_CURRENT.0)?;
    let (vm, im) = (v.mean()?, i.mean()?);
    let r_uohm = if im > 0.0 {
        Some((vm - 1.65) / im * 1_000.0)
    } else {
        None
    };
    let (dc, ac) = energy_kwh_t(vm, ce, rectifier);
    Some(CellKpi {
        pseudo_resistance_uohm: r_uohm.and_then(finite),
        voltage_noise_mv: v.std().map(|s| s * 1_000.0).and_then(finite),
        energy_dc_kwh_t: finite(dc),
        energy_ac_kwh_t: finite(ac),
        benchmark_kwh_t: ENERGY_BENCHMARK_KWH_T,
        baseline_kwh_t: ENERGY_BASELINE_KWH_T,
        vs_benchmark_pct: finite((ac / ENERGY_BENCHMARK_KWH_T - 1.0) * 100.0),
        current_efficiency: ce,
    })
}

/// `alsentry/summary/1`. Field order is the payload's key order (alphabetical, as it has
/// always been published).
#[derive(Debug, Serialize)]
struct SummaryPayload<'a> {
    agent: &'a str,
    area: &'a str,
    device: &'a str,
    from: String,
    interval_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kpi: Option<CellKpi>,
    schema: &'static str,
    site: &'a str,
    /// By tag name.
    tags: std::collections::BTreeMap<&'a str, TagStats<'a>>,
    ts: String,
}

/// One tag's statistics in a summary; min and max only over good samples.
#[derive(Debug, Serialize)]
struct TagStats<'a> {
    count: u64,
    good_ratio: Option<f64>,
    last: Option<Num>,
    max: Option<Num>,
    mean: Option<Num>,
    min: Option<Num>,
    unit: &'a str,
}

pub fn summary_payload(
    who: &Identity,
    s: &super::engine::DeviceSummary,
    ce: f64,
    rectifier: f64,
) -> Vec<u8> {
    let tags = s
        .tags
        .iter()
        .map(|(name, unit, t)| {
            let stats = TagStats {
                count: t.count,
                good_ratio: (t.count > 0).then(|| t.good as f64 / t.count as f64),
                last: t.last.and_then(finite).map(Num),
                max: (t.good > 0).then_some(t.max).and_then(finite).map(Num),
                mean: t.mean().and_then(finite).map(Num),
                min: (t.good > 0).then_some(t.min).and_then(finite).map(Num),
                unit,
            };
            (&**name, stats)
        })
        .collect();
    let p = SummaryPayload {
        agent: &who.agent,
        area: &who.area,
        device: &s.device,
        from: rfc3339_ms(s.from),
        interval_s: (s.to - s.from) as f64 / 1_000.0,
        kpi: cell_kpi(&s.tags, ce, rectifier),
        schema: SUMMARY_SCHEMA,
        site: &who.site,
        tags,
        ts: rfc3339_ms(s.to),
    };
    serde_json::to_vec(&p).unwrap_or_default()
}

/// A device as raw-data payloads spell it: names and units JSON-escaped once, so that each
/// poll only writes numbers (at 10 Hz x 400 devices this runs 4,000 times a second).
#[derive(Debug, Clone, PartialEq)]
pub struct DataTags {
    device: String,
    /// `,"device":"pot-001"`
    device_json: Vec<u8>,
    /// Shared by the devices of one template.
    tags: std::sync::Arc<[DataTag]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DataTag {
    /// `"voltage":{"v":`
    head: Vec<u8>,
    /// `,"unit":"V"}`
    tail: Vec<u8>,
}

impl DataTags {
    /// `tags`: (name, unit) in the device's tag order.
    pub fn new(device: &str, tags: &[(String, String)]) -> DataTags {
        DataTags::with_tags(device, DataTags::spell(tags))
    }

    /// The tags' fragments, to share between devices with the same map.
    pub fn spell(tags: &[(String, String)]) -> std::sync::Arc<[DataTag]> {
        tags.iter()
            .map(|(name, unit)| DataTag {
                head: format!("{}:{{\"v\":", json_str(name)).into_bytes(),
                tail: format!(",\"unit\":{}}}", json_str(unit)).into_bytes(),
            })
            .collect()
    }

    pub fn with_tags(device: &str, tags: std::sync::Arc<[DataTag]>) -> DataTags {
        DataTags {
            device: device.to_string(),
            device_json: format!(",\"device\":{}", json_str(device)).into_bytes(),
            tags,
        }
    }

    pub fn device(&self) -> &str {
        &self.device
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Decides which raw values to publish: every poll, or only those that moved more than a
/// deadband since they were last published (or changed quality).
#[derive(Debug, Default)]
pub struct DataFilter {
    last: std::collections::HashMap<(u32, u16), (f64, bool)>,
}

impl DataFilter {
    /// `{"schema":..,"agent":..,"device":..,"ts":..,"values":{"tag":{"v":..,"q":..,"unit":..},..}}`
    /// with the tags in the device's order; None when nothing is to be published.
    pub fn payload(
        &mut self,
        agent: &str,
        device: &DataTags,
        batch: &super::engine::SampleBatch,
        deadband: Option<f64>,
    ) -> Option<Vec<u8>> {
        let mut out: Vec<u8> = Vec::new();
        for &(tag, v, q) in &batch.values {
            let Some(t) = device.tags.get(tag as usize) else {
                continue;
            };
            let good = q.is_good() && v.is_finite();
            if let Some(db) = deadband {
                let key = (batch.device, tag);
                match self.last.get(&key) {
                    Some(&(pv, pg)) if pg == good && (!good || (v - pv).abs() <= db) => continue,
                    _ => {
                        self.last.insert(key, (v, good));
                    }
                }
            }
            if out.is_empty() {
                out.reserve(160 + 48 * batch.values.len());
                out.extend_from_slice(b"{\"schema\":");
                serde_json::to_writer(&mut out, DATA_SCHEMA).ok()?;
                out.extend_from_slice(b",\"agent\":");
                serde_json::to_writer(&mut out, agent).ok()?;
                out.extend_from_slice(&device.device_json);
                out.extend_from_slice(b",\"ts\":\"");
                push_rfc3339_ms(&mut out, batch.ts);
                out.extend_from_slice(b"\",\"values\":{");
            } else {
                out.push(b',');
            }
            out.extend_from_slice(&t.head);
            match finite(v) {
                Some(x) => serde_json::to_writer(&mut out, &Num(x)).ok()?,
                None => out.extend_from_slice(b"null"),
            }
            match q {
                Quality::Good => out.extend_from_slice(b",\"q\":\"good\""),
                q => {
                    out.extend_from_slice(b",\"q\":");
                    serde_json::to_writer(&mut out, &q.label()).ok()?;
                }
            }
            out.extend_from_slice(&t.tail);
        }
        if out.is_empty() {
            return None;
        }
        out.extend_from_slice(b"}}");
        Some(out)
    }
}

#[cfg(test)]
mod summary_tests {
    use super::*;
    use crate::core::engine::{DeviceSummary, SampleBatch, TagSummary};
    use crate::core::model::{BadReason, Quality};
    use std::sync::Arc;

    fn who() -> Identity {
        Identity {
            topic_root: "alsentry".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        }
    }

    #[test]
    fn data_payload_is_json_in_tag_order_with_escaped_names() {
        let tags = DataTags::new(
            "pot \"7\"",
            &[
                ("voltage".to_string(), "V".to_string()),
                ("bath\\temp".to_string(), "°C".to_string()),
                ("alumina".to_string(), "%".to_string()),
            ],
        );
        let batch = SampleBatch {
            device: 0,
            ts: 1_764_345_953_123,
            values: vec![
                (0, 4.125, Quality::Good),
                (1, f64::NAN, Quality::Bad(BadReason::Exception(2))),
                (2, 2.5, Quality::Good),
                (9, 1.0, Quality::Good),
            ],
        };
        let out = DataFilter::default()
            .payload("gw", &tags, &batch, None)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let j: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(j["schema"], DATA_SCHEMA);
        assert_eq!(j["agent"], "gw");
        assert_eq!(j["device"], "pot \"7\"");
        assert_eq!(j["ts"], "2025-11-28T16:05:53.123Z");
        assert_eq!(j["values"]["voltage"]["v"], 4.125);
        assert_eq!(j["values"]["voltage"]["q"], "good");
        assert_eq!(j["values"]["voltage"]["unit"], "V");
        assert!(j["values"]["bath\\temp"]["v"].is_null());
        assert_eq!(j["values"]["bath\\temp"]["q"], "bad:exception_02");
        assert_eq!(j["values"]["bath\\temp"]["unit"], "°C");
        assert_eq!(
            j["values"].as_object().unwrap().len(),
            3,
            "unknown tag 9 skipped"
        );
        let order: Vec<usize> = ["voltage", "bath", "alumina"]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "tag order: {text}");
    }

    #[test]
    fn cell_summary_has_energy_against_the_benchmark() {
        let mut v = TagSummary::default();
        let mut i = TagSummary::default();
        for x in [4.09, 4.10, 4.11] {
            v.count += 1;
            v.good += 1;
            v.sum += x;
            v.sum_sq += x * x;
            v.min = v.min.min(x);
            v.max = v.max.max(x);
        }
        i.count = 1;
        i.good = 1;
        i.sum = 500.0;
        i.sum_sq = 250_000.0;
        let s = DeviceSummary {
            device: Arc::from("pot-001"),
            from: 0,
            to: 60_000,
            tags: vec![
                (Arc::from("voltage"), Arc::from("V"), v),
                (Arc::from("current"), Arc::from("kA"), i),
            ],
        };
        let j: serde_json::Value =
            serde_json::from_slice(&summary_payload(&who(), &s, 0.92, 0.98)).unwrap();
        assert_eq!(j["schema"], SUMMARY_SCHEMA);
        assert_eq!(j["interval_s"], 60.0);
        assert_eq!(j["tags"]["voltage"]["count"], 3);
        // 4.10 V at 92 % CE: 13,280 kWh/t DC (docs/DOMAIN.md B), about 13,551 AC.
        assert!((j["kpi"]["energy_dc_kwh_t"].as_f64().unwrap() - 13_280.43).abs() < 0.1);
        assert!((j["kpi"]["pseudo_resistance_uohm"].as_f64().unwrap() - 4.9).abs() < 1e-9);
        assert!(j["kpi"]["vs_benchmark_pct"].as_f64().unwrap() > 4.0);
    }

    #[test]
    fn summary_payload_bytes_are_unchanged_by_typing() {
        // Captured from the untyped (serde_json::json!) payload this replaced.
        let mut v = TagSummary::default();
        for x in [4.09, 4.10, 4.11] {
            v.count += 1;
            v.good += 1;
            v.sum += x;
            v.sum_sq += x * x;
            v.min = v.min.min(x);
            v.max = v.max.max(x);
            v.last = Some(x);
        }
        let i = TagSummary {
            count: 2,
            good: 1,
            sum: 500.0,
            sum_sq: 250_000.0,
            min: 500.0,
            max: 500.0,
            last: None,
        };
        let empty = TagSummary {
            count: 4,
            ..TagSummary::default()
        };
        let s = DeviceSummary {
            device: Arc::from("pot-001"),
            from: 0,
            to: 60_000,
            tags: vec![
                (Arc::from("voltage"), Arc::from("V"), v),
                (Arc::from("current"), Arc::from("kA"), i),
                (Arc::from("empty"), Arc::from(""), empty),
            ],
        };
        let who = Identity {
            topic_root: "r".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        };
        assert_eq!(
            String::from_utf8(summary_payload(&who, &s, 0.92, 0.98)).unwrap(),
            r#"{"agent":"gw","area":"a","device":"pot-001","from":"1970-01-01T00:00:00.000Z","interval_s":60.0,"kpi":{"baseline_kwh_t":13350.0,"benchmark_kwh_t":13000.0,"current_efficiency":0.92,"energy_ac_kwh_t":13551.464063886426,"energy_dc_kwh_t":13280.434782608698,"pseudo_resistance_uohm":4.900000000000001,"voltage_noise_mv":8.164965808977668,"vs_benchmark_pct":4.2420312606648025},"schema":"alsentry/summary/1","site":"s","tags":{"current":{"count":2,"good_ratio":0.5,"last":null,"max":500.0,"mean":500.0,"min":500.0,"unit":"kA"},"empty":{"count":4,"good_ratio":0.0,"last":null,"max":null,"mean":null,"min":null,"unit":""},"voltage":{"count":3,"good_ratio":1.0,"last":4.11,"max":4.11,"mean":4.1000000000000005,"min":4.09,"unit":"V"}},"ts":"1970-01-01T00:01:00.000Z"}"#
        );
        let kiln = DeviceSummary {
            device: Arc::from("kiln-1"),
            from: 1_000,
            to: 31_500,
            tags: vec![(Arc::from("flue"), Arc::from("°C"), TagSummary::default())],
        };
        assert_eq!(
            String::from_utf8(summary_payload(&who, &kiln, 0.92, 0.98)).unwrap(),
            r#"{"agent":"gw","area":"a","device":"kiln-1","from":"1970-01-01T00:00:01.000Z","interval_s":30.5,"schema":"alsentry/summary/1","site":"s","tags":{"flue":{"count":0,"good_ratio":null,"last":null,"max":null,"mean":null,"min":null,"unit":"°C"}},"ts":"1970-01-01T00:00:31.500Z"}"#
        );
    }

    #[test]
    fn data_by_exception_respects_the_deadband_and_quality_changes() {
        let names = DataTags::new("pot-001", &[("voltage".to_string(), "V".to_string())]);
        let mut f = DataFilter::default();
        let b = |ts, v, q| SampleBatch {
            device: 0,
            ts,
            values: vec![(0, v, q)],
        };
        assert!(f
            .payload("gw", &names, &b(0, 4.20, Quality::Good), Some(0.05))
            .is_some());
        assert!(f
            .payload("gw", &names, &b(1, 4.22, Quality::Good), Some(0.05))
            .is_none());
        assert!(f
            .payload("gw", &names, &b(2, 4.30, Quality::Good), Some(0.05))
            .is_some());
        let bad = f
            .payload(
                "gw",
                &names,
                &b(3, f64::NAN, Quality::Bad(BadReason::Timeout)),
                Some(0.05),
            )
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&bad).unwrap();
        assert_eq!(j["values"]["voltage"]["q"], "bad:timeout");
        assert!(j["values"]["voltage"]["v"].is_null());
        assert!(
            f.payload("gw", &names, &b(4, 4.30, Quality::Good), None)
                .is_some(),
            "every poll without deadband"
        );
    }
}

/// Issue 21: float32 values are published as the float32 they are (`4.1`), not widened to
/// f64 noise (`4.099999904632568`), in data, alarm and summary payloads; f64 values keep
/// every digit they need.
#[cfg(test)]
mod number_tests {
    use super::*;
    use crate::core::alarm::{Cause, Transition};
    use crate::core::engine::{DeviceSummary, SampleBatch, TagSummary};
    use crate::core::model::Priority;
    use std::sync::Arc;

    /// What the decoder returns for the f32 register pair of 4.1.
    const F32_4_1: f64 = 4.099_999_904_632_568;

    fn who() -> Identity {
        Identity {
            topic_root: "alsentry".into(),
            agent: "gw".into(),
            site: "s".into(),
            area: "a".into(),
        }
    }

    #[test]
    fn numbers_in_their_shortest_round_trip_form() {
        assert_eq!(F32_4_1, f64::from(4.1f32));
        let json = |v: f64| serde_json::to_string(&Num(v)).unwrap();
        assert_eq!(json(F32_4_1), "4.1");
        assert_eq!(json(f64::from(502.7445f32)), "502.7445");
        assert_eq!(json(f64::from(-0.001f32)), "-0.001");
        // Not a float32: every digit an f64 needs to read back.
        assert_eq!(json(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(json(957.3), "957.3");
        assert_eq!(json(4_294_967_295.0), "4294967295.0");
        assert_eq!(json(f64::NAN), "null");
        // Each reads back to what was encoded: the f32 exactly, the f64 exactly.
        let back: f64 = serde_json::from_str(&json(F32_4_1)).unwrap();
        assert_eq!(back as f32, 4.1f32);
        let back: f64 = serde_json::from_str(&json(0.1 + 0.2)).unwrap();
        assert_eq!(back, 0.1 + 0.2);
        assert_eq!(number_text(F32_4_1), "4.1");
        assert_eq!(number_text(f64::from(4.173_536e-8f32)), "4.173536e-8");
        assert_eq!(number_text(12.0), "12");
    }

    #[test]
    fn data_payload_carries_4_1_not_its_f64_widening() {
        let tags = DataTags::new("pot-001", &[("voltage".into(), "V".into())]);
        let batch = SampleBatch {
            device: 0,
            ts: 0,
            values: vec![(0, F32_4_1, Quality::Good)],
        };
        let out = DataFilter::default()
            .payload("gw", &tags, &batch, None)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""voltage":{"v":4.1,"q":"good""#), "{text}");
    }

    #[test]
    fn alarm_payload_carries_4_1_not_its_f64_widening() {
        let ev = AlarmEvent {
            device: Arc::from("pot-001"),
            rule: Arc::from("low_voltage"),
            tag: Arc::from("voltage"),
            unit: Arc::from("V"),
            priority: Priority::High,
            transition: Transition {
                from: "normal",
                to: "active_unacked",
                at: 0,
                cause: Cause::Condition,
                by: None,
                note: None,
            },
            value: Some(F32_4_1),
            limit: Some(4.2),
            quality: Quality::Good,
            message: String::new(),
            since: 0,
            active_since: None,
            acked_by: None,
            shelved_until: None,
        };
        let text = String::from_utf8(alarm_payload(&who(), 1, &ev)).unwrap();
        assert!(text.contains(r#""value":4.1,"limit":4.2,"#), "{text}");
    }

    #[test]
    fn summary_payload_carries_4_1_not_its_f64_widening() {
        let mut v = TagSummary::default();
        for _ in 0..3 {
            v.count += 1;
            v.good += 1;
            v.sum += F32_4_1;
            v.sum_sq += F32_4_1 * F32_4_1;
            v.min = v.min.min(F32_4_1);
            v.max = v.max.max(F32_4_1);
        }
        v.last = Some(F32_4_1);
        let s = DeviceSummary {
            device: Arc::from("kiln-01"),
            from: 0,
            to: 60_000,
            tags: vec![(Arc::from("flue"), Arc::from("degC"), v)],
        };
        let text = String::from_utf8(summary_payload(&who(), &s, 0.93, 0.98)).unwrap();
        assert!(
            text.contains(r#""last":4.1,"max":4.1,"#) && text.contains(r#""min":4.1,"#),
            "{text}"
        );
        assert!(!text.contains("4.0999999"), "{text}");
    }
}
