//! Incremental statistics for sliding time windows and streaming baselines.
//!
//! The caller owns the window: it calls `add(t, v)` when a sample enters and `remove(t, v)` when
//! the oldest sample leaves. Every update is O(1) (amortised for [`MinMax`]) and allocation-free.
//! Non-finite values are skipped by both `add` and `remove` (so they stay symmetric): a NaN that
//! slipped through would otherwise poison the sums for as long as the window is non-empty, and
//! `count()` is the number of finite samples in the window.
//!
//! Numerical stability: sums are kept relative to a reference value (and, for time, a reference
//! instant) that is moved towards the window mean whenever the mean drifts more than two standard
//! deviations away from it. That keeps `Σd² − (Σd)²/n` free of catastrophic cancellation without
//! ever needing to see the whole window again.

use thiserror::Error;

use super::model::Ts;

/// The reference is re-based when `mean² > REBASE_RATIO · variance` (offsets in the sums), i.e.
/// when the mean sits more than `√REBASE_RATIO` standard deviations away from the reference.
const REBASE_RATIO: f64 = 4.0;

/// Errors from constructing or feeding a statistic.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StatsError {
    #[error("invalid parameter {name} = {value}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: f64,
        reason: &'static str,
    },
    #[error("min/max window is full ({capacity} samples); the sample is not tracked")]
    CapacityExceeded { capacity: usize },
}

/// Running sums of `d = v − reference`, with the reference moved when the mean drifts.
#[derive(Debug, Clone, Default)]
struct ShiftedSums {
    reference: f64,
    sum: f64,
    sum_sq: f64,
}

impl ShiftedSums {
    fn offset(&self, v: f64) -> f64 {
        v - self.reference
    }

    /// `true` when the mean offset is large compared with the spread (`(1+R)·S² > R·n·S₂`).
    fn needs_rebase(&self, n: f64) -> bool {
        (1.0 + REBASE_RATIO) * self.sum * self.sum > REBASE_RATIO * n * self.sum_sq
    }

    /// Moves the reference to the current mean; returns the exact shift applied so that other
    /// sums depending on the offsets (cross products) can be shifted consistently.
    fn rebase(&mut self, n: f64) -> f64 {
        let wanted = self.sum / n;
        let new_reference = self.reference + wanted;
        let shift = new_reference - self.reference;
        if shift == 0.0 || !shift.is_finite() {
            return 0.0;
        }
        self.sum_sq += shift * (n * shift - 2.0 * self.sum);
        self.sum -= n * shift;
        self.reference = new_reference;
        shift
    }

    /// Σ(d − mean)², never negative.
    fn centered_sq(&self, n: f64) -> f64 {
        (self.sum_sq - self.sum * self.sum / n).max(0.0)
    }
}

/// Count, mean and variance over a sliding window.
#[derive(Debug, Clone, Default)]
pub struct Moments {
    count: u64,
    sums: ShiftedSums,
}

impl Moments {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, _t: Ts, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.count == 0 {
            self.sums = ShiftedSums {
                reference: v,
                ..ShiftedSums::default()
            };
        }
        let d = self.sums.offset(v);
        self.count += 1;
        self.sums.sum += d;
        self.sums.sum_sq += d * d;
        self.rebase_if_drifted();
    }

    pub fn remove(&mut self, _t: Ts, v: f64) {
        if !v.is_finite() {
            return;
        }
        match self.count {
            0 => {}
            1 => self.clear(),
            _ => {
                let d = self.sums.offset(v);
                self.count -= 1;
                self.sums.sum -= d;
                self.sums.sum_sq -= d * d;
                self.rebase_if_drifted();
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    fn rebase_if_drifted(&mut self) {
        let n = self.count as f64;
        if self.sums.needs_rebase(n) {
            self.sums.rebase(n);
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sums.reference + self.sums.sum / self.count as f64)
    }

    /// Sample variance (divides by n − 1); `None` below two samples.
    pub fn variance(&self) -> Option<f64> {
        (self.count >= 2).then(|| {
            let n = self.count as f64;
            self.sums.centered_sq(n) / (n - 1.0)
        })
    }

    /// Sample standard deviation; `None` below two samples.
    pub fn std(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }
}

/// Least-squares line `v ≈ a + b·t` over a sliding window, with the residual RMS ("noise").
///
/// Time is kept as integer milliseconds relative to a moving origin `t0`, so the sums never see
/// the ~1.7e12 ms epoch offset and stay exact integers for windows of normal size.
#[derive(Debug, Clone, Default)]
pub struct Regression {
    count: u64,
    t0: Ts,
    /// Σx and Σx² with x = t − t0 in ms.
    time: ShiftedSums,
    /// Σy and Σy² with y = v − reference.
    value: ShiftedSums,
    /// Σx·y.
    sum_xy: f64,
}

/// The fitted line's characteristics in centred form.
struct Centered {
    n: f64,
    sxx: f64,
    sxy: f64,
}

impl Regression {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, t: Ts, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.count == 0 {
            *self = Self {
                t0: t,
                value: ShiftedSums {
                    reference: v,
                    ..ShiftedSums::default()
                },
                ..Self::default()
            };
        }
        let x = self.x(t);
        let y = self.value.offset(v);
        self.count += 1;
        self.time.sum += x;
        self.time.sum_sq += x * x;
        self.value.sum += y;
        self.value.sum_sq += y * y;
        self.sum_xy += x * y;
        self.rebase_if_drifted();
    }

    pub fn remove(&mut self, t: Ts, v: f64) {
        if !v.is_finite() {
            return;
        }
        match self.count {
            0 => {}
            1 => self.clear(),
            _ => {
                let x = self.x(t);
                let y = self.value.offset(v);
                self.count -= 1;
                self.time.sum -= x;
                self.time.sum_sq -= x * x;
                self.value.sum -= y;
                self.value.sum_sq -= y * y;
                self.sum_xy -= x * y;
                self.rebase_if_drifted();
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Offset from the origin in ms. The i128 fallback (a slow library call) only runs for
    /// instants so far apart that the i64 difference overflows.
    fn x(&self, t: Ts) -> f64 {
        match t.checked_sub(self.t0) {
            Some(d) => d as f64,
            None => (i128::from(t) - i128::from(self.t0)) as f64,
        }
    }

    fn rebase_if_drifted(&mut self) {
        let n = self.count as f64;
        if self.time.needs_rebase(n) {
            // Whole milliseconds keep x integral, so the time sums stay exact.
            let wanted = (self.time.sum / n).round() as i64;
            let new_t0 = self.t0.saturating_add(wanted);
            let shift = self.x(new_t0);
            if shift != 0.0 {
                self.time.sum_sq += shift * (n * shift - 2.0 * self.time.sum);
                self.time.sum -= n * shift;
                self.sum_xy -= shift * self.value.sum;
                self.t0 = new_t0;
            }
        }
        if self.value.needs_rebase(n) {
            let shift = self.value.rebase(n);
            self.sum_xy -= shift * self.time.sum;
        }
    }

    fn centered(&self) -> Option<Centered> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let sxx = self.time.centered_sq(n);
        if sxx <= 0.0 || !sxx.is_finite() {
            return None;
        }
        let sxy = self.sum_xy - self.time.sum * self.value.sum / n;
        Some(Centered { n, sxx, sxy })
    }

    fn slope_per_ms(&self) -> Option<f64> {
        self.centered().map(|c| c.sxy / c.sxx)
    }

    /// Slope of the fitted line in value units per second; `None` with fewer than two samples or
    /// when all samples share one timestamp.
    pub fn slope_per_s(&self) -> Option<f64> {
        self.slope_per_ms().map(|b| b * 1000.0)
    }

    /// RMS of the residuals around the fitted line (divides by n): the detrended noise level.
    pub fn residual_rms(&self) -> Option<f64> {
        let c = self.centered()?;
        let syy = self.value.centered_sq(c.n);
        let ssr = (syy - c.sxy * c.sxy / c.sxx).max(0.0);
        Some((ssr / c.n).sqrt())
    }

    /// The point the fitted line passes through: (mean time in ms since the epoch, mean value).
    pub fn centroid(&self) -> Option<(f64, f64)> {
        (self.count > 0).then(|| {
            let n = self.count as f64;
            (
                self.t0 as f64 + self.time.sum / n,
                self.value.reference + self.value.sum / n,
            )
        })
    }

    /// Value of the fitted line at `t`. This is the intercept in usable form: an intercept at the
    /// epoch would sit 1.7e12 ms away from the data and mean nothing.
    pub fn predict_at(&self, t: Ts) -> Option<f64> {
        let b = self.slope_per_ms()?;
        let n = self.count as f64;
        let dx = self.x(t) - self.time.sum / n;
        Some(self.value.reference + self.value.sum / n + b * dx)
    }

    /// Milliseconds from `now` until the fitted line reaches `limit`. `None` when the line is flat,
    /// undefined, or moving away from the limit; `Some(0)` when it sits exactly on it.
    pub fn time_to_reach(&self, limit: f64, now: Ts) -> Option<i64> {
        let b = self.slope_per_ms()?;
        if b == 0.0 {
            return None;
        }
        let dt = (limit - self.predict_at(now)?) / b;
        // `as` saturates for very distant crossings, which is what a caller comparing against a
        // lead time wants.
        (dt.is_finite() && dt >= 0.0).then(|| dt.ceil() as i64)
    }
}

/// Fixed-capacity ring buffer of (sequence number, value) used as a monotonic deque.
#[derive(Debug, Clone)]
struct MonoDeque {
    items: Vec<(u64, f64)>,
    head: usize,
    len: usize,
}

impl MonoDeque {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            items: vec![(0, 0.0); capacity],
            head: 0,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.items.len()
    }

    fn slot(&self, i: usize) -> usize {
        let j = self.head + i;
        if j >= self.capacity() {
            j - self.capacity()
        } else {
            j
        }
    }

    fn front(&self) -> Option<(u64, f64)> {
        (self.len > 0).then(|| self.items[self.head])
    }

    fn back(&self) -> Option<(u64, f64)> {
        (self.len > 0).then(|| self.items[self.slot(self.len - 1)])
    }

    fn pop_front(&mut self) {
        if self.len > 0 {
            self.head = self.slot(1);
            self.len -= 1;
        }
    }

    fn pop_back(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// Returns `false` (and drops the item) when full.
    fn push_back(&mut self, item: (u64, f64)) -> bool {
        if self.len == self.capacity() {
            return false;
        }
        let i = self.slot(self.len);
        self.items[i] = item;
        self.len += 1;
        true
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Window minimum and maximum via monotonic deques (amortised O(1) per sample).
///
/// Storage is allocated once in [`MinMax::new`]; `capacity` must be at least the largest number
/// of samples the window can hold.
#[derive(Debug, Clone)]
pub struct MinMax {
    /// Values in decreasing order; the front is the window maximum.
    maxima: MonoDeque,
    /// Values in increasing order; the front is the window minimum.
    minima: MonoDeque,
    /// Sequence number of the next sample to enter and of the next (oldest) sample to leave.
    next_in: u64,
    next_out: u64,
}

impl MinMax {
    pub fn new(capacity: usize) -> Self {
        Self {
            maxima: MonoDeque::with_capacity(capacity),
            minima: MonoDeque::with_capacity(capacity),
            next_in: 0,
            next_out: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.maxima.capacity()
    }

    /// Adds the newest sample. When the window holds more samples than `capacity` the sample is
    /// counted but cannot be tracked, and min/max may be wrong until it leaves; that is a caller
    /// bug, reported as [`StatsError::CapacityExceeded`].
    pub fn add(&mut self, _t: Ts, v: f64) -> Result<(), StatsError> {
        if !v.is_finite() {
            return Ok(());
        }
        let seq = self.next_in;
        self.next_in += 1;
        while self.maxima.back().is_some_and(|(_, m)| m <= v) {
            self.maxima.pop_back();
        }
        while self.minima.back().is_some_and(|(_, m)| m >= v) {
            self.minima.pop_back();
        }
        let tracked = self.maxima.push_back((seq, v)) & self.minima.push_back((seq, v));
        if tracked {
            Ok(())
        } else {
            Err(StatsError::CapacityExceeded {
                capacity: self.capacity(),
            })
        }
    }

    /// Removes the oldest sample. Samples leave in arrival order, so the sequence number alone
    /// identifies it; `v` is only checked for finiteness, mirroring `add`.
    pub fn remove(&mut self, _t: Ts, v: f64) {
        if !v.is_finite() || self.next_out == self.next_in {
            return;
        }
        let seq = self.next_out;
        self.next_out += 1;
        if self.maxima.front().is_some_and(|(s, _)| s == seq) {
            self.maxima.pop_front();
        }
        if self.minima.front().is_some_and(|(s, _)| s == seq) {
            self.minima.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.maxima.clear();
        self.minima.clear();
        self.next_in = 0;
        self.next_out = 0;
    }

    pub fn count(&self) -> u64 {
        self.next_in - self.next_out
    }

    pub fn max(&self) -> Option<f64> {
        self.maxima.front().map(|(_, v)| v)
    }

    pub fn min(&self) -> Option<f64> {
        self.minima.front().map(|(_, v)| v)
    }

    /// A stuck sensor: at least two samples and not a single bit of change.
    pub fn is_frozen(&self) -> bool {
        self.count() >= 2 && matches!((self.min(), self.max()), (Some(lo), Some(hi)) if lo == hi)
    }
}

/// Exponentially weighted mean and variance (not windowed): `m ← m + λ(v − m)`.
#[derive(Debug, Clone)]
pub struct Ewma {
    lambda: f64,
    count: u64,
    mean: f64,
    variance: f64,
}

impl Ewma {
    /// `lambda` is the weight of the newest sample, in (0, 1].
    pub fn new(lambda: f64) -> Result<Self, StatsError> {
        if !(lambda > 0.0 && lambda <= 1.0) {
            return Err(StatsError::InvalidParameter {
                name: "lambda",
                value: lambda,
                reason: "must be in (0, 1]",
            });
        }
        Ok(Self {
            lambda,
            count: 0,
            mean: 0.0,
            variance: 0.0,
        })
    }

    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Non-finite values are ignored: one bad sample must not poison the baseline forever.
    pub fn update(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if self.count == 0 {
            self.mean = v;
            self.variance = 0.0;
        } else {
            // West/Finch incremental form: stable, and the variance can never go negative.
            let diff = v - self.mean;
            let step = self.lambda * diff;
            self.mean += step;
            self.variance = (1.0 - self.lambda) * (self.variance + diff * step);
        }
        self.count += 1;
    }

    pub fn reset(&mut self) {
        self.count = 0;
        self.mean = 0.0;
        self.variance = 0.0;
    }

    /// Number of updates so far; callers compare it with a warm-up length (≈ 2/λ) before trusting
    /// the baseline.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    pub fn variance(&self) -> Option<f64> {
        (self.count >= 2).then_some(self.variance)
    }

    pub fn std(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }

    /// Standardised distance of `v` from the baseline. Call before `update(v)` so the sample is
    /// judged against the past. `None` until two samples or while the spread is zero.
    pub fn zscore(&self, v: f64) -> Option<f64> {
        let std = self.std()?;
        let z = (v - self.mean) / std;
        (std > 0.0 && z.is_finite()).then_some(z)
    }
}

/// Output of one CUSUM step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CusumState {
    /// Accumulated evidence of an upward shift, in σ.
    pub upper: f64,
    /// Accumulated evidence of a downward shift, in σ (non-negative).
    pub lower: f64,
    /// `upper > h` or `lower > h`.
    pub alarm: bool,
}

/// Two-sided tabular CUSUM on standardised residuals (z-scores).
#[derive(Debug, Clone)]
pub struct Cusum {
    k: f64,
    h: f64,
    upper: f64,
    lower: f64,
}

impl Cusum {
    /// `k`: slack (allowance), typically half the shift to detect, in σ. `h`: decision threshold
    /// in σ (4–5 is customary).
    pub fn new(k: f64, h: f64) -> Result<Self, StatsError> {
        if !(k.is_finite() && k >= 0.0) {
            return Err(StatsError::InvalidParameter {
                name: "k",
                value: k,
                reason: "must be finite and non-negative",
            });
        }
        if !(h.is_finite() && h > 0.0) {
            return Err(StatsError::InvalidParameter {
                name: "h",
                value: h,
                reason: "must be finite and positive",
            });
        }
        Ok(Self {
            k,
            h,
            upper: 0.0,
            lower: 0.0,
        })
    }

    /// Feeds one z-score. Non-finite values are skipped (state unchanged), so a bad sample can
    /// neither trigger nor silently clear the alarm.
    pub fn update(&mut self, z: f64) -> CusumState {
        if z.is_finite() {
            self.upper = (self.upper + z - self.k).max(0.0);
            self.lower = (self.lower - z - self.k).max(0.0);
        }
        self.state()
    }

    pub fn state(&self) -> CusumState {
        CusumState {
            upper: self.upper,
            lower: self.lower,
            alarm: self.upper > self.h || self.lower > self.h,
        }
    }

    pub fn reset(&mut self) {
        self.upper = 0.0;
        self.lower = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    const EPOCH: Ts = 1_764_000_000_000;

    /// Deterministic test noise: splitmix64 + Box–Muller, no extra dependency.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        fn normal(&mut self) -> f64 {
            let u1 = self.uniform().max(1e-300);
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }

    fn naive_mean_var(window: &VecDeque<(Ts, f64)>) -> (f64, f64) {
        let n = window.len() as f64;
        let mean = window.iter().map(|s| s.1).sum::<f64>() / n;
        let var = window.iter().map(|s| (s.1 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    /// Two-pass least squares on the window: (slope per s, residual rms).
    fn naive_fit(window: &VecDeque<(Ts, f64)>) -> (f64, f64) {
        let n = window.len() as f64;
        let base = window[0].0;
        let xs: Vec<f64> = window.iter().map(|s| (s.0 - base) as f64).collect();
        let mx = xs.iter().sum::<f64>() / n;
        let my = window.iter().map(|s| s.1).sum::<f64>() / n;
        let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
        let sxy: f64 = xs
            .iter()
            .zip(window)
            .map(|(x, s)| (x - mx) * (s.1 - my))
            .sum();
        let b = sxy / sxx;
        let ssr: f64 = xs
            .iter()
            .zip(window)
            .map(|(x, s)| (s.1 - my - b * (x - mx)).powi(2))
            .sum();
        (b * 1000.0, (ssr / n).sqrt())
    }

    /// Random walk of window sizes in 0..=max_len; returns the worst relative errors seen.
    fn churn(
        steps: usize,
        max_len: usize,
        mut value: impl FnMut(&mut Rng, usize) -> f64,
        mut check: impl FnMut(&Moments, &Regression, &VecDeque<(Ts, f64)>),
    ) {
        let mut rng = Rng(42);
        let mut moments = Moments::new();
        let mut regression = Regression::new();
        let mut window = VecDeque::new();
        let mut t = EPOCH;
        for step in 0..steps {
            let grow = window.is_empty() || (window.len() < max_len && rng.uniform() < 0.5);
            if grow {
                t += 100 + (rng.next_u64() % 900) as i64;
                let v = value(&mut rng, step);
                moments.add(t, v);
                regression.add(t, v);
                window.push_back((t, v));
            } else if let Some((ot, ov)) = window.pop_front() {
                moments.remove(ot, ov);
                regression.remove(ot, ov);
            }
            if step % 997 == 0 && window.len() >= 3 {
                check(&moments, &regression, &window);
            }
        }
        if window.len() >= 3 {
            check(&moments, &regression, &window);
        }
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
    }

    fn assert_matches_naive(offset: f64, spread: f64) {
        let mut worst_var = 0.0f64;
        let mut worst_mean = 0.0f64;
        churn(
            1_000_000,
            600,
            |rng, _| offset + spread * (2.0 * rng.uniform() - 1.0),
            |m, _, w| {
                let (mean, var) = naive_mean_var(w);
                worst_mean = worst_mean.max((m.mean().unwrap() - mean).abs() / spread);
                worst_var = worst_var.max(rel(m.variance().unwrap(), var));
                assert_eq!(m.count(), w.len() as u64);
            },
        );
        assert!(worst_mean < 1e-10, "mean error {worst_mean:e} of spread");
        assert!(worst_var < 1e-9, "variance relative error {worst_var:e}");
    }

    #[test]
    fn moments_stay_accurate_over_a_million_steps_at_950() {
        assert_matches_naive(950.0, 5.0);
    }

    #[test]
    fn moments_stay_accurate_over_a_million_steps_at_4_2() {
        assert_matches_naive(4.2, 0.05);
    }

    #[test]
    fn moments_and_fit_follow_a_drifting_signal() {
        // Slow drift from 950 to ~1950 with 0.05 noise forces many re-bases.
        let mut worst_var = 0.0f64;
        let mut worst_slope = 0.0f64;
        let mut worst_rms = 0.0f64;
        churn(
            1_000_000,
            600,
            |rng, step| 950.0 + step as f64 * 1e-3 + 0.05 * rng.normal(),
            |m, r, w| {
                let (_, var) = naive_mean_var(w);
                worst_var = worst_var.max(rel(m.variance().unwrap(), var));
                let (slope, rms) = naive_fit(w);
                worst_slope = worst_slope.max(rel(r.slope_per_s().unwrap(), slope));
                worst_rms = worst_rms.max(rel(r.residual_rms().unwrap(), rms));
            },
        );
        assert!(worst_var < 1e-8, "variance relative error {worst_var:e}");
        assert!(worst_slope < 1e-7, "slope relative error {worst_slope:e}");
        assert!(worst_rms < 1e-7, "rms relative error {worst_rms:e}");
    }

    #[test]
    fn regression_matches_naive_fit_over_a_million_steps() {
        let mut worst_rms = 0.0f64;
        let mut worst_slope = 0.0f64;
        churn(
            1_000_000,
            600,
            |rng, _| 4.2 + 0.05 * rng.normal(),
            |_, r, w| {
                let (slope, rms) = naive_fit(w);
                // Pure noise has a slope near zero, so compare against the slope's scale.
                let span_s = (w[w.len() - 1].0 - w[0].0) as f64 / 1000.0;
                worst_slope = worst_slope.max((r.slope_per_s().unwrap() - slope).abs() * span_s);
                worst_rms = worst_rms.max(rel(r.residual_rms().unwrap(), rms));
            },
        );
        assert!(worst_slope < 1e-9, "slope error × span {worst_slope:e}");
        assert!(worst_rms < 1e-8, "rms relative error {worst_rms:e}");
    }

    #[test]
    fn moments_known_values() {
        let mut m = Moments::new();
        assert_eq!(m.mean(), None);
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            m.add(0, v);
        }
        assert_eq!(m.count(), 8);
        assert!((m.mean().unwrap() - 5.0).abs() < 1e-12);
        assert!((m.variance().unwrap() - 32.0 / 7.0).abs() < 1e-12);
        m.remove(0, 2.0);
        m.remove(0, 4.0);
        // Remaining: 4 4 5 5 7 9 -> mean 34/6.
        assert!((m.mean().unwrap() - 34.0 / 6.0).abs() < 1e-12);
        for v in [4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            m.remove(0, v);
        }
        assert_eq!(m.count(), 0);
        assert_eq!(m.variance(), None);
        m.remove(0, 1.0); // Removing from empty is a no-op.
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn slope_of_a_perfect_line_at_epoch_scale() {
        // 5-min fit at 6-s averages: 50 points of v = 4.7 + 0.0014/60 per s (1.4 nΩ/min in μΩ).
        let per_s = 0.0014 / 60.0;
        let mut r = Regression::new();
        for i in 0..50 {
            let t = EPOCH + i * 6_000;
            r.add(t, 4.7 + per_s * (i * 6) as f64);
        }
        assert!(rel(r.slope_per_s().unwrap(), per_s) < 1e-9);
        let rms = r.residual_rms().unwrap();
        // Σy² − (Σxy)²/Σx² cancels for a perfect line; 1e-9 against a 2e-3 spread is round-off.
        assert!(rms < 1e-9, "{rms:e}");
        let end = EPOCH + 49 * 6_000;
        assert!((r.predict_at(end).unwrap() - (4.7 + per_s * 294.0)).abs() < 1e-12);
        let (ct, cv) = r.centroid().unwrap();
        assert!((ct - (EPOCH as f64 + 147_000.0)).abs() < 1e-3);
        assert!((cv - (4.7 + per_s * 147.0)).abs() < 1e-12);
        // +0.15 μΩ from the end point at 0.0014 μΩ/min is 107.14 min away.
        let ttr = r.time_to_reach(4.7 + per_s * 294.0 + 0.15, end).unwrap();
        assert!((ttr - 6_428_572).abs() <= 1, "{ttr}");
        assert_eq!(r.time_to_reach(4.0, end), None, "moving away");
    }

    #[test]
    fn regression_undefined_cases() {
        let mut r = Regression::new();
        assert_eq!(r.slope_per_s(), None);
        r.add(EPOCH, 1.0);
        assert_eq!(r.slope_per_s(), None);
        assert_eq!(r.residual_rms(), None);
        r.add(EPOCH, 2.0);
        assert_eq!(r.slope_per_s(), None, "zero time spread");
        assert_eq!(r.predict_at(EPOCH), None);
        r.add(EPOCH + 1000, 2.0);
        assert!(r.slope_per_s().is_some());

        let mut flat = Regression::new();
        flat.add(EPOCH, 3.0);
        flat.add(EPOCH + 1000, 3.0);
        assert_eq!(flat.slope_per_s(), Some(0.0));
        assert_eq!(flat.time_to_reach(4.0, EPOCH + 1000), None);
        assert_eq!(flat.time_to_reach(3.0, EPOCH + 1000), None);
    }

    #[test]
    fn residual_rms_of_line_plus_sine() {
        // 10 full periods of a 20 mV sine (1 Hz bubble noise sampled at 10 Hz) on a ramp.
        let amp = 0.020;
        let mut r = Regression::new();
        let mut window = VecDeque::new();
        for i in 0..1000 {
            let t = EPOCH + i * 100;
            let s = i as f64 / 10.0;
            let v = 4.3 + 0.001 * s + amp * (2.0 * std::f64::consts::PI * s).sin();
            r.add(t, v);
            window.push_back((t, v));
        }
        let (slope, rms) = naive_fit(&window);
        assert!(rel(r.residual_rms().unwrap(), rms) < 1e-9);
        assert!(rel(r.slope_per_s().unwrap(), slope) < 1e-9);
        // The sine leaks slightly into the slope over a finite window, hence the loose bounds.
        assert!((r.residual_rms().unwrap() - amp / 2f64.sqrt()).abs() < 0.02 * amp);
        assert!((r.slope_per_s().unwrap() - 0.001).abs() < 2e-4);
    }

    #[test]
    fn sliding_window_forgets_old_trend() {
        let mut r = Regression::new();
        let mut window = VecDeque::new();
        // Rising for 600 samples, then flat; after a full window of flat data the slope is 0.
        for i in 0..1200i64 {
            let t = EPOCH + i * 500;
            let v = if i < 600 { i as f64 * 0.01 } else { 6.0 };
            r.add(t, v);
            window.push_back((t, v));
            if window.len() > 600 {
                let (ot, ov) = window.pop_front().unwrap();
                r.remove(ot, ov);
            }
        }
        assert!(r.slope_per_s().unwrap().abs() < 1e-12);
        assert!(r.residual_rms().unwrap() < 1e-9);
    }

    #[test]
    fn minmax_tracks_window_and_frozen() {
        let mut mm = MinMax::new(4);
        assert_eq!(mm.max(), None);
        assert!(!mm.is_frozen());
        let values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        let mut window = VecDeque::new();
        for (i, &v) in values.iter().enumerate() {
            mm.add(i as Ts, v).unwrap();
            window.push_back(v);
            if window.len() > 3 {
                let old = window.pop_front().unwrap();
                mm.remove(0, old);
            }
            let lo = window.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = window.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            assert_eq!((mm.min(), mm.max()), (Some(lo), Some(hi)), "step {i}");
        }

        let mut stuck = MinMax::new(8);
        stuck.add(0, 4.25).unwrap();
        assert!(!stuck.is_frozen(), "one sample proves nothing");
        stuck.add(1, 4.25).unwrap();
        stuck.add(2, 4.25).unwrap();
        assert!(stuck.is_frozen());
        stuck.add(3, 4.250_000_000_000_001).unwrap();
        assert!(!stuck.is_frozen(), "any change at all unfreezes");
    }

    #[test]
    fn minmax_reports_overflow() {
        let mut mm = MinMax::new(2);
        mm.add(0, 1.0).unwrap();
        mm.add(1, 2.0).unwrap();
        // Decreasing values fill the max deque.
        let mut dec = MinMax::new(2);
        dec.add(0, 3.0).unwrap();
        dec.add(1, 2.0).unwrap();
        assert_eq!(
            dec.add(2, 1.0),
            Err(StatsError::CapacityExceeded { capacity: 2 })
        );
        assert_eq!(dec.count(), 3);
        // Removing everything leaves it consistent and empty.
        for _ in 0..3 {
            dec.remove(0, 0.0);
        }
        assert_eq!((dec.count(), dec.max()), (0, None));
        dec.add(3, 7.0).unwrap();
        assert_eq!(dec.max(), Some(7.0));
    }

    #[test]
    fn ewma_mean_and_variance() {
        assert!(Ewma::new(0.0).is_err());
        assert!(Ewma::new(1.5).is_err());
        assert!(Ewma::new(f64::NAN).is_err());
        let mut e = Ewma::new(0.2).unwrap();
        assert_eq!(e.zscore(1.0), None);
        e.update(10.0);
        assert_eq!(e.mean(), Some(10.0));
        assert_eq!(e.std(), None);
        e.update(20.0);
        // m = 10 + 0.2·10 = 12; var = 0.8·(0 + 10·2) = 16.
        assert!((e.mean().unwrap() - 12.0).abs() < 1e-12);
        assert!((e.variance().unwrap() - 16.0).abs() < 1e-12);
        assert!((e.zscore(20.0).unwrap() - 2.0).abs() < 1e-12);
        e.update(f64::NAN);
        assert_eq!(e.count(), 2, "NaN is ignored");

        // Converges to the stationary mean and σ of unit Gaussian noise.
        let mut rng = Rng(7);
        let mut e = Ewma::new(0.01).unwrap();
        for _ in 0..20_000 {
            e.update(5.0 + rng.normal());
        }
        assert!((e.mean().unwrap() - 5.0).abs() < 0.3);
        assert!((e.std().unwrap() - 1.0).abs() < 0.2);
    }

    #[test]
    fn ewma_constant_input_has_no_zscore() {
        let mut e = Ewma::new(0.2).unwrap();
        for _ in 0..10 {
            e.update(4.0);
        }
        assert_eq!(e.std(), Some(0.0));
        assert_eq!(e.zscore(5.0), None);
    }

    #[test]
    fn cusum_basic_accumulation() {
        assert!(Cusum::new(-1.0, 5.0).is_err());
        assert!(Cusum::new(0.5, 0.0).is_err());
        let mut c = Cusum::new(0.5, 4.0).unwrap();
        let s = c.update(1.5);
        assert_eq!((s.upper, s.lower, s.alarm), (1.0, 0.0, false));
        for _ in 0..3 {
            c.update(1.5);
        }
        let s = c.update(1.5);
        assert_eq!((s.upper, s.alarm), (5.0, true));
        let s = c.update(f64::NAN);
        assert_eq!((s.upper, s.alarm), (5.0, true), "NaN changes nothing");
        c.reset();
        assert_eq!(c.state().upper, 0.0);
        for _ in 0..5 {
            c.update(-2.0);
        }
        assert!(c.state().alarm && c.state().lower > 4.0);
    }

    #[test]
    fn cusum_detects_one_sigma_shift_within_expected_run_length() {
        // k = 0.5, h = 5: ARL ≈ 10.4 samples for a 1σ shift, ≈ 465 in control (one side).
        let mut rng = Rng(2024);
        let runs = 2000;
        let mut total_delay = 0u64;
        let mut false_alarms = 0;
        for _ in 0..runs {
            let mut c = Cusum::new(0.5, 5.0).unwrap();
            for _ in 0..50 {
                if c.update(rng.normal()).alarm {
                    false_alarms += 1;
                    c.reset();
                }
            }
            c.reset();
            let mut delay = 0;
            loop {
                delay += 1;
                if c.update(1.0 + rng.normal()).alarm {
                    break;
                }
                assert!(delay < 200, "shift never detected");
            }
            total_delay += delay;
        }
        let mean_delay = total_delay as f64 / runs as f64;
        assert!((9.0..12.0).contains(&mean_delay), "mean delay {mean_delay}");
        // 100k in-control samples at two-sided ARL0 ≈ 233 give ≈ 430 alarms.
        assert!(false_alarms < 700, "false alarms {false_alarms}");
    }

    #[test]
    fn non_finite_samples_are_skipped_symmetrically() {
        let mut m = Moments::new();
        let mut r = Regression::new();
        let mut mm = MinMax::new(4);
        let samples = [
            (0, 1.0),
            (1000, f64::NAN),
            (2000, 3.0),
            (3000, f64::INFINITY),
        ];
        for (t, v) in samples {
            m.add(EPOCH + t, v);
            r.add(EPOCH + t, v);
            mm.add(EPOCH + t, v).unwrap();
        }
        assert_eq!((m.count(), r.count(), mm.count()), (2, 2, 2));
        assert_eq!(m.mean(), Some(2.0));
        assert_eq!(r.slope_per_s(), Some(1.0));
        assert_eq!(mm.max(), Some(3.0));
        for (t, v) in &samples[..2] {
            m.remove(EPOCH + t, *v);
            r.remove(EPOCH + t, *v);
            mm.remove(EPOCH + t, *v);
        }
        assert_eq!(
            (m.mean(), mm.min(), mm.max()),
            (Some(3.0), Some(3.0), Some(3.0))
        );
        assert_eq!(r.count(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(i64, f64),
        Remove,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0i64..10_000_000, -1e9f64..1e9).prop_map(|(dt, v)| Op::Add(dt, v)),
            Just(Op::Remove),
        ]
    }

    fn finite_or_none(x: Option<f64>) -> bool {
        x.is_none_or(f64::is_finite)
    }

    proptest! {
        #[test]
        fn arbitrary_add_remove_never_panics_and_stays_finite(
            start in -4_000_000_000_000i64..4_000_000_000_000,
            ops in proptest::collection::vec(op(), 0..300),
        ) {
            let mut m = Moments::new();
            let mut r = Regression::new();
            let mut mm = MinMax::new(300);
            let mut window = VecDeque::new();
            let mut t = start;
            for op in ops {
                match op {
                    Op::Add(dt, v) => {
                        t += dt;
                        m.add(t, v);
                        r.add(t, v);
                        prop_assert!(mm.add(t, v).is_ok());
                        window.push_back((t, v));
                    }
                    Op::Remove => {
                        let (ot, ov) = window.pop_front().unwrap_or((t, 0.0));
                        m.remove(ot, ov);
                        r.remove(ot, ov);
                        mm.remove(ot, ov);
                    }
                }
                prop_assert_eq!(m.count(), window.len() as u64);
                prop_assert_eq!(r.count(), window.len() as u64);
                prop_assert_eq!(mm.count(), window.len() as u64);
                prop_assert!(finite_or_none(m.mean()) && finite_or_none(m.std()));
                prop_assert!(finite_or_none(r.slope_per_s()));
                prop_assert!(finite_or_none(r.residual_rms()));
                prop_assert!(finite_or_none(r.predict_at(t)));
                let lo = window.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
                let hi = window.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                if !window.is_empty() {
                    prop_assert_eq!((mm.min(), mm.max()), (Some(lo), Some(hi)));
                    let mean = m.mean().unwrap();
                    prop_assert!(mean >= lo - 1e-6 * lo.abs().max(1.0));
                    prop_assert!(mean <= hi + 1e-6 * hi.abs().max(1.0));
                }
            }
        }

        #[test]
        fn ewma_and_cusum_stay_finite(values in proptest::collection::vec(-1e12f64..1e12, 0..200)) {
            let mut e = Ewma::new(0.2).unwrap();
            let mut c = Cusum::new(0.5, 5.0).unwrap();
            for v in values {
                let z = e.zscore(v);
                prop_assert!(finite_or_none(z));
                e.update(v);
                prop_assert!(finite_or_none(e.mean()) && finite_or_none(e.std()));
                let s = c.update(z.unwrap_or(0.0));
                prop_assert!(s.upper.is_finite() && s.lower.is_finite());
            }
        }
    }
}
