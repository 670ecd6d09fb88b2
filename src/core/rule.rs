//! The rule vocabulary: what a rule watches for (its kind and settings), whether it has one
//! alarm per device or one for the area, and what suppresses it by design. `config` reads these
//! from the file; [`super::spec`] resolves them against the devices; [`super::eval`] runs them.

/// Name used as the device of alarms that belong to the whole area.
pub const AREA_DEVICE: &str = "_area";
/// The built-in communication-loss alarm of every device.
pub const COMM_LOSS_RULE: &str = "comm_loss";
/// The built-in alarm-flood alarm of the area.
pub const FLOOD_RULE: &str = "alarm_flood";
/// Rules every configuration has without writing them (a `suppress_when` may name them).
pub const BUILTIN_RULES: [&str; 2] = [COMM_LOSS_RULE, FLOOD_RULE];

/// Which side of the limit is abnormal for rules that compare a statistic with a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Above,
    Below,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CurveSource {
    /// Setpoint from a piecewise-linear curve over elapsed time (`curve` points), the elapsed
    /// time read from `time_tag` (in `time_unit_ms` units) or counted from the first sample.
    Points {
        points: Vec<(f64, f64)>,
        time_tag: Option<String>,
        time_unit_ms: i64,
    },
    /// Setpoint served by the device itself in another tag.
    Tag(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Active while value > limit; clears at value < limit - deadband.
    High { limit: f64, deadband: f64 },
    /// Active while value < limit; clears at value > limit + deadband.
    Low { limit: f64, deadband: f64 },
    /// Change between the oldest and newest sample of the window, per `per_ms`.
    Rate {
        window_ms: i64,
        per_ms: i64,
        limit: f64,
        deadband: f64,
        direction: Direction,
    },
    /// Least-squares slope over the window, per `per_ms`.
    Slope {
        window_ms: i64,
        per_ms: i64,
        limit: f64,
        deadband: f64,
        direction: Direction,
    },
    /// Active when the least-squares trend reaches `limit` within `horizon_ms`.
    Predict {
        window_ms: i64,
        limit: f64,
        horizon_ms: i64,
    },
    /// RMS of the detrended signal over the window.
    Noise {
        window_ms: i64,
        limit: f64,
        deadband: f64,
    },
    /// A live signal that stopped moving: zero spread over the window.
    Frozen { window_ms: i64 },
    /// No good sample for `max_age_ms`.
    Stale { max_age_ms: i64 },
    /// Distance from a slow EWMA baseline, in standard deviations.
    Deviation {
        lambda: f64,
        limit: f64,
        warmup: u32,
    },
    /// Two-sided CUSUM drift detection on the EWMA-standardised signal.
    Cusum {
        lambda: f64,
        k: f64,
        h: f64,
        warmup: u32,
    },
    /// Deviation from a setpoint curve with a tolerance band and an allowed lag.
    Curve {
        source: CurveSource,
        tolerance: f64,
        lag_ms: i64,
    },
    /// Exponentially weighted moving average with time constant `window_ms` (O(1) memory, so
    /// a 7-day KPI window costs nothing), compared with a limit.
    Average {
        window_ms: i64,
        limit: f64,
        deadband: f64,
        direction: Direction,
    },
    /// Context-aware slope (see [`Trend`]): steps of `step_tag` are removed from the fit, the
    /// slope can be taken at the newest sample, and the limit can follow the device's own
    /// baseline.
    Trend(Trend),
}

/// How a `trend` rule fits its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Least-squares line: the mean slope over the window (it lags by half the window).
    Linear,
    /// Least-squares parabola, slope taken at the newest sample: no half-window lag on an
    /// accelerating rise, at the price of a noisier estimate.
    Quadratic,
}

/// Settings of a `trend` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    pub window_ms: i64,
    pub per_ms: i64,
    /// Absolute floor: the slope must exceed it whatever the baseline says.
    pub limit: f64,
    pub deadband: f64,
    pub fit: Fit,
    /// A tag whose change starts a new segment (the anode-beam position): the fit gives each
    /// segment its own level and pools the slopes within segments, so a step made by a move is
    /// not read as a trend, and the samples before the move still count.
    pub step_tag: Option<String>,
    /// Changes of `step_tag` up to this size are not a move (register noise).
    pub step_min: f64,
    /// Samples after a move left out of the fit while the signal settles.
    pub settle_ms: i64,
    /// Refit every so often (a controller recomputes its slope every 1-5 min).
    pub every_ms: i64,
    /// Time constant of the device's own slope baseline; `None`: the fixed `limit` only.
    pub baseline_ms: Option<i64>,
    /// With a baseline: active above baseline + `k` robust spreads (and above `limit`).
    pub k: f64,
    /// When set, the slope must also exceed this many standard errors of the fit: a burst of
    /// noise widens the error and does not pass for a trend.
    pub noise_k: Option<f64>,
    /// With `noise_k`: the residuals are also averaged in blocks of this length and the
    /// slope's error is taken from the spread of the block means when that is larger (batch
    /// means). Slow noise (a metal-pad swing, minutes long) is correlated from sample to
    /// sample: the per-sample spread underrates it, and a short stretch of it passes for a
    /// trend, most of all when a beam move has cut the window into short segments.
    pub noise_block_ms: Option<i64>,
    /// With `noise_k` and `baseline`: the error is computed with at least this device's
    /// learned noise level (fits over one whole segment, learned as the baseline). A short
    /// segment between beam moves cannot measure its own noise.
    pub learn_noise: bool,
    /// How long the baseline must have learned (time of fits it learned from, not time since
    /// start) before the relative limit is trusted; `None`: an eighth of `baseline`.
    pub warmup_ms: Option<i64>,
    /// The floor while the baseline warms up; `None`: no warning at all until it is warm.
    pub warmup_limit: Option<f64>,
}

impl Trend {
    /// How long the baseline learns before the relative limit is trusted.
    pub fn warmup_len(&self) -> i64 {
        match (self.baseline_ms, self.warmup_ms) {
            (None, _) => 0,
            (Some(_), Some(w)) => w,
            (Some(b), None) => b / 8,
        }
    }
}

/// Holds a rule off while an expression over the device's tags is true (non-zero) and for
/// `for_ms` after: its alarm reads normal and its baseline does not learn from the disturbance.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldOff {
    pub when: String,
    pub for_ms: i64,
}

impl RuleKind {
    pub const NAMES: &'static str =
        "high, low, rate, slope, predict, noise, frozen, stale, deviation, cusum, curve, average, trend";

    pub fn type_name(&self) -> &'static str {
        match self {
            RuleKind::High { .. } => "high",
            RuleKind::Low { .. } => "low",
            RuleKind::Rate { .. } => "rate",
            RuleKind::Slope { .. } => "slope",
            RuleKind::Predict { .. } => "predict",
            RuleKind::Noise { .. } => "noise",
            RuleKind::Frozen { .. } => "frozen",
            RuleKind::Stale { .. } => "stale",
            RuleKind::Deviation { .. } => "deviation",
            RuleKind::Cusum { .. } => "cusum",
            RuleKind::Curve { .. } => "curve",
            RuleKind::Average { .. } => "average",
            RuleKind::Trend(_) => "trend",
        }
    }

    /// The span of samples the rule needs kept.
    pub fn window_ms(&self) -> i64 {
        match self {
            RuleKind::Rate { window_ms, .. }
            | RuleKind::Slope { window_ms, .. }
            | RuleKind::Predict { window_ms, .. }
            | RuleKind::Noise { window_ms, .. } => *window_ms,
            // A trend rule keeps its own samples (with their segment).
            _ => 0,
        }
    }

    /// The limit shown in messages and payloads, where the rule has one.
    pub fn limit_hint(&self) -> Option<f64> {
        match self {
            RuleKind::High { limit, .. }
            | RuleKind::Low { limit, .. }
            | RuleKind::Rate { limit, .. }
            | RuleKind::Slope { limit, .. }
            | RuleKind::Predict { limit, .. }
            | RuleKind::Noise { limit, .. }
            | RuleKind::Deviation { limit, .. }
            | RuleKind::Average { limit, .. } => Some(*limit),
            RuleKind::Trend(t) => Some(t.limit),
            RuleKind::Curve { tolerance, .. } => Some(*tolerance),
            _ => None,
        }
    }

    /// Other tags of the device the rule reads.
    pub fn extra_tags(&self) -> Vec<&str> {
        match self {
            RuleKind::Curve {
                source: CurveSource::Tag(t),
                ..
            } => vec![t.as_str()],
            RuleKind::Curve {
                source:
                    CurveSource::Points {
                        time_tag: Some(t), ..
                    },
                ..
            } => vec![t.as_str()],
            RuleKind::Trend(Trend {
                step_tag: Some(t), ..
            }) => vec![t.as_str()],
            _ => Vec::new(),
        }
    }

    /// The operator message of a rule that does not write its own.
    pub fn default_message(&self) -> &'static str {
        match self {
            RuleKind::High { .. } => "{rule} on {device}: {tag} {value} {unit} above {limit}",
            RuleKind::Low { .. } => "{rule} on {device}: {tag} {value} {unit} below {limit}",
            RuleKind::Predict { .. } => {
                "{rule} on {device}: {tag} expected to reach {limit} {unit} in {eta}"
            }
            RuleKind::Stale { .. } => "{rule} on {device}: no good {tag} sample",
            RuleKind::Frozen { .. } => "{rule} on {device}: {tag} frozen at {value} {unit}",
            _ => "{rule} on {device}: {tag} {value} (limit {limit})",
        }
    }
}

/// What suppresses a rule by design.
#[derive(Debug, Clone, PartialEq)]
pub enum Suppression {
    /// Any active alarm of this rule (on any device of the area, or on `device`).
    Alarm {
        rule: String,
        device: Option<String>,
    },
    /// An expression over the device's tags, true (non-zero) to suppress; compiled by the spec.
    Expr(String),
}

impl Suppression {
    /// Reads `"alarm:RULE"`, `"alarm:DEVICE/RULE"` or an expression (checked when compiled).
    pub fn parse(s: &str) -> Result<Suppression, String> {
        let Some(rest) = s.strip_prefix("alarm:") else {
            return Ok(Suppression::Expr(s.to_string()));
        };
        let rest = rest.trim();
        if rest.is_empty() {
            return Err("\"alarm:\" needs a rule name, e.g. \"alarm:line_current_loss\" or \"alarm:rectifier/line_current_loss\"".into());
        }
        Ok(match rest.split_once('/') {
            Some((d, r)) => Suppression::Alarm {
                rule: r.to_string(),
                device: Some(d.to_string()),
            },
            None => Suppression::Alarm {
                rule: rest.to_string(),
                device: None,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// One alarm per device (the default).
    Device,
    /// One alarm for the whole area, active when at least `quorum` of the devices are.
    Area { quorum: f64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressions() {
        assert_eq!(
            Suppression::parse("alarm:line_loss"),
            Ok(Suppression::Alarm {
                rule: "line_loss".into(),
                device: None
            })
        );
        assert_eq!(
            Suppression::parse("alarm:rect/line_loss"),
            Ok(Suppression::Alarm {
                rule: "line_loss".into(),
                device: Some("rect".into())
            })
        );
        assert_eq!(
            Suppression::parse("current < 100"),
            Ok(Suppression::Expr("current < 100".into()))
        );
        assert!(Suppression::parse("alarm:").is_err());
    }
}
