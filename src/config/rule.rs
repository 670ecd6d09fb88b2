//! `[[rules]]`: which devices a rule applies to, which tag it watches, and how.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{f64_of, index, type_name, Problems, Source, TableReader};
use crate::core::duration::time_unit_ms;
use crate::core::model::Priority;
pub use crate::core::rule::{
    CurveSource, Direction, Fit, HoldOff, RuleKind, Scope, Suppression, Trend,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// Every device built from this template.
    Template(String),
    /// Device names or glob patterns (`*`, `?`).
    Devices(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub selector: Selector,
    pub tag: String,
    pub kind: RuleKind,
    pub priority: Priority,
    pub on_delay_ms: i64,
    pub off_delay_ms: i64,
    pub latching: bool,
    pub message: String,
    pub suppress_when: Option<Suppression>,
    /// Hold-offs, with the offset of each `when`.
    pub hold_off: Vec<(HoldOff, usize)>,
    pub scope: Scope,
    /// Where the rule was written: (source index, byte offset).
    pub origin: (usize, usize),
    /// Offsets of `tag`, of the selector (`template` or `devices`), of `message` and of
    /// `suppress_when` (the rule's offset where absent).
    pub tag_offset: usize,
    pub selector_offset: usize,
    pub message_offset: usize,
    pub suppress_offset: usize,
    pub path: String,
}

/// Keys specific to one rule type or another.
const KIND_KEYS: [&str; 27] = [
    "noise_k",
    "noise_block",
    "learn_noise",
    "warmup_limit",
    "fit",
    "step_tag",
    "step_min",
    "settle",
    "every",
    "baseline",
    "k",
    "limit",
    "deadband",
    "window",
    "per",
    "direction",
    "horizon",
    "max_age",
    "lambda",
    "warmup",
    "h",
    "curve",
    "time_tag",
    "time_unit",
    "setpoint_tag",
    "tolerance",
    "lag",
];

/// A unit key (`per`, `time_unit`) in milliseconds, or `default_ms` when absent.
fn unit_ms(
    r: &mut TableReader<'_, '_>,
    p: &mut Problems,
    key: &'static str,
    default_ms: i64,
) -> i64 {
    match r.opt_str(p, key) {
        None => default_ms,
        Some(u) => time_unit_ms(&u).unwrap_or_else(|| {
            r.problem(p, key, format!("unknown unit \"{u}\"; accepted: s, min, h"));
            default_ms
        }),
    }
}

fn direction(r: &mut TableReader<'_, '_>, p: &mut Problems) -> Direction {
    match r.opt_str(p, "direction").as_deref() {
        None | Some("above") => Direction::Above,
        Some("below") => Direction::Below,
        Some(other) => {
            r.problem(
                p,
                "direction",
                format!("unknown direction \"{other}\"; accepted: above, below"),
            );
            Direction::Above
        }
    }
}

fn req_f64(
    r: &mut TableReader<'_, '_>,
    p: &mut Problems,
    key: &'static str,
    what: &str,
) -> Option<f64> {
    if !r.has(key) {
        r.missing(p, key, what);
        return None;
    }
    r.opt_f64(p, key)
}

fn req_window(
    r: &mut TableReader<'_, '_>,
    p: &mut Problems,
    key: &'static str,
    what: &str,
) -> Option<i64> {
    if !r.has(key) {
        r.missing(p, key, what);
        return None;
    }
    let w = r.opt_duration_ms(p, key)?;
    if w <= 0 || w > 31 * 86_400_000 {
        r.problem(p, key, "must be between 1ms and 31d");
        return None;
    }
    Some(w)
}

fn deadband(r: &mut TableReader<'_, '_>, p: &mut Problems) -> f64 {
    let d = r.opt_f64(p, "deadband").unwrap_or(0.0);
    if d < 0.0 {
        r.problem(p, "deadband", "deadband must be 0 or positive");
    }
    d.max(0.0)
}

fn parse_kind(name: &str, r: &mut TableReader<'_, '_>, p: &mut Problems) -> Option<RuleKind> {
    Some(match name {
        "high" | "low" => {
            let limit = req_f64(r, p, "limit", "the alarm limit, in the tag's unit");
            let deadband = deadband(r, p);
            let limit = limit?;
            if name == "high" {
                RuleKind::High { limit, deadband }
            } else {
                RuleKind::Low { limit, deadband }
            }
        }
        "rate" | "slope" => {
            let window_ms = req_window(
                r,
                p,
                "window",
                "the span the change is measured over, e.g. \"10m\"",
            );
            let per_ms = unit_ms(r, p, "per", 1_000);
            let limit = req_f64(
                r,
                p,
                "limit",
                "the limit in the tag's unit per `per` (s, min or h)",
            );
            let deadband = deadband(r, p);
            let direction = direction(r, p);
            let (window_ms, limit) = (window_ms?, limit?);
            if name == "rate" {
                RuleKind::Rate {
                    window_ms,
                    per_ms,
                    limit,
                    deadband,
                    direction,
                }
            } else {
                RuleKind::Slope {
                    window_ms,
                    per_ms,
                    limit,
                    deadband,
                    direction,
                }
            }
        }
        "predict" => {
            let window_ms = req_window(r, p, "window", "the span of the trend fit, e.g. \"5m\"");
            let limit = req_f64(r, p, "limit", "the value whose crossing is predicted");
            let horizon = req_window(
                r,
                p,
                "horizon",
                "warn when the limit is expected within this time, e.g. \"10m\"",
            );
            RuleKind::Predict {
                window_ms: window_ms?,
                limit: limit?,
                horizon_ms: horizon?,
            }
        }
        "noise" => {
            let window_ms = req_window(
                r,
                p,
                "window",
                "the span the noise is measured over, e.g. \"2m\"",
            );
            let limit = req_f64(r, p, "limit", "the RMS limit in the tag's unit");
            let deadband = deadband(r, p);
            RuleKind::Noise {
                window_ms: window_ms?,
                limit: limit?,
                deadband,
            }
        }
        "average" => {
            let window_ms = req_window(r, p, "window", "the averaging time constant, e.g. \"7d\"");
            let limit = req_f64(
                r,
                p,
                "limit",
                "the limit for the average, in the tag's unit",
            );
            let deadband = deadband(r, p);
            let direction = direction(r, p);
            RuleKind::Average {
                window_ms: window_ms?,
                limit: limit?,
                deadband,
                direction,
            }
        }
        "frozen" => RuleKind::Frozen {
            window_ms: req_window(
                r,
                p,
                "window",
                "how long the signal must stay exactly constant, e.g. \"60s\"",
            )?,
        },
        "stale" => RuleKind::Stale {
            max_age_ms: req_window(
                r,
                p,
                "max_age",
                "how long without a good sample, e.g. \"30s\"",
            )?,
        },
        "deviation" | "cusum" => {
            let lambda = r.opt_f64(p, "lambda").unwrap_or(0.01);
            // A refused setting refuses the kind: the spec would refuse it a second time.
            let mut valid = true;
            if !(lambda > 0.0 && lambda <= 1.0) {
                r.problem(
                    p,
                    "lambda",
                    "EWMA smoothing must be in (0, 1]; small values make a slow baseline",
                );
                valid = false;
            }
            let warmup = r.opt_int_in(p, "warmup", 2, 10_000_000).unwrap_or(60) as u32;
            if name == "deviation" {
                let limit = req_f64(
                    r,
                    p,
                    "limit",
                    "the distance from the baseline in standard deviations, e.g. 4",
                );
                let limit = limit?;
                if !valid {
                    return None;
                }
                RuleKind::Deviation {
                    lambda,
                    limit,
                    warmup,
                }
            } else {
                let k = r.opt_f64(p, "k").unwrap_or(0.5);
                let h = r.opt_f64(p, "h").unwrap_or(5.0);
                if k < 0.0 {
                    r.problem(
                        p,
                        "k",
                        "the CUSUM slack must be 0 or positive (in standard deviations)",
                    );
                    valid = false;
                }
                if h <= 0.0 {
                    r.problem(
                        p,
                        "h",
                        "the CUSUM threshold must be positive (in standard deviations)",
                    );
                    valid = false;
                }
                if !valid {
                    return None;
                }
                RuleKind::Cusum {
                    lambda,
                    k,
                    h,
                    warmup,
                }
            }
        }
        "trend" => {
            let window_ms = req_window(r, p, "window", "the span of the fit, e.g. \"10m\"");
            let per_ms = unit_ms(r, p, "per", 60_000);
            let limit = req_f64(
                r,
                p,
                "limit",
                "the slope floor in the tag's unit per `per`: never active below it",
            );
            let deadband = deadband(r, p);
            let fit = match r.opt_str(p, "fit").as_deref() {
                None | Some("linear") => Some(Fit::Linear),
                Some("quadratic") => Some(Fit::Quadratic),
                Some(other) => {
                    r.problem(p, "fit", format!("unknown fit \"{other}\"; accepted: linear (mean slope over the window), quadratic (slope at the newest sample)"));
                    None
                }
            };
            let step_tag = r.opt_str(p, "step_tag");
            let step_min = r.opt_f64(p, "step_min").unwrap_or(0.0);
            let mut valid = fit.is_some();
            if !(step_min >= 0.0 && step_min.is_finite()) {
                r.problem(
                    p,
                    "step_min",
                    "must be 0 or a positive change of `step_tag`",
                );
                valid = false;
            }
            let settle_ms = r.opt_duration_ms(p, "settle").unwrap_or(0);
            let every_ms = r.opt_duration_ms(p, "every").unwrap_or(10_000);
            if every_ms <= 0 {
                r.problem(p, "every", "must be a positive duration, e.g. \"10s\"");
                valid = false;
            }
            let baseline_ms = if r.has("baseline") {
                let b = req_window(
                    r,
                    p,
                    "baseline",
                    "the time constant of the device's own slope baseline, e.g. \"4h\"",
                );
                valid &= b.is_some();
                b
            } else {
                None
            };
            let k = r.opt_f64(p, "k").unwrap_or(4.0);
            if !(k > 0.0 && k.is_finite()) {
                r.problem(
                    p,
                    "k",
                    "must be a positive number of robust spreads, e.g. 4",
                );
                valid = false;
            }
            let noise_k = r.opt_f64(p, "noise_k");
            if noise_k.is_some_and(|n| !(n > 0.0 && n.is_finite())) {
                r.problem(
                    p,
                    "noise_k",
                    "must be a positive number of standard errors, e.g. 3",
                );
                valid = false;
            }
            let noise_block_ms = r.opt_duration_ms(p, "noise_block");
            if noise_block_ms.is_some() && noise_k.is_none() {
                r.problem(
                    p,
                    "noise_block",
                    "only means something with `noise_k` (the error it widens is noise_k's)",
                );
                valid = false;
            }
            let learn_noise = r.opt_bool(p, "learn_noise").unwrap_or(false);
            if learn_noise && (noise_k.is_none() || !r.has("baseline")) {
                r.problem(
                    p,
                    "learn_noise",
                    "only means something with `noise_k` (the error it raises) and `baseline` (it learns as the baseline does)",
                );
                valid = false;
            }
            let warmup_ms = r.opt_duration_ms(p, "warmup");
            let warmup_limit = r.opt_f64(p, "warmup_limit");
            if (warmup_ms.is_some() || warmup_limit.is_some()) && baseline_ms.is_none() {
                let key = if warmup_ms.is_some() {
                    "warmup"
                } else {
                    "warmup_limit"
                };
                r.problem(
                    p,
                    key,
                    "only means something with `baseline` (it is the baseline's warm-up)",
                );
                valid = false;
            }
            if warmup_limit.is_some_and(|w| !w.is_finite()) {
                r.problem(
                    p,
                    "warmup_limit",
                    "must be a number: the floor while the baseline warms up",
                );
                valid = false;
            }
            let (window_ms, limit) = (window_ms?, limit?);
            if noise_block_ms.is_some_and(|b| b <= 0 || b > window_ms / 4) {
                r.problem(
                    p,
                    "noise_block",
                    "must be positive and at most a quarter of `window`, e.g. \"30s\"",
                );
                valid = false;
            }
            if settle_ms < 0 || settle_ms >= window_ms {
                r.problem(p, "settle", "must be 0 or shorter than `window`");
                valid = false;
            }
            if !valid {
                return None;
            }
            RuleKind::Trend(Trend {
                window_ms,
                per_ms,
                limit,
                deadband,
                fit: fit?,
                step_tag,
                step_min,
                settle_ms,
                every_ms,
                baseline_ms,
                k,
                noise_k,
                noise_block_ms,
                learn_noise,
                warmup_ms,
                warmup_limit,
            })
        }
        "curve" => {
            let tolerance = req_f64(
                r,
                p,
                "tolerance",
                "the allowed distance from the curve, in the tag's unit",
            );
            let lag_ms = r.opt_duration_ms(p, "lag").unwrap_or(0);
            let setpoint_tag = r.opt_str(p, "setpoint_tag");
            let points = parse_points(r, p);
            let time_tag = r.opt_str(p, "time_tag");
            let time_unit_ms = unit_ms(r, p, "time_unit", 3_600_000);
            let source = match (setpoint_tag, points) {
                (Some(t), None) => CurveSource::Tag(t),
                (None, Some(points)) => CurveSource::Points {
                    points,
                    time_tag,
                    time_unit_ms,
                },
                (Some(_), Some(_)) => {
                    r.problem(
                        p,
                        "setpoint_tag",
                        "give either `curve` points or `setpoint_tag`, not both",
                    );
                    return None;
                }
                (None, None) => {
                    r.missing(p, "curve", "curve = [[0, 120], [40, 620], ...] (time, setpoint) or setpoint_tag = \"curve_temp\"");
                    return None;
                }
            };
            RuleKind::Curve {
                source,
                tolerance: tolerance?,
                lag_ms,
            }
        }
        other => {
            r.problem(
                p,
                "type",
                format!(
                    "unknown rule type \"{other}\"; accepted: {}",
                    RuleKind::NAMES
                ),
            );
            return None;
        }
    })
}

fn parse_points(r: &mut TableReader<'_, '_>, p: &mut Problems) -> Option<Vec<(f64, f64)>> {
    let v = r.get("curve")?;
    let path = r.key_path("curve");
    let DeValue::Array(items) = v.get_ref() else {
        r.problem(
            p,
            "curve",
            format!(
                "expected an array of [time, setpoint] pairs, found {}",
                type_name(v.get_ref())
            ),
        );
        return None;
    };
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let pair = match item.get_ref() {
            DeValue::Array(a) if a.len() == 2 => {
                match (f64_of(a[0].get_ref()), f64_of(a[1].get_ref())) {
                    (Some(t), Some(v)) if t.is_finite() && v.is_finite() => Some((t, v)),
                    _ => None,
                }
            }
            _ => None,
        };
        match pair {
            Some((t, v)) => {
                if out.last().is_some_and(|(pt, _)| *pt >= t) {
                    p.add(
                        r.at.src,
                        item.span().start,
                        &index(&path, i),
                        "curve times must increase",
                    );
                    return None;
                }
                out.push((t, v));
            }
            None => {
                p.add(
                    r.at.src,
                    item.span().start,
                    &index(&path, i),
                    "expected a [time, setpoint] pair of numbers",
                );
                return None;
            }
        }
    }
    if out.len() < 2 {
        r.problem(p, "curve", "a curve needs at least two points");
        return None;
    }
    Some(out)
}

pub fn parse_rule(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    src_idx: usize,
    path: String,
    p: &mut Problems,
) -> Option<Rule> {
    let mut r = TableReader::of(v, src, path.clone(), p)?;
    let name = r.req_str(
        p,
        "name",
        "a rule name, used in topics (e.g. \"anode_effect\")",
    );
    if let Some(n) = &name {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            r.problem(p, "name", "a rule name may contain only letters, digits, '_' and '-' (it becomes part of an MQTT topic)");
        }
    }
    let template = r.opt_str(p, "template");
    let devices = r.opt_str_list(p, "devices");
    let selector = match (template, devices) {
        (Some(t), None) => Some(Selector::Template(t)),
        (None, Some(d)) => Some(Selector::Devices(d)),
        (Some(_), Some(_)) => {
            r.problem(
                p,
                "devices",
                "give either `template` or `devices`, not both",
            );
            None
        }
        (None, None) => {
            r.missing(p, "template", "a rule selects its devices with `template = \"cell\"` or `devices = [\"kiln-1\", \"pot-0*\"]`");
            None
        }
    };
    let tag = r.req_str(p, "tag", "the tag this rule watches");
    let kind_name = r.req_str(p, "type", &format!("one of {}", RuleKind::NAMES));
    let kind = kind_name.as_deref().and_then(|k| parse_kind(k, &mut r, p));
    if kind.is_none() {
        // Keys of a type we could not read are not "unknown" too.
        for k in KIND_KEYS {
            r.get(k);
        }
    }
    let priority = match r.opt_str(p, "priority") {
        Some(s) => match Priority::parse(&s) {
            Some(pr) => Some(pr),
            None => {
                r.problem(
                    p,
                    "priority",
                    format!("unknown priority \"{s}\"; accepted: critical, high, medium, low"),
                );
                None
            }
        },
        None => Some(Priority::Medium),
    };
    let on_delay_ms = r.opt_duration_ms(p, "on_delay").unwrap_or(0);
    let off_delay_ms = r.opt_duration_ms(p, "off_delay").unwrap_or(0);
    let latching = r.opt_bool(p, "latching").unwrap_or(false);
    let message = r.opt_str(p, "message");
    // An expression is compiled with the rest of the spec (config::compile), once.
    let suppress_when = r
        .opt_str(p, "suppress_when")
        .and_then(|s| match Suppression::parse(&s) {
            Ok(x) => Some(x),
            Err(e) => {
                r.problem(p, "suppress_when", e);
                None
            }
        });
    let hold_off = parse_hold_off(&mut r, p);
    let scope = match r.opt_str(p, "scope").as_deref() {
        None | Some("device") => Scope::Device,
        Some("area") => Scope::Area { quorum: 0.5 },
        Some(other) => {
            r.problem(p, "scope", format!("unknown scope \"{other}\"; accepted: device (one alarm per device), area (one alarm for the area)"));
            Scope::Device
        }
    };
    let scope = match (scope, r.opt_f64(p, "quorum")) {
        (Scope::Area { .. }, Some(q)) if q > 0.0 && q <= 1.0 => Scope::Area { quorum: q },
        (_, Some(_)) if !matches!(scope, Scope::Area { .. }) => {
            r.problem(p, "quorum", "`quorum` applies only with scope = \"area\"");
            scope
        }
        (_, Some(_)) => {
            r.problem(
                p,
                "quorum",
                "the share of devices must be in (0, 1], e.g. 0.5",
            );
            scope
        }
        (s, None) => s,
    };
    let tag_offset = r.value_offset("tag");
    let selector_offset = if r.has("devices") {
        r.value_offset("devices")
    } else {
        r.value_offset("template")
    };
    let message_offset = r.value_offset("message");
    let suppress_offset = r.value_offset("suppress_when");
    r.finish(p);
    let kind = kind?;
    let message = message.unwrap_or_else(|| kind.default_message().to_string());
    Some(Rule {
        name: name?,
        selector: selector?,
        tag: tag?,
        kind,
        priority: priority?,
        on_delay_ms,
        off_delay_ms,
        latching,
        message,
        suppress_when,
        hold_off,
        scope,
        origin: (src_idx, v.span().start),
        tag_offset,
        selector_offset,
        message_offset,
        suppress_offset,
        path,
    })
}

/// `hold_off = [{ when = "tapping", for = "30m" }, ...]`: each entry its own expression, so a
/// tag missing from the data (no samples) disables only its own entry.
fn parse_hold_off(r: &mut TableReader<'_, '_>, p: &mut Problems) -> Vec<(HoldOff, usize)> {
    let Some(v) = r.get("hold_off") else {
        return Vec::new();
    };
    let path = r.key_path("hold_off");
    let DeValue::Array(items) = v.get_ref() else {
        r.problem(
            p,
            "hold_off",
            format!(
                "expected an array of {{ when = \"EXPRESSION\", for = \"DURATION\" }}, found {}",
                type_name(v.get_ref())
            ),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Some(mut e) = TableReader::of(item, r.at.src, index(&path, i), p) else {
            continue;
        };
        let when = e.req_str(
            p,
            "when",
            "an expression over the device's tags, true to hold the rule off, e.g. \"tapping\"",
        );
        let when_offset = e.value_offset("when");
        let for_ms = if e.has("for") {
            e.opt_duration_ms(p, "for")
        } else {
            e.missing(
                p,
                "for",
                "how long the hold lasts after the condition ends, e.g. \"30m\" (\"0s\" for none)",
            );
            None
        };
        if for_ms.is_some_and(|f| !(0..=86_400_000).contains(&f)) {
            e.problem(p, "for", "must be between 0s and 24h");
            e.finish(p);
            continue;
        }
        e.finish(p);
        if let (Some(when), Some(for_ms)) = (when, for_ms) {
            out.push((HoldOff { when, for_ms }, when_offset));
        }
    }
    out
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("pot-0*", "pot-017"));
        assert!(glob_match("kiln-1", "kiln-1"));
        assert!(!glob_match("kiln-1", "kiln-10"));
        assert!(glob_match("pot-?1?", "pot-013"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("pot-1*", "pot-017"));
    }

    #[test]
    fn learn_noise_needs_noise_k_and_a_baseline() {
        let file = |keys: &str| {
            format!(
                r#"
[agent]
id = "gw"
site = "s"
area = "potline-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[devices]]
name = "pot-001"
endpoint = "tcp://127.0.0.1:5020"
tags = [ {{ name = "resistance", table = "input", address = 0, type = "f32", unit = "uOhm" }} ]
[[rules]]
name = "ae_warning"
devices = ["pot-001"]
tag = "resistance"
type = "trend"
window = "6m"
limit = 0.005
learn_noise = true
{keys}
"#
            )
        };
        let load = |keys: &str| {
            crate::config::Config::from_str(std::path::Path::new("t.toml"), &file(keys))
        };
        let ok = load("noise_k = 3.5\nbaseline = \"4h\"");
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.problems));
        for keys in ["noise_k = 3.5", "baseline = \"4h\""] {
            let problems = load(keys).unwrap_err().problems;
            assert_eq!(problems.len(), 1, "{keys}: {problems:?}");
            assert_eq!(problems[0].path, "rules[0].learn_noise");
        }
    }
}
