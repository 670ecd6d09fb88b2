//! The engine owns every window and every alarm. It is fed sample batches and clock ticks,
//! and answers with alarm events; it never does I/O and never reads the clock.

use std::collections::HashMap;
use std::sync::Arc;

use super::alarm::{Alarm, AlarmSettings, CommandError, Condition, Transition};
use super::message::{MessageContext, MessageTemplate};
use super::model::{BadReason, Priority, Quality, Ts};
use super::window::{capacity_for, Point, Window};
use crate::config::{Config, RuleKind};

/// Values read from one device in one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    /// Index of the device in `Config::devices`.
    pub device: u32,
    /// Source timestamp: when the reads were answered.
    pub ts: Ts,
    /// (tag index within the device, value, quality). A bad value is carried as NaN.
    pub values: Vec<(u16, f64, Quality)>,
}

/// One alarm transition, with everything a payload needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmEvent {
    pub device: Arc<str>,
    pub rule: Arc<str>,
    pub tag: Arc<str>,
    pub unit: Arc<str>,
    pub priority: Priority,
    pub transition: Transition,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub quality: Quality,
    pub message: String,
    /// When the current published state began.
    pub since: Ts,
    pub active_since: Option<Ts>,
    pub acked_by: Option<String>,
    pub shelved_until: Option<Ts>,
}

/// An operator command on one alarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ack { note: Option<String> },
    Shelve { until: Ts },
    Unshelve,
    Reset,
    OutOfService,
    ReturnToService,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("unknown alarm: device \"{device}\" has no rule \"{rule}\"")]
    UnknownAlarm { device: String, rule: String },
    #[error(transparent)]
    Refused(#[from] CommandError),
}

#[derive(Debug)]
struct TagState {
    name: Arc<str>,
    unit: Arc<str>,
    window: Window,
    last: Option<Point>,
    quality: Quality,
    /// Rule instances watching this tag.
    watchers: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
enum Eval {
    High {
        limit: f64,
        deadband: f64,
        active: bool,
    },
    Low {
        limit: f64,
        deadband: f64,
        active: bool,
    },
}

impl Eval {
    fn from_kind(kind: &RuleKind) -> Eval {
        match *kind {
            RuleKind::High { limit, deadband } => Eval::High {
                limit,
                deadband,
                active: false,
            },
            RuleKind::Low { limit, deadband } => Eval::Low {
                limit,
                deadband,
                active: false,
            },
        }
    }

    /// Deadband delays only the return to normal: a high alarm at L activates above L and
    /// clears below L - deadband.
    fn step(&mut self, v: f64) -> Condition {
        let now_active = match self {
            Eval::High {
                limit,
                deadband,
                active,
            } => {
                *active = if *active {
                    v >= *limit - *deadband
                } else {
                    v > *limit
                };
                *active
            }
            Eval::Low {
                limit,
                deadband,
                active,
            } => {
                *active = if *active {
                    v <= *limit + *deadband
                } else {
                    v < *limit
                };
                *active
            }
        };
        if now_active {
            Condition::Active
        } else {
            Condition::Clear
        }
    }

    fn limit(&self) -> Option<f64> {
        match self {
            Eval::High { limit, .. } | Eval::Low { limit, .. } => Some(*limit),
        }
    }
}

#[derive(Debug)]
struct Instance {
    device: u32,
    slot: u32,
    rule: Arc<str>,
    message: Arc<MessageTemplate>,
    eval: Eval,
    alarm: Alarm,
    value: Option<f64>,
    quality: Quality,
}

#[derive(Debug)]
struct DeviceState {
    name: Arc<str>,
    first_slot: u32,
    tag_count: u16,
}

#[derive(Debug)]
pub struct Engine {
    devices: Vec<DeviceState>,
    tags: Vec<TagState>,
    instances: Vec<Instance>,
    by_name: HashMap<(Arc<str>, Arc<str>), u32>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("rule \"{rule}\": {message}")]
pub struct BuildError {
    pub rule: String,
    pub message: String,
}

impl Engine {
    pub fn new(cfg: &Config) -> Result<Engine, BuildError> {
        let mut devices = Vec::with_capacity(cfg.devices.len());
        let mut tags = Vec::new();
        let mut slot_of: HashMap<(&str, &str), u32> = HashMap::new();
        for d in &cfg.devices {
            let first_slot = tags.len() as u32;
            for t in &d.tags {
                slot_of.insert((d.name.as_str(), t.name.as_str()), tags.len() as u32);
                tags.push(TagState {
                    name: Arc::from(t.name.as_str()),
                    unit: Arc::from(t.unit.as_str()),
                    window: Window::new(capacity_for(0, d.poll_ms)),
                    last: None,
                    quality: Quality::Bad(BadReason::ConnectionLost),
                    watchers: Vec::new(),
                });
            }
            devices.push(DeviceState {
                name: Arc::from(d.name.as_str()),
                first_slot,
                tag_count: d.tags.len() as u16,
            });
        }
        let mut instances = Vec::new();
        let mut by_name = HashMap::new();
        for rule in &cfg.rules {
            let message =
                Arc::new(
                    MessageTemplate::parse(&rule.message).map_err(|e| BuildError {
                        rule: rule.name.clone(),
                        message: format!("message: {e}"),
                    })?,
                );
            let rule_name: Arc<str> = Arc::from(rule.name.as_str());
            for (di, d) in cfg.devices.iter().enumerate() {
                if !crate::config::selects(&rule.selector, d) {
                    continue;
                }
                let Some(&slot) = slot_of.get(&(d.name.as_str(), rule.tag.as_str())) else {
                    return Err(BuildError {
                        rule: rule.name.clone(),
                        message: format!("device \"{}\" has no tag \"{}\"", d.name, rule.tag),
                    });
                };
                let id = instances.len() as u32;
                tags[slot as usize].watchers.push(id);
                by_name.insert((devices[di].name.clone(), rule_name.clone()), id);
                instances.push(Instance {
                    device: di as u32,
                    slot,
                    rule: rule_name.clone(),
                    message: message.clone(),
                    eval: Eval::from_kind(&rule.kind),
                    alarm: Alarm::new(AlarmSettings {
                        priority: rule.priority,
                        on_delay_ms: rule.on_delay_ms,
                        off_delay_ms: rule.off_delay_ms,
                        latching: rule.latching,
                    }),
                    value: None,
                    quality: Quality::Bad(BadReason::ConnectionLost),
                });
            }
        }
        Ok(Engine {
            devices,
            tags,
            instances,
            by_name,
        })
    }

    /// Applies one batch of samples; alarm transitions are appended to `out`.
    pub fn on_batch(&mut self, batch: &SampleBatch, now: Ts, out: &mut Vec<AlarmEvent>) {
        let Some(dev) = self.devices.get(batch.device as usize) else {
            return;
        };
        let (first, count) = (dev.first_slot, dev.tag_count);
        for &(tag, v, quality) in &batch.values {
            if tag >= count {
                continue;
            }
            let slot = (first + u32::from(tag)) as usize;
            self.on_sample(slot, batch.ts, v, quality, now, out);
        }
    }

    fn on_sample(
        &mut self,
        slot: usize,
        ts: Ts,
        v: f64,
        quality: Quality,
        now: Ts,
        out: &mut Vec<AlarmEvent>,
    ) {
        let good = quality.is_good() && v.is_finite();
        let t = &mut self.tags[slot];
        t.quality = if good { Quality::Good } else { quality };
        if good {
            let p = Point { ts, v };
            t.window.push(p);
            t.last = Some(p);
        }
        for wi in 0..self.tags[slot].watchers.len() {
            let id = self.tags[slot].watchers[wi] as usize;
            let inst = &mut self.instances[id];
            let condition = if good {
                inst.value = Some(v);
                inst.eval.step(v)
            } else {
                Condition::Unknown
            };
            inst.quality = if good { Quality::Good } else { quality };
            if let Some(tr) = inst.alarm.condition(condition, now) {
                out.push(self.event(id, tr));
            }
        }
    }

    /// Advances timers (on/off delays, shelve expiry) without new samples.
    pub fn tick(&mut self, now: Ts, out: &mut Vec<AlarmEvent>) {
        for id in 0..self.instances.len() {
            if let Some(tr) = self.instances[id].alarm.tick(now) {
                out.push(self.event(id, tr));
            }
        }
    }

    /// Applies an operator command to the alarm of (device, rule).
    pub fn command(
        &mut self,
        device: &str,
        rule: &str,
        by: &str,
        cmd: &Command,
        now: Ts,
    ) -> Result<Option<AlarmEvent>, EngineError> {
        let id = *self
            .by_name
            .get(&(Arc::from(device), Arc::from(rule)))
            .ok_or_else(|| EngineError::UnknownAlarm {
                device: device.into(),
                rule: rule.into(),
            })? as usize;
        let mut pending = Vec::new();
        if let Some(tr) = self.instances[id].alarm.tick(now) {
            pending.push(tr);
        }
        let alarm = &mut self.instances[id].alarm;
        let tr = match cmd {
            Command::Ack { note } => alarm.ack(by, note.as_deref(), now)?,
            Command::Shelve { until } => alarm.shelve(*until, by, now)?,
            Command::Unshelve => alarm.unshelve(by, now)?,
            Command::Reset => alarm.reset(by, now)?,
            Command::OutOfService => alarm.remove_from_service(by, now)?,
            Command::ReturnToService => alarm.return_to_service(by, now)?,
        };
        Ok(tr.map(|tr| self.event(id, tr)))
    }

    fn event(&self, id: usize, transition: Transition) -> AlarmEvent {
        let inst = &self.instances[id];
        let tag = &self.tags[inst.slot as usize];
        let device = &self.devices[inst.device as usize];
        let state = inst.alarm.published_state();
        let message = inst.message.render(&MessageContext {
            device: &device.name,
            tag: &tag.name,
            rule: &inst.rule,
            unit: &tag.unit,
            value: inst.value,
            limit: inst.eval.limit(),
            eta_ms: None,
            priority: Some(inst.alarm.priority()),
            state,
        });
        AlarmEvent {
            device: device.name.clone(),
            rule: inst.rule.clone(),
            tag: tag.name.clone(),
            unit: tag.unit.clone(),
            priority: inst.alarm.priority(),
            value: inst.value,
            limit: inst.eval.limit(),
            quality: inst.quality,
            message,
            since: inst.alarm.since(),
            active_since: inst.alarm.active_since(),
            // Acknowledging RTNUN lands in NORM, which keeps no acknowledger; the payload still
            // says who did it.
            acked_by: inst.alarm.acked_by().map(str::to_string).or_else(|| {
                (transition.cause == super::alarm::Cause::Ack)
                    .then(|| transition.by.clone())
                    .flatten()
            }),
            shelved_until: inst.alarm.shelved_until(),
            transition,
        }
    }

    /// Every alarm that operators currently see (not normal, not hidden).
    pub fn shown_alarms(&self) -> Vec<AlarmEvent> {
        (0..self.instances.len())
            .filter(|&id| self.instances[id].alarm.is_shown())
            .map(|id| {
                let a = &self.instances[id].alarm;
                let s = a.published_state();
                self.event(
                    id,
                    Transition {
                        from: s,
                        to: s,
                        at: a.since(),
                        cause: super::alarm::Cause::Condition,
                        by: None,
                        note: None,
                    },
                )
            })
            .collect()
    }

    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    /// Latest good value and current quality of a tag, for tests and summaries.
    pub fn tag_value(&self, device: &str, tag: &str) -> Option<(Option<f64>, Quality)> {
        let d = self.devices.iter().find(|d| &*d.name == device)?;
        let range = d.first_slot as usize..(d.first_slot as usize + d.tag_count as usize);
        self.tags[range]
            .iter()
            .find(|t| &*t.name == tag)
            .map(|t| (t.last.map(|p| p.v), t.quality))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CFG: &str = r#"
[agent]
id = "gw"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[templates.cell]
tags = [ { name = "voltage", table = "input", address = 0, type = "f32", order = "CDAB", unit = "V" } ]
[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-2"
[[rules]]
name = "anode_effect"
template = "cell"
tag = "voltage"
type = "high"
limit = 8.0
deadband = 0.5
on_delay = "2s"
priority = "critical"
message = "Anode effect on {device}: {value} V"
"#;

    fn engine() -> Engine {
        Engine::new(&Config::from_str(Path::new("t.toml"), CFG).unwrap()).unwrap()
    }

    fn feed(e: &mut Engine, dev: u32, t: Ts, v: f64) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: dev,
                ts: t,
                values: vec![(0, v, Quality::Good)],
            },
            t,
            &mut out,
        );
        out
    }

    #[test]
    fn high_rule_with_on_delay_and_deadband() {
        let mut e = engine();
        assert!(feed(&mut e, 0, 0, 4.2).is_empty());
        assert!(
            feed(&mut e, 0, 1_000, 9.0).is_empty(),
            "on-delay not elapsed"
        );
        assert!(feed(&mut e, 0, 2_000, 9.5).is_empty());
        let ev = feed(&mut e, 0, 3_000, 12.0);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition.to, "active_unacked");
        assert_eq!(&*ev[0].device, "pot-001");
        assert_eq!(ev[0].message, "Anode effect on pot-001: 12 V");
        assert_eq!(ev[0].limit, Some(8.0));
        // Within the deadband: still active.
        assert!(feed(&mut e, 0, 4_000, 7.6).is_empty());
        let ev = feed(&mut e, 0, 5_000, 7.4);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition.to, "returned_unacked");
        // The other device is untouched.
        assert!(feed(&mut e, 1, 5_000, 4.1).is_empty());
    }

    #[test]
    fn a_short_excursion_never_alarms_and_bad_samples_never_trigger() {
        let mut e = engine();
        feed(&mut e, 0, 0, 9.0);
        feed(&mut e, 0, 1_000, 4.0);
        assert!(feed(&mut e, 0, 2_500, 9.0).is_empty());
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: 0,
                ts: 3_000,
                values: vec![(0, f64::NAN, Quality::Bad(BadReason::Timeout))],
            },
            3_000,
            &mut out,
        );
        e.tick(10_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            e.tag_value("pot-001", "voltage").map(|x| x.1),
            Some(Quality::Bad(BadReason::Timeout))
        );
    }

    #[test]
    fn commands_reach_the_alarm() {
        let mut e = engine();
        feed(&mut e, 0, 0, 9.0);
        feed(&mut e, 0, 2_000, 9.0);
        let ev = e
            .command(
                "pot-001",
                "anode_effect",
                "shift-a",
                &Command::Ack { note: None },
                2_500,
            )
            .unwrap()
            .unwrap();
        assert_eq!(ev.transition.to, "active_acked");
        assert_eq!(ev.acked_by.as_deref(), Some("shift-a"));
        assert!(matches!(
            e.command("pot-009", "anode_effect", "x", &Command::Reset, 3_000),
            Err(EngineError::UnknownAlarm { .. })
        ));
        assert_eq!(e.shown_alarms().len(), 1);
    }
}
