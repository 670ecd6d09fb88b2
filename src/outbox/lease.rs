//! A counter that never goes back across restarts and power cuts, with one disk write per
//! block of values: the outbox's record ids and the agent's event `seq` both use it.
//!
//! The file holds one 12-byte entry (`u64` + CRC32, see frame.rs): every value below it may
//! have been handed out. Before handing out a value at or above the ceiling, the owner raises
//! it by a block: write a temp file, fsync it, rename it over the lease, fsync the directory.
//! A crash skips at most a block; it never reuses a value.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::frame;

/// What the lease file held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No lease yet (first start).
    Missing,
    /// Every value below this may have been handed out.
    Ceiling(u64),
    /// The file is there but holds no valid entry; its bytes, for the owner to judge.
    Damaged(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}: {source}", path.display())]
pub struct LeaseError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> LeaseError + 'p {
    move |source| LeaseError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug)]
pub struct CounterLease {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    block: u64,
    /// Values below this are covered by the file on disk.
    end: u64,
}

impl CounterLease {
    /// Reads the lease `name` in `dir`.
    pub fn read(dir: &Path, name: &str) -> Result<Found, LeaseError> {
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(match frame::scan_entries(&bytes).values.first() {
                Some(&v) => Found::Ceiling(v),
                None => Found::Damaged(bytes),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Found::Missing),
            Err(source) => Err(LeaseError {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// A lease on `dir/name` raised `block` values at a time. Nothing is covered (and nothing
    /// written) until [`CounterLease::cover`] or [`CounterLease::raise`].
    pub fn new(dir: &Path, name: &str, block: u64) -> CounterLease {
        CounterLease {
            dir: dir.to_path_buf(),
            path: dir.join(name),
            tmp: dir.join(format!("{name}.tmp")),
            block: block.max(1),
            end: 0,
        }
    }

    /// Makes sure `next` may be handed out: raises the ceiling first when `next` is not below it.
    pub fn cover(&mut self, next: u64) -> Result<(), LeaseError> {
        if next >= self.end {
            self.raise(next)?;
        }
        Ok(())
    }

    /// Writes the ceiling `from + block` durably, whatever is on disk.
    pub fn raise(&mut self, from: u64) -> Result<(), LeaseError> {
        let end = from.saturating_add(self.block);
        {
            let mut file = File::create(&self.tmp).map_err(err("create", &self.tmp))?;
            file.write_all(&frame::encode_entry(end))
                .map_err(err("write", &self.tmp))?;
            file.sync_data().map_err(err("fsync", &self.tmp))?;
        }
        fs::rename(&self.tmp, &self.path).map_err(err("rename into", &self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err("fsync directory", &self.dir))?;
        self.end = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raised_ceiling_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            CounterLease::read(dir.path(), "x.lease").unwrap(),
            Found::Missing
        );
        let mut l = CounterLease::new(dir.path(), "x.lease", 100);
        l.cover(1).unwrap();
        assert_eq!(l.end, 101);
        // Covered values write nothing.
        fs::remove_file(dir.path().join("x.lease")).unwrap();
        l.cover(100).unwrap();
        assert!(!dir.path().join("x.lease").exists());
        l.cover(101).unwrap();
        assert_eq!(
            CounterLease::read(dir.path(), "x.lease").unwrap(),
            Found::Ceiling(201)
        );
        assert!(!dir.path().join("x.lease.tmp").exists());
    }

    #[test]
    fn damage_is_reported_with_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x.lease"), b"12000\n").unwrap();
        assert_eq!(
            CounterLease::read(dir.path(), "x.lease").unwrap(),
            Found::Damaged(b"12000\n".to_vec())
        );
        let mut entry = frame::encode_entry(77);
        entry[0] ^= 1;
        fs::write(dir.path().join("x.lease"), entry).unwrap();
        assert!(matches!(
            CounterLease::read(dir.path(), "x.lease").unwrap(),
            Found::Damaged(_)
        ));
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = CounterLease::new(&dir.path().join("missing"), "x.lease", 10);
        let e = l.cover(0).unwrap_err();
        assert_eq!(e.op, "create");
        assert!(e.to_string().contains("x.lease.tmp"), "{e}");
        assert_eq!(l.end, 0);
    }
}
