//! The sweep: which rules, which settings, the replays and their scores.
//!
//! Every setting of a rule is a copy of the rule under its own name (the rule's, [`COPY`], the
//! setting's number) with another limit or on-delay; copies are spread over several engines and
//! each engine replays the samples once through the same [`Driver`] (batching, tick grid) as `replay` and `run`. Rules
//! of one engine do not interact: a copy is suppressed exactly as its rule is (the rules its
//! `suppress_when` names are in every engine), and flood shelving, which depends on what else
//! is alarming, is off, so each copy scores as the rule alone would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::Config;
use crate::core::alarm::AlarmSettings;
use crate::core::driver::{Cadence, Driver};
use crate::core::engine::Engine;
use crate::core::model::Ts;
use crate::core::rule::{RuleKind, Suppression};
use crate::core::spec::{DerivedDraft, DeviceDraft, Draft, RuleDraft, TableDraft, TagDraft};
use crate::replay::order::OrderOptions;
use crate::replay::progress::Progress;

use super::data::{for_each_row, AnodeEffect, Rows};

/// Separates a rule's name from its setting number in the copies' names; rule names from the
/// configuration never hold it (a control character).
const COPY: char = '\u{1f}';

/// The configuration as the core builds it (as `config/compile.rs` does), to change rules in.
pub fn base_draft(cfg: &Config) -> Draft {
    let mut tables: Vec<TableDraft> = Vec::new();
    // Devices expanded from one entry share their tag list: one table for them.
    let mut seen: HashMap<(*const (), *const ()), usize> = HashMap::new();
    let devices = cfg
        .devices
        .iter()
        .map(|d| {
            let key = (
                d.tags.as_ptr() as *const (),
                d.derived.as_ptr() as *const (),
            );
            let table = *seen.entry(key).or_insert_with(|| {
                tables.push(TableDraft {
                    tags: d
                        .tags
                        .iter()
                        .map(|t| TagDraft {
                            name: t.name.clone(),
                            unit: t.unit.clone(),
                        })
                        .collect(),
                    derived: d
                        .derived
                        .iter()
                        .map(|x| DerivedDraft {
                            name: x.name.clone(),
                            expr: x.expr.clone(),
                            unit: x.unit.clone(),
                        })
                        .collect(),
                });
                tables.len() - 1
            });
            DeviceDraft {
                name: d.name.clone(),
                poll_ms: d.poll_ms,
                table,
            }
        })
        .collect();
    let mut alarms = cfg.alarms.clone();
    // No flood shelving: a rule is judged on its own activations.
    alarms.flood_threshold = usize::MAX / 4;
    Draft {
        area: cfg.agent.area.clone(),
        alarms,
        tables,
        devices,
        rules: cfg
            .rules
            .iter()
            .map(|r| RuleDraft {
                name: r.name.clone(),
                tag: r.tag.clone(),
                kind: r.kind.clone(),
                alarm: AlarmSettings {
                    priority: r.priority,
                    on_delay_ms: r.on_delay_ms,
                    off_delay_ms: r.off_delay_ms,
                    latching: r.latching,
                },
                message: Some(r.message.clone()),
                scope: r.scope,
                suppress_when: r.suppress_when.clone(),
                hold_off: r.hold_off.iter().map(|(h, _)| h.clone()).collect(),
                devices: cfg
                    .devices
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| crate::config::selects(&r.selector, d))
                    .map(|(k, _)| k as u32)
                    .collect(),
            })
            .collect(),
    }
}

/// The limit a sweep scales, if the rule type has one.
pub fn limit_of(kind: &RuleKind) -> Option<f64> {
    match kind {
        RuleKind::High { limit, .. }
        | RuleKind::Low { limit, .. }
        | RuleKind::Rate { limit, .. }
        | RuleKind::Slope { limit, .. }
        | RuleKind::Predict { limit, .. }
        | RuleKind::Noise { limit, .. }
        | RuleKind::Deviation { limit, .. }
        | RuleKind::Average { limit, .. } => Some(*limit),
        RuleKind::Trend(t) => Some(t.limit),
        RuleKind::Cusum { h, .. } => Some(*h),
        RuleKind::Frozen { .. } | RuleKind::Stale { .. } | RuleKind::Curve { .. } => None,
    }
}

/// The key the limit is written under in the configuration.
pub fn limit_key(kind: &RuleKind) -> &'static str {
    match kind {
        RuleKind::Cusum { .. } => "h",
        _ => "limit",
    }
}

/// Levels (a voltage, a temperature, a predicted level) are swept closely around the current
/// limit; rates, slopes, noise and standard deviations over a wide log grid.
fn factors(kind: &RuleKind) -> Vec<f64> {
    let step = match kind {
        RuleKind::High { .. }
        | RuleKind::Low { .. }
        | RuleKind::Predict { .. }
        | RuleKind::Average { .. } => 2f64.powf(1.0 / 12.0),
        _ => 2f64.sqrt(),
    };
    (-4..=4).map(|k| step.powi(k)).collect()
}

/// The kind with `limit` in place of its limit; a deadband keeps its share of the limit for
/// rates and slopes, and its size for levels.
pub fn with_limit(kind: &RuleKind, limit: f64) -> RuleKind {
    let mut k = kind.clone();
    let old = limit_of(kind).unwrap_or(limit);
    let scale = if old != 0.0 { limit / old } else { 1.0 };
    match &mut k {
        RuleKind::High { limit: l, .. }
        | RuleKind::Low { limit: l, .. }
        | RuleKind::Predict { limit: l, .. }
        | RuleKind::Average { limit: l, .. }
        | RuleKind::Deviation { limit: l, .. } => *l = limit,
        RuleKind::Rate {
            limit: l, deadband, ..
        }
        | RuleKind::Slope {
            limit: l, deadband, ..
        }
        | RuleKind::Noise {
            limit: l, deadband, ..
        } => {
            *l = limit;
            *deadband *= scale;
        }
        // A trend's absolute floor; its deadband keeps its share, like a slope's.
        RuleKind::Trend(t) => {
            t.limit = limit;
            t.deadband *= scale;
        }
        RuleKind::Cusum { h, .. } => *h = limit,
        RuleKind::Frozen { .. } | RuleKind::Stale { .. } | RuleKind::Curve { .. } => {}
    }
    k
}

/// On-delays tried: none, half, the current one, double (or a few seconds up to a minute when
/// there is none).
fn delays(current: i64) -> Vec<i64> {
    let mut d = if current > 0 {
        vec![0, current / 2, current, current * 2]
    } else {
        vec![0, 10_000, 30_000, 60_000]
    };
    d.dedup();
    d
}

/// Rounds to 3 significant digits, so proposals read like hand-written limits.
pub fn round3(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let mag = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * mag).round() / mag
}

/// One setting of one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Index into `cfg.rules`.
    pub rule: usize,
    pub limit: f64,
    pub on_delay_ms: i64,
    /// Whether this is the configuration's own setting.
    pub current: bool,
    /// Place on the grid: (limit step, delay step).
    pub grid: (usize, usize),
}

/// The settings of one rule: the grid of limits times the delays.
pub fn settings(cfg: &Config, rule: usize) -> Vec<Setting> {
    let r = &cfg.rules[rule];
    let Some(limit) = limit_of(&r.kind) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, f) in factors(&r.kind).into_iter().enumerate() {
        for (j, d) in delays(r.on_delay_ms).into_iter().enumerate() {
            let l = if (f - 1.0).abs() < 1e-9 {
                limit
            } else {
                round3(limit * f)
            };
            out.push(Setting {
                rule,
                limit: l,
                on_delay_ms: d,
                current: l == limit && d == r.on_delay_ms,
                grid: (i, j),
            });
        }
    }
    out
}

/// One activation: (rule name, device index, start, end if it cleared).
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub rule: Arc<str>,
    pub device: u32,
    pub start: Ts,
    pub end: Option<Ts>,
}

/// What a replay samples for the figures: per anode effect, the device's voltage and
/// pseudo-resistance as the engine saw them, over the window before it.
#[derive(Debug, Default)]
pub struct Trace {
    /// (device, from, to) per figure, and its points (ts, voltage, pseudo-resistance).
    pub windows: Vec<(u32, Ts, Ts)>,
    pub points: Vec<Vec<(Ts, f64, f64)>>,
    pub voltage_tag: String,
    pub resistance_tag: String,
    device_names: Vec<Arc<str>>,
}

impl Trace {
    pub fn new(
        cfg: &Config,
        effects: &[AnodeEffect],
        before_ms: Ts,
        after_ms: Ts,
        resistance_tag: &str,
    ) -> Trace {
        Trace {
            windows: effects
                .iter()
                .map(|e| (e.device, e.onset - before_ms, e.onset + after_ms))
                .collect(),
            points: vec![Vec::new(); effects.len()],
            voltage_tag: "voltage".into(),
            resistance_tag: resistance_tag.into(),
            device_names: cfg
                .devices
                .iter()
                .map(|d| Arc::from(d.name.as_str()))
                .collect(),
        }
    }

    fn sample(&mut self, engine: &Engine, device: u32, ts: Ts) {
        for (i, &(d, from, to)) in self.windows.iter().enumerate() {
            if d != device || ts < from || ts > to {
                continue;
            }
            let name = &self.device_names[device as usize];
            let value = |tag: &str| {
                engine
                    .tag_value(name, tag)
                    .and_then(|(v, q)| v.filter(|_| q.is_good()))
                    .unwrap_or(f64::NAN)
            };
            let p = (ts, value(&self.voltage_tag), value(&self.resistance_tag));
            self.points[i].push(p);
        }
    }
}

/// Replays the rows through an engine built from `draft`; returns every activation.
pub fn replay(
    draft: &Draft,
    cfg: &Config,
    rows: &Rows,
    opts: &OrderOptions,
    cadence: Cadence,
    mut trace: Option<&mut Trace>,
    progress: &mut Progress,
) -> anyhow::Result<Vec<Span>> {
    let spec = draft
        .compile()
        .map_err(|e| anyhow::anyhow!("a swept setting does not compile (a bug): {e:?}"))?;
    let device_of: HashMap<&str, u32> = cfg
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.as_str(), i as u32))
        .collect();
    let mut driver = Driver::new(Engine::new(&spec), cadence);
    let mut spans: Vec<Span> = Vec::new();
    let mut open: HashMap<(Arc<str>, u32), usize> = HashMap::new();
    let mut collect = |driver: &mut Driver, spans: &mut Vec<Span>| {
        for ev in driver.drain_events() {
            let Some(&device) = device_of.get(&*ev.device) else {
                continue;
            };
            let active = |s: &str| matches!(s, "active_unacked" | "active_acked");
            let key = (ev.rule.clone(), device);
            if active(ev.transition.to) && !active(ev.transition.from) {
                open.insert(key, spans.len());
                spans.push(Span {
                    rule: ev.rule.clone(),
                    device,
                    start: ev.transition.at,
                    end: None,
                });
            } else if active(ev.transition.from) && !active(ev.transition.to) {
                if let Some(i) = open.remove(&key) {
                    spans[i].end = Some(ev.transition.at);
                }
            }
        }
    };
    let mut prev: Option<(u32, Ts)> = None;
    for_each_row(rows, cfg, opts, &mut |s| {
        progress.row();
        driver.push_row(s.device, s.ts, s.tag, s.value, s.quality);
        if let Some(t) = trace.as_deref_mut() {
            // A row of another batch has just applied the previous one.
            if let Some((d, ts)) = prev.filter(|p| *p != (s.device, s.ts)) {
                t.sample(driver.engine(), d, ts);
            }
            prev = Some((s.device, s.ts));
        }
        if driver.has_events() {
            collect(&mut driver, &mut spans);
        }
    })?;
    driver.finish();
    if let (Some(t), Some((d, ts))) = (trace, prev) {
        t.sample(driver.engine(), d, ts);
    }
    collect(&mut driver, &mut spans);
    progress.finish();
    Ok(spans)
}

/// The rules a copy of `rule` needs beside it: those its suppression or its `alarm:RULE`
/// hold-offs name, transitively.
fn needed(draft: &Draft, rule: usize, into: &mut BTreeSet<usize>) {
    let r = &draft.rules[rule];
    let suppressed_by = match &r.suppress_when {
        Some(Suppression::Alarm { rule: name, .. }) => Some(name.as_str()),
        _ => None,
    };
    let held_by = r
        .hold_off
        .iter()
        .filter_map(|h| h.when.trim().strip_prefix("alarm:").map(str::trim));
    for name in suppressed_by.into_iter().chain(held_by) {
        if let Some(i) = draft.rules.iter().position(|r| r.name == name) {
            if into.insert(i) {
                needed(draft, i, into);
            }
        }
    }
}

/// Drafts of `jobs` engines holding every setting as a copy of its rule named `rule` + [`COPY`]
/// + `k`, `k` indexing `settings`.
pub fn variant_drafts(base: &Draft, settings: &[Setting], jobs: usize) -> Vec<Draft> {
    let jobs = jobs.clamp(1, settings.len().max(1));
    let mut out: Vec<(BTreeSet<usize>, Vec<RuleDraft>)> = vec![Default::default(); jobs];
    for (k, s) in settings.iter().enumerate() {
        let (deps, rules) = &mut out[k % jobs];
        needed(base, s.rule, deps);
        let mut r = base.rules[s.rule].clone();
        r.name = format!("{}{COPY}{k}", r.name);
        r.kind = with_limit(&r.kind, s.limit);
        r.alarm.on_delay_ms = s.on_delay_ms;
        rules.push(r);
    }
    out.into_iter()
        .map(|(deps, copies)| {
            let mut d = base.clone();
            d.rules = deps
                .into_iter()
                .map(|i| base.rules[i].clone())
                .chain(copies)
                .collect();
            d
        })
        .collect()
}

/// The setting number of a copy's name, if it is one.
pub fn copy_index(rule: &str) -> Option<usize> {
    rule.rsplit_once(COPY).and_then(|(_, k)| k.parse().ok())
}

/// How one setting did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Score {
    pub effects: usize,
    pub detected: usize,
    /// Seconds from the first activation to the onset, per detected effect (positive = before).
    pub leads_s: Vec<f64>,
    pub median_lead_s: Option<f64>,
    pub false_warnings: usize,
    pub false_per_100_cell_hours: f64,
}

impl Score {
    pub fn detection(&self) -> f64 {
        if self.effects == 0 {
            0.0
        } else {
            self.detected as f64 / self.effects as f64
        }
    }
}

/// The scoring windows: an activation from `lookback_ms` before an onset to `margin_ms` after
/// it detects that effect; one outside every `[onset - lookback, end + margin]` of its device
/// is a false warning.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Targets {
    pub lookback_ms: Ts,
    pub margin_ms: Ts,
    pub min_detection: f64,
    pub max_false_per_100_cell_hours: f64,
}

pub fn score(
    starts: &[(u32, Ts)],
    effects: &BTreeMap<u32, Vec<&AnodeEffect>>,
    total_effects: usize,
    cell_hours: f64,
    t: &Targets,
) -> Score {
    let mut first: Vec<Option<Ts>> = Vec::new();
    let mut index: HashMap<(u32, Ts), usize> = HashMap::new();
    for list in effects.values() {
        for e in list {
            index.insert((e.device, e.onset), first.len());
            first.push(None);
        }
    }
    let mut false_warnings = 0;
    for &(device, start) in starts {
        let list = effects.get(&device).map(Vec::as_slice).unwrap_or(&[]);
        let mut explained = false;
        for e in list {
            if start >= e.onset - t.lookback_ms && start <= e.end + t.margin_ms {
                explained = true;
            }
            if start >= e.onset - t.lookback_ms && start <= e.onset + t.margin_ms {
                if let Some(&i) = index.get(&(e.device, e.onset)) {
                    first[i] = Some(first[i].map_or(start, |f: Ts| f.min(start)));
                }
            }
        }
        if !explained {
            false_warnings += 1;
        }
    }
    let (effects_by_idx, mut leads_s): (Vec<_>, Vec<f64>) =
        (effects.values().flatten().collect::<Vec<_>>(), Vec::new());
    for (e, f) in effects_by_idx.iter().zip(&first) {
        if let Some(f) = f {
            leads_s.push((e.onset - f) as f64 / 1000.0);
        }
    }
    let mut sorted = leads_s.clone();
    sorted.sort_by(f64::total_cmp);
    let median_lead_s = match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    };
    Score {
        effects: total_effects,
        detected: leads_s.len(),
        leads_s,
        median_lead_s,
        false_warnings,
        false_per_100_cell_hours: if cell_hours > 0.0 {
            false_warnings as f64 * 100.0 / cell_hours
        } else {
            0.0
        },
    }
}

impl Targets {
    pub fn met(&self, s: &Score) -> bool {
        s.effects > 0
            && s.detection() >= self.min_detection
            && s.false_per_100_cell_hours <= self.max_false_per_100_cell_hours
    }
}

/// The best setting that meets the targets with a margin: its neighbours on the grid (the next
/// limit either side, the next delay either side) meet them too, so that a limit at the edge
/// of a cliff in false warnings is not proposed. Among those: the longest median lead, then the
/// fewest false warnings, then the one nearest the current setting.
pub fn best(scored: &[(Setting, Score)], current_limit: f64, t: &Targets) -> Option<usize> {
    let at = |g: (usize, usize)| scored.iter().find(|(s, _)| s.grid == g);
    let robust = |s: &Setting| {
        let (i, j) = s.grid;
        [
            i.checked_sub(1).map(|i| (i, j)),
            Some((i + 1, j)),
            j.checked_sub(1).map(|j| (i, j)),
            Some((i, j + 1)),
        ]
        .into_iter()
        .flatten()
        .filter_map(at)
        .all(|(_, sc)| t.met(sc))
    };
    let distance = |s: &Setting| {
        if current_limit != 0.0 && s.limit / current_limit > 0.0 {
            (s.limit / current_limit).ln().abs()
        } else {
            (s.limit - current_limit).abs()
        }
    };
    let lead = |x: &Score| x.median_lead_s.unwrap_or(f64::NEG_INFINITY);
    scored
        .iter()
        .enumerate()
        .filter(|(_, (s, sc))| t.met(sc) && robust(s))
        .max_by(|(_, a), (_, b)| {
            lead(&a.1)
                .total_cmp(&lead(&b.1))
                .then(b.1.false_warnings.cmp(&a.1.false_warnings))
                .then(distance(&b.0).total_cmp(&distance(&a.0)))
                .then(b.0.on_delay_ms.cmp(&a.0.on_delay_ms))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_to_three_digits_and_grids_span_the_documented_range() {
        assert_eq!(round3(0.0141421), 0.0141);
        assert_eq!(round3(11.3137), 11.3);
        assert_eq!(round3(-2.828), -2.83);
        let slope = RuleKind::Slope {
            window_ms: 300_000,
            per_ms: 60_000,
            limit: 0.02,
            deadband: 0.005,
            direction: crate::core::rule::Direction::Above,
        };
        let f = factors(&slope);
        assert!((f[0] - 0.25).abs() < 1e-12 && (f[8] - 4.0).abs() < 1e-12);
        match with_limit(&slope, 0.04) {
            RuleKind::Slope {
                limit, deadband, ..
            } => assert_eq!((limit, deadband), (0.04, 0.01)),
            other => panic!("{other:?}"),
        }
        assert_eq!(delays(60_000), vec![0, 30_000, 60_000, 120_000]);
    }

    #[test]
    fn early_warnings_detect_and_the_rest_are_false() {
        let e = |device, onset| AnodeEffect {
            device,
            onset,
            end: onset + 60_000,
            source: "ae_active",
        };
        let effects = [e(0, 3_600_000), e(1, 7_200_000)];
        let by = super::super::data::by_device(&effects);
        let t = Targets {
            lookback_ms: 1_800_000,
            margin_ms: 30_000,
            min_detection: 0.8,
            max_false_per_100_cell_hours: 1.0,
        };
        // Device 0: warned 10 min ahead; also once after the effect's end (false). Device 1:
        // only 40 min ahead, outside the lookback (false, and missed).
        let starts = [(0, 3_000_000), (0, 3_800_000), (1, 4_800_000)];
        let s = score(&starts, &by, 2, 200.0, &t);
        assert_eq!((s.detected, s.false_warnings), (1, 2));
        assert_eq!(s.median_lead_s, Some(600.0));
        assert_eq!(s.false_per_100_cell_hours, 1.0);
        assert!(!t.met(&s));
    }
}
