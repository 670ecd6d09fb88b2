//! The only place that reads the system clock. Everything else is given `now`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::core::model::Ts;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Ts;

    /// Follows a forward step of the system clock larger than `max_drift_ms` (e.g. NTP setting
    /// the time of a gateway without a battery-backed clock after boot); returns the step.
    /// Clocks that never step return None.
    fn resync(&self, _max_drift_ms: i64) -> Option<i64> {
        None
    }
}

/// Wall time that never jumps: anchored to the system clock at start and advanced by the
/// monotonic clock, so a wall-clock step (NTP, operator) cannot fire or cancel alarm delays.
/// It re-anchors when the wall clock drifts more than `max_drift_ms` away, and reports it.
#[derive(Debug)]
pub struct SystemClock {
    anchor_wall: AtomicI64,
    anchor_mono: Instant,
}

impl SystemClock {
    pub fn new() -> Arc<SystemClock> {
        Arc::new(SystemClock {
            anchor_wall: AtomicI64::new(wall_ms()),
            anchor_mono: Instant::now(),
        })
    }

    /// Re-anchors to the wall clock if it moved more than `max_drift_ms` from our timeline;
    /// returns the step in ms when it did.
    fn resync_now(&self, max_drift_ms: i64) -> Option<i64> {
        let ours = self.now();
        let wall = wall_ms();
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

    fn resync(&self, max_drift_ms: i64) -> Option<i64> {
        self.resync_now(max_drift_ms)
    }
}

pub fn wall_ms() -> Ts {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Ts) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicI64::new(start),
        })
    }

    pub fn set(&self, t: Ts) {
        self.now.store(t, Ordering::Relaxed);
    }

    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Ts {
        self.now.load(Ordering::Relaxed)
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
}
