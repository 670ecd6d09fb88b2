//! The agent's event sequence: monotonic across restarts. Numbers are leased from a small file
//! in blocks, so the file is written once per block, not once per event; a crash skips the
//! rest of a block, which keeps the sequence monotonic.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const BLOCK: u64 = 1_000;

#[derive(Debug)]
pub struct SeqLease {
    path: PathBuf,
    next: u64,
    leased_to: u64,
}

impl SeqLease {
    pub fn open(dir: &Path) -> std::io::Result<SeqLease> {
        fs::create_dir_all(dir)?;
        let path = dir.join("seq.lease");
        let next = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut lease = SeqLease {
            path,
            next: next.max(1),
            leased_to: next.max(1),
        };
        lease.extend()?;
        Ok(lease)
    }

    fn extend(&mut self) -> std::io::Result<()> {
        let to = self.next + BLOCK;
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{to}")?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        self.leased_to = to;
        Ok(())
    }

    /// The next number. If the lease cannot be extended the sequence still advances in memory
    /// (an error is returned alongside so the caller can report it).
    pub fn take(&mut self) -> (u64, Option<std::io::Error>) {
        let n = self.next;
        self.next += 1;
        let err = if self.next >= self.leased_to {
            self.extend().err()
        } else {
            None
        };
        (n, err)
    }
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
}
