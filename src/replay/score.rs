//! Scores alarm activations against the simulator's ground truth: detections, misses, false
//! alarms and lead times per fault kind. Pure: no files, no clock.
//!
//! Rules:
//! - A fault of kind K on device D is *detected* when a rule mapped to K activates on D within
//!   `[start - margin, end + margin]` (an open fault ends with the replay). The earliest such
//!   activation counts. A fault whose device is `"*"` or empty applies to every device.
//! - Lead time = reference − activation, where reference is `onset_ms` when the fault has one
//!   (precursor faults: the AE voltage jump) and `start_ms` otherwise. Positive = warned early;
//!   negative = detection delay. An activation before the onset is an *early warning*.
//! - A *false alarm* is an activation of a scored rule (any rule in the mapping) that falls in
//!   no window of a fault, on its device, of a kind that rule is mapped to. It is counted under
//!   every kind the rule is mapped to; the total counts it once.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::core::model::Ts;
use crate::io::samples::{parse_file_ts, MAX_TS};

/// Which rules detect which fault kind when no `--match` is given. A kind not listed here is
/// matched by a rule of the same name.
pub const DEFAULT_MATCHES: &[(&str, &[&str])] = &[
    (
        "anode_effect",
        &[
            "anode_effect",
            "ae_event",
            "ae_warning",
            "ae_precursor",
            "ae_risk",
        ],
    ),
    (
        "potline_outage",
        &[
            "potline_outage",
            "line_current_low",
            "current_low",
            "potline_current_low",
        ],
    ),
    (
        "frozen",
        &["frozen", "frozen_value", "stale", "stale_value", "stuck"],
    ),
];

/// One fault from the ground truth, after merging its start and end lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub device: String,
    pub kind: String,
    pub start_ms: Ts,
    /// `None` while the fault is still open at the end of the truth file.
    pub end_ms: Option<Ts>,
    /// When the fault's main symptom begins, for faults that have precursors.
    pub onset_ms: Option<Ts>,
}

/// One alarm activation seen in the replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Activation {
    pub device: String,
    pub rule: String,
    pub at: Ts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthProblem {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TruthProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

fn time_field(obj: &serde_json::Map<String, serde_json::Value>, keys: &[&str]) -> Option<Ts> {
    keys.iter().find_map(|k| match obj.get(*k)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .filter(|t| (0..=MAX_TS).contains(t)),
        serde_json::Value::String(s) => parse_file_ts(s),
        _ => None,
    })
}

/// Parses ground truth (JSON lines). Tolerant: unknown keys are ignored, times may be epoch ms
/// or RFC 3339 strings, and `phase: "start"` / `phase: "end"` lines of one fault (same device,
/// kind and start) are merged. An end line without a start closes the latest open fault of
/// that device and kind. Unusable lines are returned as problems and skipped.
pub fn parse_truth(text: &str) -> (Vec<Fault>, Vec<TruthProblem>) {
    let mut faults: Vec<Fault> = Vec::new();
    let mut by_key: HashMap<(String, String, Ts), usize> = HashMap::new();
    let mut problems = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if raw.is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                problems.push(TruthProblem {
                    line,
                    message: format!("not JSON: {e}"),
                });
                continue;
            }
        };
        let Some(obj) = v.as_object() else {
            problems.push(TruthProblem {
                line,
                message: "expected a JSON object".into(),
            });
            continue;
        };
        let text_of = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(device), Some(kind)) = (
            text_of("device").or_else(|| Some("*".into())),
            text_of("kind"),
        ) else {
            problems.push(TruthProblem {
                line,
                message: "missing \"kind\"".into(),
            });
            continue;
        };
        let start = time_field(obj, &["start_ms", "start"]);
        let end = time_field(obj, &["end_ms", "end"]);
        let onset = time_field(obj, &["onset_ms", "onset"]);
        let phase = text_of("phase");
        let start = match start {
            Some(s) => s,
            None if phase.as_deref() == Some("end") => {
                let open = faults.iter_mut().rev().find(|f| {
                    f.device == device
                        && f.kind == kind
                        && f.end_ms.is_none()
                        && end.is_none_or(|e| f.start_ms <= e)
                });
                match open {
                    Some(f) => {
                        f.end_ms = end;
                        f.onset_ms = f.onset_ms.or(onset);
                    }
                    None => problems.push(TruthProblem {
                        line,
                        message: format!("end of a {kind} fault on {device} that never started"),
                    }),
                }
                continue;
            }
            None => {
                problems.push(TruthProblem {
                    line,
                    message: "missing \"start_ms\"".into(),
                });
                continue;
            }
        };
        let key = (device.clone(), kind.clone(), start);
        match by_key.get(&key) {
            Some(&fi) => {
                let f = &mut faults[fi];
                f.end_ms = end.or(f.end_ms);
                f.onset_ms = onset.or(f.onset_ms);
            }
            None => {
                by_key.insert(key, faults.len());
                faults.push(Fault {
                    device,
                    kind,
                    start_ms: start,
                    end_ms: end,
                    onset_ms: onset,
                });
            }
        }
    }
    (faults, problems)
}

/// Which rules count as detecting which fault kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matches {
    pub by_kind: BTreeMap<String, BTreeSet<String>>,
}

impl Matches {
    /// The default table, with `overrides` (`kind=rule,rule`) replacing a kind's rules.
    pub fn with_overrides(overrides: &[String]) -> Result<Matches, String> {
        let mut m = Matches::default();
        for (kind, rules) in DEFAULT_MATCHES {
            m.by_kind.insert(
                kind.to_string(),
                rules.iter().map(|r| r.to_string()).collect(),
            );
        }
        let mut seen = BTreeSet::new();
        for o in overrides {
            let Some((kind, rules)) = o.split_once('=') else {
                return Err(format!(
                    "--match \"{o}\": write KIND=RULE[,RULE...], e.g. anode_effect=ae_event,ae_warning"
                ));
            };
            let kind = kind.trim();
            let rules: BTreeSet<String> = rules
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect();
            if kind.is_empty() || rules.is_empty() {
                return Err(format!(
                    "--match \"{o}\": both a kind and at least one rule are needed"
                ));
            }
            let entry = m.by_kind.entry(kind.to_string()).or_default();
            // Several --match for one kind add up; the first replaces the default.
            if seen.insert(kind.to_string()) {
                entry.clear();
            }
            entry.extend(rules);
        }
        Ok(m)
    }

    /// Rules detecting `kind`: the table entry, or a rule named like the kind.
    pub fn rules_for(&self, kind: &str) -> BTreeSet<String> {
        self.by_kind
            .get(kind)
            .cloned()
            .unwrap_or_else(|| BTreeSet::from([kind.to_string()]))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreInput<'a> {
    pub faults: &'a [Fault],
    pub activations: &'a [Activation],
    pub matches: &'a Matches,
    pub margin_ms: i64,
    /// Time span of the replayed data, which bounds open faults and gives device-hours.
    pub replay_start: Ts,
    pub replay_end: Ts,
    /// Devices present in the replayed data.
    pub devices: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindScore {
    pub kind: String,
    pub rules: Vec<String>,
    pub faults: usize,
    pub detected: usize,
    pub missed: usize,
    /// Detections before the onset of a precursor fault.
    pub early_warnings: usize,
    pub median_lead_s: Option<f64>,
    pub false_alarms: usize,
    pub false_alarms_per_100_device_hours: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultOutcome {
    pub fault: Fault,
    pub detected_by: Option<String>,
    pub detected_at: Option<Ts>,
    pub lead_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    pub kinds: Vec<KindScore>,
    pub false_alarms_total: usize,
    pub device_hours: f64,
    pub margin_ms: i64,
    pub faults: Vec<FaultOutcome>,
    pub false_alarms: Vec<Activation>,
}

fn window(f: &Fault, margin: i64, replay_end: Ts) -> (Ts, Ts) {
    let end = f.end_ms.unwrap_or(replay_end).max(f.start_ms);
    (
        f.start_ms.saturating_sub(margin),
        end.saturating_add(margin),
    )
}

fn on_device(f: &Fault, device: &str) -> bool {
    f.device == device || f.device == "*" || f.device.is_empty()
}

fn median(v: &mut [i64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0
    })
}

pub fn score(input: &ScoreInput<'_>) -> ScoreReport {
    let m = input.margin_ms.max(0);
    let hours = input.replay_end.saturating_sub(input.replay_start).max(0) as f64 / 3_600_000.0;
    let device_hours = hours * input.devices as f64;

    let mut kinds: BTreeSet<String> = input.faults.iter().map(|f| f.kind.clone()).collect();
    let mut rules_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for k in input.matches.by_kind.keys() {
        kinds.insert(k.clone());
    }
    for k in &kinds {
        rules_of.insert(k.clone(), input.matches.rules_for(k));
    }
    // Rule -> kinds it detects.
    let mut kinds_of_rule: HashMap<&str, Vec<&str>> = HashMap::new();
    for (k, rules) in &rules_of {
        for r in rules {
            kinds_of_rule
                .entry(r.as_str())
                .or_default()
                .push(k.as_str());
        }
    }

    let mut outcomes = Vec::with_capacity(input.faults.len());
    for f in input.faults {
        let rules = &rules_of[&f.kind];
        let (lo, hi) = window(f, m, input.replay_end);
        let first = input
            .activations
            .iter()
            .filter(|a| on_device(f, &a.device) && rules.contains(&a.rule))
            .filter(|a| a.at >= lo && a.at <= hi)
            .min_by_key(|a| a.at);
        let reference = f.onset_ms.unwrap_or(f.start_ms);
        outcomes.push(FaultOutcome {
            fault: f.clone(),
            detected_by: first.map(|a| a.rule.clone()),
            detected_at: first.map(|a| a.at),
            lead_ms: first.map(|a| reference.saturating_sub(a.at)),
        });
    }

    let mut false_alarms = Vec::new();
    let mut false_by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for a in input.activations {
        let Some(ks) = kinds_of_rule.get(a.rule.as_str()) else {
            continue;
        };
        let explained = input.faults.iter().any(|f| {
            ks.contains(&f.kind.as_str()) && on_device(f, &a.device) && {
                let (lo, hi) = window(f, m, input.replay_end);
                a.at >= lo && a.at <= hi
            }
        });
        if !explained {
            for k in ks {
                *false_by_kind.entry(k).or_default() += 1;
            }
            false_alarms.push(a.clone());
        }
    }

    let kinds_out = rules_of
        .iter()
        .filter_map(|(k, rules)| {
            let mine: Vec<&FaultOutcome> = outcomes.iter().filter(|o| &o.fault.kind == k).collect();
            let fa = false_by_kind.get(k.as_str()).copied().unwrap_or(0);
            // Kinds with neither faults nor false alarms say nothing; leave them out.
            if mine.is_empty() && fa == 0 {
                return None;
            }
            let detected = mine.iter().filter(|o| o.detected_at.is_some()).count();
            let early = mine
                .iter()
                .filter(|o| match (o.fault.onset_ms, o.detected_at) {
                    (Some(onset), Some(at)) => at < onset,
                    _ => false,
                })
                .count();
            let mut leads: Vec<i64> = mine.iter().filter_map(|o| o.lead_ms).collect();
            Some(KindScore {
                kind: k.clone(),
                rules: rules.iter().cloned().collect(),
                faults: mine.len(),
                detected,
                missed: mine.len() - detected,
                early_warnings: early,
                median_lead_s: median(&mut leads).map(|ms| ms / 1000.0),
                false_alarms: fa,
                false_alarms_per_100_device_hours: (device_hours > 0.0)
                    .then(|| fa as f64 * 100.0 / device_hours),
            })
        })
        .collect();

    ScoreReport {
        kinds: kinds_out,
        false_alarms_total: false_alarms.len(),
        device_hours,
        margin_ms: m,
        faults: outcomes,
        false_alarms,
    }
}

/// The report as a fixed-width table.
pub fn table(r: &ScoreReport) -> String {
    let mut s = format!(
        "{:<18} {:>6} {:>8} {:>6} {:>6} {:>13} {:>7} {:>12}\n",
        "kind", "faults", "detected", "missed", "early", "median lead s", "false", "false/100dh"
    );
    for k in &r.kinds {
        s.push_str(&format!(
            "{:<18} {:>6} {:>8} {:>6} {:>6} {:>13} {:>7} {:>12}\n",
            k.kind,
            k.faults,
            k.detected,
            k.missed,
            k.early_warnings,
            k.median_lead_s
                .map_or_else(|| "-".to_string(), |v| format!("{v:.1}")),
            k.false_alarms,
            k.false_alarms_per_100_device_hours
                .map_or_else(|| "-".to_string(), |v| format!("{v:.2}")),
        ));
    }
    s.push_str(&format!(
        "false alarms: {} over {:.1} device-hours (margin {} s)\n",
        r.false_alarms_total,
        r.device_hours,
        r.margin_ms / 1000
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(device: &str, rule: &str, at: Ts) -> Activation {
        Activation {
            device: device.into(),
            rule: rule.into(),
            at,
        }
    }

    fn fault(device: &str, kind: &str, start: Ts, end: Option<Ts>, onset: Option<Ts>) -> Fault {
        Fault {
            device: device.into(),
            kind: kind.into(),
            start_ms: start,
            end_ms: end,
            onset_ms: onset,
        }
    }

    fn run(faults: &[Fault], acts: &[Activation], matches: &Matches) -> ScoreReport {
        score(&ScoreInput {
            faults,
            activations: acts,
            matches,
            margin_ms: 10_000,
            replay_start: 0,
            replay_end: 3_600_000,
            devices: 2,
        })
    }

    #[test]
    fn detection_with_early_warning_and_lead_time_miss_and_false_alarm() {
        let m = Matches::with_overrides(&["anode_effect=ae_warning,ae_event".into()]).unwrap();
        let faults = [
            // Precursors from 100 s, voltage jump at 160 s, warned at 130 s: lead 30 s.
            fault(
                "pot-001",
                "anode_effect",
                100_000,
                Some(200_000),
                Some(160_000),
            ),
            // Never alarmed.
            fault(
                "pot-002",
                "anode_effect",
                1_000_000,
                Some(1_050_000),
                Some(1_040_000),
            ),
        ];
        let acts = [
            act("pot-001", "ae_warning", 130_000),
            act("pot-001", "ae_event", 161_000),
            // Wrong device for the second fault, and no fault near: false.
            act("pot-001", "ae_event", 1_020_000),
            // A rule nobody scores: ignored.
            act("pot-002", "bath_temp_high", 1_020_000),
        ];
        let r = run(&faults, &acts, &m);
        assert_eq!(r.kinds.len(), 1);
        let k = &r.kinds[0];
        assert_eq!(
            (
                k.faults,
                k.detected,
                k.missed,
                k.early_warnings,
                k.false_alarms
            ),
            (2, 1, 1, 1, 1)
        );
        assert_eq!(k.median_lead_s, Some(30.0));
        assert_eq!(r.faults[0].detected_by.as_deref(), Some("ae_warning"));
        assert_eq!(r.false_alarms, vec![act("pot-001", "ae_event", 1_020_000)]);
        // 1 false alarm over 2 devices x 1 h.
        assert_eq!(k.false_alarms_per_100_device_hours, Some(50.0));
        assert_eq!(r.false_alarms_total, 1);
    }

    #[test]
    fn margin_bounds_the_window_and_open_faults_run_to_the_end_of_the_replay() {
        let m = Matches::with_overrides(&[]).unwrap();
        let faults = [
            fault("pot-001", "frozen", 100_000, Some(200_000), None),
            fault("pot-002", "frozen", 3_000_000, None, None),
        ];
        // 9 s before the start: inside the 10 s margin; lead time is positive 9 s.
        let acts = [
            act("pot-001", "stale", 91_000),
            act("pot-002", "frozen", 3_500_000),
        ];
        let r = run(&faults, &acts, &m);
        let k = &r.kinds[0];
        assert_eq!((k.detected, k.missed, k.false_alarms), (2, 0, 0));
        assert_eq!(r.faults[0].lead_ms, Some(9_000));
        assert_eq!(r.faults[1].lead_ms, Some(-500_000));
        // 11 s before: outside the margin, so a miss and a false alarm.
        let r = run(&faults[..1], &[act("pot-001", "stale", 89_000)], &m);
        assert_eq!((r.kinds[0].detected, r.kinds[0].false_alarms), (0, 1));
    }

    #[test]
    fn plant_wide_fault_is_detected_on_any_device_and_unknown_kind_matches_rule_of_same_name() {
        let m = Matches::with_overrides(&[]).unwrap();
        let faults = [
            fault("*", "potline_outage", 0, Some(60_000), None),
            fault("pot-002", "hot_cell", 0, Some(60_000), None),
        ];
        let acts = [
            act("pot-002", "line_current_low", 5_000),
            act("pot-001", "line_current_low", 5_000),
            act("pot-002", "hot_cell", 30_000),
        ];
        let r = run(&faults, &acts, &m);
        let get = |k: &str| r.kinds.iter().find(|x| x.kind == k).unwrap();
        assert_eq!(get("potline_outage").detected, 1);
        assert_eq!(get("potline_outage").false_alarms, 0);
        assert_eq!(get("hot_cell").detected, 1);
        assert_eq!(get("potline_outage").median_lead_s, Some(-5.0));
    }

    #[test]
    fn truth_lines_merge_start_and_end_and_tolerate_junk() {
        let text = r#"
{"device":"pot-001","kind":"anode_effect","start_ms":1000,"onset_ms":1500,"phase":"start"}
{"device":"pot-001","kind":"anode_effect","start_ms":1000,"end_ms":2000,"phase":"end"}
{"device":"pot-002","kind":"frozen","start":"2025-11-28T16:05:53.123Z","phase":"start","extra":[1]}
{"device":"pot-002","kind":"frozen","end_ms":1764345999000,"phase":"end"}
{"device":"pot-003","kind":"frozen","start_ms":5000,"end_ms":null}
not json
{"device":"pot-003"}
"#;
        let (faults, problems) = parse_truth(text);
        assert_eq!(
            faults,
            vec![
                fault("pot-001", "anode_effect", 1000, Some(2000), Some(1500)),
                fault(
                    "pot-002",
                    "frozen",
                    1_764_345_953_123,
                    Some(1_764_345_999_000),
                    None
                ),
                fault("pot-003", "frozen", 5000, None, None),
            ]
        );
        assert_eq!(
            problems.iter().map(|p| p.line).collect::<Vec<_>>(),
            vec![7, 8]
        );
    }

    #[test]
    fn match_overrides_are_checked() {
        assert!(Matches::with_overrides(&["anode_effect".into()]).is_err());
        assert!(Matches::with_overrides(&["=x".into()]).is_err());
        let m =
            Matches::with_overrides(&["anode_effect=a".into(), "anode_effect=b".into()]).unwrap();
        assert_eq!(
            m.by_kind["anode_effect"],
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
    }
}
