//! Records the samples the pollers read to size-rotated CSV files (`ts,device,tag,value,quality`,
//! the sample format of [`super::samples`], which `alsentry replay` reads), so a plant builds
//! its own corpus for tuning rules.
//!
//! The recorder must never slow the engine: the engine side only `try_send`s a copy of each
//! batch into a bounded channel and counts what does not fit. The writer owns the files and runs
//! on its own blocking thread (file writes block), e.g. `JoinSet::spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::samples::{format_batch, RowNames, HEADER};
use crate::clock::rfc3339_ms;
use crate::config::record::RecordConfig;
use crate::config::Config;
use crate::core::engine::SampleBatch;
use crate::core::model::Ts;

/// Batches waiting for the writer; beyond this they are dropped and counted.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Counters shared by the handle and the writer (for metrics and tests).
#[derive(Debug, Default)]
pub struct RecordStats {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    /// Batches dropped because the writer fell behind (channel full) or stopped.
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
    pub files_opened: AtomicU64,
    pub files_deleted: AtomicU64,
}

/// The engine's side: cheap, never blocks.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<SampleBatch>,
    stats: Arc<RecordStats>,
}

impl Recorder {
    /// Queues a copy of `batch` for the writer, or counts it as dropped if the queue is full.
    pub fn offer(&self, batch: &SampleBatch) {
        if self.tx.try_send(batch.clone()).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> Arc<RecordStats> {
        self.stats.clone()
    }
}

/// The writer's side: owns the files. Call [`RecordWriter::run`] on a blocking thread.
#[derive(Debug)]
pub struct RecordWriter {
    rx: mpsc::Receiver<SampleBatch>,
    names: Vec<RowNames>,
    files: RotatingFiles,
    stats: Arc<RecordStats>,
    text: String,
}

/// Builds the recorder pair for `rc` over the devices of `cfg`.
pub fn recorder(rc: &RecordConfig, cfg: &Config, capacity: usize) -> (Recorder, RecordWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(RecordStats::default());
    let names = cfg
        .devices
        .iter()
        .map(|d| {
            let wanted =
                |t: &&crate::config::Tag| rc.tags.as_ref().is_none_or(|l| l.contains(&t.name));
            RowNames::new(
                &d.name,
                d.tags.iter().map(|t| wanted(&t).then_some(t.name.as_str())),
            )
        })
        .collect();
    (
        Recorder {
            tx,
            stats: stats.clone(),
        },
        RecordWriter {
            rx,
            names,
            files: RotatingFiles {
                dir: rc.dir.clone(),
                max_size: rc.max_size,
                max_files: rc.max_files.max(1),
                current: None,
                failing: false,
            },
            stats,
            text: String::with_capacity(4096),
        },
    )
}

impl RecordWriter {
    /// Writes batches until every [`Recorder`] handle is dropped, then flushes and returns.
    /// Blocking: do not call it on an async worker.
    pub fn run(mut self) {
        info!(dir = %self.files.dir.display(), "recording samples");
        while let Some(b) = self.rx.blocking_recv() {
            self.write(&b);
            // Drain what queued up meanwhile, then flush once.
            while let Ok(b) = self.rx.try_recv() {
                self.write(&b);
            }
            self.files.flush(&self.stats);
        }
        self.files.flush(&self.stats);
        self.files.current = None;
    }

    fn write(&mut self, b: &SampleBatch) {
        self.text.clear();
        let rows = format_batch(&self.names, b, &mut self.text);
        if rows == 0 {
            return;
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.rows.fetch_add(rows, Ordering::Relaxed);
        self.files.append(b.ts, &self.text, &self.stats);
    }
}

#[derive(Debug)]
struct Current {
    out: BufWriter<File>,
    size: u64,
    path: PathBuf,
}

#[derive(Debug)]
struct RotatingFiles {
    dir: PathBuf,
    max_size: u64,
    max_files: usize,
    current: Option<Current>,
    /// Set after a write error so a full disk logs once, not once per batch.
    failing: bool,
}

/// `samples-20261128T160553.123Z.csv`: sorts by time, and has no ':' (not allowed on Windows).
pub fn file_name(first_ts: Ts) -> String {
    let stamp: String = rfc3339_ms(first_ts)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("samples-{stamp}.csv")
}

fn is_sample_file(name: &str) -> bool {
    name.starts_with("samples-") && name.ends_with(".csv")
}

impl RotatingFiles {
    fn append(&mut self, ts: Ts, text: &str, stats: &RecordStats) {
        if let Err(e) = self.try_append(ts, text, stats) {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
            if !self.failing {
                warn!(dir = %self.dir.display(), error = %e, "cannot record samples; retrying with a new file");
            }
            self.failing = true;
            // The next batch starts a fresh file rather than appending to a damaged one.
            self.current = None;
            return;
        }
        if self.failing {
            info!(dir = %self.dir.display(), "recording samples again");
            self.failing = false;
        }
    }

    fn try_append(&mut self, ts: Ts, text: &str, stats: &RecordStats) -> std::io::Result<()> {
        let len = text.len() as u64;
        let header_len = HEADER.len() as u64 + 1;
        if let Some(cur) = &mut self.current {
            // A file holds at least one batch, so a huge batch cannot loop on rotation.
            if cur.size > header_len && cur.size + len > self.max_size {
                cur.out.flush()?;
                self.current = None;
            }
        }
        let cur = match &mut self.current {
            Some(c) => c,
            None => {
                let c = self.open(ts)?;
                stats.files_opened.fetch_add(1, Ordering::Relaxed);
                let deleted = self.prune(&c.path);
                stats.files_deleted.fetch_add(deleted, Ordering::Relaxed);
                self.current.insert(c)
            }
        };
        cur.out.write_all(text.as_bytes())?;
        cur.size += len;
        Ok(())
    }

    fn open(&self, ts: Ts) -> std::io::Result<Current> {
        fs::create_dir_all(&self.dir)?;
        let base = file_name(ts);
        let mut n = 0;
        loop {
            // Two files starting in the same millisecond: "~n" sorts after ".csv".
            let name = if n == 0 {
                base.clone()
            } else {
                format!("{}~{n}.csv", base.trim_end_matches(".csv"))
            };
            let path = self.dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    let mut out = BufWriter::with_capacity(1 << 16, f);
                    out.write_all(HEADER.as_bytes())?;
                    out.write_all(b"\n")?;
                    return Ok(Current {
                        out,
                        size: HEADER.len() as u64 + 1,
                        path,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Deletes the oldest sample files beyond `max_files`; returns how many.
    fn prune(&self, keep: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_str().is_some_and(is_sample_file))
            .map(|e| e.path())
            .collect();
        files.sort();
        let mut deleted = 0;
        let mut excess = files.len().saturating_sub(self.max_files);
        for f in files {
            if excess == 0 {
                break;
            }
            if f == keep {
                continue;
            }
            match fs::remove_file(&f) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    warn!(file = %f.display(), error = %e, "cannot delete an old sample file")
                }
            }
            excess -= 1;
        }
        deleted
    }

    fn flush(&mut self, stats: &RecordStats) {
        if let Some(cur) = &mut self.current {
            if let Err(e) = cur.out.flush() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                warn!(file = %cur.path.display(), error = %e, "cannot flush recorded samples");
                self.current = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_file_names_sort_by_time() {
        assert_eq!(
            file_name(1_764_345_953_123),
            "samples-20251128T160553.123Z.csv"
        );
    }

    #[test]
    fn write_errors_are_counted_and_recording_resumes_when_the_disk_is_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rec");
        // A file where the directory should be: every open fails.
        fs::write(&dir, b"in the way").unwrap();
        let stats = RecordStats::default();
        let mut files = RotatingFiles {
            dir: dir.clone(),
            max_size: 1 << 20,
            max_files: 3,
            current: None,
            failing: false,
        };
        files.append(0, "a\n", &stats);
        files.append(1, "b\n", &stats);
        assert_eq!(stats.write_errors.load(Ordering::Relaxed), 2);
        assert!(files.failing);
        fs::remove_file(&dir).unwrap();
        files.append(2, "c\n", &stats);
        files.flush(&stats);
        assert!(!files.failing);
        let text = fs::read_to_string(dir.join(file_name(2))).unwrap();
        assert_eq!(text, format!("{HEADER}\nc\n"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(1);
        let r = Recorder {
            tx,
            stats: Arc::new(RecordStats::default()),
        };
        let b = SampleBatch {
            device: 0,
            ts: 0,
            values: vec![],
        };
        r.offer(&b);
        r.offer(&b);
        r.offer(&b);
        assert_eq!(r.stats().dropped.load(Ordering::Relaxed), 2);
    }
}
