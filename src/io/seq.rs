//! The agent's event sequence: monotonic across restarts. Numbers are leased from
//! `<state_dir>/seq.lease` in blocks ([`CounterLease`], the same durable lease as the outbox's
//! ids), so the file is written once per block, not once per event; a crash skips the rest
//! of a block, which keeps the sequence monotonic.
//!
//! A lease that is deleted or damaged after the agent has run is detected (an error is logged)
//! and never restarts `seq` at 1: the next number is the highest of what survives elsewhere
//! (the persisted alarm state records the next `seq`) and a time floor, the wall clock in
//! milliseconds since 1970. The floor is above every number handed out before unless the
//! agent averaged more than one transition per millisecond since its last recovery, so alarm
//! ids (`{agent}-{seq}`) never repeat (docs/MQTT.md, "Alarm state across restarts").

use std::path::Path;

use crate::core::model::Ts;
use crate::outbox::lease::{CounterLease, Found, LeaseError};
use crate::telemetry::{emit, SeqLeaseDamaged};

const BLOCK: u64 = 1_000;
const FILE: &str = "seq.lease";

/// What the rest of `state_dir` says about earlier runs, for when the lease is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The agent ran with this `state_dir` before: a missing lease was deleted, not new.
    pub ran_before: bool,
    /// The next `seq` as another durable record (the alarm state) last saw it.
    pub next_seen: Option<u64>,
}

#[derive(Debug)]
pub struct SeqLease {
    lease: CounterLease,
    next: u64,
}

impl SeqLease {
    /// Opens the lease in `dir`; `now` (wall ms) is the floor when the lease is lost.
    pub fn open(dir: &Path, evidence: Evidence, now: Ts) -> Result<SeqLease, LeaseError> {
        std::fs::create_dir_all(dir).map_err(|source| LeaseError {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE);
        let seen = evidence.next_seen.unwrap_or(0);
        let lost = |found: &'static str| {
            let next = seen.max(u64::try_from(now).unwrap_or(0)).max(1);
            emit(SeqLeaseDamaged {
                path: &path,
                found,
                next,
            });
            next
        };
        let next = match CounterLease::read(dir, FILE)? {
            // Below what the alarm state saw handed out: an old copy (a restored backup).
            Found::Ceiling(v) if v < seen => lost("behind the alarm state"),
            Found::Ceiling(v) => v,
            Found::Missing if evidence.ran_before => lost("missing"),
            Found::Missing => seen,
            Found::Damaged(bytes) => match legacy_text(&bytes) {
                Some(v) if v < seen => lost("behind the alarm state"),
                Some(v) => v,
                None if bytes.is_empty() => lost("empty"),
                None => lost("unreadable"),
            },
        };
        let mut lease = CounterLease::new(dir, FILE, BLOCK);
        let next = next.max(1);
        lease.raise(next)?;
        Ok(SeqLease { lease, next })
    }

    /// The next number. If the lease cannot be extended the sequence still advances in memory
    /// (an error is returned alongside so the caller can report it).
    pub fn take(&mut self) -> (u64, Option<LeaseError>) {
        let err = self.lease.cover(self.next).err();
        let n = self.next;
        self.next += 1;
        (n, err)
    }

    /// The number [`SeqLease::take`] hands out next (persisted with the alarm state).
    pub fn peek(&self) -> u64 {
        self.next
    }
}

/// Whether an agent has used `state_dir` before (its lease, outboxes or alarm state are there),
/// so that a missing lease is a deleted one. Call it before this start creates anything.
pub fn ran_before(state_dir: &Path) -> bool {
    ["outbox", FILE, crate::io::alarm_state::FILE]
        .iter()
        .any(|f| state_dir.join(f).exists())
}

/// Releases up to 0.1 wrote the lease as decimal text; read it once, the next raise rewrites it.
fn legacy_text(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Ts = 1_767_225_600_000;

    fn open(dir: &Path, evidence: Evidence) -> SeqLease {
        SeqLease::open(dir, evidence, NOW).unwrap()
    }

    const RAN: Evidence = Evidence {
        ran_before: true,
        next_seen: None,
    };

    #[test]
    fn monotonic_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), Evidence::default());
        let first: Vec<u64> = (0..1_500).map(|_| a.take().0).collect();
        assert_eq!(first[0], 1, "a first start begins at 1");
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        drop(a);
        let mut b = open(dir.path(), RAN);
        assert!(b.take().0 > *first.last().unwrap());
    }

    #[test]
    fn a_lease_written_as_text_by_an_older_release_is_continued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "12000\n").unwrap();
        let mut s = open(dir.path(), RAN);
        assert_eq!(s.take().0, 12_000);
        drop(s);
        let mut s = open(dir.path(), RAN);
        assert!(s.take().0 >= 13_000, "the next block, in the new format");
    }

    /// Hands out 1,001 numbers (past the first block), damages the lease with `damage`, and
    /// returns (last handed out, first after reopening).
    fn after_damage(damage: impl Fn(&Path), evidence: Evidence) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), Evidence::default());
        let last = (0..1_001).map(|_| a.take().0).last().unwrap();
        drop(a);
        damage(&dir.path().join(FILE));
        let mut b = open(dir.path(), evidence);
        (last, b.take().0)
    }

    #[test]
    fn a_deleted_truncated_or_garbled_lease_never_restarts_the_sequence() {
        let deleted = |p: &Path| std::fs::remove_file(p).unwrap();
        let truncated = |p: &Path| {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..5]).unwrap();
        };
        let emptied = |p: &Path| std::fs::write(p, b"").unwrap();
        let garbage = |p: &Path| std::fs::write(p, b"\x00\xffnot a lease\x17").unwrap();
        for (name, (last, next)) in [
            ("deleted", after_damage(deleted, RAN)),
            ("truncated", after_damage(truncated, RAN)),
            ("emptied", after_damage(emptied, RAN)),
            ("garbage", after_damage(garbage, RAN)),
        ] {
            assert!(next > last, "{name}: {next} after {last}");
            assert_eq!(next, NOW as u64, "{name}: the time floor");
        }
    }

    #[test]
    fn what_survives_elsewhere_wins_over_the_time_floor() {
        let seen = NOW as u64 + 5_000;
        let evidence = Evidence {
            ran_before: true,
            next_seen: Some(seen),
        };
        let (_, next) = after_damage(|p| std::fs::remove_file(p).unwrap(), evidence);
        assert_eq!(next, seen);
        // An intact lease behind the alarm state (a restored backup) is damage too: the alarm
        // state may itself be a little behind, so the floor applies.
        let (_, next) = after_damage(|_| {}, evidence);
        assert_eq!(next, seen);
        let behind = Evidence {
            ran_before: true,
            next_seen: Some(5_000),
        };
        let (last, next) = after_damage(|_| {}, behind);
        assert_eq!((last, next), (1_001, NOW as u64));
    }
}
