//! The engine owns every window and every alarm. It is fed sample batches and clock ticks,
//! and answers with alarm events; it never does I/O and never reads the clock.
//!
//! Per sample: the tag's window (kept only for tags a rule reads) is updated once, then each
//! rule watching the tag updates its own incremental statistics and yields a condition for its
//! alarm. Derived tags are computed from the device's latest values after each batch.
//! Suppression by design (by another alarm or by an expression), area-scoped rules (one alarm
//! for many devices), the built-in communication-loss alarm, flood handling and the alarm KPIs
//! live here too.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::alarm::{
    Alarm, AlarmSettings, Cause, CommandError, Condition, SavedAlarm, State, Transition,
};
use super::eval::{Eval, Lookup};
use super::expr::Compiled;
use super::flood::{AlarmKpis, FloodConfig, FloodDecision, FloodDetector, FloodEvent, KpiSnapshot};
use super::message::{MessageContext, MessageTemplate};
use super::model::{BadReason, Priority, Quality, Ts};
use super::rule::{RuleKind, Scope};
use super::spec::{Binding, RuleSpec, Spec, SuppressSpec};
use super::window::{capacity_for, Point, Window};

pub use super::rule::{AREA_DEVICE, COMM_LOSS_RULE, FLOOD_RULE};

/// The built-in alarm of a device whose action failed (see [`Engine::action_failed`]).
pub const ACTION_FAILED_RULE: &str = "action_failed";
const ACTION_FAILED_MESSAGE: &str = "{device}: an action's write was refused or failed";

/// Values read from one device in one poll.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleBatch {
    /// Index of the device in `Spec::devices` (the configuration's device order).
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

/// One alarm instance as persisted across restarts, named by (device, rule) so that it finds
/// its alarm in whatever configuration is in force at the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedInstance {
    pub device: String,
    pub rule: String,
    /// The last value seen, for the message of the republished state.
    #[serde(default)]
    pub value: Option<f64>,
    pub alarm: SavedAlarm,
}

/// What [`Engine::restore`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Instances whose state was taken over.
    pub restored: usize,
    /// Instances whose device or rule no longer exists.
    pub dropped: usize,
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

/// Per-tag running figures over one summary interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TagSummary {
    pub count: u64,
    pub good: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub sum_sq: f64,
    pub last: Option<f64>,
}

impl Default for TagSummary {
    fn default() -> Self {
        TagSummary {
            count: 0,
            good: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
            last: None,
        }
    }
}

impl TagSummary {
    pub fn mean(&self) -> Option<f64> {
        (self.good > 0).then(|| self.sum / self.good as f64)
    }

    pub fn std(&self) -> Option<f64> {
        let m = self.mean()?;
        (self.good > 1).then(|| ((self.sum_sq / self.good as f64 - m * m).max(0.0)).sqrt())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSummary {
    pub device: Arc<str>,
    pub from: Ts,
    pub to: Ts,
    pub tags: Vec<(Arc<str>, Arc<str>, TagSummary)>,
}

/// One tag as the operator station's device view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TagTrend {
    pub name: Arc<str>,
    pub unit: Arc<str>,
    /// Latest good value.
    pub value: Option<f64>,
    pub quality: Quality,
    /// (time, value), oldest first.
    pub points: Vec<(Ts, f64)>,
}

/// What a tag's samples rarely touch: its names, its history for the rules that read one,
/// and those rules. Every sample writes [`HotTag`] instead.
#[derive(Debug)]
struct TagState {
    name: Arc<str>,
    unit: Arc<str>,
    window: Window,
    watchers: Vec<u32>,
}

/// `HotTag::last_ts` before the tag's first good sample.
const NO_POINT: Ts = Ts::MIN;

/// What every sample of a tag reads and writes, in one cache line of its own. At 400 cells
/// the tags' states leave the cache between polls; when these fields sat in a ~200-byte state
/// beside the names and the window, a sample touched three lines of it.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct HotTag {
    /// The summary interval's figures ([`TagSummary`]; counts saturate).
    count: u32,
    good: u32,
    min: f64,
    max: f64,
    sum: f64,
    sum_sq: f64,
    /// The last good point ([`NO_POINT`] before the first).
    last_ts: Ts,
    last_v: f64,
    quality: Quality,
    /// Whether a rule reads this tag's history: only then does its window take its samples.
    /// The others (most of a cell's tags) keep their last point here alone, which spares every
    /// sample a write to a buffer of its own (a cache miss per tag at 400 cells).
    windowed: bool,
    /// Whether any rule watches the tag: the others skip evaluation altogether.
    watched: bool,
}

impl HotTag {
    fn new(windowed: bool) -> HotTag {
        HotTag {
            count: 0,
            good: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            sum_sq: 0.0,
            last_ts: NO_POINT,
            last_v: f64::NAN,
            quality: Quality::Bad(BadReason::ConnectionLost),
            windowed,
            watched: false,
        }
    }

    fn last(&self) -> Option<Point> {
        (self.last_ts != NO_POINT).then_some(Point {
            ts: self.last_ts,
            v: self.last_v,
        })
    }

    fn add(&mut self, p: Point, good: bool, quality: Quality) {
        self.count = self.count.saturating_add(1);
        self.quality = if good { Quality::Good } else { quality };
        if good {
            self.good = self.good.saturating_add(1);
            self.min = self.min.min(p.v);
            self.max = self.max.max(p.v);
            self.sum += p.v;
            self.sum_sq += p.v * p.v;
            self.last_ts = p.ts;
            self.last_v = p.v;
        }
    }

    /// The interval's figures so far; the last good value is the last point's while the
    /// interval has a good sample.
    fn summary(&self) -> TagSummary {
        TagSummary {
            count: u64::from(self.count),
            good: u64::from(self.good),
            min: self.min,
            max: self.max,
            sum: self.sum,
            sum_sq: self.sum_sq,
            last: (self.good > 0).then_some(self.last_v),
        }
    }

    /// [`Self::summary`], and a new interval begins.
    fn take_summary(&mut self) -> TagSummary {
        let s = self.summary();
        (self.count, self.good) = (0, 0);
        (self.min, self.max) = (f64::INFINITY, f64::NEG_INFINITY);
        (self.sum, self.sum_sq) = (0.0, 0.0);
        s
    }

    /// Takes the samples' state of `old` (a reload): what this tag's rules read stays its own.
    fn carry(&mut self, old: &HotTag) {
        *self = HotTag {
            windowed: self.windowed,
            watched: self.watched,
            ..*old
        };
    }
}

/// Where an evaluator's condition goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Alarm(u32),
    /// Member `member` of area aggregate `area`.
    Area {
        area: u32,
        member: u32,
    },
}

#[derive(Debug)]
struct Evaluator {
    /// The rule as configured, to tell on reload whether its state can be kept.
    kind: RuleKind,
    eval: Eval,
    target: Target,
    holds: Vec<Hold>,
    held: bool,
}

/// One hold-off of one evaluator: its expression on the device's slots, and until when it holds.
#[derive(Debug)]
struct Hold {
    /// As written (`when`), with `for_ms`: what a reload compares to keep `until`.
    source: Arc<str>,
    program: Compiled,
    inputs: Vec<u32>,
    /// `alarm:RULE`: the device's alarm of RULE, resolved once every rule has its alarms.
    alarm_rule: Option<(Arc<str>, Arc<str>)>,
    alarm: Option<u32>,
    for_ms: i64,
    until: Option<Ts>,
}

impl Hold {
    /// Whether the rule is held at `ts`; an expression that cannot be evaluated (a tag without
    /// a good value) neither starts nor extends the hold.
    fn update(&mut self, ts: Ts, latest: &[f64], alarms: &[AlarmSlot]) -> bool {
        if self.alarm_rule.is_some() {
            if self
                .alarm
                .and_then(|id| alarms.get(id as usize))
                .is_some_and(|a| a.alarm.is_active())
            {
                self.until = Some(ts + self.for_ms);
            }
            return self.until.is_some_and(|u| ts <= u);
        }
        let mut inputs = [f64::NAN; 16];
        let ok =
            self.inputs.len() <= inputs.len()
                && self.inputs.iter().enumerate().all(|(k, &slot)| {
                    match Latest(latest).value(slot) {
                        Some(v) => {
                            inputs[k] = v;
                            true
                        }
                        None => false,
                    }
                });
        if ok {
            let v = self.program.eval(&inputs[..self.inputs.len()]);
            if v.is_finite() && v != 0.0 {
                self.until = Some(ts + self.for_ms);
            }
        }
        self.until.is_some_and(|u| ts <= u)
    }
}

/// Everything an alarm needs to describe itself.
#[derive(Debug)]
struct AlarmSlot {
    device: Arc<str>,
    rule: Arc<str>,
    tag: Arc<str>,
    unit: Arc<str>,
    message: Arc<MessageTemplate>,
    alarm: Alarm,
    value: Option<f64>,
    quality: Quality,
    limit: Option<f64>,
    eta_ms: Option<i64>,
    chatter_seen: u64,
}

impl AlarmSlot {
    /// A built-in alarm that watches no tag (comm loss, flood, action failed).
    fn builtin(
        device: Arc<str>,
        rule: Arc<str>,
        message: Arc<MessageTemplate>,
        settings: AlarmSettings,
    ) -> AlarmSlot {
        AlarmSlot {
            device,
            rule,
            tag: Arc::from(""),
            unit: Arc::from(""),
            message,
            alarm: Alarm::new(settings),
            value: None,
            quality: Quality::Good,
            limit: None,
            eta_ms: None,
            chatter_seen: 0,
        }
    }
}

#[derive(Debug)]
struct AreaAggregate {
    alarm: u32,
    quorum: f64,
    conditions: Vec<Condition>,
    values: Vec<Option<f64>>,
}

#[derive(Debug)]
struct Derived {
    slot: u32,
    program: Compiled,
    inputs: Vec<u32>,
}

#[derive(Debug)]
struct ExprSuppression {
    program: Compiled,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    state: Option<bool>,
}

/// [`Engine::fresh_value`]: a sample older than this many polls of its device is stale...
pub const FRESH_POLLS: i64 = 3;
/// ...and never younger than this (a fast poll's jitter is not staleness).
pub const FRESH_MIN_MS: i64 = 5_000;

#[derive(Debug)]
struct DeviceState {
    name: Arc<str>,
    first_slot: u32,
    raw_count: u16,
    slot_count: u16,
    /// For [`Engine::fresh_value`]: how old a sample may be.
    poll_ms: i64,
    derived: Vec<Derived>,
    comm_alarm: Option<u32>,
    suppressions: Vec<ExprSuppression>,
}

#[derive(Debug)]
struct AlarmSuppression {
    rule: Arc<str>,
    device: Option<Arc<str>>,
    targets: Vec<u32>,
    state: bool,
}

#[derive(Debug)]
pub struct Engine {
    area: Arc<str>,
    started: Option<Ts>,
    devices: Vec<DeviceState>,
    tags: Vec<TagState>,
    hot: Vec<HotTag>,
    latest: Vec<f64>,
    evaluators: Vec<Evaluator>,
    /// The slot each evaluator watches.
    evaluator_slot: Vec<u32>,
    alarms: Vec<AlarmSlot>,
    areas: Vec<AreaAggregate>,
    by_name: HashMap<(Arc<str>, Arc<str>), u32>,
    active_by_rule: HashMap<Arc<str>, usize>,
    alarm_suppressions: Vec<AlarmSuppression>,
    suppression_dirty: bool,
    flood: FloodDetector,
    flood_alarm: u32,
    held: HashMap<u64, u32>,
    kpis: AlarmKpis,
    summary_from: Option<Ts>,
    scratch: Vec<Stored>,
    /// Counts alarm changes (transitions, silent activations while hidden, commands), so the
    /// owner can tell when the state is worth saving again.
    changes: u64,
}

/// A sample stored in its slot, waiting for its rules to run.
#[derive(Debug, Clone, Copy)]
struct Stored {
    slot: u32,
    p: Point,
    quality: Quality,
    good: bool,
    /// A rule watches the slot: only then is the sample evaluated.
    watched: bool,
    evicted: Option<(u64, Point)>,
}

/// Latest value of every slot, NaN while bad: what curve rules and expressions read.
struct Latest<'a>(&'a [f64]);

impl Lookup for Latest<'_> {
    fn value(&self, slot: u32) -> Option<f64> {
        self.0.get(slot as usize).copied().filter(|v| v.is_finite())
    }
}

impl Engine {
    /// Builds the engine of a compiled spec. Nothing can fail here: compiling the spec checked
    /// every name, expression and template (`alsentry check` runs that same compile).
    pub fn new(spec: &Spec) -> Engine {
        let area: Arc<str> = spec.area().clone();
        let alarm_options = spec.alarms();
        // Sized exactly: the per-tag vectors are the engine's largest allocations, and growth by
        // doubling left up to half of them unused (1.5 MB at 400 cells when they were one).
        let mut tags: Vec<TagState> = Vec::with_capacity(spec.tag_count());
        let mut hot: Vec<HotTag> = Vec::with_capacity(spec.tag_count());
        let mut alarms: Vec<AlarmSlot> = Vec::new();
        let mut by_name = HashMap::new();
        // Window span each tag needs: the longest window of the rules watching it.
        let mut span: HashMap<(u32, u16), i64> = HashMap::new();
        for rule in spec.rules() {
            for i in &rule.instances {
                if let Some(b) = rule.bindings.get(i.binding as usize) {
                    let e = span.entry((i.device, b.tag)).or_insert(0);
                    *e = (*e).max(rule.kind.window_ms());
                }
            }
        }
        // Tag names and units repeat across the device entries: one allocation each.
        let mut interned: HashMap<Arc<str>, ()> = HashMap::new();
        let mut intern = |s: &Arc<str>| -> Arc<str> {
            if let Some((a, _)) = interned.get_key_value(s) {
                return a.clone();
            }
            interned.insert(s.clone(), ());
            s.clone()
        };
        let mut devices = Vec::with_capacity(spec.devices().len());
        for (di, d) in spec.devices().iter().enumerate() {
            let first_slot = tags.len() as u32;
            for (ti, t) in d.tags.tags.iter().enumerate() {
                // A tag no rule watches needs no history (most of a cell's tags).
                let span = span.get(&(di as u32, ti as u16));
                let capacity = span.map_or(1, |&w| capacity_for(w, d.poll_ms));
                tags.push(TagState {
                    name: intern(&t.name),
                    unit: intern(&t.unit),
                    window: Window::new(capacity),
                    watchers: Vec::new(),
                });
                hot.push(HotTag::new(span.is_some()));
            }
            let derived = d
                .tags
                .derived
                .iter()
                .map(|x| Derived {
                    slot: first_slot + u32::from(x.tag),
                    program: x.program.clone(),
                    inputs: x
                        .inputs
                        .iter()
                        .map(|&i| first_slot + u32::from(i))
                        .collect(),
                })
                .collect();
            let name = d.name.clone();
            let comm_alarm = alarm_options.comm_loss.then(|| {
                let id = alarms.len() as u32;
                alarms.push(AlarmSlot::builtin(
                    name.clone(),
                    Arc::from(COMM_LOSS_RULE),
                    spec.comm_loss_message().clone(),
                    AlarmSettings {
                        priority: alarm_options.comm_loss_priority,
                        on_delay_ms: alarm_options.comm_loss_delay_ms,
                        off_delay_ms: 0,
                        latching: false,
                    },
                ));
                by_name.insert((name.clone(), Arc::from(COMM_LOSS_RULE)), id);
                id
            });
            devices.push(DeviceState {
                name,
                first_slot,
                raw_count: d.tags.raw,
                slot_count: d.tags.tags.len() as u16,
                poll_ms: d.poll_ms,
                derived,
                comm_alarm,
                suppressions: Vec::new(),
            });
        }
        let mut engine = Engine {
            area: area.clone(),
            started: None,
            devices,
            latest: vec![f64::NAN; tags.len()],
            tags,
            hot,
            evaluators: Vec::new(),
            evaluator_slot: Vec::new(),
            alarms,
            areas: Vec::new(),
            by_name,
            active_by_rule: HashMap::new(),
            alarm_suppressions: Vec::new(),
            suppression_dirty: false,
            flood: FloodDetector::new(FloodConfig {
                window_ms: alarm_options.flood_window_ms,
                start_above: alarm_options.flood_threshold,
                end_below: alarm_options.flood_threshold.div_ceil(2),
            }),
            flood_alarm: 0,
            held: HashMap::new(),
            kpis: AlarmKpis::new(),
            summary_from: None,
            scratch: Vec::new(),
            changes: 0,
        };
        engine.flood_alarm = engine.alarms.len() as u32;
        // Addressable like any alarm, so an operator can acknowledge it.
        engine.by_name.insert(
            (Arc::from(AREA_DEVICE), Arc::from(FLOOD_RULE)),
            engine.flood_alarm,
        );
        engine.alarms.push(AlarmSlot::builtin(
            area.clone(),
            Arc::from(FLOOD_RULE),
            spec.flood_message().clone(),
            AlarmSettings {
                priority: Priority::High,
                on_delay_ms: 0,
                off_delay_ms: 0,
                latching: false,
            },
        ));
        // One evaluator (and at most one alarm) per rule and device: sized up front, as
        // growth by doubling would leave freed blocks the allocator keeps (~1 MB at 400 cells).
        let instances: usize = spec.rules().iter().map(|r| r.instances.len() + 1).sum();
        engine.evaluators.reserve_exact(instances);
        engine.evaluator_slot.reserve_exact(instances);
        engine.alarms.reserve_exact(instances);
        for rule in spec.rules() {
            engine.add_rule(spec, rule);
        }
        // Hold-offs on another rule's alarm: every alarm exists now, whatever the rule order.
        for e in &mut engine.evaluators {
            for h in &mut e.holds {
                if let Some(key) = &h.alarm_rule {
                    h.alarm = engine.by_name.get(key).copied();
                }
            }
        }
        engine.evaluators.shrink_to_fit();
        engine.evaluator_slot.shrink_to_fit();
        engine.alarms.shrink_to_fit();
        engine.areas.shrink_to_fit();
        for t in &mut engine.tags {
            t.watchers.shrink_to_fit();
        }
        engine
    }

    fn slot_of(&self, device: usize, tag: &str) -> Option<u32> {
        let d = &self.devices[device];
        (d.first_slot..d.first_slot + u32::from(d.slot_count))
            .find(|&s| &*self.tags[s as usize].name == tag)
    }

    fn add_rule(&mut self, spec: &Spec, rule: &RuleSpec) {
        let rule_name = rule.name.clone();
        let area_index = match rule.scope {
            Scope::Device => None,
            Scope::Area { quorum } => {
                let id = self.alarms.len() as u32;
                // The unit of the first device's tag, when it is read rather than derived.
                let unit = rule
                    .instances
                    .first()
                    .and_then(|i| {
                        let t = &spec.devices().get(i.device as usize)?.tags;
                        let tag = rule.bindings.get(i.binding as usize)?.tag;
                        (tag < t.raw).then(|| t.tags.get(usize::from(tag)))?
                    })
                    .map(|t| t.unit.clone())
                    .unwrap_or_else(|| Arc::from(""));
                self.alarms.push(AlarmSlot {
                    device: Arc::from(AREA_DEVICE),
                    rule: rule_name.clone(),
                    tag: rule.tag.clone(),
                    unit,
                    message: rule.message.clone(),
                    alarm: Alarm::new(rule.alarm),
                    value: None,
                    quality: Quality::Good,
                    limit: rule.kind.limit_hint(),
                    eta_ms: None,
                    chatter_seen: 0,
                });
                self.by_name
                    .insert((Arc::from(AREA_DEVICE), rule_name.clone()), id);
                self.areas.push(AreaAggregate {
                    alarm: id,
                    quorum,
                    conditions: Vec::new(),
                    values: Vec::new(),
                });
                Some((self.areas.len() - 1) as u32)
            }
        };
        // Alarms of device scope, with the instance each belongs to.
        let mut targets: Vec<(usize, &Binding, u32)> = Vec::new();
        for inst in &rule.instances {
            let di = inst.device as usize;
            let (Some(first_slot), Some(b)) = (
                self.devices.get(di).map(|d| d.first_slot),
                rule.bindings.get(inst.binding as usize),
            ) else {
                continue;
            };
            let slot = first_slot + u32::from(b.tag);
            let mut eval = rule.eval.clone();
            if !b.extra_tags.is_empty() {
                let slots: Vec<u32> = b
                    .extra_tags
                    .iter()
                    .map(|&t| first_slot + u32::from(t))
                    .collect();
                eval.bind_extra_tags(&rule.kind, &slots);
            }
            let target = match area_index {
                Some(area) => {
                    let a = &mut self.areas[area as usize];
                    a.conditions.push(Condition::Unknown);
                    a.values.push(None);
                    Target::Area {
                        area,
                        member: (a.conditions.len() - 1) as u32,
                    }
                }
                None => {
                    let id = self.alarms.len() as u32;
                    let dev_name = self.devices[di].name.clone();
                    let tag = &self.tags[slot as usize];
                    self.alarms.push(AlarmSlot {
                        device: dev_name.clone(),
                        rule: rule_name.clone(),
                        tag: tag.name.clone(),
                        unit: tag.unit.clone(),
                        message: rule.message.clone(),
                        alarm: Alarm::new(rule.alarm),
                        value: None,
                        quality: Quality::Bad(BadReason::ConnectionLost),
                        limit: eval.limit(),
                        eta_ms: None,
                        chatter_seen: 0,
                    });
                    self.by_name.insert((dev_name, rule_name.clone()), id);
                    targets.push((di, b, id));
                    Target::Alarm(id)
                }
            };
            let ev = self.evaluators.len() as u32;
            self.tags[slot as usize].watchers.push(ev);
            self.hot[slot as usize].watched = true;
            let holds = rule
                .holds
                .iter()
                .zip(&b.hold_inputs)
                .map(|(h, inputs)| Hold {
                    source: h.source.clone(),
                    program: h.program.clone(),
                    inputs: inputs.iter().map(|&t| first_slot + u32::from(t)).collect(),
                    alarm_rule: h
                        .alarm
                        .as_ref()
                        .map(|r| (self.devices[di].name.clone(), r.clone())),
                    alarm: None,
                    for_ms: h.for_ms,
                    until: None,
                })
                .collect();
            self.evaluators.push(Evaluator {
                kind: rule.kind.clone(),
                eval,
                target,
                holds,
                held: false,
            });
            self.evaluator_slot.push(slot);
        }
        match &rule.suppress_when {
            None => {}
            Some(SuppressSpec::Alarm { rule: r, device }) => {
                let mut ids: Vec<u32> = targets.iter().map(|(_, _, id)| *id).collect();
                if let Some(area) = area_index {
                    ids.push(self.areas[area as usize].alarm);
                }
                self.alarm_suppressions.push(AlarmSuppression {
                    rule: r.clone(),
                    device: device.clone(),
                    targets: ids,
                    state: false,
                })
            }
            // On each device's own values; an area alarm has no device to read.
            Some(SuppressSpec::Expr { program, .. }) => {
                for (di, b, id) in targets {
                    let dev = &mut self.devices[di];
                    let inputs: Vec<u32> = b
                        .suppress_inputs
                        .iter()
                        .map(|&t| dev.first_slot + u32::from(t))
                        .collect();
                    // Rules suppressed by the same expression share one evaluation.
                    match dev
                        .suppressions
                        .iter_mut()
                        .find(|s| s.program == *program && s.inputs == inputs)
                    {
                        Some(s) => s.targets.push(id),
                        None => dev.suppressions.push(ExprSuppression {
                            program: program.clone(),
                            inputs,
                            targets: vec![id],
                            state: None,
                        }),
                    }
                }
            }
        }
    }

    /// Applies one batch of samples; alarm transitions are appended to `out`.
    pub fn on_batch(&mut self, batch: &SampleBatch, now: Ts, out: &mut Vec<AlarmEvent>) {
        self.started.get_or_insert(now);
        self.summary_from.get_or_insert(now);
        let di = batch.device as usize;
        let Some(dev) = self.devices.get(di) else {
            return;
        };
        let (first, raw_count) = (dev.first_slot, dev.raw_count);
        let mut any_good = false;
        let mut comm_bad = !batch.values.is_empty();
        // Values first, then derived tags and design suppression, then rules: a rule never
        // fires on a batch whose own values suppress it.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        for &(tag, v, quality) in &batch.values {
            if tag >= raw_count {
                continue;
            }
            let good = quality.is_good() && v.is_finite();
            any_good |= good;
            if good
                || !matches!(
                    quality,
                    Quality::Bad(
                        BadReason::Timeout
                            | BadReason::ConnectionLost
                            | BadReason::Exception(0x0A | 0x0B)
                    )
                )
            {
                comm_bad = false;
            }
            let stored = self.store((first + u32::from(tag)) as usize, batch.ts, v, quality);
            if stored.watched {
                scratch.push(stored);
            }
        }
        for i in 0..self.devices[di].derived.len() {
            let d = &self.devices[di].derived[i];
            let mut inputs = [f64::NAN; 16];
            let mut ok = d.inputs.len() <= inputs.len();
            for (k, &s) in d.inputs.iter().enumerate().take(inputs.len()) {
                match Latest(&self.latest).value(s) {
                    Some(v) => inputs[k] = v,
                    None => ok = false,
                }
            }
            let slot = d.slot as usize;
            let v = d.program.eval(&inputs[..d.inputs.len().min(16)]);
            let (v, q) = match (ok, v.is_finite()) {
                (true, true) => (v, Quality::Good),
                (true, false) => (f64::NAN, Quality::Bad(BadReason::Decode)),
                (false, _) => (f64::NAN, Quality::Bad(BadReason::Input)),
            };
            let stored = self.store(slot, batch.ts, v, q);
            if stored.watched {
                scratch.push(stored);
            }
        }
        // A suppression that ends is applied after the rules saw this batch: an alarm whose
        // condition held while suppressed (a sensor reading 150 V) must not annunciate on the
        // stale condition in the instant the suppression lifts.
        let mut ending: Vec<u32> = Vec::new();
        for i in 0..self.devices[di].suppressions.len() {
            let s = &self.devices[di].suppressions[i];
            let mut inputs = [f64::NAN; 16];
            let mut ok = true;
            for (k, &slot) in s.inputs.iter().enumerate().take(16) {
                match Latest(&self.latest).value(slot) {
                    Some(v) => inputs[k] = v,
                    None => ok = false,
                }
            }
            let v = s.program.eval(&inputs[..s.inputs.len().min(16)]);
            if !ok || !v.is_finite() {
                continue;
            }
            let on = v != 0.0;
            if s.state != Some(on) {
                let targets = s.targets.clone();
                self.devices[di].suppressions[i].state = Some(on);
                if on {
                    for t in targets {
                        self.suppress(t, true, now, out);
                    }
                } else {
                    ending.extend(targets);
                }
            }
        }
        for stored in scratch.drain(..) {
            self.evaluate(stored, now, out);
        }
        for t in ending {
            self.suppress(t, false, now, out);
        }
        self.scratch = scratch;
        if let Some(id) = self.devices[di].comm_alarm {
            let c = if any_good {
                Condition::Clear
            } else if comm_bad {
                Condition::Active
            } else {
                Condition::Unknown
            };
            self.apply(id, c, now, out);
        }
        self.apply_alarm_suppressions(now, out);
    }

    /// Records a sample of a slot: latest value, quality, summary and window. Inlined into its
    /// two loops: it runs for every sample, and as a call its result went back through memory,
    /// which cost as much as the work itself (callgrind, 400 cells polled back to back).
    #[inline(always)]
    fn store(&mut self, slot: usize, ts: Ts, v: f64, quality: Quality) -> Stored {
        let good = quality.is_good() && v.is_finite();
        let p = Point { ts, v };
        self.latest[slot] = if good { v } else { f64::NAN };
        let h = &mut self.hot[slot];
        h.add(p, good, quality);
        let watched = h.watched;
        let evicted = if good && h.windowed {
            self.tags[slot].window.push(p)
        } else {
            None
        };
        Stored {
            slot: slot as u32,
            p,
            quality,
            good,
            watched,
            evicted,
        }
    }

    /// Runs the rules watching a slot on the sample just stored.
    fn evaluate(&mut self, s: Stored, now: Ts, out: &mut Vec<AlarmEvent>) {
        let (slot, p, good, quality) = (s.slot as usize, s.p, s.good, s.quality);
        for wi in 0..self.tags[slot].watchers.len() {
            let ev = self.tags[slot].watchers[wi] as usize;
            let condition = {
                let e = &mut self.evaluators[ev];
                if let Some((seq, old)) = s.evicted {
                    e.eval.evicted(seq, old);
                }
                if good {
                    let mut held = false;
                    for h in &mut e.holds {
                        held |= h.update(p.ts, &self.latest, &self.alarms);
                    }
                    if held != e.held {
                        e.held = held;
                        e.eval.set_held(held);
                    }
                    let c = e
                        .eval
                        .on_good(&mut self.tags[slot].window, p, &Latest(&self.latest));
                    // Held off: the statistics keep running, the alarm reads normal.
                    Some(if held { Condition::Clear } else { c })
                } else {
                    e.eval.on_bad()
                }
            };
            let Some(condition) = condition else { continue };
            let e = &self.evaluators[ev];
            let (limit, eta) = (e.eval.limit(), e.eval.eta_ms());
            match e.target {
                Target::Alarm(id) => {
                    let a = &mut self.alarms[id as usize];
                    if good {
                        a.value = Some(p.v);
                    }
                    a.quality = if good { Quality::Good } else { quality };
                    a.limit = limit.or(a.limit);
                    a.eta_ms = eta;
                    self.apply(id, condition, now, out);
                }
                Target::Area { area, member } => {
                    let agg = &mut self.areas[area as usize];
                    agg.conditions[member as usize] = condition;
                    agg.values[member as usize] = good.then_some(p.v);
                    let n = agg.conditions.len() as f64;
                    let known = agg
                        .conditions
                        .iter()
                        .filter(|c| **c != Condition::Unknown)
                        .count() as f64;
                    let active = agg
                        .conditions
                        .iter()
                        .filter(|c| **c == Condition::Active)
                        .count() as f64;
                    let c = if active >= agg.quorum * n {
                        Condition::Active
                    } else if known >= agg.quorum * n {
                        Condition::Clear
                    } else {
                        Condition::Unknown
                    };
                    let (sum, cnt) = agg
                        .values
                        .iter()
                        .flatten()
                        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
                    let id = agg.alarm;
                    let a = &mut self.alarms[id as usize];
                    a.value = (cnt > 0).then(|| sum / cnt as f64);
                    a.limit = limit.or(a.limit);
                    self.apply(id, c, now, out);
                }
            }
        }
    }

    /// Feeds a condition to an alarm and routes what it produces.
    fn apply(&mut self, id: u32, c: Condition, now: Ts, out: &mut Vec<AlarmEvent>) {
        let a = &mut self.alarms[id as usize];
        let was = a.alarm.is_active();
        let tr = a.alarm.condition(c, now);
        self.after(id, was, tr, now, out);
    }

    fn after(
        &mut self,
        id: u32,
        was_active: bool,
        tr: Option<Transition>,
        now: Ts,
        out: &mut Vec<AlarmEvent>,
    ) {
        let a = &mut self.alarms[id as usize];
        let is = a.alarm.is_active();
        if was_active != is || tr.is_some() {
            self.changes += 1;
        }
        if was_active != is {
            let n = self.active_by_rule.entry(a.rule.clone()).or_insert(0);
            *n = if is { *n + 1 } else { n.saturating_sub(1) };
            self.suppression_dirty = true;
        }
        let episodes = a.alarm.chattering_episodes();
        if episodes > a.chatter_seen {
            a.chatter_seen = episodes;
            self.kpis.on_chattering_episode();
        }
        let Some(tr) = tr else { return };
        if tr.is_annunciation() && id != self.flood_alarm {
            let a = &self.alarms[id as usize];
            let source = format!("{}/{}", a.device, a.rule);
            let prio = a.alarm.priority();
            self.kpis.on_activation(&source, prio, now);
            if let FloodDecision::Hold(h) = self.flood.on_activation(&self.area, prio, now) {
                self.held.insert(h.0, id);
                return;
            }
        }
        out.push(self.event(id, tr));
    }

    fn suppress(&mut self, id: u32, on: bool, now: Ts, out: &mut Vec<AlarmEvent>) {
        if !on {
            // Windows filled while suppressed (an outage, a sensor swap) would fake a trend.
            for ev in 0..self.evaluators.len() {
                if matches!(self.evaluators[ev].target, Target::Alarm(t) if t == id)
                    && self.evaluators[ev].eval.is_windowed()
                {
                    let slot = self.evaluator_slot[ev] as usize;
                    self.evaluators[ev].eval.restart(&self.tags[slot].window);
                }
            }
        }
        let a = &mut self.alarms[id as usize];
        let was = a.alarm.is_active();
        let tr = a.alarm.set_suppressed(on, now).ok().flatten();
        self.after(id, was, tr, now, out);
    }

    fn apply_alarm_suppressions(&mut self, now: Ts, out: &mut Vec<AlarmEvent>) {
        // Suppressing can clear alarms that suppress others: settle in a few rounds.
        for _ in 0..4 {
            if !self.suppression_dirty {
                return;
            }
            self.suppression_dirty = false;
            for i in 0..self.alarm_suppressions.len() {
                let s = &self.alarm_suppressions[i];
                let on = match &s.device {
                    Some(d) => self
                        .by_name
                        .get(&(d.clone(), s.rule.clone()))
                        .is_some_and(|&id| self.alarms[id as usize].alarm.is_active()),
                    None => self.active_by_rule.get(&s.rule).copied().unwrap_or(0) > 0,
                };
                if on != s.state {
                    let targets = s.targets.clone();
                    self.alarm_suppressions[i].state = on;
                    for t in targets {
                        self.suppress(t, on, now, out);
                    }
                }
            }
        }
    }

    /// Advances timers (on/off delays, shelve expiry, stale rules, floods) without samples.
    pub fn tick(&mut self, now: Ts, out: &mut Vec<AlarmEvent>) {
        let started = *self.started.get_or_insert(now);
        self.summary_from.get_or_insert(now);
        for ev in 0..self.evaluators.len() {
            if let Some(c) = self.evaluators[ev].eval.on_tick(now, started) {
                if let Target::Alarm(id) = self.evaluators[ev].target {
                    self.apply(id, c, now, out);
                }
            }
        }
        for id in 0..self.alarms.len() as u32 {
            let a = &mut self.alarms[id as usize];
            let was = a.alarm.is_active();
            let tr = a.alarm.tick(now);
            self.after(id, was, tr, now, out);
        }
        self.apply_alarm_suppressions(now, out);
        for fe in self.flood.tick(now) {
            self.kpis.on_flood_event(&fe);
            let c = match &fe {
                FloodEvent::Started { .. } => Condition::Active,
                FloodEvent::Ended { .. } => Condition::Clear,
            };
            let fid = self.flood_alarm;
            self.alarms[fid as usize].value = match &fe {
                FloodEvent::Started { count, .. } => Some(*count as f64),
                FloodEvent::Ended { .. } => None,
            };
            self.apply(fid, c, now, out);
            if let FloodEvent::Ended { held, .. } = fe {
                // Release what was held back, as it stands now.
                for h in held {
                    if let Some(id) = self.held.remove(&h.0) {
                        let a = &self.alarms[id as usize];
                        if a.alarm.is_shown() {
                            let s = a.alarm.published_state();
                            out.push(self.event(
                                id,
                                Transition {
                                    from: s,
                                    to: s,
                                    at: now,
                                    cause: Cause::Condition,
                                    by: None,
                                    note: Some("held back during an alarm flood".into()),
                                },
                            ));
                        }
                    }
                }
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
            })?;
        let mut out = Vec::new();
        let a = &mut self.alarms[id as usize];
        let was = a.alarm.is_active();
        let tr = a.alarm.tick(now);
        self.after(id, was, tr, now, &mut out);
        let a = &mut self.alarms[id as usize];
        let was = a.alarm.is_active();
        let alarm = &mut a.alarm;
        let tr = match cmd {
            Command::Ack { note } => alarm.ack(by, note.as_deref(), now)?,
            Command::Shelve { until } => alarm.shelve(*until, by, now)?,
            Command::Unshelve => alarm.unshelve(by, now)?,
            Command::Reset => alarm.reset(by, now)?,
            Command::OutOfService => alarm.remove_from_service(by, now)?,
            Command::ReturnToService => alarm.return_to_service(by, now)?,
        };
        self.changes += 1;
        let is_active = self.alarms[id as usize].alarm.is_active();
        if was != is_active {
            let n = self
                .active_by_rule
                .entry(self.alarms[id as usize].rule.clone())
                .or_insert(0);
            *n = if is_active {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
            self.suppression_dirty = true;
        }
        Ok(tr.map(|tr| self.event(id, tr)))
    }

    fn event(&self, id: u32, transition: Transition) -> AlarmEvent {
        let a = &self.alarms[id as usize];
        let state = a.alarm.published_state();
        let device: &str = if id == self.flood_alarm {
            &self.area
        } else {
            &a.device
        };
        let message = a.message.render(&MessageContext {
            device,
            tag: &a.tag,
            rule: &a.rule,
            unit: &a.unit,
            value: a.value,
            limit: a.limit,
            eta_ms: a.eta_ms,
            priority: Some(a.alarm.priority()),
            state,
        });
        AlarmEvent {
            device: if id == self.flood_alarm {
                Arc::from(AREA_DEVICE)
            } else {
                a.device.clone()
            },
            rule: a.rule.clone(),
            tag: a.tag.clone(),
            unit: a.unit.clone(),
            priority: a.alarm.priority(),
            value: a.value,
            limit: a.limit,
            quality: a.quality,
            message,
            since: a.alarm.since(),
            active_since: a.alarm.active_since(),
            // Acknowledging RTNUN lands in NORM, which keeps no acknowledger; the payload still
            // says who did it.
            acked_by: a.alarm.acked_by().map(str::to_string).or_else(|| {
                (transition.cause == Cause::Ack)
                    .then(|| transition.by.clone())
                    .flatten()
            }),
            shelved_until: a.alarm.shelved_until(),
            transition,
        }
    }

    /// Takes over the state of the engine this one replaces (a reloaded configuration): alarm
    /// states of every (device, rule) that still exists, the windows of tags whose device and
    /// name are unchanged, the statistics of rules whose definition is unchanged, floods and
    /// KPIs. Nothing is published for the carried-over states.
    pub fn adopt(&mut self, mut old: Engine) {
        let old_slots: HashMap<(Arc<str>, Arc<str>), usize> = old
            .devices
            .iter()
            .flat_map(|d| {
                (d.first_slot..d.first_slot + u32::from(d.slot_count))
                    .map(move |s| (d.name.clone(), s as usize))
            })
            .map(|(d, s)| ((d, old.tags[s].name.clone()), s))
            .collect();
        let mut moved_slots: HashMap<usize, usize> = HashMap::new();
        for d in &self.devices {
            for s in d.first_slot as usize..(d.first_slot + u32::from(d.slot_count)) as usize {
                let key = (d.name.clone(), self.tags[s].name.clone());
                let Some(&os) = old_slots.get(&key) else {
                    continue;
                };
                let (new_t, old_t) = (&mut self.tags[s], &mut old.tags[os]);
                self.hot[s].carry(&old.hot[os]);
                self.latest[s] = old.latest[os];
                if new_t.window.capacity() == old_t.window.capacity() {
                    std::mem::swap(&mut new_t.window, &mut old_t.window);
                    moved_slots.insert(s, os);
                }
            }
        }
        // The `action_failed` alarms exist once raised: carried over like the others.
        let failed: Vec<Arc<str>> = old
            .by_name
            .keys()
            .filter(|(_, r)| &**r == ACTION_FAILED_RULE)
            .map(|(d, _)| d.clone())
            .collect();
        for d in failed {
            self.action_failed_slot(&d);
        }
        // Alarm states, by (device, rule).
        let mut old_ids: HashMap<(Arc<str>, Arc<str>), u32> = HashMap::new();
        for (k, v) in &old.by_name {
            old_ids.insert(k.clone(), *v);
        }
        for (key, &id) in &self.by_name {
            let Some(&oid) = old_ids.get(key) else {
                continue;
            };
            let settings = *self.alarms[id as usize].alarm.settings();
            let o = &old.alarms[oid as usize];
            let a = &mut self.alarms[id as usize];
            a.alarm = o.alarm.clone();
            a.alarm.set_settings(settings);
            a.value = o.value;
            a.quality = o.quality;
            a.chatter_seen = o.chatter_seen;
        }
        // Rule statistics, where the rule and its window are unchanged.
        let old_evals: HashMap<(Arc<str>, Arc<str>), usize> = old
            .evaluators
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.target {
                Target::Alarm(id) => {
                    let a = &old.alarms[id as usize];
                    Some(((a.device.clone(), a.rule.clone()), i))
                }
                Target::Area { .. } => None,
            })
            .collect();
        for i in 0..self.evaluators.len() {
            let Target::Alarm(id) = self.evaluators[i].target else {
                continue;
            };
            let key = (
                self.alarms[id as usize].device.clone(),
                self.alarms[id as usize].rule.clone(),
            );
            let Some(&oi) = old_evals.get(&key) else {
                continue;
            };
            // Hold-off timers of entries still written the same way: a reload in the 20 minutes
            // after a tapping must not lift the hold (nor is it a new tapping).
            for h in &mut self.evaluators[i].holds {
                if let Some(o) = old.evaluators[oi]
                    .holds
                    .iter()
                    .find(|o| o.source == h.source && o.for_ms == h.for_ms)
                {
                    h.until = o.until;
                }
            }
            let slot = self.evaluator_slot[i] as usize;
            let same_window = moved_slots.get(&slot) == Some(&(old.evaluator_slot[oi] as usize));
            if old.evaluators[oi].kind == self.evaluators[i].kind
                && (same_window || !self.evaluators[i].eval.is_windowed())
            {
                self.evaluators[i].eval = old.evaluators[oi].eval.clone();
                // The carried statistics know whether they were held: so must the evaluator, or
                // a hold that ends after the reload would never be lifted from them.
                self.evaluators[i].held = old.evaluators[oi].held;
            } else {
                let active = self.alarms[id as usize].alarm.is_active();
                self.evaluators[i].eval.set_active(active);
            }
        }
        self.resettle();
        self.flood = old.flood;
        self.kpis = old.kpis;
        self.held = HashMap::new();
        self.started = old.started;
        self.summary_from = old.summary_from;
        let fid = self.flood_alarm;
        self.alarms[fid as usize].alarm = old.alarms[old.flood_alarm as usize].alarm.clone();
    }

    /// Recounts what depends on which alarms are active or suppressed, after their states
    /// were replaced wholesale (a reload, a restore).
    fn resettle(&mut self) {
        self.active_by_rule.clear();
        for a in &self.alarms {
            if a.alarm.is_active() {
                *self.active_by_rule.entry(a.rule.clone()).or_insert(0) += 1;
            }
        }
        for s in &mut self.alarm_suppressions {
            s.state = s
                .targets
                .first()
                .is_some_and(|&t| self.alarms[t as usize].alarm.is_suppressed());
        }
        self.suppression_dirty = true;
    }

    /// Every alarm instance that is not as new, for persisting (see [`Engine::restore`]).
    pub fn save(&self) -> Vec<SavedInstance> {
        let mut out: Vec<SavedInstance> = self
            .by_name
            .iter()
            .filter_map(|((device, rule), &id)| {
                let a = &self.alarms[id as usize];
                (!a.alarm.is_pristine()).then(|| SavedInstance {
                    device: device.to_string(),
                    rule: rule.to_string(),
                    value: a.value.filter(|v| v.is_finite()),
                    alarm: a.alarm.save(),
                })
            })
            .collect();
        // A stable order keeps the file readable and diffable.
        out.sort_by(|a, b| (&a.device, &a.rule).cmp(&(&b.device, &b.rule)));
        out
    }

    /// Takes over the saved state of every (device, rule) that still exists, with the settings
    /// configured now: an alarm whose limit or priority changed keeps its ack and shelve (see
    /// [`Alarm::restore`]); instances of removed rules or devices are dropped. Call it before
    /// the first batch. A flood in progress is not carried over (the detector's window starts
    /// empty): its alarm is restored as if the flood had just ended. Nothing is published here;
    /// the caller republishes the restored states.
    pub fn restore(&mut self, saved: Vec<SavedInstance>) -> Restored {
        let mut r = Restored::default();
        for s in saved {
            let key = (Arc::from(s.device.as_str()), Arc::from(s.rule.as_str()));
            let found = match self.by_name.get(&key) {
                Some(&id) => Some(id),
                None if s.rule == ACTION_FAILED_RULE => self.action_failed_slot(&s.device),
                None => None,
            };
            let Some(id) = found else {
                r.dropped += 1;
                continue;
            };
            let mut alarm = s.alarm;
            if id == self.flood_alarm && alarm.active {
                alarm.active = false;
                alarm.active_since = None;
                alarm.state = match alarm.state {
                    State::ActiveUnacked => State::ReturnedUnacked,
                    State::ActiveAcked => State::Normal,
                    other => other,
                };
            }
            let a = &mut self.alarms[id as usize];
            a.alarm = Alarm::restore(*a.alarm.settings(), alarm);
            a.value = s.value;
            a.chatter_seen = a.alarm.chattering_episodes();
            r.restored += 1;
        }
        // Hysteresis and trends start from what the alarm says, as after a reload.
        for i in 0..self.evaluators.len() {
            if let Target::Alarm(id) = self.evaluators[i].target {
                let active = self.alarms[id as usize].alarm.is_active();
                self.evaluators[i].eval.set_active(active);
            }
        }
        self.resettle();
        self.changes += 1;
        r
    }

    /// Grows with every alarm change; compare with the value at the last save.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Every alarm instance that exists: (device, rule, priority), as topics name them.
    pub fn instances(&self) -> impl Iterator<Item = (&str, &str, Priority)> + '_ {
        self.by_name.iter().map(|((device, rule), &id)| {
            let a = &self.alarms[id as usize];
            (&**device, &**rule, a.alarm.priority())
        })
    }

    /// The current state of every restored (not pristine) alarm, as events to republish.
    pub fn restored_states(&self, now: Ts) -> Vec<AlarmEvent> {
        let mut ids: Vec<u32> = self
            .by_name
            .values()
            .copied()
            .filter(|&id| !self.alarms[id as usize].alarm.is_pristine())
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| {
                let s = self.alarms[id as usize].alarm.published_state();
                self.event(
                    id,
                    Transition {
                        from: s,
                        to: s,
                        at: now,
                        cause: Cause::Restored,
                        by: None,
                        note: None,
                    },
                )
            })
            .collect()
    }

    /// Every alarm operators currently see (not normal, not hidden), as events of their state.
    pub fn shown_alarms(&self) -> Vec<AlarmEvent> {
        (0..self.alarms.len() as u32)
            .filter(|&id| self.alarms[id as usize].alarm.is_shown())
            .map(|id| {
                let a = &self.alarms[id as usize].alarm;
                let s = a.published_state();
                self.event(
                    id,
                    Transition {
                        from: s,
                        to: s,
                        at: a.since(),
                        cause: Cause::Condition,
                        by: None,
                        note: None,
                    },
                )
            })
            .collect()
    }

    /// Current state of one alarm, as an event.
    pub fn alarm_state(&self, device: &str, rule: &str) -> Option<AlarmEvent> {
        let id = *self.by_name.get(&(Arc::from(device), Arc::from(rule)))?;
        let a = &self.alarms[id as usize].alarm;
        let s = a.published_state();
        Some(self.event(
            id,
            Transition {
                from: s,
                to: s,
                at: a.since(),
                cause: Cause::Condition,
                by: None,
                note: None,
            },
        ))
    }

    /// Every alarm hidden by shelving or out-of-service, as events of their state (for the
    /// operator station's shelved and out-of-service lists).
    pub fn flagged_alarms(&self) -> Vec<AlarmEvent> {
        (0..self.alarms.len() as u32)
            .filter(|&id| {
                let a = &self.alarms[id as usize].alarm;
                a.is_out_of_service() || a.shelved_until().is_some()
            })
            .filter_map(|id| {
                let a = &self.alarms[id as usize];
                self.alarm_state(&a.device, &a.rule)
            })
            .collect()
    }

    pub fn instance_count(&self) -> usize {
        self.alarms.len()
    }

    pub fn kpis(&self, now: Ts) -> KpiSnapshot {
        self.kpis.snapshot(
            now,
            self.alarms.iter().filter_map(|a| {
                if a.alarm.is_active() {
                    a.alarm.active_since()
                } else {
                    None
                }
            }),
        )
    }

    /// The `action_failed` alarm of `device`, made now (it exists only once raised, or when
    /// restored or carried over a reload); `None` for a device this engine does not have.
    fn action_failed_slot(&mut self, device: &str) -> Option<u32> {
        let key = (
            Arc::<str>::from(device),
            Arc::<str>::from(ACTION_FAILED_RULE),
        );
        if let Some(&id) = self.by_name.get(&key) {
            return Some(id);
        }
        if !self.devices.iter().any(|d| &*d.name == device) {
            return None;
        }
        let message = MessageTemplate::parse(ACTION_FAILED_MESSAGE).ok()?;
        let id = self.alarms.len() as u32;
        self.alarms.push(AlarmSlot::builtin(
            key.0.clone(),
            key.1.clone(),
            Arc::new(message),
            AlarmSettings {
                priority: Priority::High,
                on_delay_ms: 0,
                off_delay_ms: 0,
                latching: false,
            },
        ));
        self.by_name.insert(key, id);
        Some(id)
    }

    /// Sets the built-in `action_failed` alarm of `device` (docs/DISPOSAL.md): raised when an
    /// action's write is refused, fails or reads back different, cleared by the device's next
    /// verified write. Created at its first raise, so configurations without actions have
    /// none. `note` (what failed) goes into the transition.
    pub fn action_failed(
        &mut self,
        device: &str,
        active: bool,
        note: Option<String>,
        now: Ts,
        out: &mut Vec<AlarmEvent>,
    ) {
        let key = (
            Arc::<str>::from(device),
            Arc::<str>::from(ACTION_FAILED_RULE),
        );
        let id = match self.by_name.get(&key) {
            Some(&id) => id,
            None if !active => return,
            None => match self.action_failed_slot(device) {
                Some(id) => id,
                None => return,
            },
        };
        let c = if active {
            Condition::Active
        } else {
            Condition::Clear
        };
        let before = out.len();
        self.apply(id, c, now, out);
        if let Some(n) = note {
            for e in &mut out[before..] {
                e.transition.note = Some(n.clone());
            }
        }
    }

    /// The value of a tag for a guard that must not act on old news (disposal's interlocks):
    /// `None` unless its last sample was good and is at most [`FRESH_POLLS`] polls old (at
    /// least [`FRESH_MIN_MS`]). A link whose poller stalls sends no bad samples either; its
    /// last good value must not keep an interlock true.
    pub fn fresh_value(&self, device: &str, tag: &str, now: Ts) -> Option<f64> {
        let di = self.devices.iter().position(|d| &*d.name == device)?;
        let h = &self.hot[self.slot_of(di, tag)? as usize];
        let p = h.last().filter(|_| h.quality.is_good())?;
        let max_age = (FRESH_POLLS * self.devices[di].poll_ms).max(FRESH_MIN_MS);
        (now - p.ts <= max_age && p.v.is_finite()).then_some(p.v)
    }

    /// Latest good value and current quality of a tag, for tests and summaries.
    pub fn tag_value(&self, device: &str, tag: &str) -> Option<(Option<f64>, Quality)> {
        let di = self.devices.iter().position(|d| &*d.name == device)?;
        let s = self.slot_of(di, tag)?;
        let h = &self.hot[s as usize];
        Some((h.last().map(|p| p.v), h.quality))
    }

    /// Every tag of `device`: its latest value and quality, and the points its window (the
    /// ring buffer the rules read) holds from `since` on, at most `max_points` (evenly thinned).
    pub fn device_trend(
        &mut self,
        device: &str,
        since: Ts,
        max_points: usize,
    ) -> Option<Vec<TagTrend>> {
        let d = self.devices.iter().find(|d| &*d.name == device)?;
        let range = d.first_slot as usize..(d.first_slot + u32::from(d.slot_count)) as usize;
        let out = self.tags[range.clone()]
            .iter_mut()
            .zip(&self.hot[range])
            .map(|(t, h)| {
                // An unwindowed tag's window stays empty: its history is its last good point.
                let last = if h.windowed { None } else { h.last() };
                let pts: Vec<(Ts, f64)> = t
                    .window
                    .iter()
                    .chain(last)
                    .filter(|p| p.ts >= since && p.v.is_finite())
                    .map(|p| (p.ts, p.v))
                    .collect();
                let step = pts.len().div_ceil(max_points.max(1)).max(1);
                TagTrend {
                    name: t.name.clone(),
                    unit: t.unit.clone(),
                    value: h.last().map(|p| p.v).filter(|v| v.is_finite()),
                    quality: h.quality,
                    points: pts.into_iter().step_by(step).collect(),
                }
            })
            .collect();
        Some(out)
    }

    /// The figures of every tag since the last call, per device; starts a new interval.
    /// One summary per device, made as the caller takes it: the publisher queues each before
    /// the next is built, so a summary tick of a whole potline never holds every summary at once
    /// (400 cells made a 1.3 MiB heap spike every interval, which the allocator kept as RSS).
    pub fn take_summaries(&mut self, now: Ts) -> impl Iterator<Item = DeviceSummary> + Send + '_ {
        let from = self.summary_from.replace(now).unwrap_or(now);
        // `&mut`: a window is not `Sync`, so a shared borrow of the tags would not be `Send`.
        let (tags, hot) = (&mut self.tags, &mut self.hot);
        self.devices.iter().map(move |d| {
            let range = d.first_slot as usize..(d.first_slot + u32::from(d.slot_count)) as usize;
            let tags = tags[range.clone()]
                .iter_mut()
                .zip(&mut hot[range])
                .map(|(t, h)| (t.name.clone(), t.unit.clone(), h.take_summary()))
                .collect();
            DeviceSummary {
                device: d.name.clone(),
                from,
                to: now,
                tags,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rule::Suppression;
    use crate::core::spec::{Draft, RuleDraft};

    #[test]
    fn what_every_sample_writes_fits_one_cache_line() {
        assert_eq!(std::mem::size_of::<HotTag>(), 64);
        assert_eq!(std::mem::align_of::<HotTag>(), 64);
    }

    /// Four cells of one template: voltage, current and the derived pseudo-resistance.
    fn spec(rules: Vec<RuleDraft>) -> Spec {
        let mut d = Draft::new("potline-1");
        d.alarms.comm_loss_delay_ms = 0;
        let cell = d.table(
            &[("voltage", "V"), ("current", "kA")],
            &[("pseudo_r", "(voltage - 1.65) / current * 1000", "uOhm")],
        );
        for u in 1..=4 {
            d.device(&format!("pot-{u:03}"), cell, 1_000);
        }
        for r in rules {
            d.rule_on_all(r);
        }
        d.compile().unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn engine(rules: Vec<RuleDraft>) -> Engine {
        Engine::new(&spec(rules))
    }

    fn high(limit: f64, deadband: f64) -> RuleKind {
        RuleKind::High { limit, deadband }
    }

    fn low(limit: f64) -> RuleKind {
        RuleKind::Low {
            limit,
            deadband: 0.0,
        }
    }

    fn ae(limit: f64) -> Vec<RuleDraft> {
        vec![RuleDraft::new("anode_effect", "voltage", high(limit, 0.5))
            .on_delay_ms(2_000)
            .priority(Priority::Critical)
            .message("Anode effect on {device}: {value} V")]
    }

    fn feed(e: &mut Engine, dev: u32, t: Ts, v: f64) -> Vec<AlarmEvent> {
        feed2(e, dev, t, v, 500.0)
    }

    fn feed2(e: &mut Engine, dev: u32, t: Ts, v: f64, i: f64) -> Vec<AlarmEvent> {
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: dev,
                ts: t,
                values: vec![(0, v, Quality::Good), (1, i, Quality::Good)],
            },
            t,
            &mut out,
        );
        out
    }

    fn rule_events<'a>(ev: &'a [AlarmEvent], rule: &str) -> Vec<&'a AlarmEvent> {
        ev.iter().filter(|e| &*e.rule == rule).collect()
    }

    #[test]
    fn a_fresh_value_is_good_and_at_most_a_few_polls_old() {
        let mut e = engine(vec![]);
        feed(&mut e, 0, 10_000, 4.2);
        // 1 s poll: 3 polls, but never under FRESH_MIN_MS.
        assert_eq!(e.fresh_value("pot-001", "voltage", 15_000), Some(4.2));
        assert_eq!(e.fresh_value("pot-001", "voltage", 15_001), None);
        assert_eq!(e.fresh_value("pot-001", "pseudo_r", 15_001), None);
        assert!(e.fresh_value("pot-001", "pseudo_r", 15_000).is_some());
        // Never polled, unknown tag, unknown device.
        assert_eq!(e.fresh_value("pot-002", "voltage", 10_000), None);
        assert_eq!(e.fresh_value("pot-001", "nope", 10_000), None);
        assert_eq!(e.fresh_value("pot-999", "voltage", 10_000), None);
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: 0,
                ts: 11_000,
                values: vec![(0, f64::NAN, Quality::Bad(BadReason::Timeout))],
            },
            11_000,
            &mut out,
        );
        assert_eq!(e.fresh_value("pot-001", "voltage", 11_000), None);
    }

    #[test]
    fn only_tags_a_rule_reads_keep_a_history_the_others_their_last_good_point() {
        // The anode-effect rule reads voltage; current and pseudo_r have no rule.
        let mut e = engine(ae(8.0));
        for (k, v) in [4.1, 4.2, 4.3].into_iter().enumerate() {
            feed(&mut e, 0, 10_000 + 1_000 * k as i64, v);
        }
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: 0,
                ts: 13_000,
                values: vec![(1, f64::NAN, Quality::Bad(BadReason::Timeout))],
            },
            13_000,
            &mut out,
        );
        let windowed: Vec<bool> = e.hot[..3].iter().map(|h| h.windowed).collect();
        assert_eq!(windowed, [true, false, false]);
        assert!(e.tags[1].window.is_empty(), "no rule reads current");
        let trend = e.device_trend("pot-001", 0, 100).unwrap();
        let points = |name: &str| {
            let t = trend.iter().find(|t| &*t.name == name).unwrap();
            (t.points.clone(), t.value, t.quality)
        };
        let volts = vec![(10_000, 4.1), (11_000, 4.2), (12_000, 4.3)];
        assert_eq!(points("voltage"), (volts, Some(4.3), Quality::Good));
        // Current went bad: its last good point stays, as the value the station shows.
        assert_eq!(
            points("current"),
            (
                vec![(12_000, 500.0)],
                Some(500.0),
                Quality::Bad(BadReason::Timeout)
            )
        );
        let later = e.device_trend("pot-001", 12_001, 100).unwrap();
        assert!(later.iter().all(|t| t.points.is_empty()), "{later:?}");
    }

    #[test]
    fn a_suppression_that_ends_does_not_annunciate_the_stale_condition() {
        // A voltage sensor stuck out of range (150 V) suppresses the anode-effect rule; when it
        // reads 4.3 V again, the rule sees that sample before the suppression lifts.
        let mut e = engine(vec![ae(8.0)
            .remove(0)
            .suppress_when(Suppression::Expr("voltage > 100".into()))]);
        let mut all = feed(&mut e, 0, 0, 4.2);
        for t in 1..20 {
            all.extend(feed(&mut e, 0, t * 1_000, 150.0));
            e.tick(t * 1_000 + 500, &mut all);
        }
        for t in 20..30 {
            all.extend(feed(&mut e, 0, t * 1_000, 4.3));
            e.tick(t * 1_000 + 500, &mut all);
        }
        assert!(
            all.iter().all(|e| e.transition.to != "active_unacked"),
            "{all:?}"
        );
    }

    #[test]
    fn a_hold_off_keeps_the_rule_normal_while_true_and_for_its_time_after() {
        let mut e =
            engine(vec![RuleDraft::new("v_high", "voltage", high(5.0, 0.0))
                .hold_off("current < 400", 10_000)]);
        let mut all = Vec::new();
        for t in 0..30 {
            let i = if t <= 5 { 300.0 } else { 500.0 };
            all.extend(feed2(&mut e, 0, t * 1_000, 6.0, i));
            e.tick(t * 1_000 + 500, &mut all);
        }
        let on: Vec<_> = all
            .iter()
            .filter(|e| e.transition.to == "active_unacked")
            .collect();
        assert_eq!(on.len(), 1, "{all:?}");
        assert!(
            on[0].transition.at > 15_000,
            "held until 10 s after the condition ended at 5 s: {:?}",
            on[0]
        );
    }

    #[test]
    fn a_hold_off_on_another_rules_alarm_lasts_while_it_is_active_and_for_its_time_after() {
        // The rule named in `alarm:` comes after the held one: resolved once all exist.
        let mut e = engine(vec![
            RuleDraft::new("v_high", "voltage", high(5.0, 0.0))
                .on_delay_ms(2_000)
                .hold_off("alarm:i_low", 10_000),
            RuleDraft::new("i_low", "current", low(400.0)),
        ]);
        let mut all = Vec::new();
        for t in 0..30 {
            let i = if t <= 5 { 300.0 } else { 500.0 };
            all.extend(feed2(&mut e, 0, t * 1_000, 6.0, i));
            e.tick(t * 1_000 + 500, &mut all);
        }
        let on: Vec<_> = all
            .iter()
            .filter(|e| &*e.rule == "v_high" && e.transition.to == "active_unacked")
            .collect();
        assert_eq!(on.len(), 1, "{all:?}");
        // i_low is active from 0 s to 6 s (current back at 500 A): held until 16 s, then 2 s
        // of on-delay.
        assert!(on[0].transition.at >= 17_000, "{:?}", on[0]);
    }

    #[test]
    fn a_hold_off_naming_no_rule_or_itself_is_refused() {
        let mut d = Draft::new("potline-1");
        let cell = d.table(&[("voltage", "V"), ("current", "kA")], &[]);
        d.device("pot-001", cell, 1_000);
        d.rule_on_all(
            RuleDraft::new("v_high", "voltage", high(5.0, 0.0)).hold_off("alarm:nope", 0),
        );
        d.rule_on_all(RuleDraft::new("v_low", "voltage", low(1.0)).hold_off("alarm:v_low", 0));
        let Err(errors) = d.compile() else {
            panic!("refused")
        };
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter().any(|t| t.contains("no rule is named \"nope\"")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("cannot hold itself off")),
            "{text:?}"
        );
    }

    #[test]
    fn a_reload_keeps_the_hold_off_timers_of_entries_written_the_same_way() {
        let rules = |limit: f64| {
            vec![RuleDraft::new("v_high", "voltage", high(limit, 0.0))
                .hold_off("current < 400", 600_000)]
        };
        let mut e = engine(rules(5.0));
        // The condition ends at 1 s: held until 601 s.
        feed2(&mut e, 0, 0, 4.0, 300.0);
        feed2(&mut e, 0, 1_000, 4.0, 300.0);
        feed2(&mut e, 0, 2_000, 4.0, 500.0);
        // Reloaded twice: the rule unchanged, then with another limit; the hold stays.
        for limit in [5.0, 5.5] {
            let mut next = engine(rules(limit));
            next.adopt(e);
            e = next;
        }
        let ev = feed2(&mut e, 0, 60_000, 9.0, 500.0);
        assert!(rule_events(&ev, "v_high").is_empty(), "still held: {ev:?}");
        let ev = feed2(&mut e, 0, 602_000, 9.0, 500.0);
        assert_eq!(
            rule_events(&ev, "v_high")[0].transition.to,
            "active_unacked"
        );
    }

    #[test]
    fn saved_alarms_are_restored_into_a_new_engine_and_removed_ones_dropped() {
        let rules = || {
            let mut r = ae(8.0);
            r.push(RuleDraft::new("low_v", "voltage", low(3.0)));
            r
        };
        let mut e = engine(rules());
        for t in [0, 1_000, 2_000] {
            feed(&mut e, 0, t, 12.0);
            feed(&mut e, 1, t, 12.0);
            feed(&mut e, 2, t, 1.0);
        }
        let by = "shift-a";
        assert!(e
            .command(
                "pot-001",
                "anode_effect",
                by,
                &Command::Ack { note: None },
                3_000
            )
            .is_ok());
        let until = Command::Shelve { until: 9_000_000 };
        assert!(e
            .command("pot-002", "anode_effect", by, &until, 3_000)
            .is_ok());
        assert!(e
            .command("pot-003", "low_v", by, &Command::OutOfService, 3_000)
            .is_ok());
        let changes = e.changes();
        let saved = e.save();
        assert_eq!(e.changes(), changes, "saving changes nothing");
        assert_eq!(saved.len(), 3, "alarms as new are not saved");

        // Same configuration: the same states, and the restored alarms answer commands.
        let mut b = engine(rules());
        let r = b.restore(saved.clone());
        assert_eq!((r.restored, r.dropped), (3, 0));
        assert_eq!(b.save(), saved);
        let state = |e: &Engine, d: &str, r: &str| e.alarm_state(d, r).unwrap();
        assert_eq!(
            state(&b, "pot-001", "anode_effect").acked_by.as_deref(),
            Some(by)
        );
        assert_eq!(
            state(&b, "pot-002", "anode_effect").shelved_until,
            Some(9_000_000)
        );
        assert_eq!(
            state(&b, "pot-003", "low_v").transition.to,
            "out_of_service"
        );
        assert_eq!(b.restored_states(5_000).len(), 3);
        let cmd = b.command("pot-003", "low_v", by, &Command::ReturnToService, 5_000);
        assert_eq!(cmd.unwrap().unwrap().transition.to, "active_unacked");

        // The limit and priority changed, low_v removed: ack and shelve kept, low_v dropped.
        let mut c = engine(vec![ae(9.0).remove(0).priority(Priority::High)]);
        let r = c.restore(saved);
        assert_eq!((r.restored, r.dropped), (2, 1));
        let a = state(&c, "pot-001", "anode_effect");
        assert_eq!(
            (a.priority, a.acked_by.as_deref()),
            (Priority::High, Some(by))
        );
        assert_eq!(
            state(&c, "pot-002", "anode_effect").shelved_until,
            Some(9_000_000)
        );
        // The hysteresis starts from the restored activation: no new annunciation.
        let ev = feed(&mut c, 0, 6_000, 12.0);
        assert!(rule_events(&ev, "anode_effect").is_empty(), "{ev:?}");
    }

    #[test]
    fn action_failed_is_raised_cleared_and_kept_across_restart_and_reload() {
        let mut e = engine(ae(8.0));
        let mut out = Vec::new();
        e.action_failed("pot-001", false, None, 0, &mut out);
        assert!(out.is_empty(), "nothing to clear before a failure");
        e.action_failed("nope", true, None, 0, &mut out);
        assert!(out.is_empty(), "no alarm for an unknown device");
        e.action_failed(
            "pot-001",
            true,
            Some("read back [0]".into()),
            1_000,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (&*out[0].rule, out[0].transition.to, out[0].priority),
            (ACTION_FAILED_RULE, "active_unacked", Priority::High)
        );
        assert_eq!(out[0].transition.note.as_deref(), Some("read back [0]"));
        // A restart finds it; so does a reload.
        let mut b = engine(ae(8.0));
        let r = b.restore(e.save());
        assert_eq!(r.dropped, 0);
        let st = b.alarm_state("pot-001", ACTION_FAILED_RULE).unwrap();
        assert_eq!(st.transition.to, "active_unacked");
        let mut c = engine(ae(8.0));
        c.adopt(b);
        let mut out = Vec::new();
        c.action_failed("pot-001", false, None, 2_000, &mut out);
        assert_eq!(out[0].transition.to, "returned_unacked");
    }

    #[test]
    fn the_flood_alarm_can_be_acknowledged() {
        let mut e = engine(ae(8.0));
        let err = e.command(
            AREA_DEVICE,
            FLOOD_RULE,
            "op",
            &Command::Ack { note: None },
            0,
        );
        assert!(matches!(err, Err(EngineError::Refused(_))), "{err:?}");
    }

    #[test]
    fn high_rule_with_on_delay_and_deadband() {
        let mut e = engine(ae(8.0));
        assert!(rule_events(&feed(&mut e, 0, 0, 4.2), "anode_effect").is_empty());
        assert!(
            rule_events(&feed(&mut e, 0, 1_000, 9.0), "anode_effect").is_empty(),
            "on-delay not elapsed"
        );
        assert!(rule_events(&feed(&mut e, 0, 2_000, 9.5), "anode_effect").is_empty());
        let ev = feed(&mut e, 0, 3_000, 12.0);
        let ev = rule_events(&ev, "anode_effect");
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].transition.to, "active_unacked");
        assert_eq!(&*ev[0].device, "pot-001");
        assert_eq!(ev[0].message, "Anode effect on pot-001: 12 V");
        assert_eq!(ev[0].limit, Some(8.0));
        assert!(rule_events(&feed(&mut e, 0, 4_000, 7.6), "anode_effect").is_empty());
        let ev = feed(&mut e, 0, 5_000, 7.4);
        assert_eq!(
            rule_events(&ev, "anode_effect")[0].transition.to,
            "returned_unacked"
        );
        assert!(rule_events(&feed(&mut e, 1, 5_000, 4.1), "anode_effect").is_empty());
    }

    #[test]
    fn bad_samples_never_trigger_and_comm_loss_is_built_in() {
        let mut e = engine(ae(8.0));
        feed(&mut e, 0, 0, 9.0);
        let mut out = Vec::new();
        let bad = SampleBatch {
            device: 0,
            ts: 3_000,
            values: vec![
                (0, f64::NAN, Quality::Bad(BadReason::Timeout)),
                (1, f64::NAN, Quality::Bad(BadReason::Timeout)),
            ],
        };
        e.on_batch(&bad, 3_000, &mut out);
        e.tick(10_000, &mut out);
        assert!(rule_events(&out, "anode_effect").is_empty(), "{out:?}");
        let comm = rule_events(&out, COMM_LOSS_RULE);
        assert_eq!(comm.len(), 1);
        assert_eq!(comm[0].transition.to, "active_unacked");
        assert_eq!(comm[0].priority, Priority::High);
        assert_eq!(
            e.tag_value("pot-001", "voltage").map(|x| x.1),
            Some(Quality::Bad(BadReason::Timeout))
        );
        let back = feed(&mut e, 0, 11_000, 4.2);
        assert_eq!(
            rule_events(&back, COMM_LOSS_RULE)[0].transition.to,
            "returned_unacked"
        );
    }

    #[test]
    fn derived_tags_are_computed_and_alarmed_like_any_tag() {
        let mut e = engine(vec![RuleDraft::new("r_high", "pseudo_r", high(6.0, 0.0))]);
        assert!(feed2(&mut e, 0, 0, 4.0, 500.0).is_empty());
        let (v, q) = e.tag_value("pot-001", "pseudo_r").unwrap();
        assert!((v.unwrap() - 4.7).abs() < 1e-9 && q.is_good());
        let ev = feed2(&mut e, 0, 1_000, 4.0, 300.0);
        assert_eq!(rule_events(&ev, "r_high").len(), 1, "R = 7.83 uOhm");
        // A bad input makes the derived tag bad, not a stale value.
        let mut out = Vec::new();
        e.on_batch(
            &SampleBatch {
                device: 0,
                ts: 2_000,
                values: vec![
                    (0, 4.0, Quality::Good),
                    (1, f64::NAN, Quality::Bad(BadReason::Decode)),
                ],
            },
            2_000,
            &mut out,
        );
        assert_eq!(
            e.tag_value("pot-001", "pseudo_r").unwrap().1,
            Quality::Bad(BadReason::Input)
        );
    }

    #[test]
    fn a_potline_outage_raises_one_area_alarm_and_suppresses_cell_alarms() {
        let mut e = engine(vec![
            RuleDraft::new("line_current_loss", "current", low(450.0))
                .scope(Scope::Area { quorum: 0.5 })
                .priority(Priority::Critical),
            RuleDraft::new("cell_voltage_low", "voltage", low(3.0))
                .on_delay_ms(3_000)
                .suppress_when(Suppression::Alarm {
                    rule: "line_current_loss".into(),
                    device: None,
                }),
        ]);
        for d in 0..4 {
            feed2(&mut e, d, 0, 4.2, 500.0);
        }
        let mut all = Vec::new();
        for t in 1..10 {
            for d in 0..4 {
                all.extend(feed2(&mut e, d, t * 1_000, 0.5, 0.0));
            }
            e.tick(t * 1_000 + 500, &mut all);
        }
        let line = rule_events(&all, "line_current_loss");
        assert_eq!(line.len(), 1, "{line:?}");
        assert_eq!(&*line[0].device, AREA_DEVICE);
        assert!(
            all.iter()
                .filter(|e| &*e.rule == "cell_voltage_low")
                .all(|e| e.transition.to == "suppressed"),
            "{all:?}"
        );
        assert!(all
            .iter()
            .all(|e| e.transition.to != "active_unacked" || &*e.rule == "line_current_loss"));
    }

    #[test]
    fn expression_suppression_uses_the_devices_own_values() {
        let mut e = engine(vec![RuleDraft::new("v_low", "voltage", low(3.0))
            .suppress_when(Suppression::Expr("current < 100".into()))]);
        let ev = feed2(&mut e, 0, 0, 1.0, 0.0);
        assert!(
            rule_events(&ev, "v_low")
                .iter()
                .all(|e| e.transition.to == "suppressed"),
            "{ev:?}"
        );
        let ev = feed2(&mut e, 1, 0, 1.0, 500.0);
        assert_eq!(rule_events(&ev, "v_low")[0].transition.to, "active_unacked");
    }

    #[test]
    fn expressions_of_one_shape_over_different_tags_are_not_merged() {
        // Both compile to "slot 0 < 100"; each must read its own tag.
        let mut e = engine(vec![
            RuleDraft::new("v_low", "voltage", low(3.0))
                .suppress_when(Suppression::Expr("current < 100".into())),
            RuleDraft::new("i_low", "current", low(450.0))
                .suppress_when(Suppression::Expr("voltage < 100".into())),
        ]);
        let ev = feed2(&mut e, 0, 0, 200.0, 0.0);
        assert_eq!(
            rule_events(&ev, "i_low")[0].transition.to,
            "active_unacked",
            "voltage is 200, so i_low is not suppressed: {ev:?}"
        );
    }

    #[test]
    fn a_curve_rule_reads_the_setpoint_tag_of_its_own_device() {
        use crate::core::rule::CurveSource;
        let mut d = Draft::new("kilns");
        let kiln = d.table(&[("setpoint", "degC"), ("temp", "degC")], &[]);
        d.device("kiln-1", kiln, 1_000);
        d.device("kiln-2", kiln, 1_000);
        d.rule_on_all(RuleDraft::new(
            "off_curve",
            "temp",
            RuleKind::Curve {
                source: CurveSource::Tag("setpoint".into()),
                tolerance: 5.0,
                lag_ms: 0,
            },
        ));
        let mut e = Engine::new(&d.compile().unwrap());
        let mut feed = |dev: u32, t: Ts, sp: f64, temp: f64| {
            let mut out = Vec::new();
            let values = vec![(0, sp, Quality::Good), (1, temp, Quality::Good)];
            e.on_batch(
                &SampleBatch {
                    device: dev,
                    ts: t,
                    values,
                },
                t,
                &mut out,
            );
            out
        };
        assert!(rule_events(&feed(1, 0, 300.0, 302.0), "off_curve").is_empty());
        let ev = feed(1, 1_000, 300.0, 320.0);
        assert_eq!(
            rule_events(&ev, "off_curve")[0].transition.to,
            "active_unacked"
        );
        assert!(
            rule_events(&feed(0, 1_000, 320.0, 320.0), "off_curve").is_empty(),
            "kiln-1 reads its own setpoint"
        );
    }

    #[test]
    fn a_flood_holds_back_low_priority_alarms_and_raises_one_summary() {
        let rules = (0..15)
            .map(|i| {
                RuleDraft::new(&format!("r{i}"), "voltage", high(5.0 + i as f64 * 0.1, 0.0))
                    .priority(if i < 12 {
                        Priority::Medium
                    } else {
                        Priority::Low
                    })
            })
            .collect();
        let mut e = engine(rules);
        let mut out = feed(&mut e, 0, 0, 10.0);
        e.tick(1_000, &mut out);
        let flood = rule_events(&out, FLOOD_RULE);
        assert_eq!(flood.len(), 1);
        assert_eq!(flood[0].transition.to, "active_unacked");
        let low: Vec<_> = out
            .iter()
            .filter(|e| e.priority == Priority::Low && &*e.rule != FLOOD_RULE)
            .collect();
        assert!(
            low.is_empty(),
            "low-priority alarms are held during the flood: {low:?}"
        );
        assert_eq!(e.kpis(1_000).floods, 1);
        // After the window passes quietly, the flood ends and held alarms come out.
        let mut later = Vec::new();
        e.tick(700_000, &mut later);
        assert_eq!(
            rule_events(&later, FLOOD_RULE)[0].transition.to,
            "returned_unacked"
        );
        assert_eq!(
            later
                .iter()
                .filter(|e| e.priority == Priority::Low && &*e.rule != FLOOD_RULE)
                .count(),
            3
        );
    }

    #[test]
    fn commands_reach_the_alarm() {
        let mut e = engine(ae(8.0));
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
        assert_eq!(
            e.shown_alarms()
                .iter()
                .filter(|a| &*a.rule == "anode_effect")
                .count(),
            1
        );
    }

    #[test]
    fn a_reload_that_changes_a_limit_keeps_the_active_alarm_and_the_windows() {
        let mut e = engine(ae(8.0));
        feed(&mut e, 0, 0, 9.0);
        feed(&mut e, 0, 3_000, 9.0);
        e.command(
            "pot-001",
            "anode_effect",
            "op",
            &Command::Ack { note: None },
            3_500,
        )
        .unwrap();
        let mut next = engine(ae(8.5));
        next.adopt(e);
        let st = next.alarm_state("pot-001", "anode_effect").unwrap();
        assert_eq!(
            st.transition.to, "active_acked",
            "state survives the reload"
        );
        assert_eq!(next.tag_value("pot-001", "voltage").unwrap().0, Some(9.0));
        // The new limit applies with its deadband: 8.2 V >= 8.5 - 0.5 keeps it active, 7.9 V clears.
        assert!(rule_events(&feed(&mut next, 0, 4_000, 8.2), "anode_effect").is_empty());
        let ev = feed(&mut next, 0, 5_000, 7.9);
        assert_eq!(rule_events(&ev, "anode_effect")[0].transition.to, "normal");
    }

    #[test]
    fn summaries_cover_the_interval_and_reset() {
        let mut e = engine(Vec::new());
        for (t, v) in [(0, 4.0), (1_000, 4.4), (2_000, 4.2)] {
            feed(&mut e, 0, t, v);
        }
        let s: Vec<_> = e.take_summaries(60_000).collect();
        let v = &s[0].tags[0].2;
        assert_eq!(
            (v.count, v.good, v.min, v.max, v.last),
            (3, 3, 4.0, 4.4, Some(4.2))
        );
        assert!((v.mean().unwrap() - 4.2).abs() < 1e-12);
        assert_eq!(
            e.take_summaries(120_000).next().map(|s| s.tags[0].2.count),
            Some(0)
        );
    }
}
