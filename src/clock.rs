//! The only place that reads the system clock. Everything else is given `now` (wall time, for
//! timestamps) or `mono` (the monotonic timeline, for timers and latencies). `clippy.toml`
//! forbids clock reads anywhere else.
// The one module allowed to read the clocks.
#![allow(clippy::disallowed_methods)]

use std::ops::{Add, Sub};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::model::Ts;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Ts;

    /// The monotonic timeline: timers, deadlines and latencies. Never steps, not even when
    /// `now` follows a step of the system clock. Clocks that never step can use `now`.
    fn mono(&self) -> Mono {
        Mono::from_millis(self.now())
    }

    /// Follows a forward step of the system clock larger than `max_drift_ms` (e.g. NTP setting
    /// the time of a gateway without a battery-backed clock after boot); returns the step.
    /// Clocks that never step return None.
    fn resync(&self, _max_drift_ms: i64) -> Option<i64> {
        None
    }

    /// Both timelines from one reading: what hot paths that need both (a poll's end: its
    /// duration and its samples' timestamp) take, so the clock is read once.
    fn stamp(&self) -> (Mono, Ts) {
        (self.mono(), self.now())
    }
}

/// Wall time that never jumps: anchored to the system clock at start and advanced by the
/// monotonic clock, so a wall-clock step (NTP, operator) cannot fire or cancel alarm delays.
/// It re-anchors when the wall clock drifts more than `max_drift_ms` away, and reports it.
pub struct SystemClock {
    anchor_wall: AtomicI64,
    anchor_mono: Instant,
    /// The wall clock it anchors to: the system's, or a test's that steps.
    wall: WallSource,
}

/// Where wall time comes from.
pub type WallSource = Arc<dyn Fn() -> Ts + Send + Sync>;

impl std::fmt::Debug for SystemClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemClock")
            .field("anchor_wall", &self.anchor_wall)
            .field("anchor_mono", &self.anchor_mono)
            .finish_non_exhaustive()
    }
}

impl SystemClock {
    pub fn new() -> Arc<SystemClock> {
        SystemClock::with_wall(Arc::new(wall_ms))
    }

    /// A live clock over another wall clock: tests step it (a real step of the system clock
    /// needs root) and watch this clock re-anchor exactly as it does in the field.
    pub fn with_wall(wall: WallSource) -> Arc<SystemClock> {
        Arc::new(SystemClock {
            anchor_wall: AtomicI64::new(wall()),
            anchor_mono: Instant::now(),
            wall,
        })
    }

    /// Re-anchors to the wall clock if it moved more than `max_drift_ms` from our timeline;
    /// returns the step in ms when it did.
    fn resync_now(&self, max_drift_ms: i64) -> Option<i64> {
        let ours = self.now();
        let wall = (self.wall)();
        let step = wall - ours;
        // Only forward: a gateway that boots without a battery-backed clock gets its time later
        // (a step forward). Following a backward step would postpone pending alarm delays by
        // the step, so the timeline then keeps running monotonically instead.
        if step > max_drift_ms {
            let elapsed = self.anchor_mono.elapsed().as_millis() as i64;
            self.anchor_wall.store(wall - elapsed, Ordering::Relaxed);
            Some(step)
        } else {
            None
        }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Ts {
        self.anchor_wall.load(Ordering::Relaxed) + self.anchor_mono.elapsed().as_millis() as i64
    }

    fn mono(&self) -> Mono {
        Mono::from_micros(self.anchor_mono.elapsed().as_micros() as u64)
    }

    fn resync(&self, max_drift_ms: i64) -> Option<i64> {
        self.resync_now(max_drift_ms)
    }

    fn stamp(&self) -> (Mono, Ts) {
        let elapsed = self.anchor_mono.elapsed();
        let mono = Mono::from_micros(elapsed.as_micros() as u64);
        let wall = self.anchor_wall.load(Ordering::Relaxed) + elapsed.as_millis() as i64;
        (mono, wall)
    }
}

pub fn wall_ms() -> Ts {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A point on a clock's monotonic timeline, in microseconds from an origin of the clock's
/// choosing. Only differences mean something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(u64);

impl Mono {
    pub const ZERO: Mono = Mono(0);

    pub const fn from_micros(us: u64) -> Mono {
        Mono(us)
    }

    /// Negative milliseconds (a manual clock set before the epoch) count as the origin.
    pub fn from_millis(ms: i64) -> Mono {
        Mono((ms.max(0) as u64).saturating_mul(1_000))
    }

    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later.
    pub fn since(self, earlier: Mono) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(
            self.0
                .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

impl Sub<Duration> for Mono {
    type Output = Mono;
    fn sub(self, d: Duration) -> Mono {
        Mono(
            self.0
                .saturating_sub(u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        )
    }
}

/// Sleeps until `clock`'s monotonic timeline reaches `at` (at once if it has). With a manual
/// clock this waits the remaining time in real time and returns; the caller looks again.
pub async fn sleep_until(clock: &dyn Clock, at: Mono) {
    let wait = at.since(clock.mono());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

/// The instant `after` from now on tokio's timeline, for a timer that bounds an I/O wait (a
/// request's timeout). tokio's own clock, not a [`Clock`]: such timers measure real waits, and
/// tests with paused tokio time still move them.
#[allow(clippy::disallowed_methods)]
pub fn timer_deadline(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    // A duration past the end of time (no configured timeout is one): a year is never here.
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

/// Real elapsed time for tools and benchmarks that report how long something took (never for
/// decisions: those take `now`).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock tests move by hand. Wall time and the monotonic timeline are the same line here,
/// kept in microseconds so that state machines can be stepped finer than a millisecond.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_us: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Ts) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_us: AtomicI64::new(start.saturating_mul(1_000)),
        })
    }

    pub fn set(&self, t: Ts) {
        self.now_us
            .store(t.saturating_mul(1_000), Ordering::Relaxed);
    }

    pub fn advance(&self, ms: i64) {
        self.now_us
            .fetch_add(ms.saturating_mul(1_000), Ordering::Relaxed);
    }

    /// Moves forward to `at` on the monotonic timeline (never back).
    pub fn advance_to(&self, at: Mono) {
        let at = i64::try_from(at.as_micros()).unwrap_or(i64::MAX);
        self.now_us.fetch_max(at, Ordering::Relaxed);
    }

    pub fn advance_by(&self, d: Duration) {
        let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        self.now_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Ts {
        self.now_us.load(Ordering::Relaxed).div_euclid(1_000)
    }

    fn mono(&self) -> Mono {
        Mono::from_micros(self.now_us.load(Ordering::Relaxed).max(0) as u64)
    }
}

// Pure conversions live in core (payloads need them); re-exported for the shell.
pub use crate::core::time::{parse_ts, rfc3339_ms};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_345_953_123), "2025-11-28T16:05:53.123Z");
        assert_eq!(
            parse_ts("2025-11-28T16:05:53.123Z"),
            Some(1_764_345_953_123)
        );
        assert_eq!(parse_ts("1764345953123"), Some(1_764_345_953_123));
        assert_eq!(parse_ts("yesterday"), None);
    }

    #[test]
    fn mono_arithmetic_saturates() {
        let t = Mono::from_millis(5);
        assert_eq!(t.as_micros(), 5_000);
        assert_eq!(
            (t + Duration::from_millis(2)).since(t),
            Duration::from_millis(2)
        );
        assert_eq!(t.since(t + Duration::from_millis(2)), Duration::ZERO);
        assert_eq!(t - Duration::from_secs(1), Mono::ZERO);
        assert_eq!(Mono::from_millis(-3), Mono::ZERO);
        let m = ManualClock::new(1_000);
        let a = m.mono();
        m.advance(250);
        assert_eq!(m.mono().since(a), Duration::from_millis(250));
    }

    #[test]
    fn system_clock_mono_does_not_follow_a_step() {
        let c = SystemClock::new();
        let a = c.mono();
        c.anchor_wall.fetch_sub(3_600_000, Ordering::Relaxed);
        assert!(c.resync(1_000).is_some());
        assert!(c.mono().since(a) < Duration::from_secs(60));
    }

    #[test]
    fn system_clock_is_monotonic_and_resyncs_on_a_step() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert_eq!(c.resync(1_000), None);
        c.anchor_wall.fetch_sub(3_600_000, Ordering::Relaxed);
        let step = c.resync(1_000).unwrap();
        assert!((step - 3_600_000).abs() < 100);
        // A backward step is not followed.
        c.anchor_wall.fetch_add(3_600_000, Ordering::Relaxed);
        assert_eq!(c.resync(1_000), None);
    }

    #[test]
    fn a_stamp_reads_both_timelines_at_one_instant() {
        let c = SystemClock::new();
        c.anchor_wall.fetch_sub(3_600_000, Ordering::Relaxed);
        let (m0, w0) = (c.mono(), c.now());
        let (m, w) = c.stamp();
        let (m1, w1) = (c.mono(), c.now());
        assert!(m0 <= m && m <= m1);
        assert!(w0 <= w && w <= w1);
        // The same elapsed time behind both: wall minus mono is the anchor, to the millisecond.
        let anchor = c.anchor_wall.load(Ordering::Relaxed);
        assert_eq!(w - anchor, (m.as_micros() / 1_000) as i64);
    }
}
