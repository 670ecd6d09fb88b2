//! Exponential backoff with jitter, the one implementation for links, units and sinks.
//!
//! Pure: no clock, no global state. Each user seeds its own generator from its name (link
//! key, sink client id) and a per-start salt, so retries of different links and sinks, and of
//! agents restarted together, spread out instead of firing in lockstep.

use std::time::Duration;

/// Doubling stops here; the cap is reached long before with any sane base.
const MAX_DOUBLINGS: u32 = 16;

/// Waits that grow as `base × 2^(failures − 1)` up to `cap`, each multiplied by a jitter
/// factor in [0.8, 1.2).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    rng: Jitter,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            base,
            cap,
            rng: Jitter::new(seed),
        }
    }

    /// The wait after `failures` failures in a row (1 = the first failure). A cap below the
    /// base counts as the base.
    pub fn delay(&mut self, failures: u32) -> Duration {
        let doublings = failures.clamp(1, MAX_DOUBLINGS) - 1;
        let exp = self.base.saturating_mul(1u32 << doublings);
        exp.min(self.cap.max(self.base)).mul_f64(self.rng.factor())
    }

    /// A fraction in [0, 1), from the same generator: spreads first attempts.
    pub fn spread(&mut self) -> f64 {
        self.rng.unit()
    }
}

/// A seed for [`Backoff::new`]: FNV-1a of `name`, mixed with `salt` (e.g. the start time, so
/// two agents with the same configuration do not retry in step).
pub fn seed(name: &str, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ salt.rotate_left(29)
}

/// xorshift64: enough for jitter, no crate needed.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Jitter {
        // xorshift must not start at 0.
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform-ish in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() % 10_000) as f64 / 10_000.0
    }

    /// A factor in [0.8, 1.2).
    fn factor(&mut self) -> f64 {
        0.8 + 0.4 * self.unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn grows_from_the_base_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(10), 42);
        let b1 = b.delay(1);
        assert!((800..1200).contains(&ms(b1)), "{b1:?}");
        let b3 = b.delay(3);
        assert!((3200..4800).contains(&ms(b3)), "{b3:?}");
        for n in 5..100 {
            let d = b.delay(n);
            assert!((8000..12000).contains(&ms(d)), "{n}: {d:?}");
        }
        // failures = 0 is treated as the first failure, not as a shift by -1.
        assert!((800..1200).contains(&ms(b.delay(0))));
        let spread: std::collections::HashSet<u128> = (0..50).map(|_| ms(b.delay(8))).collect();
        assert!(spread.len() > 10, "jitter spreads retries");
    }

    #[test]
    fn a_base_above_the_cap_wins() {
        // A unit polled every 30 s with backoff_max = 10 s backs off by its poll interval.
        let mut b = Backoff::new(Duration::from_secs(30), Duration::from_secs(10), 7);
        let d = b.delay(4);
        assert!((24_000..36_000).contains(&ms(d)), "{d:?}");
    }

    #[test]
    fn same_seed_same_waits_other_seed_other_waits() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(60);
        let waits = |s: u64| {
            let mut b = Backoff::new(base, cap, s);
            (1..20).map(|n| b.delay(n)).collect::<Vec<_>>()
        };
        assert_eq!(
            waits(seed("tcp://10.0.0.5:502", 9)),
            waits(seed("tcp://10.0.0.5:502", 9))
        );
        assert_ne!(
            waits(seed("tcp://10.0.0.5:502", 9)),
            waits(seed("tcp://10.0.0.6:502", 9))
        );
        assert_ne!(waits(seed("plant", 1)), waits(seed("plant", 2)));
        let zero = waits(0);
        // From the 8th failure on every wait is at the cap: only jitter makes them differ.
        assert!(
            zero[8..].windows(2).any(|w| w[0] != w[1]),
            "a zero seed still jitters"
        );
    }

    #[test]
    fn spread_is_a_fraction() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 3);
        for _ in 0..1000 {
            let f = b.spread();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
