//! The poll schedule of one link, as a pure state machine: when each unit is due, how a unit
//! that does not answer and a link that cannot connect back off, and what falling behind
//! costs. It never reads a clock: every event carries `now` (the monotonic timeline), and the
//! answers say what to do and when. The poller task (`poller.rs`) only turns them into
//! sleeps, connections and reads, and its outcomes back into events.
//!
//! * Units are polled one at a time (a link is a serialized transaction queue), the one due
//!   first going first. The first polls are spread over the first 40 % of each interval so
//!   that many links do not fire in lockstep, on a coarse grid shared by every link (a
//!   twentieth of the interval, 1 to 50 ms) so that those falling in one step share a wake-up.
//! * A unit that fails backs off on its own, from its poll interval doubling up to its
//!   `backoff_max` (with jitter), so it costs the others at most one timeout per step.
//! * A link that cannot connect backs off from 500 ms to the largest `backoff_max` of its
//!   units; the units due meanwhile are reported failed once per attempt.
//! * A unit whose poll ends after its next slot has passed polls again at once, and the slots
//!   that passed are counted as missed (waiting for the next slot would halve the throughput
//!   at the fastest rates).

use std::time::Duration;

use super::backoff::Backoff;
use crate::clock::Mono;

/// First wait of a link that cannot connect.
const CONNECT_BACKOFF_START: Duration = Duration::from_millis(500);
/// Registers learned as unmapped (exception 02) are probed again after this: a device may be
/// reconfigured.
pub const FORGET_UNMAPPED_AFTER: Duration = Duration::from_secs(600);

/// A unit's timing, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnitTiming {
    pub poll: Duration,
    pub backoff_max: Duration,
}

/// What to do when the time given with it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Open the link's connection.
    Connect,
    /// Poll unit `i` (index in the order given to [`PollSchedule::new`]).
    Poll(usize),
}

/// A unit started or stopped answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `again`: it had been seen down before.
    Up {
        again: bool,
    },
    Down,
}

/// The outcome of a failed connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailed {
    pub retry_in: Duration,
    /// Units whose poll was due: report them failed (bad samples), with their change.
    pub due: Vec<(usize, Option<Change>)>,
}

/// The outcome of a poll that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Slots that passed while this unit waited for the link.
    pub missed: u64,
    pub change: Option<Change>,
}

/// The outcome of a poll that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub retry_in: Duration,
    pub change: Option<Change>,
}

#[derive(Debug)]
struct Slot {
    poll: Duration,
    next_due: Mono,
    /// Failed polls in a row.
    failures: u32,
    backoff: Backoff,
    /// None until the first poll.
    up: Option<bool>,
    /// When exception 02 first taught the planner an unmapped register.
    learned_at: Option<Mono>,
}

impl Slot {
    fn set_up(&mut self, up: bool) -> Option<Change> {
        let before = self.up.replace(up);
        match (before, up) {
            (Some(b), u) if b == u => None,
            (before, true) => Some(Change::Up {
                again: before == Some(false),
            }),
            (_, false) => Some(Change::Down),
        }
    }
}

/// A unit's first poll, its retries and its polls after a reconnect are put on a grid of the
/// monotonic timeline shared by every link: a twentieth of the interval, 1 to 50 ms (later
/// polls keep it: each is one interval after the last). The polls stay spread over the
/// interval, but those due in the same grid step share one wake-up of the runtime and their
/// data messages leave in one MQTT flush. At 400 cells @ 1 Hz a grid of a hundredth (10 ms)
/// put about 10 polls on a step and still cost 0.4 context switches per poll; a twentieth
/// (50 ms) puts about 50 on one and cost 0.17, a third less CPU per poll
/// (`bench/hot_counts.py`, docs/DEPLOYMENT.md). The units of one link that share a step are
/// read one after the other, as always: on a slow serial line the later ones start a few
/// round trips late, and none is missed.
fn on_wake_grid(at: Mono, poll: Duration) -> Mono {
    let grid = (poll / 20)
        .clamp(Duration::from_millis(1), Duration::from_millis(50))
        .as_micros()
        .max(1) as u64;
    Mono::from_micros(at.as_micros().div_ceil(grid).saturating_mul(grid))
}

#[derive(Debug)]
pub struct PollSchedule {
    slots: Vec<Slot>,
    connected: bool,
    /// Failed connection attempts in a row.
    connect_failures: u32,
    link_retry_at: Mono,
    link_backoff: Backoff,
}

impl PollSchedule {
    /// A schedule for `units`, starting `now`; `seed` (per link) seeds the jitter.
    pub fn new(units: &[UnitTiming], seed: u64, now: Mono) -> PollSchedule {
        let connect_cap = units
            .iter()
            .map(|u| u.backoff_max)
            .max()
            .unwrap_or(Duration::from_secs(10));
        let mut link_backoff = Backoff::new(CONNECT_BACKOFF_START, connect_cap, seed);
        let slots = units
            .iter()
            .enumerate()
            .map(|(i, u)| Slot {
                poll: u.poll,
                next_due: on_wake_grid(now + u.poll.mul_f64(0.4 * link_backoff.spread()), u.poll),
                failures: 0,
                // Each unit its own jitter stream, decorrelated from its neighbours'.
                backoff: Backoff::new(
                    u.poll,
                    u.backoff_max,
                    seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                up: None,
                learned_at: None,
            })
            .collect();
        PollSchedule {
            slots,
            connected: false,
            connect_failures: 0,
            link_retry_at: now,
            link_backoff,
        }
    }

    /// What to do next and when (None without units).
    pub fn next(&self) -> Option<(Mono, Step)> {
        let (i, slot) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.next_due)?;
        let at = slot.next_due.max(self.link_retry_at);
        let step = if self.connected {
            Step::Poll(i)
        } else {
            Step::Connect
        };
        Some((at, step))
    }

    /// The connection opened. True when it had failed before (worth telling operators).
    pub fn connected(&mut self) -> bool {
        self.connected = true;
        // Back on the wake grid after the link was down.
        for s in &mut self.slots {
            s.next_due = on_wake_grid(s.next_due, s.poll);
        }
        std::mem::take(&mut self.connect_failures) > 0
    }

    /// The connection attempt failed at `now`.
    pub fn connect_failed(&mut self, now: Mono) -> ConnectFailed {
        self.connected = false;
        self.connect_failures += 1;
        let retry_in = self.link_backoff.delay(self.connect_failures);
        self.link_retry_at = now + retry_in;
        let retry_at = self.link_retry_at;
        let due = self
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.next_due <= now)
            .map(|(i, s)| {
                s.next_due = retry_at.max(s.next_due + s.poll);
                (i, s.set_up(false))
            })
            .collect();
        ConnectFailed { retry_in, due }
    }

    /// The connection was dropped outside a poll (a write or its read-back broke it): the
    /// next step connects again.
    pub fn disconnected(&mut self) {
        self.connected = false;
    }

    /// Unit `i` answered its poll, which ended at `now`.
    pub fn answered(&mut self, i: usize, now: Mono) -> Answered {
        let Some(s) = self.slots.get_mut(i) else {
            return Answered {
                missed: 0,
                change: None,
            };
        };
        s.failures = 0;
        let change = s.set_up(true);
        s.next_due = s.next_due + s.poll;
        let mut missed = 0;
        if s.next_due < now {
            let behind = now.since(s.next_due);
            missed = (behind.as_nanos() / s.poll.as_nanos().max(1)) as u64;
            s.next_due = now;
        }
        Answered { missed, change }
    }

    /// Unit `i` failed its poll at `now`; `link_broken`: the connection must be dropped.
    pub fn failed(&mut self, i: usize, now: Mono, link_broken: bool) -> Failed {
        if link_broken {
            self.connected = false;
        }
        let Some(s) = self.slots.get_mut(i) else {
            return Failed {
                retry_in: Duration::ZERO,
                change: None,
            };
        };
        s.failures += 1;
        let retry_in = s.backoff.delay(s.failures);
        // Back on the wake grid, which a unit that recovers keeps.
        s.next_due = on_wake_grid(now + retry_in, s.poll);
        Failed {
            retry_in,
            change: s.set_up(false),
        }
    }

    /// Exception 02 taught unit `i` an unmapped register at `now`.
    pub fn learned(&mut self, i: usize, now: Mono) {
        if let Some(s) = self.slots.get_mut(i) {
            s.learned_at.get_or_insert(now);
        }
    }

    /// True (once) when unit `i` should forget what it learned and probe again.
    pub fn forget_due(&mut self, i: usize, now: Mono) -> bool {
        match self.slots.get_mut(i) {
            Some(s)
                if s.learned_at
                    .is_some_and(|t| now.since(t) > FORGET_UNMAPPED_AFTER) =>
            {
                s.learned_at = None;
                true
            }
            _ => false,
        }
    }

    #[cfg(test)]
    pub fn is_connected(&self) -> bool {
        self.connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};

    const T0: Mono = Mono::from_micros(1_000_000_000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn unit(poll_ms: u64, backoff_max_ms: u64) -> UnitTiming {
        UnitTiming {
            poll: ms(poll_ms),
            backoff_max: ms(backoff_max_ms),
        }
    }

    #[test]
    fn first_polls_are_spread_over_the_first_40_percent_of_the_interval() {
        let units = vec![unit(1_000, 10_000); 50];
        let s = PollSchedule::new(&units, 11, T0);
        let offsets: Vec<Duration> = s.slots.iter().map(|x| x.next_due.since(T0)).collect();
        // 40 % of the interval, rounded up to the next step of the 50 ms wake grid.
        assert!(offsets.iter().all(|d| *d <= ms(450)), "{offsets:?}");
        let mut per_step = std::collections::HashMap::new();
        for d in &offsets {
            *per_step.entry(*d).or_insert(0) += 1;
        }
        // 50 units over about 8 steps: spread, not lockstep.
        assert!(per_step.len() >= 6, "{per_step:?}");
        assert!(per_step.values().all(|&n| n <= 15), "{per_step:?}");
    }

    #[test]
    fn first_polls_of_all_links_share_the_steps_of_one_wake_grid() {
        // Links start a few hundred microseconds apart; their first polls still fall on the
        // same grid (a twentieth of the interval, 1 to 50 ms), so polls due together share a
        // wake-up of the runtime.
        for (poll, grid) in [
            (1_000, 50_000),
            (200, 10_000),
            (50, 2_500),
            (10, 1_000),
            (60_000, 50_000),
        ] {
            let mut steps = std::collections::HashSet::new();
            let mut count = 0;
            for link in 0..40u64 {
                let now = T0 + Duration::from_micros(link * 137);
                let s = PollSchedule::new(&vec![unit(poll, 10_000); 10], link, now);
                for x in &s.slots {
                    assert_eq!(
                        x.next_due.as_micros() % grid,
                        0,
                        "{poll} ms: {:?}",
                        x.next_due
                    );
                    assert!(
                        x.next_due >= now
                            && x.next_due.since(now)
                                <= ms(poll * 2 / 5) + Duration::from_micros(grid)
                    );
                    steps.insert(x.next_due);
                    count += 1;
                }
            }
            // A unit that fails and a link that cannot connect come back on the grid.
            let mut s = PollSchedule::new(&[unit(poll, 10_000); 2], 3, T0);
            let off_grid = T0 + Duration::from_micros(grid / 3 + 1);
            s.failed(0, off_grid, false);
            assert_eq!(
                s.slots[0].next_due.as_micros() % grid,
                0,
                "{poll} ms: failed"
            );
            s.connect_failed(off_grid + ms(poll));
            s.connected();
            assert_eq!(
                s.slots[1].next_due.as_micros() % grid,
                0,
                "{poll} ms: link down"
            );
            // 400 first polls over 40 % of a second: at most 9 steps of 50 ms, not ~400.
            if poll == 1_000 {
                assert!(steps.len() <= 10 && count == 400, "{} steps", steps.len());
            }
        }
    }

    #[test]
    fn connect_first_then_the_unit_due_first() {
        let mut s = PollSchedule::new(&[unit(200, 1_000), unit(100, 1_000)], 1, T0);
        let (at, step) = s.next().unwrap();
        assert_eq!(step, Step::Connect);
        assert!(at < T0 + ms(80));
        assert!(!s.connected(), "first connection is not 'again'");
        let first = s.slots.iter().map(|x| x.next_due).min().unwrap();
        let (at, step) = s.next().unwrap();
        assert_eq!(at, first);
        assert!(matches!(step, Step::Poll(_)));
        assert!(PollSchedule::new(&[], 1, T0).next().is_none());
    }

    #[test]
    fn on_time_polls_keep_their_slots_and_late_ones_count_what_they_missed() {
        let mut s = PollSchedule::new(&[unit(100, 1_000)], 1, T0);
        s.connected();
        let due = s.next().unwrap().0;
        // Answered 10 ms after it was due: next slot one interval after the last.
        let a = s.answered(0, due + ms(10));
        assert_eq!(a.missed, 0);
        assert_eq!(a.change, Some(Change::Up { again: false }));
        assert_eq!(s.next().unwrap().0, due + ms(100));
        // A poll that took 350 ms: slots at +200 and +300 passed; poll again at once.
        let now = due + ms(100) + ms(350);
        let a = s.answered(0, now);
        assert_eq!((a.missed, a.change), (2, None));
        assert_eq!(s.next().unwrap().0, now);
    }

    #[test]
    fn a_silent_unit_backs_off_to_its_cap_and_comes_back() {
        let mut s = PollSchedule::new(&[unit(200, 10_000)], 5, T0);
        s.connected();
        let mut now = s.next().unwrap().0;
        let mut waits = Vec::new();
        for n in 1..=12 {
            let f = s.failed(0, now, false);
            assert_eq!(f.change, (n == 1).then_some(Change::Down));
            waits.push(f.retry_in);
            now = s.next().unwrap().0;
        }
        // 0.2, 0.4, 0.8, ... s with ±20 % jitter, capped at 10 s.
        assert!(waits[0] >= ms(160) && waits[0] < ms(240), "{waits:?}");
        assert!(waits[3] >= ms(1_280) && waits[3] < ms(1_920), "{waits:?}");
        for w in &waits[7..] {
            assert!(*w >= ms(8_000) && *w < ms(12_000), "{waits:?}");
        }
        assert!(s.is_connected(), "a silent unit does not drop the link");
        let a = s.answered(0, now);
        assert_eq!(a.change, Some(Change::Up { again: true }));
        assert!(
            s.failed(0, now, false).retry_in < ms(240),
            "backoff restarts"
        );
    }

    #[test]
    fn a_broken_link_reconnects_when_the_next_unit_is_due() {
        let mut s = PollSchedule::new(&[unit(100, 1_000), unit(100, 1_000)], 5, T0);
        s.connected();
        let (at, Step::Poll(i)) = s.next().unwrap() else {
            panic!()
        };
        s.failed(i, at + ms(300), true);
        assert!(!s.is_connected());
        let (at2, step) = s.next().unwrap();
        assert_eq!(step, Step::Connect);
        assert_eq!(
            at2,
            s.slots[1 - i].next_due,
            "the other unit's slot, not a backoff"
        );
    }

    #[test]
    fn a_link_that_cannot_connect_backs_off_and_fails_the_due_units_once_per_attempt() {
        let units = [unit(100, 4_000), unit(1_000, 2_000), unit(100_000, 1_000)];
        let mut s = PollSchedule::new(&units, 9, T0);
        let mut retries = Vec::new();
        let mut reported = [0u32; 3];
        let mut now = T0;
        while now < T0 + Duration::from_secs(60) {
            let (at, step) = s.next().unwrap();
            assert_eq!(step, Step::Connect);
            now = at;
            let f = s.connect_failed(now);
            for (i, change) in &f.due {
                reported[*i] += 1;
                assert_eq!(*change, (reported[*i] == 1).then_some(Change::Down));
            }
            retries.push(f.retry_in);
        }
        // From 0.5 s doubling to the largest backoff_max (4 s), jittered.
        assert!(retries[0] >= ms(400) && retries[0] < ms(600), "{retries:?}");
        assert!(retries[4..]
            .iter()
            .all(|r| *r >= ms(3_200) && *r < ms(4_800)));
        let attempts = retries.len() as u32;
        assert!(
            (13..=22).contains(&attempts),
            "{attempts} attempts in a minute"
        );
        // Units due at an attempt are reported once for it, never more often than attempts;
        // the slow unit (100 s) only once.
        assert!(
            reported[0] <= attempts && reported[0] >= attempts - 2,
            "{reported:?}"
        );
        assert_eq!(reported[2], 1, "{reported:?}");
        assert!(s.connected(), "a connection after failures is one 'again'");
        assert!(!s.connected());
    }

    #[test]
    fn unmapped_registers_are_forgotten_after_ten_minutes() {
        let mut s = PollSchedule::new(&[unit(100, 1_000)], 1, T0);
        assert!(!s.forget_due(0, T0 + Duration::from_secs(3_600)));
        s.learned(0, T0);
        s.learned(0, T0 + Duration::from_secs(300));
        assert!(!s.forget_due(0, T0 + Duration::from_secs(600)));
        assert!(s.forget_due(0, T0 + Duration::from_secs(601)));
        assert!(!s.forget_due(0, T0 + Duration::from_secs(1_300)), "once");
    }

    /// A simulated gateway like the one of tests/reliability.rs: five units answer in 10 ms,
    /// four never do (three silent, one slower than its 300 ms timeout), all polled every
    /// 200 ms with a 10 s backoff cap. Over ten virtual minutes the healthy units keep at
    /// least 90 % of their nominal rate and the dead ones cost one timeout per backoff step.
    #[test]
    fn dead_units_never_slow_the_healthy_ones_much() {
        let dead = [false, true, false, true, false, true, true, false, false];
        let units = vec![unit(200, 10_000); dead.len()];
        let clock = ManualClock::new(1_764_000_000_000);
        let start = clock.mono();
        let mut s = PollSchedule::new(&units, 1234, start);
        let mut ok = vec![0u64; dead.len()];
        let mut failed = vec![0u64; dead.len()];
        let mut missed = vec![0u64; dead.len()];
        let end = start + Duration::from_secs(600);
        while clock.mono() < end {
            let (at, step) = s.next().unwrap();
            clock.advance_to(at);
            match step {
                Step::Connect => {
                    s.connected();
                }
                Step::Poll(i) if dead[i] => {
                    clock.advance(300);
                    // The poller drops the connection after a timeout.
                    s.failed(i, clock.mono(), true);
                    failed[i] += 1;
                }
                Step::Poll(i) => {
                    clock.advance(10);
                    missed[i] += s.answered(i, clock.mono()).missed;
                    ok[i] += 1;
                }
            }
        }
        let nominal = 600.0 / 0.2;
        for i in 0..dead.len() {
            if dead[i] {
                // At the cap one try per 8-12 s: about 65 in ten minutes, not 3000.
                assert!(
                    (40..=90).contains(&failed[i]),
                    "unit {i}: {} tries",
                    failed[i]
                );
                assert_eq!(ok[i], 0);
            } else {
                let rate = ok[i] as f64 / nominal;
                assert!(rate >= 0.9, "unit {i} kept {:.0} %", rate * 100.0);
                assert_eq!(failed[i], 0);
                assert!(missed[i] as f64 <= 0.1 * nominal, "{missed:?}");
            }
        }
    }
}
