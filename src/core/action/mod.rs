//! Disposal: actions that write to plant equipment when a rule's alarm activates or returns
//! (docs/DISPOSAL.md). Pure: the [`Book`] takes alarm transitions, operator confirmations,
//! kill switches and write results with `now`, and answers with [`Effect`]s (audit events,
//! write orders, failure alarms) that the engine task carries out.
//!
//! One execution of an action on one device goes
//! `proposed → confirmed → written → verified`, or ends `expired` (not confirmed in time),
//! `refused` (interlock, bounds, rate, kill) or `failed` (the write or its read-back). A
//! `dry_run` action only says what it would write; an `auto` action skips the confirmation.
//! Every guard is checked again at the moment of writing.

pub mod audit;
pub mod encode;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::decode::Encoding;
use super::expr::{Compiled, Expr, ExprError};
use super::model::Ts;
pub use audit::{Audit, AuditKind};
pub use encode::{encode, EncodeError, WriteData};

/// Interlock variables naming an alarm: `alarm_<rule>` is 1 while that alarm of the device is
/// active, else 0.
pub const ALARM_PREFIX: &str = "alarm_";
/// The rate limit's window.
pub const RATE_WINDOW_MS: i64 = 3_600_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Audit what would be written; never write.
    DryRun,
    /// Propose; write only when an operator confirms in time.
    Confirm,
    /// Write at once (the guards still apply).
    Auto,
}

impl Mode {
    pub const NAMES: &'static str = "dry_run, confirm, auto";

    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "dry_run" => Some(Mode::DryRun),
            "confirm" => Some(Mode::Confirm),
            "auto" => Some(Mode::Auto),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry_run",
            Mode::Confirm => "confirm",
            Mode::Auto => "auto",
        }
    }
}

/// Which transition of the rule's alarm starts the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Activation,
    Return,
}

impl Trigger {
    pub fn parse(s: &str) -> Option<Trigger> {
        match s {
            "activation" => Some(Trigger::Activation),
            "return" => Some(Trigger::Return),
            _ => None,
        }
    }

    /// The trigger an alarm transition from `from` to `to` is, if any (state labels).
    pub fn of(from: &str, to: &str) -> Option<Trigger> {
        let active = |s: &str| s.starts_with("active_");
        match (active(from), active(to)) {
            (false, true) => Some(Trigger::Activation),
            (true, false) => Some(Trigger::Return),
            _ => None,
        }
    }
}

/// What the agent knows about the plant now, for interlocks and computed values.
pub trait Facts {
    /// The latest good value of a tag of a device; `None` when bad or unknown.
    fn tag(&self, device: &str, tag: &str) -> Option<f64>;
    /// Whether an alarm of a device is active; `None` when there is no such alarm.
    fn alarm_active(&self, device: &str, rule: &str) -> Option<bool>;
}

/// An expression of the derived-tag language over a device's tags and alarm states.
#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    pub source: String,
    variables: Vec<String>,
    program: Compiled,
}

impl Formula {
    pub fn parse(source: &str) -> Result<Formula, ExprError> {
        let e = Expr::parse(source)?;
        let variables = e.variables().to_vec();
        let program = e.compile(|v| variables.iter().position(|x| x == v))?;
        Ok(Formula {
            source: source.to_string(),
            variables,
            program,
        })
    }

    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The value on `device`; NaN when a variable is bad or unknown (so an interlock over a
    /// bad value is never true).
    pub fn eval(&self, facts: &dyn Facts, device: &str) -> f64 {
        let slots: Vec<f64> = self
            .variables
            .iter()
            .map(|v| match facts.tag(device, v) {
                Some(x) => x,
                None => match v
                    .strip_prefix(ALARM_PREFIX)
                    .and_then(|r| facts.alarm_active(device, r))
                {
                    Some(on) => f64::from(u8::from(on)),
                    None => f64::NAN,
                },
            })
            .collect();
        self.program.eval(&slots)
    }
}

/// The value an action writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Const(f64),
    /// Computed when the action is proposed, e.g. `draft_setpoint - 5`: the value an operator
    /// confirms is the value written (its bounds are checked again at the moment of writing).
    Formula(Formula),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadBack {
    /// Reads after the write before a mismatch is final.
    pub attempts: u32,
    /// Pause between two reads.
    pub delay_ms: i64,
}

/// The register or coil an action writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The tag's name (the register map's, or the one given inline).
    pub name: String,
    pub address: u16,
    pub encoding: Encoding,
}

/// One configured action, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    pub name: String,
    /// The rule whose alarm transitions trigger it.
    pub rule: String,
    pub on: Trigger,
    /// Nothing is written (nor proposed) unless true.
    pub enabled: bool,
    pub mode: Mode,
    /// For the per-area kill switch.
    pub area: String,
    /// (device index, name): the devices it may write to, those of its rule.
    pub devices: Vec<(u32, String)>,
    pub target: Target,
    pub value: Value,
    pub min: f64,
    pub max: f64,
    /// All must be true (non-zero, not NaN) at the moment of writing.
    pub interlocks: Vec<Formula>,
    pub confirm_within_ms: i64,
    pub cooldown_ms: i64,
    /// 0: no limit.
    pub max_per_hour: u32,
    pub read_back: ReadBack,
}

/// The kill switches: all actions, or those of an area.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kill {
    pub all: bool,
    pub areas: BTreeSet<String>,
}

impl Kill {
    pub fn stops(&self, area: &str) -> bool {
        self.all || self.areas.contains(area)
    }
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Interlock,
    Bounds,
    Rate,
    Kill,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Interlock => "interlock",
            Refusal::Bounds => "bounds",
            Refusal::Rate => "rate",
            Refusal::Kill => "kill",
        }
    }
}

/// A write for the device's link: the engine task hands it to the poller, which writes and
/// reads back; the outcome comes back as a [`WriteResult`].
#[derive(Debug, Clone, PartialEq)]
pub struct WriteOrder {
    pub id: u64,
    pub device: u32,
    pub address: u16,
    pub data: WriteData,
    pub read_back: ReadBack,
}

/// What the link did with a [`WriteOrder`].
#[derive(Debug, Clone, PartialEq)]
pub struct WriteResult {
    pub id: u64,
    /// The device accepted the write (or why not).
    pub written: Result<(), String>,
    /// The last read-back (registers, or coils as 0/1), after `attempts` reads; `None` when
    /// the write failed.
    pub read_back: Option<Result<Vec<u16>, String>>,
    pub attempts: u32,
}

/// What the owner of the book must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish (QoS 1) and append to the audit file.
    Audit(Box<Audit>),
    Write(WriteOrder),
    /// Raise the device's `action_failed` alarm.
    Failed {
        device: String,
        action: String,
        detail: String,
    },
}

impl Effect {
    fn audit(a: Audit) -> Effect {
        Effect::Audit(Box::new(a))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Proposed,
    /// Confirmed (or auto): the write is under way.
    Writing,
}

/// An execution still open: proposed, or being written.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    pub id: u64,
    pub action: usize,
    pub device: u32,
    pub device_name: String,
    pub phase: Phase,
    pub proposed_at: Ts,
    pub expires: Ts,
    pub value: f64,
    pub by: Option<String>,
}

/// A proposal waiting for an operator, for the station and the MQTT audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub id: u64,
    pub action: String,
    pub device: String,
    pub target: String,
    pub value: f64,
    pub expires: Ts,
}

/// Every action and its open executions.
#[derive(Debug)]
pub struct Book {
    specs: Vec<ActionSpec>,
    kill: Kill,
    next_id: u64,
    open: BTreeMap<u64, Open>,
    /// Per action: when it wrote within the rate window.
    writes: Vec<VecDeque<Ts>>,
    /// (action, device) → last write.
    last_write: HashMap<(usize, u32), Ts>,
}

impl Book {
    /// `first_id`: the number of the first execution (so that numbers do not repeat across
    /// restarts, the owner passes the time of start).
    pub fn new(specs: Vec<ActionSpec>, kill: Kill, first_id: u64) -> Book {
        let writes = vec![VecDeque::new(); specs.len()];
        Book {
            specs,
            kill,
            next_id: first_id.max(1),
            open: BTreeMap::new(),
            writes,
            last_write: HashMap::new(),
        }
    }

    pub fn specs(&self) -> &[ActionSpec] {
        &self.specs
    }

    /// The number the next execution gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    pub fn kill(&self) -> &Kill {
        &self.kill
    }

    /// Any action that can write at all: enabled and not dry-run.
    pub fn can_write(&self) -> bool {
        self.specs
            .iter()
            .any(|s| s.enabled && s.mode != Mode::DryRun)
    }

    /// Proposals waiting for confirmation, oldest first.
    pub fn proposals(&self) -> Vec<Proposal> {
        self.open
            .values()
            .filter(|o| o.phase == Phase::Proposed)
            .map(|o| {
                let s = &self.specs[o.action];
                Proposal {
                    id: o.id,
                    action: s.name.clone(),
                    device: o.device_name.clone(),
                    target: s.target.name.clone(),
                    value: o.value,
                    expires: o.expires,
                }
            })
            .collect()
    }

    fn audit(&self, kind: AuditKind, o: &Open, now: Ts) -> Audit {
        let s = &self.specs[o.action];
        Audit::new(kind, now, s, o.id, &o.device_name, o.value)
    }

    /// A transition of alarm (`device`, `rule`) from state `from` to `to`, caused by its
    /// condition: starts the actions it triggers.
    pub fn on_alarm(
        &mut self,
        device: &str,
        rule: &str,
        trigger: Trigger,
        facts: &dyn Facts,
        now: Ts,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        for ai in 0..self.specs.len() {
            let s = &self.specs[ai];
            if !s.enabled || s.rule != rule || s.on != trigger {
                continue;
            }
            let Some(&(di, _)) = s.devices.iter().find(|(_, n)| n == device) else {
                continue;
            };
            // One open execution per action and device: a chattering alarm does not pile up.
            if self.open.values().any(|o| o.action == ai && o.device == di) {
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let value = match &s.value {
                Value::Const(v) => *v,
                Value::Formula(f) => f.eval(facts, device),
            };
            let mut o = Open {
                id,
                action: ai,
                device: di,
                device_name: device.to_string(),
                phase: Phase::Proposed,
                proposed_at: now,
                expires: now + s.confirm_within_ms,
                value,
                by: None,
            };
            match s.mode {
                Mode::DryRun => {
                    let a = match self.guards(&o, facts, now) {
                        Ok(data) => self.audit(AuditKind::DryRun, &o, now).words(&data),
                        Err((r, detail)) => {
                            self.audit(AuditKind::Refused, &o, now).refused(r, detail)
                        }
                    };
                    out.push(Effect::audit(a));
                }
                Mode::Confirm => {
                    let a = self.audit(AuditKind::Proposed, &o, now).expires(o.expires);
                    // A proposal that could not be written now is still shown: the interlock
                    // may be true by the time an operator confirms. Bounds and kill are said.
                    out.push(Effect::audit(a));
                    self.open.insert(id, o);
                }
                Mode::Auto => {
                    out.push(Effect::audit(self.audit(AuditKind::Proposed, &o, now)));
                    o.by = Some("auto".into());
                    self.execute(o, facts, now, &mut out);
                }
            }
        }
        out
    }

    /// An operator confirms the open proposal of `action` on `device` (`id`, when given, must
    /// be that proposal's). The effects (audit events even when refused), and whether the
    /// confirmation was taken.
    pub fn confirm(
        &mut self,
        action: &str,
        device: &str,
        id: Option<u64>,
        by: &str,
        facts: &dyn Facts,
        now: Ts,
    ) -> (Vec<Effect>, Result<(), String>) {
        let mut out = Vec::new();
        let r = self.confirm_into(action, device, id, by, facts, now, &mut out);
        (out, r)
    }

    #[allow(clippy::too_many_arguments)]
    fn confirm_into(
        &mut self,
        action: &str,
        device: &str,
        id: Option<u64>,
        by: &str,
        facts: &dyn Facts,
        now: Ts,
        out: &mut Vec<Effect>,
    ) -> Result<(), String> {
        let Some(ai) = self.specs.iter().position(|s| s.name == action) else {
            let known: Vec<&str> = self.specs.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "unknown action \"{action}\"; configured: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        };
        let found = self
            .open
            .values()
            .find(|o| o.action == ai && o.device_name == device)
            .map(|o| (o.id, o.phase));
        let Some((oid, phase)) = found else {
            return Err(format!(
                "no proposal of \"{action}\" on \"{device}\" is waiting"
            ));
        };
        if id.is_some_and(|i| i != oid) {
            return Err(format!(
                "proposal {} is not the one waiting (that is {oid})",
                id.unwrap_or_default()
            ));
        }
        if phase != Phase::Proposed {
            return Err(format!("proposal {oid} is already being written"));
        }
        let Some(mut o) = self.open.remove(&oid) else {
            return Err(format!("proposal {oid} is gone"));
        };
        if now >= o.expires {
            out.push(Effect::audit(self.audit(AuditKind::Expired, &o, now)));
            return Err(format!(
                "proposal {oid} expired before it was confirmed; nothing was written"
            ));
        }
        o.by = Some(by.to_string());
        out.push(Effect::audit(
            self.audit(AuditKind::Confirmed, &o, now).by(by),
        ));
        self.execute(o, facts, now, out);
        Ok(())
    }

    /// Checks every guard; the words to write, or why not.
    fn guards(&self, o: &Open, facts: &dyn Facts, now: Ts) -> Result<WriteData, (Refusal, String)> {
        let s = &self.specs[o.action];
        if self.kill.stops(&s.area) {
            let which = if self.kill.all {
                "the global kill switch is on".to_string()
            } else {
                format!("the kill switch of area \"{}\" is on", s.area)
            };
            return Err((Refusal::Kill, which));
        }
        if !(o.value >= s.min && o.value <= s.max) {
            return Err((
                Refusal::Bounds,
                format!("value {} outside [{}, {}]", o.value, s.min, s.max),
            ));
        }
        let data =
            encode(&s.target.encoding, o.value).map_err(|e| (Refusal::Bounds, e.to_string()))?;
        if let Some(&last) = self.last_write.get(&(o.action, o.device)) {
            if now - last < s.cooldown_ms {
                return Err((
                    Refusal::Rate,
                    format!(
                        "cooldown: last written {} s ago, cooldown {} s",
                        (now - last) / 1000,
                        s.cooldown_ms / 1000
                    ),
                ));
            }
        }
        let recent = self.writes[o.action]
            .iter()
            .filter(|&&t| now - t < RATE_WINDOW_MS)
            .count();
        if s.max_per_hour > 0 && recent >= s.max_per_hour as usize {
            return Err((
                Refusal::Rate,
                format!(
                    "{recent} writes in the last hour; the limit is {}",
                    s.max_per_hour
                ),
            ));
        }
        for f in &s.interlocks {
            let v = f.eval(facts, &o.device_name);
            if v.is_nan() || v == 0.0 {
                let why = if v.is_nan() {
                    "unknown (a value is bad)"
                } else {
                    "false"
                };
                return Err((
                    Refusal::Interlock,
                    format!("interlock \"{}\" is {why}", f.source),
                ));
            }
        }
        Ok(data)
    }

    /// The moment of writing: guards again, then the write order.
    fn execute(&mut self, mut o: Open, facts: &dyn Facts, now: Ts, out: &mut Vec<Effect>) {
        match self.guards(&o, facts, now) {
            Err((r, detail)) => {
                let s = &self.specs[o.action];
                out.push(Effect::audit(
                    self.audit(AuditKind::Refused, &o, now)
                        .refused(r, detail.clone()),
                ));
                // A kill switch is an operator's decision, not a fault: audited only.
                if r != Refusal::Kill {
                    out.push(Effect::Failed {
                        device: o.device_name.clone(),
                        action: s.name.clone(),
                        detail: format!("{} refused: {detail}", s.name),
                    });
                }
            }
            Ok(data) => {
                let s = &self.specs[o.action];
                let w = &mut self.writes[o.action];
                while w.front().is_some_and(|&t| now - t >= RATE_WINDOW_MS) {
                    w.pop_front();
                }
                w.push_back(now);
                self.last_write.insert((o.action, o.device), now);
                out.push(Effect::Write(WriteOrder {
                    id: o.id,
                    device: o.device,
                    address: s.target.address,
                    data,
                    read_back: s.read_back,
                }));
                o.phase = Phase::Writing;
                self.open.insert(o.id, o);
            }
        }
    }

    /// The link's answer to a write order.
    pub fn on_written(&mut self, r: WriteResult, now: Ts) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(o) = self.open.remove(&r.id) else {
            return out;
        };
        let s = &self.specs[o.action];
        let expected = encode(&s.target.encoding, o.value)
            .map(|d| d.raw())
            .unwrap_or_default();
        let fail = |detail: String| Effect::Failed {
            device: o.device_name.clone(),
            action: s.name.clone(),
            detail,
        };
        match r.written {
            Err(e) => {
                out.push(Effect::audit(
                    self.audit(AuditKind::Failed, &o, now)
                        .words_raw(&expected)
                        .detail(format!("write failed: {e}")),
                ));
                out.push(fail(format!("{} write failed: {e}", s.name)));
            }
            Ok(()) => {
                out.push(Effect::audit(
                    self.audit(AuditKind::Written, &o, now).words_raw(&expected),
                ));
                let rb = r
                    .read_back
                    .unwrap_or_else(|| Err("no read-back".to_string()));
                let matched = rb.as_ref().is_ok_and(|w| *w == expected);
                let mut a = self
                    .audit(
                        if matched {
                            AuditKind::Verified
                        } else {
                            AuditKind::Failed
                        },
                        &o,
                        now,
                    )
                    .words_raw(&expected)
                    .attempts(r.attempts);
                a = match &rb {
                    Ok(w) => a.read_back(w),
                    Err(e) => a.detail(format!("read-back failed: {e}")),
                };
                if !matched {
                    let detail = match &rb {
                        Ok(w) => format!(
                            "{} read back {:?}, wrote {:?} ({} reads)",
                            s.name, w, expected, r.attempts
                        ),
                        Err(e) => format!("{} read-back failed: {e}", s.name),
                    };
                    if a.detail.is_none() {
                        a = a.detail(detail.clone());
                    }
                    out.push(Effect::audit(a));
                    out.push(fail(detail));
                } else {
                    out.push(Effect::audit(a));
                }
            }
        }
        out
    }

    /// Proposals not confirmed in time expire.
    pub fn tick(&mut self, now: Ts) -> Vec<Effect> {
        let due: Vec<u64> = self
            .open
            .values()
            .filter(|o| o.phase == Phase::Proposed && now >= o.expires)
            .map(|o| o.id)
            .collect();
        let mut out = Vec::new();
        for id in due {
            if let Some(o) = self.open.remove(&id) {
                out.push(Effect::audit(self.audit(AuditKind::Expired, &o, now)));
            }
        }
        out
    }

    /// Sets a kill switch (`area` None: all actions). Open proposals stay (a confirmation is
    /// refused while the switch is on).
    pub fn set_kill(&mut self, area: Option<&str>, on: bool, by: &str, now: Ts) -> Vec<Effect> {
        match area {
            None => self.kill.all = on,
            Some(a) if on => {
                self.kill.areas.insert(a.to_string());
            }
            Some(a) => {
                self.kill.areas.remove(a);
            }
        }
        vec![Effect::audit(Audit::kill(now, area, on, by))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decode::{DataType, Table, WordOrder};

    struct Plant {
        tags: HashMap<&'static str, f64>,
        alarms: HashMap<&'static str, bool>,
    }

    impl Facts for Plant {
        fn tag(&self, _device: &str, tag: &str) -> Option<f64> {
            self.tags.get(tag).copied()
        }
        fn alarm_active(&self, _device: &str, rule: &str) -> Option<bool> {
            self.alarms.get(rule).copied()
        }
    }

    fn plant(ae: f64, comm_loss: bool) -> Plant {
        Plant {
            tags: [("ae_active", ae), ("feed_rate", 20.0)].into(),
            alarms: [("comm_loss", comm_loss)].into(),
        }
    }

    fn spec(mode: Mode) -> ActionSpec {
        ActionSpec {
            name: "extra_feed".into(),
            rule: "ae_warning".into(),
            on: Trigger::Activation,
            enabled: true,
            mode,
            area: "line-1".into(),
            devices: vec![(0, "pot-001".into()), (1, "pot-002".into())],
            target: Target {
                name: "feed_request".into(),
                address: 30,
                encoding: Encoding {
                    table: Table::Holding,
                    dtype: DataType::U16,
                    order: WordOrder::Abcd,
                    bit: None,
                    scale: 1.0,
                    offset: 0.0,
                },
            },
            value: Value::Const(1.0),
            min: 0.0,
            max: 1.0,
            interlocks: vec![
                Formula::parse("ae_active == 0").unwrap(),
                Formula::parse("not alarm_comm_loss").unwrap(),
            ],
            confirm_within_ms: 60_000,
            cooldown_ms: 300_000,
            max_per_hour: 2,
            read_back: ReadBack {
                attempts: 3,
                delay_ms: 200,
            },
        }
    }

    fn kinds(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Audit(a) => format!("{:?}", a.event),
                Effect::Write(w) => format!("Write({})", w.device),
                Effect::Failed { .. } => "Alarm".into(),
            })
            .collect()
    }

    fn order(effects: &[Effect]) -> WriteOrder {
        effects
            .iter()
            .find_map(|e| match e {
                Effect::Write(w) => Some(w.clone()),
                _ => None,
            })
            .expect("a write order")
    }

    const T: Ts = 1_000_000;

    #[test]
    fn confirm_writes_only_after_confirmation_and_verifies_the_read_back() {
        let mut b = Book::new(vec![spec(Mode::Confirm)], Kill::default(), 1);
        let ok = plant(0.0, false);
        let e = b.on_alarm("pot-001", "ae_warning", Trigger::Activation, &ok, T);
        assert_eq!(kinds(&e), ["Proposed"]);
        // The same alarm again does not propose twice; another rule or trigger nothing.
        assert!(b
            .on_alarm("pot-001", "ae_warning", Trigger::Activation, &ok, T + 1)
            .is_empty());
        assert!(b
            .on_alarm("pot-001", "ae_warning", Trigger::Return, &ok, T + 1)
            .is_empty());
        assert!(b
            .on_alarm("pot-001", "other", Trigger::Activation, &ok, T)
            .is_empty());
        assert_eq!(b.proposals().len(), 1);
        let (e, r) = b.confirm("extra_feed", "pot-001", Some(1), "li.wei", &ok, T + 5_000);
        assert_eq!(r, Ok(()));
        assert_eq!(kinds(&e), ["Confirmed", "Write(0)"]);
        let w = order(&e);
        assert_eq!(
            (w.address, w.data.clone()),
            (30, WriteData::Registers(vec![1]))
        );
        let e = b.on_written(
            WriteResult {
                id: w.id,
                written: Ok(()),
                read_back: Some(Ok(vec![1])),
                attempts: 1,
            },
            T + 5_100,
        );
        assert_eq!(kinds(&e), ["Written", "Verified"]);
        assert!(b.proposals().is_empty());
    }

    #[test]
    fn a_proposal_expires_and_a_late_confirmation_writes_nothing() {
        let mut b = Book::new(vec![spec(Mode::Confirm)], Kill::default(), 1);
        let ok = plant(0.0, false);
        b.on_alarm("pot-001", "ae_warning", Trigger::Activation, &ok, T);
        let (e, r) = b.confirm("extra_feed", "pot-001", None, "x", &ok, T + 60_000);
        assert!(r.unwrap_err().contains("expired"));
        assert_eq!(kinds(&e), ["Expired"]);
        b.on_alarm("pot-002", "ae_warning", Trigger::Activation, &ok, T);
        assert!(b.tick(T + 59_999).is_empty());
        assert_eq!(kinds(&b.tick(T + 60_000)), ["Expired"]);
        let (_, r) = b.confirm("extra_feed", "pot-002", None, "x", &ok, T + 60_001);
        assert!(r.unwrap_err().contains("no proposal"));
    }

    #[test]
    fn interlocks_are_checked_at_the_moment_of_writing() {
        let mut b = Book::new(vec![spec(Mode::Confirm)], Kill::default(), 1);
        b.on_alarm(
            "pot-001",
            "ae_warning",
            Trigger::Activation,
            &plant(0.0, false),
            T,
        );
        // The anode effect started meanwhile.
        let (e, r) = b.confirm(
            "extra_feed",
            "pot-001",
            None,
            "x",
            &plant(1.0, false),
            T + 1,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(kinds(&e), ["Confirmed", "Refused", "Alarm"]);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert_eq!(a.reason, Some("interlock"));
        assert!(a.detail.as_deref().unwrap().contains("ae_active == 0"));
        // An alarm state, and a bad value (unknown is never true).
        let mut b = Book::new(vec![spec(Mode::Auto)], Kill::default(), 1);
        let e = b.on_alarm(
            "pot-001",
            "ae_warning",
            Trigger::Activation,
            &plant(0.0, true),
            T,
        );
        assert_eq!(kinds(&e), ["Proposed", "Refused", "Alarm"]);
        let e = b.on_alarm(
            "pot-002",
            "ae_warning",
            Trigger::Activation,
            &plant(f64::NAN, false),
            T,
        );
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert!(a.detail.as_deref().unwrap().contains("unknown"), "{a:?}");
    }

    #[test]
    fn dry_run_never_orders_a_write() {
        let mut b = Book::new(vec![spec(Mode::DryRun)], Kill::default(), 1);
        let e = b.on_alarm(
            "pot-001",
            "ae_warning",
            Trigger::Activation,
            &plant(0.0, false),
            T,
        );
        assert_eq!(kinds(&e), ["DryRun"]);
        let Effect::Audit(a) = &e[0] else { panic!() };
        assert_eq!(a.words, Some(vec![1]));
        assert!(b.proposals().is_empty());
        assert!(!b.can_write());
    }

    #[test]
    fn kill_switches_stop_every_action_without_raising_alarms() {
        let ok = plant(0.0, false);
        let mut b = Book::new(vec![spec(Mode::Auto)], Kill::default(), 1);
        assert_eq!(
            kinds(&b.set_kill(Some("line-1"), true, "boss", T)),
            ["Kill"]
        );
        let e = b.on_alarm("pot-001", "ae_warning", Trigger::Activation, &ok, T);
        assert_eq!(kinds(&e), ["Proposed", "Refused"]);
        b.set_kill(Some("line-1"), false, "boss", T);
        b.set_kill(None, true, "boss", T);
        let e = b.on_alarm("pot-002", "ae_warning", Trigger::Activation, &ok, T);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert_eq!(a.reason, Some("kill"));
        b.set_kill(None, false, "boss", T);
        let e = b.on_alarm("pot-002", "ae_warning", Trigger::Activation, &ok, T);
        assert_eq!(kinds(&e), ["Proposed", "Write(1)"]);
    }

    #[test]
    fn rate_limit_and_cooldown() {
        let ok = plant(0.0, false);
        let mut b = Book::new(vec![spec(Mode::Auto)], Kill::default(), 1);
        let fire = |b: &mut Book, dev: &str, t: Ts| {
            let e = b.on_alarm(dev, "ae_warning", Trigger::Activation, &ok, t);
            if let Some(Effect::Write(w)) = e.get(1) {
                b.on_written(
                    WriteResult {
                        id: w.id,
                        written: Ok(()),
                        read_back: Some(Ok(vec![1])),
                        attempts: 1,
                    },
                    t,
                );
            }
            e
        };
        assert_eq!(kinds(&fire(&mut b, "pot-001", T)), ["Proposed", "Write(0)"]);
        let e = fire(&mut b, "pot-001", T + 60_000);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert_eq!(a.reason, Some("rate"));
        assert!(a.detail.as_deref().unwrap().starts_with("cooldown"));
        assert_eq!(
            kinds(&fire(&mut b, "pot-002", T + 60_000)),
            ["Proposed", "Write(1)"]
        );
        // Two writes this hour: a third device... the limit is per action.
        let e = fire(&mut b, "pot-001", T + 400_000);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert!(a.detail.as_deref().unwrap().contains("limit is 2"), "{a:?}");
        assert_eq!(
            kinds(&fire(&mut b, "pot-001", T + RATE_WINDOW_MS + 1)),
            ["Proposed", "Write(0)"]
        );
    }

    #[test]
    fn bounds_refuse_a_computed_value_outside_them() {
        let mut s = spec(Mode::Auto);
        s.value = Value::Formula(Formula::parse("feed_rate * 2").unwrap());
        s.max = 30.0;
        let mut b = Book::new(vec![s], Kill::default(), 1);
        let e = b.on_alarm(
            "pot-001",
            "ae_warning",
            Trigger::Activation,
            &plant(0.0, false),
            T,
        );
        assert_eq!(kinds(&e), ["Proposed", "Refused", "Alarm"]);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert_eq!((a.reason, a.value), (Some("bounds"), Some(40.0)));
    }

    #[test]
    fn a_read_back_that_differs_or_a_failed_write_raises_the_alarm() {
        let ok = plant(0.0, false);
        let mut b = Book::new(vec![spec(Mode::Auto)], Kill::default(), 1);
        let e = b.on_alarm("pot-001", "ae_warning", Trigger::Activation, &ok, T);
        let w = order(&e);
        let e = b.on_written(
            WriteResult {
                id: w.id,
                written: Ok(()),
                read_back: Some(Ok(vec![0])),
                attempts: 3,
            },
            T,
        );
        assert_eq!(kinds(&e), ["Written", "Failed", "Alarm"]);
        let Effect::Audit(a) = &e[1] else { panic!() };
        assert_eq!((a.read_back.clone(), a.attempts), (Some(vec![0]), Some(3)));
        let e = b.on_alarm("pot-002", "ae_warning", Trigger::Activation, &ok, T);
        let w = order(&e);
        let e = b.on_written(
            WriteResult {
                id: w.id,
                written: Err("exception 02".into()),
                read_back: None,
                attempts: 0,
            },
            T,
        );
        assert_eq!(kinds(&e), ["Failed", "Alarm"]);
    }

    #[test]
    fn triggers_from_state_labels() {
        assert_eq!(
            Trigger::of("normal", "active_unacked"),
            Some(Trigger::Activation)
        );
        assert_eq!(
            Trigger::of("returned_unacked", "active_acked"),
            Some(Trigger::Activation)
        );
        assert_eq!(Trigger::of("active_acked", "normal"), Some(Trigger::Return));
        assert_eq!(
            Trigger::of("active_unacked", "returned_unacked"),
            Some(Trigger::Return)
        );
        assert_eq!(Trigger::of("active_unacked", "active_acked"), None);
    }

    #[test]
    fn audit_payload_names_the_agent_and_time() {
        let s = spec(Mode::Confirm);
        let a = Audit::new(AuditKind::Proposed, 0, &s, 7, "pot-001", 1.0).expires(60_000);
        let v: serde_json::Value = serde_json::from_slice(&a.payload("gw", "s", "a")).unwrap();
        assert_eq!(v["schema"], "alsentry/audit/1");
        assert_eq!(v["event"], "proposed");
        assert_eq!(v["ts"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["expires"], "1970-01-01T00:01:00.000Z");
        assert_eq!(
            (v["id"].as_u64(), v["address"].as_u64()),
            (Some(7), Some(30))
        );
    }
}
