//! The agent's event sequence: monotonic across restarts. Numbers are leased from
//! `<state_dir>/seq.lease` in blocks ([`CounterLease`], the same durable lease as the outbox's
//! ids), so the file is written once per block, not once per event; a crash skips the rest
//! of a block, which keeps the sequence monotonic.

use std::path::Path;

use crate::outbox::lease::{CounterLease, Found, LeaseError};
use crate::telemetry::{emit, SeqLeaseUnreadable};

const BLOCK: u64 = 1_000;
const FILE: &str = "seq.lease";

#[derive(Debug)]
pub struct SeqLease {
    lease: CounterLease,
    next: u64,
}

impl SeqLease {
    pub fn open(dir: &Path) -> Result<SeqLease, LeaseError> {
        std::fs::create_dir_all(dir).map_err(|source| LeaseError {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
        let next = match CounterLease::read(dir, FILE)? {
            Found::Ceiling(v) => v,
            Found::Missing => 0,
            Found::Damaged(bytes) => match legacy_text(&bytes) {
                Some(v) => v,
                None => {
                    emit(SeqLeaseUnreadable {
                        path: &dir.join(FILE),
                    });
                    0
                }
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
}

/// Releases up to 0.1 wrote the lease as decimal text; read it once, the next raise rewrites it.
fn legacy_text(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqLease::open(dir.path()).unwrap();
        let first: Vec<u64> = (0..1_500).map(|_| a.take().0).collect();
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        drop(a);
        let mut b = SeqLease::open(dir.path()).unwrap();
        assert!(b.take().0 > *first.last().unwrap());
    }

    #[test]
    fn a_lease_written_as_text_by_an_older_release_is_continued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "12000\n").unwrap();
        let mut s = SeqLease::open(dir.path()).unwrap();
        assert_eq!(s.take().0, 12_000);
        drop(s);
        let mut s = SeqLease::open(dir.path()).unwrap();
        assert!(s.take().0 >= 13_000, "the next block, in the new format");
    }
}
