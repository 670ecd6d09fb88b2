//! The compiled rule spec: everything [`super::engine::Engine::new`] is built from, checked.
//!
//! A [`Draft`] holds what a configuration says in plain names and source text: tag tables (the
//! tags a device has, shared by the devices of one entry), devices, rules with the devices each
//! applies to, and the agent-wide alarm options. [`Draft::compile`] resolves every name to a
//! tag index, compiles derived-tag and `suppress_when` expressions, parses message templates
//! and builds each rule's evaluator, and returns every problem found (as data, so `config` can
//! point each at its file, line and key). A [`Spec`] exists only if nothing was wrong, so the
//! engine built from it cannot fail. `config` compiles the file once at load, which is why
//! `alsentry check` sees exactly the problems `alsentry run` would; engine tests and benches
//! fill a `Draft` directly.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::alarm::AlarmSettings;
use super::eval::Eval;
use super::expr::{Compiled, Expr, ExprError};
use super::message::{MessageTemplate, TemplateError};
use super::model::Priority;
use super::rule::{HoldOff, RuleKind, Scope, Suppression, BUILTIN_RULES};
use super::window::Window;

/// `[alarms]`: agent-wide alarm behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmOptions {
    /// A built-in communication-loss alarm per device.
    pub comm_loss: bool,
    pub comm_loss_priority: Priority,
    pub comm_loss_delay_ms: i64,
    /// A flood starts above this many annunciations in `flood_window_ms` in the area.
    pub flood_threshold: usize,
    pub flood_window_ms: i64,
}

impl Default for AlarmOptions {
    fn default() -> Self {
        AlarmOptions {
            comm_loss: true,
            comm_loss_priority: Priority::High,
            comm_loss_delay_ms: 10_000,
            flood_threshold: 10,
            flood_window_ms: 600_000,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What is compiled: names and source text.

/// The tags of a device as written: raw tags in the order sample batches index them, then
/// derived tags, each of which may read the raw tags and the derived tags before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableDraft {
    pub tags: Vec<TagDraft>,
    pub derived: Vec<DerivedDraft>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TagDraft {
    pub name: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DerivedDraft {
    pub name: String,
    pub expr: String,
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDraft {
    pub name: String,
    pub poll_ms: i64,
    /// Index into [`Draft::tables`].
    pub table: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleDraft {
    pub name: String,
    pub tag: String,
    pub kind: RuleKind,
    pub alarm: AlarmSettings,
    /// `None`: the kind's [`RuleKind::default_message`].
    pub message: Option<String>,
    pub scope: Scope,
    pub suppress_when: Option<Suppression>,
    pub hold_off: Vec<HoldOff>,
    /// Indices into [`Draft::devices`] of the devices the rule applies to.
    pub devices: Vec<u32>,
}

impl RuleDraft {
    /// A device-scoped rule of medium priority without delays, latching or suppression, on no
    /// device yet.
    pub fn new(name: &str, tag: &str, kind: RuleKind) -> RuleDraft {
        RuleDraft {
            name: name.to_string(),
            tag: tag.to_string(),
            kind,
            alarm: AlarmSettings {
                priority: Priority::Medium,
                on_delay_ms: 0,
                off_delay_ms: 0,
                latching: false,
            },
            message: None,
            scope: Scope::Device,
            suppress_when: None,
            hold_off: Vec::new(),
            devices: Vec::new(),
        }
    }

    pub fn hold_off(mut self, when: &str, for_ms: i64) -> RuleDraft {
        self.hold_off.push(HoldOff {
            when: when.to_string(),
            for_ms,
        });
        self
    }

    pub fn priority(mut self, p: Priority) -> RuleDraft {
        self.alarm.priority = p;
        self
    }

    pub fn on_delay_ms(mut self, ms: i64) -> RuleDraft {
        self.alarm.on_delay_ms = ms;
        self
    }

    pub fn off_delay_ms(mut self, ms: i64) -> RuleDraft {
        self.alarm.off_delay_ms = ms;
        self
    }

    pub fn latching(mut self) -> RuleDraft {
        self.alarm.latching = true;
        self
    }

    pub fn message(mut self, m: &str) -> RuleDraft {
        self.message = Some(m.to_string());
        self
    }

    pub fn scope(mut self, s: Scope) -> RuleDraft {
        self.scope = s;
        self
    }

    pub fn suppress_when(mut self, s: Suppression) -> RuleDraft {
        self.suppress_when = Some(s);
        self
    }

    pub fn on(mut self, devices: impl IntoIterator<Item = u32>) -> RuleDraft {
        self.devices = devices.into_iter().collect();
        self
    }
}

/// Everything a spec is compiled from. The `table`, `device` and `rule*` methods make a small
/// builder for tests and benches; `config` fills the fields directly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub area: String,
    pub alarms: AlarmOptions,
    pub tables: Vec<TableDraft>,
    pub devices: Vec<DeviceDraft>,
    pub rules: Vec<RuleDraft>,
}

impl Draft {
    pub fn new(area: &str) -> Draft {
        Draft {
            area: area.to_string(),
            ..Draft::default()
        }
    }

    /// Adds a tag table: raw tags as (name, unit), derived tags as (name, expression, unit).
    pub fn table(&mut self, tags: &[(&str, &str)], derived: &[(&str, &str, &str)]) -> usize {
        self.tables.push(TableDraft {
            tags: tags
                .iter()
                .map(|(name, unit)| TagDraft {
                    name: name.to_string(),
                    unit: unit.to_string(),
                })
                .collect(),
            derived: derived
                .iter()
                .map(|(name, expr, unit)| DerivedDraft {
                    name: name.to_string(),
                    expr: expr.to_string(),
                    unit: unit.to_string(),
                })
                .collect(),
        });
        self.tables.len() - 1
    }

    pub fn device(&mut self, name: &str, table: usize, poll_ms: i64) -> u32 {
        self.devices.push(DeviceDraft {
            name: name.to_string(),
            poll_ms,
            table,
        });
        (self.devices.len() - 1) as u32
    }

    pub fn rule(&mut self, rule: RuleDraft) -> &mut Draft {
        self.rules.push(rule);
        self
    }

    /// Adds a rule applying to every device added so far.
    pub fn rule_on_all(&mut self, rule: RuleDraft) -> &mut Draft {
        let all = 0..self.devices.len() as u32;
        self.rule(rule.on(all))
    }

    /// Resolves, compiles and checks everything; every problem found, or the spec.
    pub fn compile(&self) -> Result<Spec, Vec<SpecError>> {
        let mut errors = Vec::new();
        let tables: Vec<Arc<TagTable>> = self
            .tables
            .iter()
            .enumerate()
            .map(|(ti, t)| Arc::new(compile_table(ti, t, &mut errors)))
            .collect();
        let mut devices = Vec::with_capacity(self.devices.len());
        let mut device_names = HashSet::new();
        for (di, d) in self.devices.iter().enumerate() {
            if !device_names.insert(d.name.as_str()) {
                errors.push(SpecError::DuplicateDevice {
                    device: di,
                    name: d.name.clone(),
                });
            }
            match tables.get(d.table) {
                Some(t) => devices.push(DeviceSpec {
                    name: Arc::from(d.name.as_str()),
                    poll_ms: d.poll_ms,
                    tags: t.clone(),
                }),
                None => errors.push(SpecError::UnknownTable {
                    device: di,
                    table: d.table,
                }),
            }
        }
        let rule_names: HashSet<&str> = self.rules.iter().map(|r| r.name.as_str()).collect();
        let mut alarms_seen: HashSet<(u32, &str)> = HashSet::new();
        let mut rules = Vec::with_capacity(self.rules.len());
        for (ri, r) in self.rules.iter().enumerate() {
            let mut problems = Vec::new();
            let rule = compile_rule(r, &devices, &rule_names, &mut alarms_seen, &mut problems);
            errors.extend(problems.into_iter().map(|problem| SpecError::Rule {
                rule: ri,
                name: r.name.clone(),
                problem,
            }));
            rules.extend(rule);
        }
        let builtin = |source: &str| {
            MessageTemplate::parse(source)
                .map(Arc::new)
                .map_err(SpecError::BuiltinMessage)
        };
        let comm_loss_message = builtin(COMM_LOSS_MESSAGE).map_err(|e| errors.push(e)).ok();
        let flood_message = builtin(FLOOD_MESSAGE).map_err(|e| errors.push(e)).ok();
        match (comm_loss_message, flood_message) {
            (Some(comm_loss_message), Some(flood_message)) if errors.is_empty() => Ok(Spec {
                area: Arc::from(self.area.as_str()),
                alarms: self.alarms.clone(),
                devices,
                rules,
                comm_loss_message,
                flood_message,
            }),
            _ => Err(errors),
        }
    }
}

fn compile_table(ti: usize, t: &TableDraft, errors: &mut Vec<SpecError>) -> TagTable {
    // Tag names and units repeat across tables (one per device entry): one allocation each is
    // not worth a shared pool here, the engine interns them.
    let tags: Vec<TagName> = t
        .tags
        .iter()
        .map(|x| (x.name.as_str(), x.unit.as_str()))
        .chain(t.derived.iter().map(|x| (x.name.as_str(), x.unit.as_str())))
        .map(|(name, unit)| TagName {
            name: Arc::from(name),
            unit: Arc::from(unit),
        })
        .collect();
    if tags.len() > usize::from(u16::MAX) {
        errors.push(SpecError::TooManyTags {
            table: ti,
            count: tags.len(),
        });
    }
    let mut first: HashMap<&str, u16> = HashMap::new();
    for (i, tag) in tags.iter().enumerate() {
        if first.insert(&tag.name, i as u16).is_some() {
            errors.push(SpecError::DuplicateTag {
                table: ti,
                index: i,
                name: tag.name.to_string(),
            });
        }
    }
    let raw = t.tags.len();
    let mut derived = Vec::with_capacity(t.derived.len());
    for (k, d) in t.derived.iter().enumerate() {
        let mut fail = |problem| {
            errors.push(SpecError::Derived {
                table: ti,
                index: k,
                name: d.name.clone(),
                problem,
            })
        };
        let expr = match Expr::parse(&d.expr) {
            Ok(e) => e,
            Err(e) => {
                fail(DerivedProblem::Syntax(e));
                continue;
            }
        };
        // A derived tag reads the raw tags and the derived tags defined before it.
        let visible = |v: &str| {
            tags[..raw + k]
                .iter()
                .position(|x| &*x.name == v)
                .map(|i| i as u16)
        };
        let mut inputs = Vec::with_capacity(expr.variables().len());
        for v in expr.variables() {
            match visible(v) {
                Some(i) => inputs.push(i),
                None => fail(DerivedProblem::UnknownTag(v.clone())),
            }
        }
        let program = match expr.compile(|v| expr.variables().iter().position(|x| x == v)) {
            Ok(p) => p,
            Err(e) => {
                fail(DerivedProblem::Compile(e));
                continue;
            }
        };
        if inputs.len() == expr.variables().len() {
            derived.push(DerivedSpec {
                tag: (raw + k) as u16,
                program,
                inputs,
            });
        }
    }
    TagTable {
        tags,
        raw: raw as u16,
        derived,
    }
}

fn compile_rule<'d>(
    r: &'d RuleDraft,
    devices: &[DeviceSpec],
    rule_names: &HashSet<&str>,
    alarms_seen: &mut HashSet<(u32, &'d str)>,
    problems: &mut Vec<RuleProblem>,
) -> Option<RuleSpec> {
    let message = MessageTemplate::parse(r.message.as_deref().unwrap_or(r.kind.default_message()))
        .map_err(|e| problems.push(RuleProblem::Message(e)))
        .ok();
    // The evaluator for a fresh window: the engine's windows are fresh when it is built.
    let eval = Eval::new(&r.kind, &Window::new(1), &|_| None)
        .map_err(|e| problems.push(RuleProblem::Settings(e)))
        .ok();
    let mut suppress_expr = None;
    let suppress_when = match &r.suppress_when {
        None => None,
        Some(Suppression::Alarm { rule, device }) => {
            if !rule_names.contains(rule.as_str()) && !BUILTIN_RULES.contains(&rule.as_str()) {
                problems.push(RuleProblem::NoSuchRule(rule.clone()));
            }
            if rule == &r.name {
                problems.push(RuleProblem::SuppressesItself);
            }
            Some(SuppressSpec::Alarm {
                rule: Arc::from(rule.as_str()),
                device: device.as_deref().map(Arc::from),
            })
        }
        Some(Suppression::Expr(src)) => match Expr::parse(src) {
            Err(e) => {
                problems.push(RuleProblem::SuppressSyntax(e));
                None
            }
            Ok(expr) => match expr.compile(|v| expr.variables().iter().position(|x| x == v)) {
                Err(e) => {
                    problems.push(RuleProblem::SuppressCompile(e));
                    None
                }
                Ok(program) => {
                    let s = SuppressSpec::Expr {
                        source: Arc::from(src.as_str()),
                        program,
                    };
                    suppress_expr = Some(expr);
                    Some(s)
                }
            },
        },
    };
    let mut hold_exprs = Vec::with_capacity(r.hold_off.len());
    let mut holds = Vec::with_capacity(r.hold_off.len());
    for (index, h) in r.hold_off.iter().enumerate() {
        // `alarm:RULE`: held while this device's alarm of RULE is active (and `for` after).
        let alarm = h.when.trim().strip_prefix("alarm:").map(str::trim);
        let source = match alarm {
            Some(rule) if !rule_names.contains(rule) => {
                problems.push(RuleProblem::HoldNoSuchRule {
                    index,
                    rule: rule.to_string(),
                });
                continue;
            }
            Some(rule) if rule == r.name => {
                problems.push(RuleProblem::HoldsItself { index });
                continue;
            }
            // An expression without variables stands in (never evaluated): the hold's inputs
            // stay aligned with the other entries.
            Some(_) => "0",
            None => h.when.as_str(),
        };
        let compiled = Expr::parse(source)
            .map_err(|e| RuleProblem::HoldSyntax { index, error: e })
            .and_then(|expr| {
                expr.compile(|v| expr.variables().iter().position(|x| x == v))
                    .map(|program| (expr, program))
                    .map_err(|e| RuleProblem::HoldCompile { index, error: e })
            });
        match compiled {
            Ok((expr, program)) => {
                hold_exprs.push(expr);
                holds.push(HoldSpec {
                    source: Arc::from(h.when.as_str()),
                    program,
                    alarm: alarm.map(Arc::from),
                    for_ms: h.for_ms,
                });
            }
            Err(e) => problems.push(e),
        }
    }
    let mut instances = Vec::with_capacity(r.devices.len());
    // Resolved once per tag table: the devices of one entry share it.
    let mut bindings: Vec<Binding> = Vec::new();
    // By table address: a lookup per device, not a scan (10,000 entries are 10,000 tables).
    let mut bound: std::collections::HashMap<*const TagTable, Option<u32>> =
        std::collections::HashMap::new();
    for &di in &r.devices {
        let Some(d) = devices.get(di as usize) else {
            problems.push(RuleProblem::UnknownDevice(di));
            continue;
        };
        let table = Arc::as_ptr(&d.tags);
        let binding = match bound.get(&table) {
            Some(b) => *b,
            None => {
                let b = bind(&d.tags, r, suppress_expr.as_ref(), &hold_exprs).map(|b| {
                    bindings.push(b);
                    (bindings.len() - 1) as u32
                });
                bound.insert(table, b);
                b
            }
        };
        // What the device lacks, named per device.
        if d.tags.index_of(&r.tag).is_none() {
            problems.push(RuleProblem::NoTag {
                device: di,
                device_name: d.name.to_string(),
                tag: r.tag.clone(),
            });
        }
        for extra in r.kind.extra_tags() {
            if d.tags.index_of(extra).is_none() {
                problems.push(RuleProblem::NoExtraTag {
                    device: di,
                    device_name: d.name.to_string(),
                    tag: extra.to_string(),
                });
            }
        }
        if !alarms_seen.insert((di, r.name.as_str())) {
            problems.push(RuleProblem::DuplicateAlarm {
                device: di,
                device_name: d.name.to_string(),
            });
        }
        if let Some(binding) = binding {
            instances.push(Instance {
                device: di,
                binding,
            });
        }
    }
    // Variable by variable, as an operator reads the expression: the first device lacking each.
    if let Some(expr) = &suppress_expr {
        for v in expr.variables() {
            for &di in &r.devices {
                if let Some(d) = devices.get(di as usize) {
                    if d.tags.index_of(v).is_none() {
                        problems.push(RuleProblem::SuppressNoTag {
                            device: di,
                            device_name: d.name.to_string(),
                            tag: v.clone(),
                        });
                    }
                }
            }
        }
    }
    for (index, expr) in hold_exprs.iter().enumerate() {
        for v in expr.variables() {
            if let Some(d) = r
                .devices
                .iter()
                .filter_map(|&di| devices.get(di as usize).map(|d| (di, d)))
                .find(|(_, d)| d.tags.index_of(v).is_none())
            {
                problems.push(RuleProblem::HoldNoTag {
                    index,
                    device: d.0,
                    device_name: d.1.name.to_string(),
                    tag: v.clone(),
                });
            }
        }
    }
    if !problems.is_empty() {
        return None;
    }
    Some(RuleSpec {
        name: Arc::from(r.name.as_str()),
        tag: Arc::from(r.tag.as_str()),
        kind: r.kind.clone(),
        alarm: r.alarm,
        message: Arc::new(message?),
        scope: r.scope,
        suppress_when,
        holds,
        eval: eval?,
        bindings,
        instances,
    })
}

/// The rule's tags in one table, if it has them all (what it lacks is reported per device).
fn bind(
    table: &TagTable,
    r: &RuleDraft,
    suppress: Option<&Expr>,
    holds: &[Expr],
) -> Option<Binding> {
    let tag = table.index_of(&r.tag)?;
    let extra_tags = r
        .kind
        .extra_tags()
        .iter()
        .map(|t| table.index_of(t))
        .collect::<Option<Vec<u16>>>()?;
    let suppress_inputs = match suppress {
        Some(expr) => expr
            .variables()
            .iter()
            .map(|v| table.index_of(v))
            .collect::<Option<Vec<u16>>>()?,
        None => Vec::new(),
    };
    let hold_inputs = holds
        .iter()
        .map(|e| {
            e.variables()
                .iter()
                .map(|v| table.index_of(v))
                .collect::<Option<Vec<u16>>>()
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Binding {
        tag,
        extra_tags,
        suppress_inputs,
        hold_inputs,
    })
}

// ---------------------------------------------------------------------------------------------
// The compiled spec.

const COMM_LOSS_MESSAGE: &str = "{device}: no answer from the device (communication lost)";
const FLOOD_MESSAGE: &str =
    "Alarm flood in {device}: low-priority alarms are held back until it ends";

/// A checked, resolved rule configuration: what the engine is built from. Only
/// [`Draft::compile`] makes one, so its indices and names are consistent.
#[derive(Debug)]
pub struct Spec {
    area: Arc<str>,
    alarms: AlarmOptions,
    devices: Vec<DeviceSpec>,
    rules: Vec<RuleSpec>,
    comm_loss_message: Arc<MessageTemplate>,
    flood_message: Arc<MessageTemplate>,
}

impl Spec {
    pub fn area(&self) -> &Arc<str> {
        &self.area
    }

    pub fn alarms(&self) -> &AlarmOptions {
        &self.alarms
    }

    /// In the order sample batches index them.
    pub fn devices(&self) -> &[DeviceSpec] {
        &self.devices
    }

    pub fn rules(&self) -> &[RuleSpec] {
        &self.rules
    }

    /// The built-in communication-loss alarm's message.
    pub fn comm_loss_message(&self) -> &Arc<MessageTemplate> {
        &self.comm_loss_message
    }

    /// The built-in alarm-flood alarm's message.
    pub fn flood_message(&self) -> &Arc<MessageTemplate> {
        &self.flood_message
    }

    /// Tags over all devices, derived ones included.
    pub fn tag_count(&self) -> usize {
        self.devices.iter().map(|d| d.tags.tags.len()).sum()
    }

    pub fn rule(&self, name: &str) -> Option<&RuleSpec> {
        self.rules.iter().find(|r| &*r.name == name)
    }
}

#[derive(Debug)]
pub struct DeviceSpec {
    pub name: Arc<str>,
    pub poll_ms: i64,
    /// Shared by the devices of one entry (400 cells hold one table).
    pub tags: Arc<TagTable>,
}

/// A device's tags: raw ones first (their index is the one sample batches carry), then derived.
#[derive(Debug)]
pub struct TagTable {
    pub tags: Vec<TagName>,
    /// How many of `tags` are read from the device.
    pub raw: u16,
    /// In definition order, so each reads values already computed for the batch.
    pub derived: Vec<DerivedSpec>,
}

impl TagTable {
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.tags
            .iter()
            .position(|t| &*t.name == name)
            .map(|i| i as u16)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagName {
    pub name: Arc<str>,
    pub unit: Arc<str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DerivedSpec {
    /// The derived tag's own index in the table.
    pub tag: u16,
    pub program: Compiled,
    /// Table index of each variable of the program, in the program's variable order.
    pub inputs: Vec<u16>,
}

#[derive(Debug)]
pub struct RuleSpec {
    pub name: Arc<str>,
    pub tag: Arc<str>,
    pub kind: RuleKind,
    pub alarm: AlarmSettings,
    pub message: Arc<MessageTemplate>,
    pub scope: Scope,
    pub suppress_when: Option<SuppressSpec>,
    /// Hold-offs, in the order written.
    pub holds: Vec<HoldSpec>,
    /// The rule's evaluator for a fresh window, its extra tags not yet bound (see
    /// [`Eval::bind_extra_tags`]); building it is what checks the kind's settings.
    pub eval: Eval,
    /// The rule resolved against each tag table its devices use.
    pub bindings: Vec<Binding>,
    /// One per device the rule applies to, in device order.
    pub instances: Vec<Instance>,
}

impl RuleSpec {
    /// Stable hash (FNV-1a) of everything that defines the rule's alarms: tag, kind and
    /// settings, alarm settings, scope, suppression and message. Equal fingerprints mean the
    /// rule is unchanged; state kept across a reload or restart can be compared with it.
    pub fn fingerprint(&self) -> u64 {
        let suppress = match &self.suppress_when {
            None => String::new(),
            Some(SuppressSpec::Alarm { rule, device }) => format!("alarm:{device:?}/{rule}"),
            Some(SuppressSpec::Expr { source, .. }) => source.to_string(),
        };
        let holds: Vec<String> = self
            .holds
            .iter()
            .map(|h| format!("{}/{}", h.source, h.for_ms))
            .collect();
        let text = format!(
            "{}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{}",
            self.name,
            self.tag,
            self.kind,
            self.alarm,
            self.scope,
            suppress,
            self.message.source(),
            holds.join("\u{1}")
        );
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}

/// One (device, rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    /// Index into [`Spec::devices`].
    pub device: u32,
    /// Index into [`RuleSpec::bindings`]: where the rule's tags are in the device's table.
    pub binding: u32,
}

/// A rule's tags as indices into one [`TagTable`], shared by the devices using that table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The watched tag.
    pub tag: u16,
    /// The other tags the kind reads ([`RuleKind::extra_tags`], in that order): a curve
    /// rule's setpoint or time tag.
    pub extra_tags: Vec<u16>,
    /// For a `suppress_when` expression: the tag of each variable, in the program's order.
    pub suppress_inputs: Vec<u16>,
    /// For each hold-off: the tag of each variable of its expression.
    pub hold_inputs: Vec<Vec<u16>>,
}

/// A compiled hold-off ([`HoldOff`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HoldSpec {
    pub source: Arc<str>,
    pub program: Compiled,
    /// `alarm:RULE`: the hold follows the device's alarm of that rule, not `program`.
    pub alarm: Option<Arc<str>>,
    pub for_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SuppressSpec {
    /// Any active alarm of `rule` (on `device`, or on any device of the area).
    Alarm {
        rule: Arc<str>,
        device: Option<Arc<str>>,
    },
    /// Evaluated on each device's own values (see [`Instance::suppress_inputs`]).
    Expr { source: Arc<str>, program: Compiled },
}

// ---------------------------------------------------------------------------------------------
// Problems, as data: `config` places each at its file, line and key.

#[derive(Debug, Clone, PartialEq)]
pub enum SpecError {
    /// `index` counts raw tags then derived tags; it is the second use of the name.
    DuplicateTag {
        table: usize,
        index: usize,
        name: String,
    },
    TooManyTags {
        table: usize,
        count: usize,
    },
    /// `index` into the table's derived tags.
    Derived {
        table: usize,
        index: usize,
        name: String,
        problem: DerivedProblem,
    },
    DuplicateDevice {
        device: usize,
        name: String,
    },
    UnknownTable {
        device: usize,
        table: usize,
    },
    Rule {
        rule: usize,
        name: String,
        problem: RuleProblem,
    },
    /// A message of a built-in alarm does not parse (a bug, caught by the tests).
    BuiltinMessage(TemplateError),
}

#[derive(Debug, Clone, PartialEq)]
pub enum DerivedProblem {
    Syntax(ExprError),
    UnknownTag(String),
    Compile(ExprError),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleProblem {
    Message(TemplateError),
    /// The kind's settings cannot make an evaluator.
    Settings(String),
    SuppressSyntax(ExprError),
    SuppressCompile(ExprError),
    /// `suppress_when = "alarm:NAME"` names no rule.
    NoSuchRule(String),
    SuppressesItself,
    /// The device lacks the watched tag.
    NoTag {
        device: u32,
        device_name: String,
        tag: String,
    },
    /// The device lacks a tag the kind reads besides the watched one (curve rules).
    NoExtraTag {
        device: u32,
        device_name: String,
        tag: String,
    },
    /// The device lacks a tag of the `suppress_when` expression.
    SuppressNoTag {
        device: u32,
        device_name: String,
        tag: String,
    },
    /// `hold_off[index].when` does not parse or compile.
    HoldSyntax {
        index: usize,
        error: ExprError,
    },
    HoldCompile {
        index: usize,
        error: ExprError,
    },
    /// `hold_off[index].when = "alarm:RULE"` names no rule.
    HoldNoSuchRule {
        index: usize,
        rule: String,
    },
    /// `hold_off[index].when` names the rule itself.
    HoldsItself {
        index: usize,
    },
    /// The first device lacking a tag of `hold_off[index].when`.
    HoldNoTag {
        index: usize,
        device: u32,
        device_name: String,
        tag: String,
    },
    /// Another rule of the same name already has an alarm on the device.
    DuplicateAlarm {
        device: u32,
        device_name: String,
    },
    UnknownDevice(u32),
}

impl fmt::Display for DerivedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DerivedProblem::Syntax(e) | DerivedProblem::Compile(e) => write!(f, "{e}"),
            DerivedProblem::UnknownTag(v) => write!(
                f,
                "uses \"{v}\", which is not a tag of this device (or a derived tag defined before it)"
            ),
        }
    }
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleProblem::Message(e) => write!(f, "message: {e}"),
            RuleProblem::Settings(e) => write!(f, "{e}"),
            RuleProblem::SuppressSyntax(e) | RuleProblem::SuppressCompile(e) => {
                write!(f, "suppress_when: {e}")
            }
            RuleProblem::NoSuchRule(n) => write!(f, "suppress_when: no rule is named \"{n}\""),
            RuleProblem::SuppressesItself => write!(f, "a rule cannot suppress itself"),
            RuleProblem::NoTag {
                device_name, tag, ..
            }
            | RuleProblem::NoExtraTag {
                device_name, tag, ..
            } => write!(f, "device \"{device_name}\" has no tag \"{tag}\""),
            RuleProblem::SuppressNoTag {
                device_name, tag, ..
            } => write!(
                f,
                "suppress_when: device \"{device_name}\" has no tag \"{tag}\""
            ),
            RuleProblem::HoldSyntax { index, error }
            | RuleProblem::HoldCompile { index, error } => {
                write!(f, "hold_off[{index}].when: {error}")
            }
            RuleProblem::HoldNoSuchRule { index, rule } => {
                write!(f, "hold_off[{index}].when: no rule is named \"{rule}\"")
            }
            RuleProblem::HoldsItself { index } => {
                write!(f, "hold_off[{index}].when: a rule cannot hold itself off")
            }
            RuleProblem::HoldNoTag {
                index,
                device_name,
                tag,
                ..
            } => write!(
                f,
                "hold_off[{index}].when: device \"{device_name}\" has no tag \"{tag}\""
            ),
            RuleProblem::DuplicateAlarm { device_name, .. } => write!(
                f,
                "a rule of this name already has an alarm on device \"{device_name}\""
            ),
            RuleProblem::UnknownDevice(i) => write!(f, "no device #{i}"),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::DuplicateTag { table, name, .. } => {
                write!(f, "tag table {table}: duplicate tag name \"{name}\"")
            }
            SpecError::TooManyTags { table, count } => write!(
                f,
                "tag table {table}: {count} tags; a device has at most {}",
                u16::MAX
            ),
            SpecError::Derived {
                name,
                problem: p @ DerivedProblem::UnknownTag(_),
                ..
            } => write!(f, "derived tag \"{name}\" {p}"),
            SpecError::Derived { name, problem, .. } => {
                write!(f, "derived tag \"{name}\": {problem}")
            }
            SpecError::DuplicateDevice { name, .. } => {
                write!(f, "duplicate device name \"{name}\"")
            }
            SpecError::UnknownTable { device, table } => {
                write!(
                    f,
                    "device #{device} uses tag table {table}, which does not exist"
                )
            }
            SpecError::Rule { name, problem, .. } => write!(f, "rule \"{name}\": {problem}"),
            SpecError::BuiltinMessage(e) => write!(f, "built-in alarm message: {e}"),
        }
    }
}

impl std::error::Error for SpecError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rule::CurveSource;

    fn cell_draft() -> Draft {
        let mut d = Draft::new("potline-1");
        let cell = d.table(
            &[("voltage", "V"), ("current", "kA")],
            &[("pseudo_r", "(voltage - 1.65) / current * 1000", "uOhm")],
        );
        for u in 1..=3 {
            d.device(&format!("pot-{u:03}"), cell, 1_000);
        }
        d
    }

    fn high(limit: f64) -> RuleKind {
        RuleKind::High {
            limit,
            deadband: 0.0,
        }
    }

    #[test]
    fn a_draft_compiles_to_resolved_tags_and_instances() {
        let mut d = cell_draft();
        d.rule_on_all(
            RuleDraft::new("r_high", "pseudo_r", high(6.0))
                .suppress_when(Suppression::Expr("current < 100".into())),
        );
        let spec = d.compile().unwrap();
        assert_eq!(spec.devices().len(), 3);
        assert!(Arc::ptr_eq(
            &spec.devices()[0].tags,
            &spec.devices()[2].tags
        ));
        let t = &spec.devices()[1].tags;
        assert_eq!((t.raw, t.tags.len()), (2, 3));
        assert_eq!(t.derived[0].tag, 2);
        assert_eq!(t.derived[0].inputs, vec![0, 1]);
        let r = &spec.rules()[0];
        assert_eq!(r.instances.len(), 3);
        assert_eq!(r.bindings.len(), 1, "one table, one binding");
        assert_eq!(r.instances[1].device, 1);
        let b = &r.bindings[r.instances[1].binding as usize];
        assert_eq!(b.tag, 2, "pseudo_r is the table's third tag");
        assert_eq!(b.suppress_inputs, vec![1]);
        assert_eq!(
            r.message.source(),
            "{rule} on {device}: {tag} {value} {unit} above {limit}"
        );
    }

    #[test]
    fn every_problem_is_returned_with_what_it_is_about() {
        let mut d = cell_draft();
        d.tables[0].derived.push(DerivedDraft {
            name: "bad".into(),
            expr: "voltage + nope".into(),
            unit: String::new(),
        });
        let deep = (0..20).fold("voltage".to_string(), |e, _| format!("voltage + ({e})"));
        d.rule_on_all(
            RuleDraft::new("a", "voltag", high(1.0))
                .message("{valeu}")
                .suppress_when(Suppression::Alarm {
                    rule: "nobody".into(),
                    device: None,
                }),
        );
        d.rule_on_all(
            RuleDraft::new("b", "voltage", high(1.0)).suppress_when(Suppression::Expr(deep)),
        );
        d.rule_on_all(RuleDraft::new(
            "c",
            "voltage",
            RuleKind::Cusum {
                lambda: 0.1,
                k: f64::INFINITY,
                h: 5.0,
                warmup: 10,
            },
        ));
        d.rule_on_all(RuleDraft::new("c", "current", high(1.0)));
        d.rule_on_all(RuleDraft::new(
            "d",
            "voltage",
            RuleKind::Curve {
                source: CurveSource::Tag("setpoint".into()),
                tolerance: 1.0,
                lag_ms: 0,
            },
        ));
        let errors = d.compile().unwrap_err();
        let has = |f: &dyn Fn(&SpecError) -> bool| errors.iter().any(f);
        assert!(has(
            &|e| matches!(e, SpecError::Derived { index: 1, problem: DerivedProblem::UnknownTag(v), .. } if v == "nope")
        ));
        assert!(has(&|e| matches!(
            e,
            SpecError::Rule {
                rule: 0,
                problem: RuleProblem::Message(_),
                ..
            }
        )));
        assert!(has(
            &|e| matches!(e, SpecError::Rule { rule: 0, problem: RuleProblem::NoSuchRule(n), .. } if n == "nobody")
        ));
        assert!(has(&|e| matches!(
            e,
            SpecError::Rule {
                rule: 0,
                problem: RuleProblem::NoTag { device: 2, .. },
                ..
            }
        )));
        assert!(
            has(&|e| matches!(
                e,
                SpecError::Rule {
                    rule: 1,
                    problem: RuleProblem::SuppressCompile(ExprError::TooComplex { .. }),
                    ..
                }
            )),
            "a suppress_when too deep to evaluate is found before the engine is built: {errors:?}"
        );
        assert!(has(&|e| matches!(
            e,
            SpecError::Rule {
                rule: 2,
                problem: RuleProblem::Settings(_),
                ..
            }
        )));
        assert!(has(&|e| matches!(
            e,
            SpecError::Rule {
                rule: 3,
                problem: RuleProblem::DuplicateAlarm { device: 0, .. },
                ..
            }
        )));
        assert!(has(&|e| matches!(
            e,
            SpecError::Rule {
                rule: 4,
                problem: RuleProblem::NoExtraTag { .. },
                ..
            }
        )));
    }

    #[test]
    fn duplicate_tags_and_devices_are_refused() {
        let mut d = Draft::new("a");
        let t = d.table(&[("v", ""), ("v", "")], &[]);
        d.device("x", t, 1_000);
        d.device("x", t, 1_000);
        let e = d.compile().unwrap_err();
        assert!(e.contains(&SpecError::DuplicateTag {
            table: 0,
            index: 1,
            name: "v".into()
        }));
        assert!(e.contains(&SpecError::DuplicateDevice {
            device: 1,
            name: "x".into()
        }));
    }

    #[test]
    fn fingerprints_tell_changed_rules_apart() {
        let compile = |limit: f64, p: Priority| {
            let mut d = cell_draft();
            d.rule_on_all(RuleDraft::new("ae", "voltage", high(limit)).priority(p));
            d.compile().unwrap()
        };
        let a = compile(8.0, Priority::High).rules()[0].fingerprint();
        assert_eq!(a, compile(8.0, Priority::High).rules()[0].fingerprint());
        assert_ne!(a, compile(8.5, Priority::High).rules()[0].fingerprint());
        assert_ne!(a, compile(8.0, Priority::Critical).rules()[0].fingerprint());
    }
}
