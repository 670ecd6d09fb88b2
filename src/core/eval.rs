//! Rule evaluators: one per (device, rule), each turning samples of its tag into a
//! [`Condition`]. Window statistics are incremental: a [`SpanCursor`] feeds each rule's
//! accumulator with the samples that enter and leave its span, O(1) amortised per sample.

use std::collections::VecDeque;

use super::alarm::Condition;
use super::model::Ts;
use super::rule::{CurveSource, Direction, Fit, RuleKind, Trend};
use super::stats::{Cusum, Ewma, Regression};
use super::window::{Accumulate, Point, SpanCursor, Window};

/// Compares a statistic with a limit; the deadband delays only the return to normal.
#[derive(Debug, Clone, Copy)]
pub struct Threshold {
    pub direction: Direction,
    pub limit: f64,
    pub deadband: f64,
    pub active: bool,
}

impl Threshold {
    pub fn new(direction: Direction, limit: f64, deadband: f64) -> Threshold {
        Threshold {
            direction,
            limit,
            deadband,
            active: false,
        }
    }

    pub fn step(&mut self, m: f64) -> Condition {
        self.active = match (self.direction, self.active) {
            (Direction::Above, false) => m > self.limit,
            (Direction::Above, true) => m >= self.limit - self.deadband,
            (Direction::Below, false) => m < self.limit,
            (Direction::Below, true) => m <= self.limit + self.deadband,
        };
        if self.active {
            Condition::Active
        } else {
            Condition::Clear
        }
    }
}

struct RegAcc<'a>(&'a mut Regression);
impl Accumulate for RegAcc<'_> {
    fn add(&mut self, p: Point) {
        self.0.add(p.ts, p.v);
    }
    fn remove(&mut self, p: Point) {
        self.0.remove(p.ts, p.v);
    }
}

struct Nothing;
impl Accumulate for Nothing {
    fn add(&mut self, _: Point) {}
    fn remove(&mut self, _: Point) {}
}

/// Values of the other tags of the device, by slot, for curve rules.
pub trait Lookup {
    fn value(&self, slot: u32) -> Option<f64>;
}

#[derive(Debug, Clone)]
pub enum Eval {
    Threshold(Threshold),
    Rate {
        cursor: SpanCursor,
        per_ms: i64,
        th: Threshold,
    },
    Slope {
        cursor: SpanCursor,
        reg: Regression,
        per_ms: i64,
        th: Threshold,
    },
    Predict {
        cursor: SpanCursor,
        reg: Regression,
        limit: f64,
        horizon_ms: i64,
        eta_ms: Option<i64>,
        active: bool,
    },
    Noise {
        cursor: SpanCursor,
        reg: Regression,
        th: Threshold,
    },
    /// Frozen needs no window: only when the value last changed (O(1) memory).
    Frozen {
        window_ms: i64,
        last: Option<f64>,
        since: Ts,
        changed_once: bool,
    },
    Stale {
        max_age_ms: i64,
        last_good: Option<Ts>,
    },
    Deviation {
        ewma: Ewma,
        warmup: u32,
        th: Threshold,
    },
    Cusum {
        ewma: Ewma,
        cusum: Cusum,
        warmup: u32,
    },
    Curve {
        curve: CurveEval,
        th: Threshold,
    },
    Average {
        tau_ms: i64,
        mean: Option<f64>,
        first_ts: Ts,
        last_ts: Ts,
        count: u32,
        th: Threshold,
    },
    Trend(Box<TrendEval>),
}

/// A `trend` rule's state: its own samples with the segment each belongs to (the window ring
/// does not know about steps), the last fit and the device's slope baseline.
#[derive(Debug, Clone)]
pub struct TrendEval {
    cfg: Trend,
    step_slot: Option<u32>,
    /// (ts, value, segment), oldest first.
    points: VecDeque<(Ts, f64, u32)>,
    segment: u32,
    last_step: Option<f64>,
    settle_until: Ts,
    first_ts: Option<Ts>,
    next_fit: Ts,
    /// The last fitted slope, per `per_ms`.
    slope: Option<f64>,
    /// Its standard error, per `per_ms`.
    slope_se: Option<f64>,
    /// EWMA of the slope and of its absolute deviation, learned outside alarms and holds.
    baseline: Option<(f64, f64)>,
    /// Decayed sum of the baseline's weights (ms): early on, every fit weighs the same.
    baseline_weight: f64,
    /// Time the baseline has learned (ms), for the warm-up: holds and alarms do not count.
    baseline_seen: Ts,
    baseline_at: Ts,
    /// With `learn_noise`: EWMA of the per-sample residual variance of fits over one whole
    /// segment, and how many fits it has learned from (early on, every fit weighs the same).
    noise_level: Option<f64>,
    noise_fits: u32,
    held: bool,
    last: Condition,
    th: Threshold,
}

/// How long before a step of `step_tag` the signal may already have moved.
const STEP_SKEW_MS: Ts = 5_000;

/// Robust spread from a mean absolute deviation: sigma = 1.2533 MAD for a normal variable.
const MAD_TO_SIGMA: f64 = 1.2533;

impl TrendEval {
    fn new(cfg: &Trend) -> TrendEval {
        TrendEval {
            cfg: cfg.clone(),
            step_slot: None,
            points: VecDeque::new(),
            segment: 0,
            last_step: None,
            settle_until: Ts::MIN,
            first_ts: None,
            next_fit: Ts::MIN,
            slope: None,
            slope_se: None,
            baseline: None,
            baseline_weight: 0.0,
            baseline_seen: 0,
            baseline_at: 0,
            noise_level: None,
            noise_fits: 0,
            held: false,
            last: Condition::Unknown,
            th: Threshold::new(Direction::Above, cfg.limit, cfg.deadband),
        }
    }

    fn restart(&mut self) {
        self.points.clear();
        self.first_ts = None;
        self.next_fit = Ts::MIN;
        self.slope = None;
        self.last = Condition::Unknown;
        self.th.active = false;
    }

    fn on_good(&mut self, p: Point, others: &dyn Lookup) -> Condition {
        if let Some(b) = self.step_slot.and_then(|s| others.value(s)) {
            if self
                .last_step
                .is_some_and(|l| (b - l).abs() > self.cfg.step_min)
            {
                self.segment = self.segment.wrapping_add(1);
                self.settle_until = p.ts + self.cfg.settle_ms;
                // The last fit saw the step as a rise: refit now.
                self.next_fit = Ts::MIN;
                // The step tag may be read a little after the signal moved (another register,
                // another poll): the last seconds before the move are left out too.
                while self
                    .points
                    .back()
                    .is_some_and(|b| b.0 > p.ts - STEP_SKEW_MS)
                {
                    self.points.pop_back();
                }
            }
            self.last_step = Some(b);
        }
        let first = *self.first_ts.get_or_insert(p.ts);
        if p.ts >= self.settle_until {
            self.points.push_back((p.ts, p.v, self.segment));
        }
        while self
            .points
            .front()
            .is_some_and(|f| f.0 <= p.ts - self.cfg.window_ms)
        {
            self.points.pop_front();
        }
        if p.ts < self.next_fit {
            return self.last;
        }
        self.next_fit = p.ts + self.cfg.every_ms;
        // Half a window of history before the first judgement, as the other window rules.
        let fit = if p.ts - first >= self.cfg.window_ms / 2 {
            pooled_slope(&self.points, p.ts, self.cfg.fit, self.cfg.noise_block_ms)
        } else {
            None
        };
        let per = self.cfg.per_ms as f64;
        // A short segment cannot measure its own noise (its slope absorbs part of a slow
        // swing and its residuals look quiet); the cell's noise did not change because the
        // beam moved: the error uses at least the level learned over whole windows.
        let learned = self
            .noise_level
            .filter(|_| self.cfg.learn_noise && self.baseline_seen >= self.cfg.warmup_len());
        self.slope = fit.map(|f| f.slope * per);
        self.slope_se = fit.map(|f| f.se_with(learned) * per);
        self.last = self.judge(p.ts);
        if let Some(f) = fit {
            self.learn_noise(&f);
        }
        self.last
    }

    /// Learns the cell's noise level from a fit over one segment that spans (nearly) the
    /// whole window, outside alarms and holds, as the slope baseline learns.
    fn learn_noise(&mut self, f: &SlopeFit) {
        let whole = f.segments == 1 && f.span_ms * 10 >= self.cfg.window_ms * 9;
        if !self.cfg.learn_noise || self.held || self.last == Condition::Active || !whole {
            return;
        }
        let Some(tau) = self.cfg.baseline_ms else {
            return;
        };
        let a = (self.cfg.every_ms as f64 / tau.max(1) as f64)
            .max(1.0 / (1.0 + f64::from(self.noise_fits)))
            .min(1.0);
        let level = self.noise_level.unwrap_or(f.var);
        self.noise_level = Some(level + a * (f.var - level));
        self.noise_fits = self.noise_fits.saturating_add(1);
    }

    fn judge(&mut self, now: Ts) -> Condition {
        let Some(s) = self.slope else {
            return Condition::Unknown;
        };
        // Not significant against the fit's own noise: read as no rise at all.
        let significant = match (self.cfg.noise_k, self.slope_se) {
            (Some(nk), Some(se)) => s > nk * se,
            _ => true,
        };
        let Some(tau) = self.cfg.baseline_ms else {
            return self
                .th
                .step(if significant { s } else { f64::NEG_INFINITY });
        };
        let warm = self.baseline_seen >= self.cfg.warmup_len();
        self.th.limit = match (self.baseline, self.cfg.warmup_limit) {
            (Some((mean, mad)), _) if warm => {
                self.cfg.limit.max(mean + self.cfg.k * MAD_TO_SIGMA * mad)
            }
            // Warming up: no baseline to trust yet. With `warmup_limit`, a precursor already
            // under way is still warned; what rises above it is not learned as normal.
            (_, Some(w)) => w.max(self.cfg.limit),
            (_, None) => f64::INFINITY,
        };
        let c = if self.th.limit.is_finite() {
            self.th
                .step(if significant { s } else { f64::NEG_INFINITY })
        } else {
            self.th.active = false;
            Condition::Clear
        };
        // Learn from normal operation only: not from a rise being alarmed, not while held.
        if !self.held && c != Condition::Active {
            // A bias-corrected EWMA: weight dt per fit, decayed with time constant tau, so the
            // first hours are a plain mean, not the first fit's value.
            self.baseline = Some(match self.baseline {
                None => {
                    self.baseline_seen = 0;
                    self.baseline_weight = self.cfg.every_ms as f64;
                    (s, 0.0)
                }
                Some((mean, mad)) => {
                    // Once warm, a fit far from the baseline moves it only as far as 3 spreads
                    // (a slow precursor must not teach the baseline that rising is normal).
                    let spread = MAD_TO_SIGMA * mad;
                    let s = if warm {
                        s.clamp(mean - 3.0 * spread, mean + 3.0 * spread)
                    } else {
                        s
                    };
                    // Only the time between fits counts as seen: a hold or an alarm in between
                    // taught the baseline nothing.
                    self.baseline_seen += (now - self.baseline_at).clamp(0, self.cfg.every_ms);
                    let dt = (now - self.baseline_at).max(1) as f64;
                    self.baseline_weight =
                        self.baseline_weight * (-dt / tau.max(1) as f64).exp() + dt;
                    let a = dt / self.baseline_weight;
                    (mean + a * (s - mean), mad + a * ((s - mean).abs() - mad))
                }
            });
            self.baseline_at = now;
        }
        c
    }
}

/// A pooled fit: slope at `now` and its standard error, per ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlopeFit {
    pub slope: f64,
    pub se: f64,
    /// The per-sample residual variance the error was computed from, and the factor that
    /// turns it into the slope's variance (per s²): se = √(var × var_factor) / 1000.
    pub var: f64,
    pub var_factor: f64,
    /// Segments that counted, and the time the counted samples span.
    pub segments: usize,
    pub span_ms: i64,
}

impl SlopeFit {
    /// The standard error (per ms) with the residual variance raised to at least `noise`.
    pub fn se_with(&self, noise: Option<f64>) -> f64 {
        match noise {
            Some(n) if n > self.var => (n * self.var_factor).sqrt() / 1_000.0,
            _ => self.se,
        }
    }
}

/// Least-squares slope at `now` (per ms) with one level per segment: each segment is centred on
/// its own means, and the centred sums are pooled. A step between segments moves only the
/// levels, never the slope. `Quadratic` fits a common parabola and returns its slope at `now`.
pub fn pooled_slope(
    points: &VecDeque<(Ts, f64, u32)>,
    now: Ts,
    fit: Fit,
    block_ms: Option<i64>,
) -> Option<SlopeFit> {
    let (mut cuu, mut cuq, mut cqq, mut cuy, mut cqy, mut cyy) = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut used, mut segments) = (0usize, 0usize);
    // (first, end, mean u, mean u^2, mean y) of each segment that counts.
    let mut segs: Vec<(usize, usize, f64, f64, f64)> = Vec::new();
    let mut i = 0;
    while i < points.len() {
        let seg = points[i].2;
        let mut j = i;
        let (mut n, mut su, mut sq, mut sy) = (0.0, 0.0, 0.0, 0.0);
        while j < points.len() && points[j].2 == seg {
            let u = (points[j].0 - now) as f64 / 1_000.0;
            n += 1.0;
            su += u;
            sq += u * u;
            sy += points[j].1;
            j += 1;
        }
        if n >= 2.0 {
            let (mu, mq, my) = (su / n, sq / n, sy / n);
            for &(ts, v, _) in points.range(i..j) {
                let u = (ts - now) as f64 / 1_000.0;
                let (du, dq, dy) = (u - mu, u * u - mq, v - my);
                cuu += du * du;
                cuq += du * dq;
                cqq += dq * dq;
                cuy += du * dy;
                cqy += dq * dy;
                cyy += dy * dy;
            }
            used += j - i;
            segments += 1;
            segs.push((i, j, mu, mq, my));
        }
        i = j;
    }
    if used < 3 || cuu <= 0.0 {
        return None;
    }
    // Residual variance with one level per segment and the slope (and curvature) fitted.
    let (b, c, rss, params, var_factor) = match fit {
        Fit::Linear => {
            let b = cuy / cuu;
            (b, 0.0, cyy - b * cuy, 1, 1.0 / cuu)
        }
        Fit::Quadratic => {
            let det = cuu * cqq - cuq * cuq;
            if det <= 1e-9 * cuu * cqq {
                return None;
            }
            // Slope at u = 0 (now): b of y = a_s + b u + c u^2.
            let b = (cuy * cqq - cqy * cuq) / det;
            let c = (cqy * cuu - cuy * cuq) / det;
            (b, c, cyy - b * cuy - c * cqy, 2, cqq / det)
        }
    };
    let dof = used.saturating_sub(segments + params).max(1) as f64;
    // Noise is not steady (a burst at either end of the window weighs on the fitted curve far
    // more than the pooled variance says): the largest variance of the window's quarters counts.
    let first = points.front().map_or(now, |f| f.0);
    let quarter = ((now - first) / 4).max(1);
    let mut rss_q = [0.0f64; 4];
    let mut n_q = [0usize; 4];
    for &(a, e, mu, mq, my) in &segs {
        for &(ts, v, _) in points.range(a..e) {
            let u = (ts - now) as f64 / 1_000.0;
            let r = (v - my) - b * (u - mu) - c * (u * u - mq);
            let q = (((ts - first) / quarter) as usize).min(3);
            rss_q[q] += r * r;
            n_q[q] += 1;
        }
    }
    let var = (0..4)
        .filter(|&q| n_q[q] >= 10)
        .map(|q| rss_q[q] / n_q[q] as f64)
        .fold(rss.max(0.0) / dof, f64::max)
        .max(block_ms.map_or(0.0, |bl| batch_variance(points, &segs, now, bl, b, c)));
    let se = (var * var_factor).sqrt();
    let span_ms = match (segs.first(), segs.last()) {
        (Some(f), Some(l)) => points[l.1 - 1].0 - points[f.0].0,
        _ => 0,
    };
    Some(SlopeFit {
        slope: b / 1_000.0,
        se: se / 1_000.0,
        var,
        var_factor,
        segments,
        span_ms,
    })
}

/// The per-sample variance that the residuals' block means imply (batch means): n × (block
/// mean)² averaged over the blocks of `block_ms` within each segment. Equal to the residual
/// variance for white noise; larger when the noise is correlated over the block (slow swings),
/// which a per-sample variance underrates.
fn batch_variance(
    points: &VecDeque<(Ts, f64, u32)>,
    segs: &[(usize, usize, f64, f64, f64)],
    now: Ts,
    block_ms: i64,
    b: f64,
    c: f64,
) -> f64 {
    let block_ms = block_ms.max(1);
    let (mut sum, mut blocks) = (0.0, 0usize);
    for &(a, e, mu, mq, my) in segs {
        let start = points[a].0;
        let (mut block, mut n, mut rs) = (0i64, 0usize, 0.0);
        for &(ts, v, _) in points.range(a..e) {
            let k = (ts - start) / block_ms;
            if k != block && n > 0 {
                sum += rs * rs / n as f64;
                blocks += 1;
                (n, rs) = (0, 0.0);
            }
            block = k;
            let u = (ts - now) as f64 / 1_000.0;
            rs += (v - my) - b * (u - mu) - c * (u * u - mq);
            n += 1;
        }
        if n > 0 {
            sum += rs * rs / n as f64;
            blocks += 1;
        }
    }
    if blocks == 0 {
        0.0
    } else {
        sum / blocks as f64
    }
}

#[derive(Debug, Clone)]
pub struct CurveEval {
    pub points: Vec<(f64, f64)>,
    pub time_slot: Option<u32>,
    pub setpoint_slot: Option<u32>,
    pub time_unit_ms: i64,
    pub lag_ms: i64,
    pub tolerance: f64,
    pub first_ts: Option<Ts>,
}

/// Piecewise-linear interpolation, clamped at the ends.
pub fn interpolate(points: &[(f64, f64)], t: f64) -> Option<f64> {
    let first = points.first()?;
    let last = points.last()?;
    if t <= first.0 {
        return Some(first.1);
    }
    if t >= last.0 {
        return Some(last.1);
    }
    let i = points.partition_point(|(pt, _)| *pt <= t);
    let (t0, v0) = points[i - 1];
    let (t1, v1) = points[i];
    Some(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
}

impl CurveEval {
    /// Distance outside the tolerance band (0 inside), signed: negative when behind (below).
    fn excess(&mut self, p: Point, others: &dyn Lookup) -> Option<f64> {
        if let Some(slot) = self.setpoint_slot {
            let sp = others.value(slot)?;
            let d = p.v - sp;
            return Some(if d.abs() <= self.tolerance { 0.0 } else { d });
        }
        let first = *self.first_ts.get_or_insert(p.ts);
        let elapsed_ms = match self.time_slot {
            Some(slot) => others.value(slot)? * self.time_unit_ms as f64,
            None => (p.ts - first) as f64,
        };
        let unit = self.time_unit_ms as f64;
        let at = |ms: f64| interpolate(&self.points, ms / unit);
        // Within the band of the curve anywhere between `lag` behind and `lag` ahead: fine.
        let behind = at(elapsed_ms - self.lag_ms as f64)?;
        let now_sp = at(elapsed_ms)?;
        let ahead = at(elapsed_ms + self.lag_ms as f64)?;
        let lo = behind.min(now_sp).min(ahead) - self.tolerance;
        let hi = behind.max(now_sp).max(ahead) + self.tolerance;
        Some(if p.v < lo {
            p.v - lo
        } else if p.v > hi {
            p.v - hi
        } else {
            0.0
        })
    }
}

/// Enough of the span is covered to trust a window statistic.
fn covered(cursor: &SpanCursor, window: &mut Window, newest: Ts, share: f64) -> bool {
    if cursor.points_in_span() < 3 {
        return false;
    }
    match window.get(cursor.oldest()) {
        Some(o) => (newest - o.ts) as f64 >= cursor.span_ms as f64 * share,
        None => false,
    }
}

impl Eval {
    pub fn new(
        kind: &RuleKind,
        window: &Window,
        slot_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<Eval, String> {
        Ok(match kind {
            RuleKind::High { limit, deadband } => {
                Eval::Threshold(Threshold::new(Direction::Above, *limit, *deadband))
            }
            RuleKind::Low { limit, deadband } => {
                Eval::Threshold(Threshold::new(Direction::Below, *limit, *deadband))
            }
            RuleKind::Rate {
                window_ms,
                per_ms,
                limit,
                deadband,
                direction,
            } => Eval::Rate {
                cursor: SpanCursor::new(*window_ms, window),
                per_ms: *per_ms,
                th: Threshold::new(*direction, *limit, *deadband),
            },
            RuleKind::Slope {
                window_ms,
                per_ms,
                limit,
                deadband,
                direction,
            } => Eval::Slope {
                cursor: SpanCursor::new(*window_ms, window),
                reg: Regression::new(),
                per_ms: *per_ms,
                th: Threshold::new(*direction, *limit, *deadband),
            },
            RuleKind::Predict {
                window_ms,
                limit,
                horizon_ms,
            } => Eval::Predict {
                cursor: SpanCursor::new(*window_ms, window),
                reg: Regression::new(),
                limit: *limit,
                horizon_ms: *horizon_ms,
                eta_ms: None,
                active: false,
            },
            RuleKind::Noise {
                window_ms,
                limit,
                deadband,
            } => Eval::Noise {
                cursor: SpanCursor::new(*window_ms, window),
                reg: Regression::new(),
                th: Threshold::new(Direction::Above, *limit, *deadband),
            },
            RuleKind::Frozen { window_ms } => Eval::Frozen {
                window_ms: *window_ms,
                last: None,
                since: 0,
                changed_once: false,
            },
            RuleKind::Stale { max_age_ms } => Eval::Stale {
                max_age_ms: *max_age_ms,
                last_good: None,
            },
            RuleKind::Deviation {
                lambda,
                limit,
                warmup,
            } => Eval::Deviation {
                ewma: Ewma::new(*lambda).map_err(|e| e.to_string())?,
                warmup: *warmup,
                th: Threshold::new(Direction::Above, *limit, 0.0),
            },
            RuleKind::Cusum {
                lambda,
                k,
                h,
                warmup,
            } => Eval::Cusum {
                ewma: Ewma::new(*lambda).map_err(|e| e.to_string())?,
                cusum: Cusum::new(*k, *h).map_err(|e| e.to_string())?,
                warmup: *warmup,
            },
            RuleKind::Average {
                window_ms,
                limit,
                deadband,
                direction,
            } => Eval::Average {
                tau_ms: *window_ms,
                mean: None,
                first_ts: 0,
                last_ts: 0,
                count: 0,
                th: Threshold::new(*direction, *limit, *deadband),
            },
            RuleKind::Trend(t) => {
                if t.every_ms <= 0 || t.window_ms <= 0 || t.per_ms <= 0 {
                    return Err("window, per and every must be positive".into());
                }
                if t.baseline_ms.is_some() && !(t.k > 0.0 && t.k.is_finite()) {
                    return Err("k must be a positive number of spreads".into());
                }
                let mut e = TrendEval::new(t);
                e.step_slot = t.step_tag.as_deref().and_then(slot_of);
                Eval::Trend(Box::new(e))
            }
            RuleKind::Curve {
                source,
                tolerance,
                lag_ms,
            } => {
                let curve = match source {
                    CurveSource::Points {
                        points,
                        time_tag,
                        time_unit_ms,
                    } => CurveEval {
                        points: points.clone(),
                        time_slot: time_tag.as_deref().and_then(slot_of),
                        setpoint_slot: None,
                        time_unit_ms: *time_unit_ms,
                        lag_ms: *lag_ms,
                        tolerance: *tolerance,
                        first_ts: None,
                    },
                    CurveSource::Tag(t) => CurveEval {
                        points: Vec::new(),
                        time_slot: None,
                        setpoint_slot: slot_of(t),
                        time_unit_ms: 1,
                        lag_ms: 0,
                        tolerance: *tolerance,
                        first_ts: None,
                    },
                };
                Eval::Curve {
                    curve,
                    th: Threshold::new(Direction::Above, 0.0, 0.0),
                }
            }
        })
    }

    /// The cursor of a windowed rule, to hand it points the ring overwrote.
    pub fn evicted(&mut self, seq: u64, p: Point) {
        match self {
            Eval::Rate { cursor, .. } => cursor.evicted(seq, p, &mut Nothing),
            Eval::Slope { cursor, reg, .. }
            | Eval::Predict { cursor, reg, .. }
            | Eval::Noise { cursor, reg, .. } => cursor.evicted(seq, p, &mut RegAcc(reg)),
            _ => {}
        }
    }

    /// A good sample `p` was just pushed into `window`.
    pub fn on_good(&mut self, window: &mut Window, p: Point, others: &dyn Lookup) -> Condition {
        match self {
            Eval::Threshold(th) => th.step(p.v),
            Eval::Rate { cursor, per_ms, th } => {
                cursor.advance(window, p.ts, &mut Nothing);
                if !covered(cursor, window, p.ts, 0.5) {
                    return Condition::Unknown;
                }
                match window.get(cursor.oldest()) {
                    Some(o) if p.ts > o.ts => {
                        th.step((p.v - o.v) / (p.ts - o.ts) as f64 * *per_ms as f64)
                    }
                    _ => Condition::Unknown,
                }
            }
            Eval::Slope {
                cursor,
                reg,
                per_ms,
                th,
            } => {
                cursor.advance(window, p.ts, &mut RegAcc(reg));
                if !covered(cursor, window, p.ts, 0.5) {
                    return Condition::Unknown;
                }
                match reg.slope_per_s() {
                    Some(s) => th.step(s * *per_ms as f64 / 1_000.0),
                    None => Condition::Unknown,
                }
            }
            Eval::Predict {
                cursor,
                reg,
                limit,
                horizon_ms,
                eta_ms,
                active,
            } => {
                cursor.advance(window, p.ts, &mut RegAcc(reg));
                if !covered(cursor, window, p.ts, 0.5) {
                    *eta_ms = None;
                    return Condition::Unknown;
                }
                *eta_ms = reg.time_to_reach(*limit, p.ts);
                // Clear only once the forecast moves well past the horizon (hysteresis).
                let clear_after = *horizon_ms + *horizon_ms / 4;
                *active = match (*eta_ms, *active) {
                    (Some(eta), false) => eta <= *horizon_ms,
                    (Some(eta), true) => eta <= clear_after,
                    (None, _) => false,
                };
                if *active {
                    Condition::Active
                } else {
                    Condition::Clear
                }
            }
            Eval::Noise { cursor, reg, th } => {
                cursor.advance(window, p.ts, &mut RegAcc(reg));
                if !covered(cursor, window, p.ts, 0.5) {
                    return Condition::Unknown;
                }
                match reg.residual_rms() {
                    Some(r) => th.step(r),
                    None => Condition::Unknown,
                }
            }
            Eval::Frozen {
                window_ms,
                last,
                since,
                changed_once,
            } => {
                // Exact comparison on purpose: a live analogue signal always moves a little.
                if *last != Some(p.v) {
                    *changed_once |= last.is_some();
                    *last = Some(p.v);
                    *since = p.ts;
                }
                if p.ts - *since >= *window_ms {
                    Condition::Active
                } else if *changed_once {
                    Condition::Clear
                } else {
                    // Too little history to call it live or frozen.
                    Condition::Unknown
                }
            }
            Eval::Stale { last_good, .. } => {
                *last_good = Some(p.ts);
                Condition::Clear
            }
            Eval::Deviation { ewma, warmup, th } => {
                let z = ewma.zscore(p.v);
                ewma.update(p.v);
                match z {
                    Some(z) if ewma.count() > u64::from(*warmup) => th.step(z.abs()),
                    _ => Condition::Unknown,
                }
            }
            Eval::Cusum {
                ewma,
                cusum,
                warmup,
            } => {
                let z = ewma.zscore(p.v);
                ewma.update(p.v);
                match z {
                    Some(z) if ewma.count() > u64::from(*warmup) => {
                        if cusum.update(z).alarm {
                            Condition::Active
                        } else {
                            Condition::Clear
                        }
                    }
                    _ => Condition::Unknown,
                }
            }
            Eval::Average {
                tau_ms,
                mean,
                first_ts,
                last_ts,
                count,
                th,
            } => {
                // Time-weighted EWMA: irregular sampling weighs by elapsed time.
                let m = match *mean {
                    None => p.v,
                    Some(m) => {
                        let dt = (p.ts - *last_ts).max(0) as f64;
                        let a = 1.0 - (-dt / (*tau_ms).max(1) as f64).exp();
                        m + a * (p.v - m)
                    }
                };
                if mean.is_none() {
                    *first_ts = p.ts;
                }
                *mean = Some(m);
                *last_ts = p.ts;
                *count = count.saturating_add(1);
                // A long average means little until it has seen a tenth of its window (at most
                // a day): a 7-day KPI does not judge the first minutes.
                if *count < 3 || p.ts - *first_ts < (*tau_ms / 10).min(86_400_000) {
                    Condition::Unknown
                } else {
                    th.step(m)
                }
            }
            Eval::Curve { curve, th } => match curve.excess(p, others) {
                Some(x) => th.step(x.abs()),
                None => Condition::Unknown,
            },
            Eval::Trend(t) => t.on_good(p, others),
        }
    }

    /// A hold-off of the rule starts or ends: a held trend rule reads normal and its baseline
    /// does not learn.
    pub fn set_held(&mut self, held: bool) {
        if let Eval::Trend(t) = self {
            t.held = held;
            if held {
                t.th.active = false;
            }
        }
    }

    /// Seeds the hysteresis of a rebuilt rule with the state of its alarm (on reload), so a
    /// changed limit is applied with the deadband, not as a fresh activation test.
    pub fn set_active(&mut self, active: bool) {
        match self {
            Eval::Threshold(th)
            | Eval::Rate { th, .. }
            | Eval::Slope { th, .. }
            | Eval::Noise { th, .. }
            | Eval::Deviation { th, .. }
            | Eval::Average { th, .. }
            | Eval::Curve { th, .. } => th.active = active,
            Eval::Trend(t) => t.th.active = active,
            Eval::Predict { active: a, .. } => *a = active,
            _ => {}
        }
    }

    /// Forgets the window statistics, e.g. when a design suppression ends: samples taken
    /// during a potline outage must not make a trend afterwards.
    pub fn restart(&mut self, window: &Window) {
        match self {
            Eval::Rate { cursor, .. } => *cursor = SpanCursor::new(cursor.span_ms, window),
            Eval::Slope { cursor, reg, .. } | Eval::Noise { cursor, reg, .. } => {
                *cursor = SpanCursor::new(cursor.span_ms, window);
                *reg = Regression::new();
            }
            Eval::Predict {
                cursor,
                reg,
                eta_ms,
                active,
                ..
            } => {
                *cursor = SpanCursor::new(cursor.span_ms, window);
                *reg = Regression::new();
                *eta_ms = None;
                *active = false;
            }
            Eval::Frozen {
                last, changed_once, ..
            } => {
                *last = None;
                *changed_once = false;
            }
            Eval::Trend(t) => t.restart(),
            _ => {}
        }
    }

    /// A bad sample: value rules cannot tell; stale keeps counting.
    pub fn on_bad(&mut self) -> Option<Condition> {
        match self {
            Eval::Stale { .. } => None,
            _ => Some(Condition::Unknown),
        }
    }

    /// Time-driven conditions (only `stale`).
    pub fn on_tick(&mut self, now: Ts, started: Ts) -> Option<Condition> {
        match self {
            Eval::Stale {
                max_age_ms,
                last_good,
            } => {
                let since = last_good.unwrap_or(started);
                Some(if now - since > *max_age_ms {
                    Condition::Active
                } else {
                    Condition::Clear
                })
            }
            _ => None,
        }
    }

    pub fn limit(&self) -> Option<f64> {
        match self {
            Eval::Threshold(th)
            | Eval::Rate { th, .. }
            | Eval::Slope { th, .. }
            | Eval::Noise { th, .. }
            | Eval::Deviation { th, .. } => Some(th.limit),
            Eval::Predict { limit, .. } => Some(*limit),
            Eval::Curve { curve, .. } => Some(curve.tolerance),
            Eval::Trend(t) => Some(t.th.limit),
            _ => None,
        }
    }

    pub fn eta_ms(&self) -> Option<i64> {
        match self {
            Eval::Predict { eta_ms, .. } => *eta_ms,
            _ => None,
        }
    }

    /// Points the evaluator at the slots of the other tags its kind reads, given in the order
    /// of [`RuleKind::extra_tags`] (a curve rule's setpoint tag or time tag).
    pub fn bind_extra_tags(&mut self, kind: &RuleKind, slots: &[u32]) {
        if let Eval::Trend(t) = self {
            t.step_slot = slots.first().copied();
            return;
        }
        let (Eval::Curve { curve, .. }, RuleKind::Curve { source, .. }) = (self, kind) else {
            return;
        };
        let slot = slots.first().copied();
        match source {
            CurveSource::Tag(_) => curve.setpoint_slot = slot,
            CurveSource::Points { .. } => curve.time_slot = slot,
        }
    }

    pub fn is_windowed(&self) -> bool {
        matches!(
            self,
            Eval::Rate { .. }
                | Eval::Slope { .. }
                | Eval::Predict { .. }
                | Eval::Noise { .. }
                | Eval::Trend(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::window::Window;

    struct NoOthers;
    impl Lookup for NoOthers {
        fn value(&self, _: u32) -> Option<f64> {
            None
        }
    }

    fn run(kind: RuleKind, series: &[(Ts, f64)]) -> Vec<Condition> {
        let mut w = Window::new(1_000);
        let mut e = Eval::new(&kind, &w, &|_| None).unwrap();
        series
            .iter()
            .map(|&(ts, v)| {
                let p = Point { ts, v };
                if let Some((seq, old)) = w.push(p) {
                    e.evicted(seq, old);
                }
                e.on_good(&mut w, p, &NoOthers)
            })
            .collect()
    }

    fn last(kind: RuleKind, series: &[(Ts, f64)]) -> Condition {
        *run(kind, series).last().unwrap()
    }

    #[test]
    fn threshold_deadband_only_delays_the_return() {
        let mut th = Threshold::new(Direction::Above, 8.0, 0.5);
        assert_eq!(th.step(8.0), Condition::Clear);
        assert_eq!(th.step(8.1), Condition::Active);
        assert_eq!(th.step(7.6), Condition::Active);
        assert_eq!(th.step(7.49), Condition::Clear);
        let mut lo = Threshold::new(Direction::Below, 1.5, 0.2);
        assert_eq!(lo.step(1.4), Condition::Active);
        assert_eq!(lo.step(1.65), Condition::Active);
        assert_eq!(lo.step(1.71), Condition::Clear);
    }

    #[test]
    fn rate_per_hour_over_a_window() {
        // Heating at 20 degC/h sampled every minute for 2 h, window 1 h, limit 18 degC/h.
        let series: Vec<(Ts, f64)> = (0..120)
            .map(|m| (m * 60_000, 200.0 + m as f64 / 3.0))
            .collect();
        let kind = RuleKind::Rate {
            window_ms: 3_600_000,
            per_ms: 3_600_000,
            limit: 18.0,
            deadband: 1.0,
            direction: Direction::Above,
        };
        let c = run(kind.clone(), &series);
        assert_eq!(c[5], Condition::Unknown, "less than half the window");
        assert_eq!(c[119], Condition::Active);
        let slow: Vec<(Ts, f64)> = (0..120)
            .map(|m| (m * 60_000, 200.0 + m as f64 / 6.0))
            .collect();
        assert_eq!(last(kind, &slow), Condition::Clear);
    }

    #[test]
    fn slope_detects_a_rising_trend_and_ignores_noise() {
        let kind = RuleKind::Slope {
            window_ms: 300_000,
            per_ms: 60_000,
            limit: 0.004,
            deadband: 0.0,
            direction: Direction::Above,
        };
        // 5 mV/min rise with +-10 mV alternating noise, 1 sample / 5 s.
        let rising: Vec<(Ts, f64)> = (0..120)
            .map(|i| {
                (
                    i * 5_000,
                    4.2 + 0.005 * i as f64 / 12.0 + if i % 2 == 0 { 0.01 } else { -0.01 },
                )
            })
            .collect();
        assert_eq!(last(kind.clone(), &rising), Condition::Active);
        let flat: Vec<(Ts, f64)> = (0..120)
            .map(|i| (i * 5_000, 4.2 + if i % 2 == 0 { 0.01 } else { -0.01 }))
            .collect();
        assert_eq!(last(kind, &flat), Condition::Clear);
    }

    #[test]
    fn predict_warns_before_the_limit_with_an_eta() {
        let kind = RuleKind::Predict {
            window_ms: 60_000,
            limit: 8.0,
            horizon_ms: 240_000,
        };
        let mut w = Window::new(1_000);
        let mut e = Eval::new(&kind, &w, &|_| None).unwrap();
        let mut first_active = None;
        // Voltage rising 1 V/min from 4.2 V: reaches 8 V at t = 228 s.
        for i in 0..200 {
            let p = Point {
                ts: i * 1_000,
                v: 4.2 + i as f64 / 60.0,
            };
            w.push(p);
            if e.on_good(&mut w, p, &NoOthers) == Condition::Active && first_active.is_none() {
                first_active = Some((i, e.eta_ms().unwrap()));
            }
        }
        let (t, eta) = first_active.expect("warned");
        assert!(
            t < 228 && eta <= 240_000,
            "warned at {t}s with eta {eta} ms"
        );
        assert!(
            ((t * 1_000 + eta) - 228_000).abs() < 2_000,
            "predicted crossing {} ms",
            t * 1_000 + eta
        );
    }

    #[test]
    fn noise_is_the_rms_around_the_trend() {
        let kind = RuleKind::Noise {
            window_ms: 60_000,
            limit: 0.03,
            deadband: 0.0,
        };
        // A steep trend with small noise is not noisy; a flat signal with 50 mV swings is.
        let trend: Vec<(Ts, f64)> = (0..120)
            .map(|i| {
                (
                    i * 1_000,
                    4.0 + i as f64 * 0.01 + if i % 2 == 0 { 0.005 } else { -0.005 },
                )
            })
            .collect();
        assert_eq!(last(kind.clone(), &trend), Condition::Clear);
        let noisy: Vec<(Ts, f64)> = (0..120)
            .map(|i| (i * 1_000, 4.2 + if i % 2 == 0 { 0.05 } else { -0.05 }))
            .collect();
        assert_eq!(last(kind, &noisy), Condition::Active);
    }

    #[test]
    fn frozen_needs_a_full_window_and_any_change_clears() {
        let kind = RuleKind::Frozen { window_ms: 60_000 };
        let mut series: Vec<(Ts, f64)> = (0..30).map(|i| (i * 1_000, 4.2)).collect();
        assert_eq!(last(kind.clone(), &series), Condition::Unknown);
        series.extend((30..70).map(|i| (i * 1_000, 4.2)));
        assert_eq!(last(kind.clone(), &series), Condition::Active);
        series.push((70_000, 4.2001));
        assert_eq!(last(kind, &series), Condition::Clear);
    }

    #[test]
    fn stale_counts_time_without_good_samples() {
        let mut e = Eval::new(
            &RuleKind::Stale { max_age_ms: 30_000 },
            &Window::new(4),
            &|_| None,
        )
        .unwrap();
        assert_eq!(e.on_tick(20_000, 0), Some(Condition::Clear));
        assert_eq!(e.on_tick(31_000, 0), Some(Condition::Active));
        let mut w = Window::new(4);
        assert_eq!(
            e.on_good(&mut w, Point { ts: 32_000, v: 1.0 }, &NoOthers),
            Condition::Clear
        );
        assert_eq!(e.on_bad(), None, "bad samples do not reset stale");
        assert_eq!(e.on_tick(61_000, 0), Some(Condition::Clear));
        assert_eq!(e.on_tick(62_001, 0), Some(Condition::Active));
    }

    #[test]
    fn deviation_and_cusum_catch_a_step_after_warmup() {
        let mut series: Vec<(Ts, f64)> = (0..300)
            .map(|i| (i * 1_000, 950.0 + ((i * 7919) % 11) as f64 / 10.0 - 0.5))
            .collect();
        let dev = RuleKind::Deviation {
            lambda: 0.01,
            limit: 4.0,
            warmup: 60,
        };
        let cus = RuleKind::Cusum {
            lambda: 0.01,
            k: 0.5,
            h: 5.0,
            warmup: 60,
        };
        assert_eq!(
            run(dev.clone(), &series)[10],
            Condition::Unknown,
            "warming up"
        );
        assert_eq!(last(dev.clone(), &series), Condition::Clear);
        assert_eq!(last(cus.clone(), &series), Condition::Clear);
        series.extend((300..330).map(|i| (i * 1_000, 960.0)));
        assert!(run(dev, &series)[300..].contains(&Condition::Active));
        assert_eq!(last(cus, &series), Condition::Active);
    }

    #[test]
    fn average_follows_a_long_time_constant() {
        let kind = RuleKind::Average {
            window_ms: 3_600_000,
            limit: 13_000.0,
            deadband: 50.0,
            direction: Direction::Above,
        };
        // One hour at 12,900 then a step to 13,300: the average crosses 13,000 after ~25 min.
        let mut series: Vec<(Ts, f64)> = (0..60).map(|m| (m * 60_000, 12_900.0)).collect();
        series.extend((60..180).map(|m| (m * 60_000, 13_300.0)));
        let c = run(kind, &series);
        assert_eq!(c[59], Condition::Clear);
        let first = c.iter().position(|x| *x == Condition::Active).unwrap();
        assert!(
            (75..95).contains(&first),
            "crossed after {} min",
            first - 60
        );
    }

    #[test]
    fn curve_band_and_lag() {
        struct Elapsed(f64);
        impl Lookup for Elapsed {
            fn value(&self, _: u32) -> Option<f64> {
                Some(self.0)
            }
        }
        let kind = RuleKind::Curve {
            source: CurveSource::Points {
                points: vec![(0.0, 100.0), (10.0, 600.0)],
                time_tag: Some("elapsed".into()),
                time_unit_ms: 3_600_000,
            },
            tolerance: 20.0,
            lag_ms: 3_600_000,
        };
        let mut w = Window::new(4);
        let mut e = Eval::new(&kind, &w, &|t| (t == "elapsed").then_some(0)).unwrap();
        // At 5 h the setpoint is 350; one hour behind is 300; so 285 is within lag + tolerance.
        assert_eq!(
            e.on_good(&mut w, Point { ts: 0, v: 285.0 }, &Elapsed(5.0)),
            Condition::Clear
        );
        assert_eq!(
            e.on_good(&mut w, Point { ts: 1, v: 270.0 }, &Elapsed(5.0)),
            Condition::Active
        );
        assert_eq!(
            e.on_good(&mut w, Point { ts: 2, v: 420.0 }, &Elapsed(5.0)),
            Condition::Active,
            "too far ahead"
        );
        assert_eq!(interpolate(&[(0.0, 1.0), (2.0, 3.0)], 1.0), Some(2.0));
        assert_eq!(interpolate(&[(0.0, 1.0), (2.0, 3.0)], 9.0), Some(3.0));
    }

    fn trend(fit: Fit, step: bool, baseline_ms: Option<i64>) -> RuleKind {
        RuleKind::Trend(Trend {
            window_ms: 600_000,
            per_ms: 60_000,
            limit: 0.004,
            deadband: 0.001,
            fit,
            step_tag: step.then(|| "beam".into()),
            step_min: 0.5,
            settle_ms: 0,
            every_ms: 10_000,
            baseline_ms,
            k: 4.0,
            noise_k: None,
            noise_block_ms: None,
            learn_noise: false,
            warmup_ms: None,
            warmup_limit: Some(0.012),
        })
    }

    /// The beam position as the only other tag.
    struct Beam(f64);
    impl Lookup for Beam {
        fn value(&self, _: u32) -> Option<f64> {
            Some(self.0)
        }
    }

    /// Runs a trend rule over (ts, value, beam) samples; the slope after each.
    fn run_trend(kind: &RuleKind, series: &[(Ts, f64, f64)]) -> Vec<(Condition, Option<f64>)> {
        let mut w = Window::new(4);
        let mut e = Eval::new(kind, &w, &|_| Some(0)).unwrap();
        series
            .iter()
            .map(|&(ts, v, b)| {
                let c = e.on_good(&mut w, Point { ts, v }, &Beam(b));
                let Eval::Trend(t) = &e else { unreachable!() };
                (c, t.slope)
            })
            .collect()
    }

    #[test]
    fn a_beam_step_is_not_a_trend_and_the_samples_before_it_still_count() {
        // R flat at 5.0 µΩ (+-10 nΩ noise), the beam moves 3 mm at 8 min and R steps -0.05 µΩ.
        let series: Vec<(Ts, f64, f64)> = (0..900)
            .map(|i| {
                let (r, b) = if i < 480 { (5.0, 100.0) } else { (4.95, 97.0) };
                (i * 1_000, r + if i % 2 == 0 { 0.01 } else { -0.01 }, b)
            })
            .collect();
        let corrected = run_trend(&trend(Fit::Linear, true, None), &series);
        let plain = run_trend(&trend(Fit::Linear, false, None), &series);
        let worst = |v: &[(Condition, Option<f64>)]| {
            v.iter()
                .filter_map(|x| x.1)
                .fold(0.0f64, |m, s| m.max(s.abs()))
        };
        assert!(
            worst(&corrected) < 0.001,
            "corrected slope {}",
            worst(&corrected)
        );
        assert!(worst(&plain) > 0.004, "uncorrected slope {}", worst(&plain));
        assert!(corrected.iter().all(|x| x.0 != Condition::Active));
        // The beam register read 3 s after R stepped (-0.3 µΩ on a flat R): still no trend.
        let late: Vec<(Ts, f64, f64)> = (0..900)
            .map(|i| {
                let r = if i < 480 { 5.0 } else { 4.7 };
                (i * 1_000, r, if i < 483 { 100.0 } else { 97.0 })
            })
            .collect();
        // (Before the register moves, nothing can tell the step from a rise: the on-delay
        // covers those seconds.)
        let skewed = run_trend(&trend(Fit::Linear, true, None), &late);
        assert!(
            worst(&skewed[483..]) < 1e-9,
            "skewed slope {}",
            worst(&skewed[483..])
        );
        // Right after the move the slope is still known: the move does not blind the rule.
        assert!(corrected[481].1.is_some() || corrected[489].1.is_some());
        // And a real rise that continues through a move is still seen.
        let rising: Vec<(Ts, f64, f64)> = (0..900)
            .map(|i| {
                let ramp = 0.010 * i as f64 / 60.0; // 10 nΩ/min
                let (step, b) = if i < 600 { (0.0, 100.0) } else { (-0.05, 97.0) };
                (i * 1_000, 5.0 + ramp + step, b)
            })
            .collect();
        let c = run_trend(&trend(Fit::Linear, true, None), &rising);
        let s = c[700].1.unwrap();
        assert!((s - 0.010).abs() < 0.0005, "slope through the move {s}");
        assert_eq!(c[700].0, Condition::Active);
    }

    #[test]
    fn the_quadratic_fit_takes_the_slope_now_not_half_a_window_ago() {
        // An accelerating rise: slope grows by 1 nΩ/min each minute.
        let series: Vec<(Ts, f64, f64)> = (0..1200)
            .map(|i| {
                let m = i as f64 / 60.0;
                (i * 1_000, 5.0 + 0.0005 * m * m, 100.0)
            })
            .collect();
        let lin = run_trend(&trend(Fit::Linear, false, None), &series);
        let quad = run_trend(&trend(Fit::Quadratic, false, None), &series);
        // At 19:59 the true slope is 0.02 µΩ/min; a 10-min line gives the slope of 5 min ago.
        let (l, q) = (lin[1199].1.unwrap(), quad[1199].1.unwrap());
        assert!((q - 0.02).abs() < 0.0003, "quadratic {q}");
        assert!((l - 0.015).abs() < 0.0005, "linear {l}");
    }

    #[test]
    fn a_noise_burst_is_not_a_trend_when_the_slope_must_beat_its_error() {
        // Flat R with a 10-minute burst of +-0.15 µΩ noise (a pseudo-random sequence): the
        // plain slope wanders past 4 nΩ/min; measured against its own error it does not.
        let mut x: u64 = 12345;
        let series: Vec<(Ts, f64, f64)> = (0..1800)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let burst = if (600..1200).contains(&i) {
                    0.3 * u
                } else {
                    0.01 * u
                };
                (i * 1_000, 5.0 + burst, 100.0)
            })
            .collect();
        let plain = trend(Fit::Quadratic, false, None);
        let RuleKind::Trend(mut t) = plain.clone() else {
            unreachable!()
        };
        t.noise_k = Some(3.0);
        let guarded = RuleKind::Trend(t);
        assert!(run_trend(&plain, &series)
            .iter()
            .any(|x| x.0 == Condition::Active));
        assert!(run_trend(&guarded, &series)
            .iter()
            .all(|x| x.0 != Condition::Active));
        // A real 20 nΩ/min rise in the usual noise is far above its error.
        let rising: Vec<(Ts, f64, f64)> = series[..600]
            .iter()
            .map(|&(ts, v, b)| (ts, v + 0.02 * ts as f64 / 60_000.0, b))
            .collect();
        assert!(run_trend(&guarded, &rising)[310..]
            .iter()
            .all(|x| x.0 == Condition::Active));
    }

    #[test]
    fn slow_swings_are_not_a_trend_when_the_error_comes_from_block_means() {
        // Flat R with a slow swing (0.1 µΩ, 6-min period) and +-5 nΩ sample noise:
        // against the per-sample spread the swing's slopes are "significant"; against the
        // spread of 30-s block means (batch means) they are not.
        let series: Vec<(Ts, f64, f64)> = (0..3600)
            .map(|i| {
                let t = i as f64;
                let swing = 0.1 * (t * std::f64::consts::TAU / 360.0).sin();
                let white = if i % 2 == 0 { 0.005 } else { -0.005 };
                (i * 1_000, 5.0 + swing + white, 100.0)
            })
            .collect();
        let with = |block: Option<i64>| {
            let RuleKind::Trend(mut t) = trend(Fit::Linear, false, None) else {
                unreachable!()
            };
            t.noise_k = Some(3.0);
            t.noise_block_ms = block;
            RuleKind::Trend(t)
        };
        assert!(run_trend(&with(None), &series)
            .iter()
            .any(|x| x.0 == Condition::Active));
        assert!(run_trend(&with(Some(30_000)), &series)
            .iter()
            .all(|x| x.0 != Condition::Active));
        // A real 20 nΩ/min rise on white noise: block means change nothing.
        let rising: Vec<(Ts, f64, f64)> = (0..900)
            .map(|i| {
                let white = if i % 2 == 0 { 0.01 } else { -0.01 };
                (i * 1_000, 5.0 + white + 0.02 * i as f64 / 60.0, 100.0)
            })
            .collect();
        assert!(run_trend(&with(Some(30_000)), &rising)[310..]
            .iter()
            .all(|x| x.0 == Condition::Active));
    }

    #[test]
    fn no_warning_while_the_baseline_warms_up_unless_a_warmup_limit_is_set() {
        // A 30 nΩ/min rise from the start: with a baseline of 4 h and `warmup` 30 min.
        let series: Vec<(Ts, f64, f64)> = (0..1500)
            .map(|i| (i * 1_000, 5.0 + 0.03 * i as f64 / 60.0, 100.0))
            .collect();
        let with = |warmup_limit: Option<f64>| {
            let RuleKind::Trend(mut t) = trend(Fit::Linear, false, Some(4 * 3_600_000)) else {
                unreachable!()
            };
            t.warmup_ms = Some(1_800_000);
            t.warmup_limit = warmup_limit;
            RuleKind::Trend(t)
        };
        assert!(run_trend(&with(None), &series)
            .iter()
            .all(|x| x.0 != Condition::Active));
        assert!(run_trend(&with(Some(0.012)), &series)
            .iter()
            .any(|x| x.0 == Condition::Active));
    }

    #[test]
    fn the_limit_follows_the_devices_own_baseline() {
        // Two cells with normal slopes wandering +-1 and +-3 nΩ/min (a 20-min sine), then the
        // same 5 nΩ/min rise on both: it stands out of the quiet cell's baseline only.
        let cell = |amp: f64| -> Vec<(Ts, f64, f64)> {
            let mut r = 5.0;
            (0..5 * 3600)
                .map(|i| {
                    let t = i as f64;
                    let slope = if i < 4 * 3600 {
                        amp * (t * std::f64::consts::TAU / 1200.0).sin()
                    } else {
                        5.0
                    };
                    r += slope * 0.001 / 60.0;
                    (i * 1_000, r, 100.0)
                })
                .collect()
        };
        let kind = trend(Fit::Linear, false, Some(4 * 3_600_000));
        let quiet = run_trend(&kind, &cell(1.0));
        let lively = run_trend(&kind, &cell(3.0));
        assert!(
            quiet[..290].iter().all(|x| x.0 == Condition::Unknown),
            "half a window first"
        );
        // Warming up (the first 30 min) the floor counts three times: a quiet cell stays normal.
        assert!(quiet[..1800].iter().all(|x| x.0 != Condition::Active));
        assert!(quiet[3600..4 * 3600]
            .iter()
            .all(|x| x.0 != Condition::Active));
        assert!(lively[3600..4 * 3600]
            .iter()
            .all(|x| x.0 != Condition::Active));
        assert!(quiet[4 * 3600..].iter().any(|x| x.0 == Condition::Active));
        assert!(lively[4 * 3600..].iter().all(|x| x.0 != Condition::Active));
    }

    #[test]
    fn a_short_segment_between_moves_is_judged_with_the_cells_learned_noise() {
        // R flat with a metal-pad swing (12 nΩ, 140 s period) and +-5 nΩ sample noise; the beam
        // moves at 60 and 64 min. After the 2-min settle, the segment between the moves is
        // 2 min long: its slope absorbs half a swing and its residuals look quiet, so against
        // its own error it passes for a rise. Against the noise the cell showed over whole
        // windows in the hour before, it does not; a real 20 nΩ/min rise is still seen.
        let series = |rise_from: Option<i64>| -> Vec<(Ts, f64, f64)> {
            (0..5400)
                .map(|i: i64| {
                    let t = i as f64;
                    let (beam, step) = match i {
                        ..3600 => (100.0, 0.0),
                        3600..3840 => (97.0, -0.15),
                        _ => (94.0, -0.30),
                    };
                    let swing = 0.012 * (t * std::f64::consts::TAU / 140.0).sin();
                    let white = if i % 2 == 0 { 0.005 } else { -0.005 };
                    let rise = rise_from.map_or(0.0, |r| 0.02 * (i - r).max(0) as f64 / 60.0);
                    (i * 1_000, 5.0 + swing + white + step + rise, beam)
                })
                .collect()
        };
        let with = |learn: bool| {
            let RuleKind::Trend(mut t) = trend(Fit::Linear, true, Some(4 * 3_600_000)) else {
                unreachable!()
            };
            t.window_ms = 360_000;
            t.settle_ms = 120_000;
            t.k = 3.5;
            t.noise_k = Some(3.0);
            t.noise_block_ms = Some(30_000);
            t.warmup_ms = Some(1_800_000);
            t.learn_noise = learn;
            RuleKind::Trend(t)
        };
        let flat = series(None);
        assert!(run_trend(&with(false), &flat)[3600..]
            .iter()
            .any(|x| x.0 == Condition::Active));
        assert!(run_trend(&with(true), &flat)
            .iter()
            .all(|x| x.0 != Condition::Active));
        let rising = run_trend(&with(true), &series(Some(3900)));
        assert!(rising[3900..4200].iter().any(|x| x.0 == Condition::Active));
    }
}
