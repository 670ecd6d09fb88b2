//! The file-backed outbox store. See the module documentation in `outbox/mod.rs` for the
//! on-disk layout and the guarantees.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{self, Frame, RecordMeta};
use super::lease::{CounterLease, Found, LeaseError};
use crate::core::model::Ts;
use crate::core::outbound::Class;

/// Ids reserved per write of the lease file. A crash skips at most this many ids.
const ID_LEASE_BLOCK: u64 = 4096;
const LEASE_FILE: &str = "ids.lease";
const SEGMENT_EXT: &str = "seg";
const ACK_EXT: &str = "ack";
/// Records the broker refused, moved aside so the rest flows: one JSON object per line, in the
/// outbox folder (not a segment: `list_dir` never reads it back).
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";

// The settings are `[mqtt.outbox]` of the configuration.
pub use crate::config::mqtt::{FsyncPolicy, OutboxOptions};

/// A record to append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRecord<'a> {
    pub class: Class,
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub retain: bool,
    pub qos: u8,
}

/// A record read back for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: u64,
    pub class: Class,
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: u8,
    pub created: Ts,
    /// The record was already in the outbox when it was opened (backlog from before a restart).
    pub replayed: bool,
}

/// Why a record left the outbox without being acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Evicted to stay under `max_size_bytes`.
    Full,
    /// Older than `max_age_ms`.
    Expired,
}

/// Drop counters by class and reason (since open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DropCounts {
    full: [u64; 4],
    expired: [u64; 4],
}

impl DropCounts {
    pub fn get(&self, class: Class, reason: DropReason) -> u64 {
        match reason {
            DropReason::Full => self.full[class.index()],
            DropReason::Expired => self.expired[class.index()],
        }
    }

    pub fn total(&self) -> u64 {
        self.full.iter().chain(self.expired.iter()).sum()
    }

    fn add(&mut self, class: Class, reason: DropReason) {
        match reason {
            DropReason::Full => self.full[class.index()] += 1,
            DropReason::Expired => self.expired[class.index()] += 1,
        }
    }
}

/// What `open` found on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Un-acked records recovered (after expiry and eviction), all flagged `replayed`.
    pub recovered: usize,
    pub recovered_bytes: u64,
    /// Segments whose tail held a partial record or garbage, truncated away.
    pub torn_tails: usize,
    pub torn_bytes: u64,
    /// Runs of damaged bytes in the middle of a segment, skipped by resynchronising.
    pub corrupt_regions: usize,
    pub corrupt_bytes: u64,
    /// Ack entries that failed their CRC (their records may be resent).
    pub bad_ack_entries: usize,
    /// Recovered records dropped straight away because they were too old.
    pub expired: usize,
    /// Recovered records dropped because `max_size_bytes` shrank.
    pub evicted: usize,
    /// Segment files in use after open.
    pub segments: usize,
    /// The first id this session will hand out.
    pub next_id: u64,
}

/// A snapshot for status reports and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutboxStats {
    /// Live (un-acked, not dropped) records.
    pub depth: usize,
    pub depth_by_class: [usize; 4],
    /// Frame bytes of live records (what `max_size_bytes` bounds).
    pub bytes: u64,
    /// Bytes of all segment files, including acked records not yet reclaimed.
    pub disk_bytes: u64,
    pub segments: usize,
    /// Handed out by `next_unsent` and not acked yet.
    pub in_flight: usize,
    /// Live records recovered at open that are still waiting.
    pub replayed_pending: usize,
    pub drops: DropCounts,
    /// Records unreadable when sent (damaged on disk after open), dropped.
    pub unreadable_dropped: u64,
    pub torn_tails: usize,
    pub torn_bytes: u64,
    pub corrupt_regions: usize,
    /// Bytes of live records copied forward to reclaim mostly-dead segments (write
    /// amplification; see the module docs on compaction).
    pub compacted_bytes: u64,
    /// Creation time of the oldest live record.
    pub oldest_created: Option<Ts>,
    pub next_id: u64,
    /// Records moved to the dead-letter file since open, by class index.
    pub dead_lettered: [u64; 4],
}

impl OutboxStats {
    /// Age of the oldest live record at `now`.
    pub fn oldest_age_ms(&self, now: Ts) -> Option<i64> {
        self.oldest_created.map(|c| now.saturating_sub(c))
    }
}

/// Everything that can go wrong; every I/O error names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("outbox: invalid options: {0}")]
    InvalidOptions(&'static str),
    #[error("outbox: invalid record: {0}")]
    InvalidRecord(String),
    /// The outbox is full of records at least as important as this one; it was not stored.
    #[error("outbox: full ({bytes} of {max_bytes} bytes held by more important records); {class:?} record dropped")]
    Full {
        class: Class,
        bytes: u64,
        max_bytes: u64,
    },
}

impl From<LeaseError> for OutboxError {
    fn from(e: LeaseError) -> OutboxError {
        OutboxError::Io {
            op: e.op,
            path: e.path,
            source: e.source,
        }
    }
}

impl OutboxError {
    /// The underlying I/O error kind, e.g. `StorageFull` or `ReadOnlyFilesystem`.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            OutboxError::Io { source, .. } => Some(source.kind()),
            _ => None,
        }
    }
}

fn io_err<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> OutboxError + 'p {
    move |source| OutboxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One record of the in-memory index (~40 bytes; payloads stay on disk).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    created: Ts,
    segment: u64,
    offset: u32,
    len: u32,
    class: Class,
    removed: bool,
    replayed: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    ack_path: PathBuf,
    file: File,
    acks: Option<File>,
    size: u64,
    live: usize,
    live_bytes: u64,
    /// Appended since the last fsync.
    dirty: bool,
    acks_dirty: bool,
}

/// The durable outbox for one MQTT sink. Synchronous; owned by the publisher task.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    opts: OutboxOptions,
    /// Index in id order. Removed entries stay as tombstones until popped or compacted away.
    entries: VecDeque<Entry>,
    tombstones: usize,
    segments: BTreeMap<u64, Segment>,
    /// Segment receiving appends (a key of `segments`), created lazily.
    active: Option<u64>,
    next_id: u64,
    /// Ids below its end were reserved in the lease file.
    lease: CounterLease,
    /// Live records with an id below this are in flight; the rest are unsent.
    unsent_from: u64,
    in_flight: usize,
    /// Per class: no live record of that class has an id below this (eviction hint).
    class_floor: [u64; 4],
    depth_by_class: [usize; 4],
    live_bytes: u64,
    replayed_pending: usize,
    drops: DropCounts,
    unreadable_dropped: u64,
    compacted_bytes: u64,
    report: OpenReport,
    last_sync: Ts,
    scratch: Vec<u8>,
    /// The oldest record in flight when a connection ended, and how many connections in a row
    /// ended with it the oldest in flight (see [`Outbox::delivery_failed`]).
    suspect: Option<(u64, u32)>,
    dead_lettered: [u64; 4],
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` and recovers every un-acked record in
    /// its original order, flagged `replayed`.
    pub fn open(
        dir: &Path,
        opts: OutboxOptions,
        now: Ts,
    ) -> Result<(Outbox, OpenReport), OutboxError> {
        validate(&opts)?;
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let listing = list_dir(dir)?;
        let mut report = OpenReport::default();

        let mut removed: HashSet<u64> = HashSet::new();
        let mut max_seen = 0u64;
        for &base in &listing.acks {
            let path = ack_path(dir, base);
            if !listing.segments.contains(&base) {
                // Orphan left by a crash between deleting a segment and its ack file.
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            let scan = frame::scan_entries(&bytes);
            if scan.torn_bytes > 0 {
                truncate(&path, (bytes.len() - scan.torn_bytes) as u64)?;
            }
            report.bad_ack_entries += scan.bad_entries;
            for id in scan.values {
                max_seen = max_seen.max(id);
                removed.insert(id);
            }
        }

        let mut entries: Vec<Entry> = Vec::new();
        let mut segments = BTreeMap::new();
        for &base in &listing.segments {
            let path = segment_path(dir, base);
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            let scan = frame::scan(&bytes);
            drop(bytes);
            if scan.torn_bytes > 0 {
                report.torn_tails += 1;
                report.torn_bytes += scan.torn_bytes as u64;
                truncate(&path, scan.valid_len as u64)?;
            }
            report.corrupt_regions += scan.corrupt_regions;
            report.corrupt_bytes += scan.corrupt_bytes as u64;
            max_seen = max_seen.max(base);
            for rec in &scan.records {
                max_seen = max_seen.max(rec.meta.id);
                if removed.contains(&rec.meta.id) {
                    continue;
                }
                let (Ok(offset), Ok(len)) = (u32::try_from(rec.offset), u32::try_from(rec.len))
                else {
                    continue; // Cannot happen for segments we wrote; skip rather than trust.
                };
                entries.push(Entry {
                    id: rec.meta.id,
                    created: rec.meta.created,
                    segment: base,
                    offset,
                    len,
                    class: rec.meta.class,
                    removed: false,
                    replayed: true,
                });
            }
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io_err("open", &path))?;
            segments.insert(
                base,
                Segment {
                    ack_path: ack_path(dir, base),
                    path,
                    file,
                    acks: None,
                    size: scan.valid_len as u64,
                    live: 0,
                    live_bytes: 0,
                    dirty: false,
                    acks_dirty: false,
                },
            );
        }
        // Compaction may have left two copies of a record; order by id and keep the first.
        entries.sort_by_key(|e| e.id);
        let mut duplicates = Vec::new();
        let mut kept: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            if kept.last().is_some_and(|k| k.id == e.id) {
                duplicates.push((e.segment, e.id));
            } else {
                kept.push(e);
            }
        }

        // A damaged lease falls back to the ids found in the segments.
        let lease = match CounterLease::read(dir, LEASE_FILE)? {
            Found::Ceiling(v) => v,
            Found::Missing | Found::Damaged(_) => 0,
        };
        let next_id = lease.max(max_seen.saturating_add(1)).max(1);
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            opts,
            entries: VecDeque::from(kept),
            tombstones: 0,
            segments,
            active: None,
            next_id,
            lease: CounterLease::new(dir, LEASE_FILE, ID_LEASE_BLOCK),
            unsent_from: 0,
            in_flight: 0,
            class_floor: [0; 4],
            depth_by_class: [0; 4],
            live_bytes: 0,
            replayed_pending: 0,
            drops: DropCounts::default(),
            unreadable_dropped: 0,
            compacted_bytes: 0,
            report,
            last_sync: now,
            scratch: Vec::new(),
            suspect: None,
            dead_lettered: [0; 4],
        };
        outbox.lease.raise(outbox.next_id)?;
        for e in &outbox.entries {
            outbox.depth_by_class[e.class.index()] += 1;
            outbox.live_bytes += u64::from(e.len);
            if let Some(seg) = outbox.segments.get_mut(&e.segment) {
                seg.live += 1;
                seg.live_bytes += u64::from(e.len);
            }
        }
        outbox.replayed_pending = outbox.entries.len();
        // Duplicates are marked removed in their own segment so they cannot resurface later.
        outbox.persist_removals(&duplicates)?;
        outbox.reclaim()?;

        let before = outbox.drops.total();
        outbox.report.expired = outbox.expire(now);
        outbox.make_room(0, Class::Alarm)?;
        outbox.report.evicted = (outbox.drops.total() - before) as usize - outbox.report.expired;
        outbox.sync()?;

        outbox.report.recovered = outbox.depth();
        outbox.report.recovered_bytes = outbox.live_bytes;
        outbox.report.segments = outbox.segments.len();
        outbox.report.next_id = outbox.next_id;
        let report = outbox.report;
        Ok((outbox, report))
    }

    /// Stores a record before it is sent and returns its id. Expires old records and evicts
    /// less important ones if the outbox is full. Returns [`OutboxError::Full`] (and counts
    /// the drop) if only more important records are left to evict.
    pub fn append(&mut self, rec: NewRecord<'_>, now: Ts) -> Result<u64, OutboxError> {
        if rec.qos > 2 {
            return Err(OutboxError::InvalidRecord(format!(
                "qos {} above 2",
                rec.qos
            )));
        }
        let len = frame::encoded_len(rec.topic.len(), rec.payload.len())
            .filter(|&l| l as u64 <= self.opts.max_size_bytes)
            .ok_or_else(|| {
                OutboxError::InvalidRecord(format!(
                    "topic of {} bytes / payload of {} bytes does not fit (max_size_bytes {})",
                    rec.topic.len(),
                    rec.payload.len(),
                    self.opts.max_size_bytes
                ))
            })?;
        self.expire(now);
        if !self.make_room(len as u64, rec.class)? {
            self.drops.add(rec.class, DropReason::Full);
            return Err(OutboxError::Full {
                class: rec.class,
                bytes: self.live_bytes,
                max_bytes: self.opts.max_size_bytes,
            });
        }
        self.lease.cover(self.next_id)?;
        let id = self.next_id;
        self.scratch.clear();
        frame::encode(
            &Frame {
                meta: RecordMeta {
                    id,
                    created: now,
                    class: rec.class,
                    retain: rec.retain,
                    qos: rec.qos,
                },
                topic: rec.topic,
                payload: rec.payload,
            },
            &mut self.scratch,
        )
        .map_err(|e| OutboxError::InvalidRecord(e.to_string()))?;
        // A failed write leaves no valid record behind, so its id may be handed out again.
        let (segment, offset) = self.write_frame(len as u64)?;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            created: now,
            segment,
            offset,
            len: len as u32,
            class: rec.class,
            removed: false,
            replayed: false,
        });
        self.depth_by_class[rec.class.index()] += 1;
        self.live_bytes += len as u64;
        if let Some(seg) = self.segments.get_mut(&segment) {
            seg.live += 1;
            seg.live_bytes += len as u64;
        }
        let sync_now = match self.opts.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Alarms => rec.class == Class::Alarm,
            FsyncPolicy::Interval(ms) => interval_elapsed(self.last_sync, now, ms),
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync()?;
            self.last_sync = now;
        }
        self.compact_if_needed()?;
        Ok(id)
    }

    /// The broker acknowledged `id`: remove it for good. Returns `false` if the id was not
    /// live (already acked, dropped, or unknown), which is harmless under at-least-once.
    /// On error the record is still removed from memory; only its persistence failed, so it
    /// may be resent after a restart.
    pub fn ack(&mut self, id: u64) -> Result<bool, OutboxError> {
        let Some(pos) = self.position(id) else {
            return Ok(false);
        };
        let segment = self.remove_at(pos);
        if self.suspect.is_some_and(|(s, _)| s == id) {
            self.suspect = None;
        }
        self.persist_removals(&[(segment, id)])?;
        self.pop_tombstones();
        Ok(true)
    }

    /// Up to `max` records not yet handed out, in append order, read from disk and marked
    /// in flight. A record found damaged on disk is dropped and counted, not returned.
    /// If reading fails after some records were collected, those are returned and the error
    /// will show up on the next call.
    pub fn next_unsent(&mut self, max: usize) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut out = Vec::new();
        let mut pos = self.lower_bound(self.unsent_from);
        let mut unreadable = Vec::new();
        while out.len() < max && pos < self.entries.len() {
            let e = self.entries[pos];
            pos += 1;
            if e.removed {
                continue;
            }
            match self.read_entry(&e) {
                Ok(Some(rec)) => {
                    out.push(rec);
                    self.unsent_from = e.id + 1;
                    self.in_flight += 1;
                }
                Ok(None) => unreadable.push(pos - 1),
                Err(err) if out.is_empty() => {
                    self.drop_unreadable(&unreadable)?;
                    return Err(err);
                }
                Err(_) => break,
            }
        }
        self.drop_unreadable(&unreadable)?;
        Ok(out)
    }

    /// A connection ended while records were in flight (call it before
    /// [`requeue_in_flight`](Self::requeue_in_flight)). A broker that refuses a message (a
    /// topic with a control character, a packet over its limit) drops the connection at that
    /// publish, after acknowledging the ones before it, so the oldest record in flight is the
    /// suspect. Returns its id and how many connections in a row ended with it the oldest in
    /// flight; the caller dead-letters it past a bound. Kept in memory only: after a restart a
    /// poison record costs the bound again, nothing more.
    pub fn delivery_failed(&mut self) -> Option<(u64, u32)> {
        let e = self
            .entries
            .iter()
            .take_while(|e| e.id < self.unsent_from)
            .find(|e| !e.removed)?;
        let n = match self.suspect {
            Some((id, n)) if id == e.id => n.saturating_add(1),
            _ => 1,
        };
        self.suspect = Some((e.id, n));
        Some((e.id, n))
    }

    /// Moves record `id` out of the outbox into [`DEAD_LETTER_FILE`] (with `reason`), so that
    /// the records behind it flow. Returns false if it was not live. The record leaves the
    /// outbox even when writing it aside fails (the error is returned): one message must never
    /// wedge the sink. Once the dead-letter file holds `max_size_bytes`, records are listed
    /// there without their payload.
    pub fn dead_letter(&mut self, id: u64, reason: &str, now: Ts) -> Result<bool, OutboxError> {
        let Some(pos) = self.position(id) else {
            return Ok(false);
        };
        let e = self.entries[pos];
        let written = match self.read_entry(&e) {
            Ok(Some(rec)) => self.write_dead_letter(&rec, reason, now),
            Ok(None) => Ok(()),
            Err(err) => Err(err),
        };
        let segment = self.remove_at(pos);
        self.dead_lettered[e.class.index()] += 1;
        if self.suspect.is_some_and(|(s, _)| s == id) {
            self.suspect = None;
        }
        self.persist_removals(&[(segment, id)])?;
        self.pop_tombstones();
        written.map(|()| true)
    }

    fn write_dead_letter(
        &self,
        rec: &StoredRecord,
        reason: &str,
        now: Ts,
    ) -> Result<(), OutboxError> {
        let path = self.dir.join(DEAD_LETTER_FILE);
        let held = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let room = held.saturating_add(rec.payload.len() as u64) <= self.opts.max_size_bytes;
        let line = serde_json::json!({
            "dead_lettered_ms": now,
            "reason": reason,
            "id": rec.id,
            "class": rec.class.as_str(),
            "created_ms": rec.created,
            "retain": rec.retain,
            "qos": rec.qos,
            "topic": rec.topic,
            "payload_bytes": rec.payload.len(),
            "payload": room.then(|| String::from_utf8_lossy(&rec.payload)),
        });
        let mut text = line.to_string();
        text.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io_err("write", &path))
    }

    /// After a disconnect: everything in flight becomes unsent again, in its original order.
    pub fn requeue_in_flight(&mut self) {
        self.unsent_from = 0;
        self.in_flight = 0;
    }

    /// Drops records older than `max_age_ms` at `now`; returns how many.
    ///
    /// Scans from the oldest record and stops at the first one that is young enough, so if the
    /// wall clock stepped back, a few records may expire later than they could have.
    pub fn expire(&mut self, now: Ts) -> usize {
        let cutoff = now.saturating_sub(self.opts.max_age_ms);
        let mut removed = Vec::new();
        let mut pos = 0;
        while pos < self.entries.len() {
            let e = self.entries[pos];
            if !e.removed {
                if e.created >= cutoff {
                    break;
                }
                let segment = self.remove_at(pos);
                self.drops.add(e.class, DropReason::Expired);
                removed.push((segment, e.id));
            }
            pos += 1;
        }
        // Persistence failures only mean the records may come back after a restart and be
        // expired again, so they do not fail the caller.
        let _ = self.persist_removals(&removed);
        self.pop_tombstones();
        removed.len()
    }

    /// Forces everything written so far (records and acks) to stable storage.
    pub fn flush(&mut self) -> Result<(), OutboxError> {
        self.sync()
    }

    /// With [`FsyncPolicy::Interval`], fsyncs if the interval has passed. Call it from a timer
    /// so a quiet outbox does not keep records unsynced.
    pub fn sync_if_due(&mut self, now: Ts) -> Result<(), OutboxError> {
        if let FsyncPolicy::Interval(ms) = self.opts.fsync {
            if interval_elapsed(self.last_sync, now, ms) {
                self.sync()?;
                self.last_sync = now;
            }
        }
        Ok(())
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            depth: self.depth(),
            depth_by_class: self.depth_by_class,
            bytes: self.live_bytes,
            disk_bytes: self.disk_bytes(),
            segments: self.segments.len(),
            in_flight: self.in_flight,
            replayed_pending: self.replayed_pending,
            drops: self.drops,
            unreadable_dropped: self.unreadable_dropped,
            torn_tails: self.report.torn_tails,
            torn_bytes: self.report.torn_bytes,
            corrupt_regions: self.report.corrupt_regions,
            compacted_bytes: self.compacted_bytes,
            oldest_created: self.entries.iter().find(|e| !e.removed).map(|e| e.created),
            next_id: self.next_id,
            dead_lettered: self.dead_lettered,
        }
    }

    /// The directory this outbox lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn depth(&self) -> usize {
        self.entries.len() - self.tombstones
    }

    fn disk_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// Index of the first entry with `entry.id >= id`.
    fn lower_bound(&self, id: u64) -> usize {
        self.entries.partition_point(|e| e.id < id)
    }

    /// Index of the live entry with this id.
    fn position(&self, id: u64) -> Option<usize> {
        let pos = self.lower_bound(id);
        self.entries
            .get(pos)
            .filter(|e| e.id == id && !e.removed)
            .map(|_| pos)
    }

    /// Marks the entry removed and updates the counters; returns its segment. The caller
    /// persists the removal and pops tombstones.
    fn remove_at(&mut self, pos: usize) -> u64 {
        let e = &mut self.entries[pos];
        e.removed = true;
        let e = *e;
        self.tombstones += 1;
        self.depth_by_class[e.class.index()] -= 1;
        self.live_bytes -= u64::from(e.len);
        if e.replayed {
            self.replayed_pending -= 1;
        }
        if e.id < self.unsent_from {
            self.in_flight -= 1;
        }
        if let Some(seg) = self.segments.get_mut(&e.segment) {
            seg.live -= 1;
            seg.live_bytes -= u64::from(e.len);
        }
        e.segment
    }

    fn pop_tombstones(&mut self) {
        while self.entries.front().is_some_and(|e| e.removed) {
            self.entries.pop_front();
            self.tombstones -= 1;
        }
        // Tombstones behind a long-lived record (an alarm kept while data is evicted) would
        // otherwise pile up without bound.
        if self.tombstones > 1024 && self.tombstones > self.entries.len() / 2 {
            self.entries.retain(|e| !e.removed);
            self.tombstones = 0;
        }
    }

    /// Evicts until `incoming` more bytes fit, taking the oldest record of the least important
    /// class first, but only classes no more important than `class`. Returns `false` if the
    /// bytes cannot fit without evicting something more important than `class`.
    fn make_room(&mut self, incoming: u64, class: Class) -> Result<bool, OutboxError> {
        let mut removed = Vec::new();
        let mut fits = true;
        while self.live_bytes + incoming > self.opts.max_size_bytes {
            let victim = Class::EVICTION_ORDER
                .into_iter()
                .filter(|c| c.rank() <= class.rank())
                .find(|c| self.depth_by_class[c.index()] > 0);
            let Some(victim) = victim else {
                fits = false;
                break;
            };
            let floor = self.class_floor[victim.index()];
            let start = self.lower_bound(floor);
            let Some(offset) = self
                .entries
                .range(start..)
                .position(|e| !e.removed && e.class == victim)
            else {
                // Counters say there is one; the index disagrees. Stop rather than loop.
                fits = false;
                break;
            };
            let pos = start + offset;
            let id = self.entries[pos].id;
            self.class_floor[victim.index()] = id + 1;
            let segment = self.remove_at(pos);
            self.drops.add(victim, DropReason::Full);
            removed.push((segment, id));
        }
        self.persist_removals(&removed)?;
        self.pop_tombstones();
        Ok(fits)
    }

    /// Records that `ids` left their segments: deletes segments that became empty, appends
    /// ack entries to the others.
    fn persist_removals(&mut self, removals: &[(u64, u64)]) -> Result<(), OutboxError> {
        let mut first_err = None;
        let mut i = 0;
        while i < removals.len() {
            let segment = removals[i].0;
            let mut j = i;
            let mut buf = Vec::new();
            while j < removals.len() && removals[j].0 == segment {
                buf.extend_from_slice(&frame::encode_entry(removals[j].1));
                j += 1;
            }
            i = j;
            let result = match self.try_delete_segment(segment) {
                Ok(true) => Ok(()),
                Ok(false) | Err(_) => self.append_acks(segment, &buf),
            };
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn append_acks(&mut self, segment: u64, buf: &[u8]) -> Result<(), OutboxError> {
        let Some(seg) = self.segments.get_mut(&segment) else {
            return Ok(()); // Segment already gone: nothing can resurface.
        };
        if seg.acks.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&seg.ack_path)
                .map_err(io_err("open", &seg.ack_path))?;
            seg.acks = Some(file);
        }
        if let Some(file) = seg.acks.as_mut() {
            file.write_all(buf)
                .map_err(io_err("append acks to", &seg.ack_path))?;
            seg.acks_dirty = true;
        }
        Ok(())
    }

    /// Deletes `segment` if it holds no live record and takes no more appends.
    fn try_delete_segment(&mut self, segment: u64) -> Result<bool, OutboxError> {
        let Some(seg) = self.segments.get(&segment) else {
            return Ok(false);
        };
        let is_active = self.active == Some(segment);
        if seg.live > 0 || (is_active && seg.size < self.opts.segment_size_bytes) {
            return Ok(false);
        }
        fs::remove_file(&seg.path).map_err(io_err("remove", &seg.path))?;
        if seg.acks.is_some() || seg.ack_path.exists() {
            // A leftover ack file without its segment is cleaned up at the next open.
            let _ = fs::remove_file(&seg.ack_path);
        }
        self.segments.remove(&segment);
        if is_active {
            self.active = None;
        }
        // An unlink lost in a power cut would bring back a whole segment of acked records
        // (its removals were never written), so make the deletion durable. Once per segment.
        if self.opts.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        Ok(true)
    }

    /// Deletes every segment that can go.
    fn reclaim(&mut self) -> Result<(), OutboxError> {
        let bases: Vec<u64> = self.segments.keys().copied().collect();
        for base in bases {
            self.try_delete_segment(base)?;
        }
        Ok(())
    }

    /// Writes `self.scratch` (one or more frames) to the active segment, rolling to a new one
    /// if needed; returns the segment and the offset written at.
    fn write_frame(&mut self, len: u64) -> Result<(u64, u32), OutboxError> {
        let segment = self.active_segment(len)?;
        let Some(seg) = self.segments.get_mut(&segment) else {
            return Err(OutboxError::InvalidRecord("active segment vanished".into()));
        };
        let offset = seg.size;
        if let Err(source) = seg.file.write_all(&self.scratch) {
            // Cut off the partial record so later appends do not follow garbage; if even that
            // fails, stop appending to this segment (its tail is skipped at the next open).
            let err = OutboxError::Io {
                op: "append to",
                path: seg.path.clone(),
                source,
            };
            if seg.file.set_len(offset).is_err() {
                self.active = None;
                if seg.live == 0 {
                    // Nothing worth keeping; a fresh segment gets the next try.
                    let path = seg.path.clone();
                    self.segments.remove(&segment);
                    let _ = fs::remove_file(path);
                }
            }
            return Err(err);
        }
        seg.size += len;
        seg.dirty = true;
        let offset = u32::try_from(offset)
            .map_err(|_| OutboxError::InvalidRecord("segment offset beyond 4 GiB".into()))?;
        Ok((segment, offset))
    }

    /// The segment to append `len` bytes to, rolling over when the active one is full.
    fn active_segment(&mut self, len: u64) -> Result<u64, OutboxError> {
        if let Some(active) = self.active {
            match self.segments.get(&active) {
                Some(seg) if seg.size == 0 || seg.size + len <= self.opts.segment_size_bytes => {
                    return Ok(active)
                }
                Some(_) => self.roll()?,
                None => self.active = None,
            }
        }
        // Named after the next id to be written; only uniqueness and ordering matter.
        let base = self
            .segments
            .keys()
            .next_back()
            .map_or(self.next_id, |&last| self.next_id.max(last + 1));
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err("create segment", &path))?;
        // An empty leftover is adopted; anything else would break the offsets we track.
        let existing = file.metadata().map_err(io_err("stat", &path))?.len();
        if existing != 0 {
            return Err(OutboxError::Io {
                op: "create segment",
                path,
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "file exists and is not empty",
                ),
            });
        }
        if self.opts.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        self.segments.insert(
            base,
            Segment {
                ack_path: ack_path(&self.dir, base),
                path,
                file,
                acks: None,
                size: 0,
                live: 0,
                live_bytes: 0,
                dirty: false,
                acks_dirty: false,
            },
        );
        self.active = Some(base);
        Ok(base)
    }

    /// Closes the active segment for appends.
    fn roll(&mut self) -> Result<(), OutboxError> {
        let Some(active) = self.active else {
            return Ok(());
        };
        if self.opts.fsync != FsyncPolicy::Never {
            if let Some(seg) = self.segments.get_mut(&active) {
                if seg.dirty {
                    seg.file.sync_data().map_err(io_err("fsync", &seg.path))?;
                    seg.dirty = false;
                }
            }
        }
        self.active = None;
        self.try_delete_segment(active)?;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), OutboxError> {
        for seg in self.segments.values_mut() {
            if seg.dirty {
                seg.file.sync_data().map_err(io_err("fsync", &seg.path))?;
                seg.dirty = false;
            }
            if seg.acks_dirty {
                if let Some(acks) = &seg.acks {
                    acks.sync_data().map_err(io_err("fsync", &seg.ack_path))?;
                }
                seg.acks_dirty = false;
            }
        }
        Ok(())
    }

    /// Reads one record; `Ok(None)` if the bytes on disk no longer match the index.
    fn read_entry(&self, e: &Entry) -> Result<Option<StoredRecord>, OutboxError> {
        let Some(seg) = self.segments.get(&e.segment) else {
            return Ok(None);
        };
        let mut buf = vec![0; e.len as usize];
        seg.file
            .read_exact_at(&mut buf, u64::from(e.offset))
            .map_err(io_err("read", &seg.path))?;
        match frame::decode(&buf) {
            Ok((f, _)) if f.meta.id == e.id => Ok(Some(StoredRecord {
                id: f.meta.id,
                class: f.meta.class,
                topic: f.topic.to_string(),
                payload: f.payload.to_vec(),
                retain: f.meta.retain,
                qos: f.meta.qos,
                created: f.meta.created,
                replayed: e.replayed,
            })),
            _ => Ok(None),
        }
    }

    fn drop_unreadable(&mut self, positions: &[usize]) -> Result<(), OutboxError> {
        let mut removed = Vec::new();
        for &pos in positions {
            let id = self.entries[pos].id;
            removed.push((self.remove_at(pos), id));
            self.unreadable_dropped += 1;
        }
        self.persist_removals(&removed)?;
        self.pop_tombstones();
        Ok(())
    }

    /// Keeps disk use near `max_size_bytes`: when acked-but-unreclaimed space passes a segment's
    /// worth, the live records of the emptiest closed segment are copied to the active one and
    /// the old file deleted. Without this, a few long-lived alarms could pin many segments.
    fn compact_if_needed(&mut self) -> Result<(), OutboxError> {
        // Dead segments whose deletion failed earlier get another try first.
        let active = self.active;
        if self
            .segments
            .iter()
            .any(|(base, s)| s.live == 0 && Some(*base) != active)
        {
            self.reclaim()?;
        }
        let limit = self.opts.max_size_bytes + self.opts.segment_size_bytes;
        while self.disk_bytes() > limit {
            let victim = self
                .segments
                .iter()
                .filter(|(base, s)| Some(**base) != self.active && s.live_bytes < s.size)
                .max_by_key(|(_, s)| s.size - s.live_bytes)
                .map(|(base, _)| *base);
            let Some(victim) = victim else {
                return Ok(());
            };
            let before = self.disk_bytes();
            self.compact_segment(victim)?;
            if self.disk_bytes() >= before {
                return Ok(()); // No progress possible.
            }
        }
        Ok(())
    }

    fn compact_segment(&mut self, victim: u64) -> Result<(), OutboxError> {
        let positions: Vec<usize> = (0..self.entries.len())
            .filter(|&i| !self.entries[i].removed && self.entries[i].segment == victim)
            .collect();
        for pos in positions {
            let e = self.entries[pos];
            let Some(seg) = self.segments.get(&victim) else {
                return Ok(());
            };
            self.scratch.clear();
            self.scratch.resize(e.len as usize, 0);
            seg.file
                .read_exact_at(&mut self.scratch, u64::from(e.offset))
                .map_err(io_err("read", &seg.path))?;
            let (segment, offset) = self.write_frame(u64::from(e.len))?;
            if let Some(old) = self.segments.get_mut(&victim) {
                old.live -= 1;
                old.live_bytes -= u64::from(e.len);
            }
            if let Some(new) = self.segments.get_mut(&segment) {
                new.live += 1;
                new.live_bytes += u64::from(e.len);
            }
            let entry = &mut self.entries[pos];
            entry.segment = segment;
            entry.offset = offset;
            self.compacted_bytes += u64::from(e.len);
        }
        // The copies must be durable before the originals go.
        if self.opts.fsync != FsyncPolicy::Never {
            self.sync()?;
        }
        self.try_delete_segment(victim)?;
        Ok(())
    }
}

fn validate(opts: &OutboxOptions) -> Result<(), OutboxError> {
    if opts.max_size_bytes == 0 {
        return Err(OutboxError::InvalidOptions(
            "max_size_bytes must be positive",
        ));
    }
    if opts.max_age_ms <= 0 {
        return Err(OutboxError::InvalidOptions("max_age_ms must be positive"));
    }
    if opts.segment_size_bytes < 4096 || opts.segment_size_bytes > u64::from(u32::MAX) {
        return Err(OutboxError::InvalidOptions(
            "segment_size_bytes must be between 4 KiB and 4 GiB",
        ));
    }
    if let FsyncPolicy::Interval(0) = opts.fsync {
        return Err(OutboxError::InvalidOptions(
            "fsync interval must be positive",
        ));
    }
    Ok(())
}

/// A wall clock that stepped back counts as elapsed, so syncing never stalls on it.
fn interval_elapsed(last: Ts, now: Ts, ms: u64) -> bool {
    now < last || now.saturating_sub(last) >= i64::try_from(ms).unwrap_or(i64::MAX)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{SEGMENT_EXT}"))
}

fn ack_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.{ACK_EXT}"))
}

#[derive(Debug, Default)]
struct Listing {
    segments: Vec<u64>,
    acks: Vec<u64>,
}

fn list_dir(dir: &Path) -> Result<Listing, OutboxError> {
    let mut listing = Listing::default();
    for item in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let item = item.map_err(io_err("list", dir))?;
        // Only regular files: a directory or a link to a device is not ours to read.
        if !item.file_type().map_err(io_err("list", dir))?.is_file() {
            continue;
        }
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(base) = stem.parse::<u64>() else {
            continue;
        };
        match ext {
            SEGMENT_EXT => listing.segments.push(base),
            ACK_EXT => listing.acks.push(base),
            _ => {}
        }
    }
    listing.segments.sort_unstable();
    listing.acks.sort_unstable();
    Ok(listing)
}

fn truncate(path: &Path, len: u64) -> Result<(), OutboxError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    file.set_len(len).map_err(io_err("truncate", path))?;
    file.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Ts = 1_700_000_000_000;

    fn opts() -> OutboxOptions {
        OutboxOptions {
            max_size_bytes: 64 << 20,
            max_age_ms: 3_600_000,
            fsync: FsyncPolicy::Never,
            segment_size_bytes: 4096,
        }
    }

    fn rec<'a>(class: Class, topic: &'a str, payload: &'a [u8]) -> NewRecord<'a> {
        NewRecord {
            class,
            topic,
            payload,
            retain: false,
            qos: 1,
        }
    }

    fn append_n(ob: &mut Outbox, class: Class, n: usize, now: Ts) -> Vec<u64> {
        (0..n)
            .map(|i| {
                let payload = format!("payload-{i}");
                ob.append(rec(class, "acme/pot1", payload.as_bytes()), now)
                    .unwrap()
            })
            .collect()
    }

    fn ids(recs: &[StoredRecord]) -> Vec<u64> {
        recs.iter().map(|r| r.id).collect()
    }

    fn drain_ids(ob: &mut Outbox) -> Vec<u64> {
        ob.requeue_in_flight();
        ids(&ob.next_unsent(usize::MAX).unwrap())
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn fifo_in_flight_ack_and_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.recovered, 0);
        let a = ob
            .append(rec(Class::Summary, "s", b"old summary"), T0)
            .unwrap();
        let b = ob.append(rec(Class::Alarm, "a", b"alarm"), T0 + 1).unwrap();
        let c = ob.append(rec(Class::Data, "d", b"data"), T0 + 2).unwrap();
        assert!(a < b && b < c);

        let first = ob.next_unsent(2).unwrap();
        assert_eq!(ids(&first), vec![a, b]);
        assert_eq!(first[0].topic, "s");
        assert_eq!(first[0].payload, b"old summary");
        assert_eq!(first[1].class, Class::Alarm);
        assert_eq!(first[1].created, T0 + 1);
        assert!(!first[0].replayed);
        assert_eq!(ob.stats().in_flight, 2);
        // In-flight records are not handed out twice.
        assert_eq!(ids(&ob.next_unsent(10).unwrap()), vec![c]);
        assert!(ob.next_unsent(10).unwrap().is_empty());
        assert_eq!(ob.stats().in_flight, 3);

        assert!(ob.ack(b).unwrap());
        assert!(!ob.ack(b).unwrap(), "second ack of the same id is a no-op");
        assert!(!ob.ack(9999).unwrap());
        let d = ob
            .append(rec(Class::Status, "st", b"status"), T0 + 3)
            .unwrap();
        // Disconnect: a and c go back in front of d, in their original order.
        ob.requeue_in_flight();
        assert_eq!(ob.stats().in_flight, 0);
        assert_eq!(ids(&ob.next_unsent(10).unwrap()), vec![a, c, d]);
        for id in [a, c, d] {
            assert!(ob.ack(id).unwrap());
        }
        let stats = ob.stats();
        assert_eq!((stats.depth, stats.in_flight, stats.bytes), (0, 0, 0));
        assert_eq!(stats.oldest_created, None);
    }

    #[test]
    fn a_suspect_record_is_counted_per_connection_and_dead_lettered_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), 1_000).unwrap();
        let ids = append_n(&mut ob, Class::Alarm, 3, 1_000);
        assert_eq!(ob.delivery_failed(), None, "nothing in flight");
        for n in 1..=3 {
            assert_eq!(ids_of(&ob.next_unsent(10).unwrap()), ids);
            assert_eq!(ob.delivery_failed(), Some((ids[0], n)));
            ob.requeue_in_flight();
        }
        // Acknowledged after all: the count starts again with the next oldest.
        ob.next_unsent(10).unwrap();
        ob.ack(ids[0]).unwrap();
        assert_eq!(ob.delivery_failed(), Some((ids[1], 1)));
        assert!(ob.dead_letter(ids[1], "refused", 2_000).unwrap());
        assert!(!ob.dead_letter(ids[1], "refused", 2_000).unwrap(), "once");
        ob.requeue_in_flight();
        assert_eq!(ids_of(&ob.next_unsent(10).unwrap()), vec![ids[2]]);
        let st = ob.stats();
        assert_eq!((st.depth, st.dead_lettered[Class::Alarm.index()]), (1, 1));
        let text = std::fs::read_to_string(dir.path().join(DEAD_LETTER_FILE)).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["id"], ids[1]);
        assert_eq!(line["reason"], "refused");
        assert_eq!(line["class"], "alarm");
        assert!(line["payload"].is_string());
        drop(ob);
        // It stays aside after a restart.
        let (mut ob, report) = Outbox::open(dir.path(), opts(), 3_000).unwrap();
        assert_eq!(report.recovered, 1);
        assert_eq!(ids_of(&ob.next_unsent(10).unwrap()), vec![ids[2]]);
    }

    #[test]
    fn ids_stay_monotonic_across_reopen_even_when_everything_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for round in 0..3 {
            let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
            for id in append_n(&mut ob, Class::Data, 5, T0) {
                assert!(id > last, "round {round}: id {id} after {last}");
                last = id;
                ob.next_unsent(1).unwrap();
                ob.ack(id).unwrap();
            }
        }
        // The lease survives even if every segment file is gone.
        for seg in segment_files(dir.path()) {
            fs::remove_file(seg).unwrap();
        }
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert!(report.next_id > last);
        assert!(append_n(&mut ob, Class::Data, 1, T0)[0] > last);
    }

    #[test]
    fn reopen_recovers_exactly_the_unacked_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.fsync = FsyncPolicy::Alarms;
        let all = {
            let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
            let mut all = Vec::new();
            for i in 0..1000 {
                let class = if i % 10 == 0 {
                    Class::Alarm
                } else {
                    Class::Data
                };
                let payload = format!("{{\"i\":{i}}}");
                all.push(
                    ob.append(rec(class, "acme/x", payload.as_bytes()), T0 + i)
                        .unwrap(),
                );
            }
            let sent = ob.next_unsent(600).unwrap();
            assert_eq!(sent.len(), 600);
            for (i, id) in all.iter().enumerate() {
                if i % 2 == 0 {
                    ob.ack(*id).unwrap();
                }
            }
            all
        };
        let (mut ob, report) = Outbox::open(dir.path(), o, T0 + 2000).unwrap();
        assert_eq!(report.recovered, 500);
        assert_eq!((report.torn_tails, report.corrupt_regions), (0, 0));
        let back = ob.next_unsent(usize::MAX).unwrap();
        let expected: Vec<u64> = all.iter().copied().skip(1).step_by(2).collect();
        assert_eq!(ids(&back), expected);
        assert!(back.iter().all(|r| r.replayed));
        for r in &back {
            let i = r.created - T0;
            assert_eq!(r.payload, format!("{{\"i\":{i}}}").as_bytes());
        }
        assert_eq!(ob.stats().replayed_pending, 500);
        // New records come after the backlog and are not flagged.
        let new = ob
            .append(rec(Class::Alarm, "a", b"new"), T0 + 2000)
            .unwrap();
        assert!(new > *all.last().unwrap());
        let next = ob.next_unsent(10).unwrap();
        assert_eq!(ids(&next), vec![new]);
        assert!(!next[0].replayed);
    }

    /// Writes five records and closes; returns the path of the only segment and the ids.
    fn five_records(dir: &Path) -> (PathBuf, Vec<u64>) {
        let mut o = opts();
        o.segment_size_bytes = 1 << 20;
        let (mut ob, _) = Outbox::open(dir, o, T0).unwrap();
        let ids = append_n(&mut ob, Class::Alarm, 5, T0);
        drop(ob);
        let segs = segment_files(dir);
        assert_eq!(segs.len(), 1);
        (segs[0].clone(), ids)
    }

    #[test]
    fn torn_tail_is_truncated_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ids) = five_records(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();

        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.torn_tails, 1);
        assert!(report.torn_bytes > 0);
        assert_eq!(report.recovered, 4);
        let back = ob.next_unsent(10).unwrap();
        assert_eq!(ids_of(&back), ids[..4].to_vec());
        assert_eq!(back[3].payload, b"payload-3");
        assert_eq!(ob.stats().torn_tails, 1);
        drop(ob);
        // The tail was cut off, so it is not reported again.
        let (_, again) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!((again.torn_tails, again.recovered), (0, 4));
    }

    fn ids_of(recs: &[StoredRecord]) -> Vec<u64> {
        ids(recs)
    }

    #[test]
    fn garbage_after_the_tail_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ids) = five_records(dir.path());
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[0xA1, 0x5E, 0x0B, 0x58, 0xFF, 0xFF, 0, 0, 1, 2, 3])
            .unwrap();
        file.write_all(&[0u8; 100]).unwrap();
        drop(file);
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!((report.torn_tails, report.torn_bytes), (1, 111));
        assert_eq!(drain_ids(&mut ob), ids);
        // Appends after recovery land in a fresh segment and read back fine.
        let id = ob.append(rec(Class::Alarm, "t", b"after"), T0).unwrap();
        assert_eq!(drain_ids(&mut ob).last(), Some(&id));
    }

    #[test]
    fn flipped_byte_in_the_middle_loses_one_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ids) = five_records(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        let record_len = bytes.len() / 5; // equal-sized records
        bytes[2 * record_len + frame::HEADER_LEN + 25] ^= 0x01;
        fs::write(&seg, &bytes).unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.corrupt_regions, 1);
        assert_eq!(report.corrupt_bytes, record_len as u64);
        assert_eq!(report.torn_tails, 0);
        assert_eq!(drain_ids(&mut ob), vec![ids[0], ids[1], ids[3], ids[4]]);
    }

    #[test]
    fn damage_after_open_drops_the_record_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
        let ids = append_n(&mut ob, Class::Data, 3, T0);
        let seg = &segment_files(dir.path())[0];
        let mut bytes = fs::read(seg).unwrap();
        let record_len = bytes.len() / 3;
        bytes[record_len + 20] ^= 0x40;
        fs::write(seg, &bytes).unwrap();
        assert_eq!(drain_ids(&mut ob), vec![ids[0], ids[2]]);
        let stats = ob.stats();
        assert_eq!((stats.unreadable_dropped, stats.depth), (1, 2));
    }

    #[test]
    fn full_outbox_drops_oldest_summaries_and_keeps_alarms() {
        let dir = tempfile::tempdir().unwrap();
        let payload = [7u8; 200];
        let len = frame::encoded_len(1, payload.len()).unwrap() as u64;
        let mut o = opts();
        o.max_size_bytes = 10 * len;
        let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
        let mut alarms = Vec::new();
        let mut summaries = Vec::new();
        for i in 0..20 {
            let class = if i % 4 == 0 {
                Class::Alarm
            } else {
                Class::Summary
            };
            let id = ob.append(rec(class, "t", &payload), T0 + i).unwrap();
            if class == Class::Alarm {
                alarms.push(id);
            } else {
                summaries.push(id);
            }
        }
        // 20 appended, 10 fit: the 10 oldest summaries went, all 5 alarms stayed.
        let stats = ob.stats();
        assert_eq!(stats.depth, 10);
        assert!(stats.bytes <= o.max_size_bytes);
        assert_eq!(stats.drops.get(Class::Summary, DropReason::Full), 10);
        assert_eq!(stats.drops.get(Class::Alarm, DropReason::Full), 0);
        assert_eq!(stats.depth_by_class[Class::Alarm.index()], 5);
        let mut expected: Vec<u64> = alarms.clone();
        expected.extend(&summaries[10..]);
        expected.sort_unstable();
        assert_eq!(drain_ids(&mut ob), expected);

        // A data record cannot push anything out now except data: it is refused and counted.
        for i in 0..5 {
            ob.append(rec(Class::Alarm, "t", &payload), T0 + 100 + i)
                .unwrap();
        }
        let err = ob
            .append(rec(Class::Data, "t", &payload), T0 + 200)
            .unwrap_err();
        assert!(
            matches!(
                err,
                OutboxError::Full {
                    class: Class::Data,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(ob.stats().drops.get(Class::Data, DropReason::Full), 1);
        // Only alarms left: a new alarm evicts the oldest alarm.
        ob.append(rec(Class::Alarm, "t", &payload), T0 + 300)
            .unwrap();
        let stats = ob.stats();
        assert_eq!(stats.drops.get(Class::Alarm, DropReason::Full), 1);
        assert_eq!(stats.depth_by_class[Class::Alarm.index()], 10);
        assert!(!drain_ids(&mut ob).contains(&alarms[0]));
    }

    #[test]
    fn eviction_order_is_data_then_summary_then_status_then_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let payload = [1u8; 100];
        let len = frame::encoded_len(1, payload.len()).unwrap() as u64;
        let mut o = opts();
        o.max_size_bytes = 4 * len;
        let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
        for class in [Class::Alarm, Class::Status, Class::Summary, Class::Data] {
            ob.append(rec(class, "t", &payload), T0).unwrap();
        }
        let mut gone = Vec::new();
        for _ in 0..3 {
            let before = ob.stats().depth_by_class;
            ob.append(rec(Class::Alarm, "t", &payload), T0).unwrap();
            let after = ob.stats().depth_by_class;
            let class = [Class::Alarm, Class::Status, Class::Summary, Class::Data]
                .into_iter()
                .find(|c| after[c.index()] < before[c.index()])
                .unwrap();
            gone.push(class);
        }
        assert_eq!(gone, vec![Class::Data, Class::Summary, Class::Status]);
    }

    #[test]
    fn old_records_expire_and_alarms_are_counted_apart() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.max_age_ms = 1000;
        let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
        ob.append(rec(Class::Alarm, "t", b"a"), T0).unwrap();
        ob.append(rec(Class::Data, "t", b"d"), T0 + 100).unwrap();
        let young = ob.append(rec(Class::Data, "t", b"d"), T0 + 900).unwrap();
        assert_eq!(ob.expire(T0 + 1000), 0, "exactly max_age old is kept");
        assert_eq!(ob.stats().oldest_age_ms(T0 + 1000), Some(1000));
        assert_eq!(ob.expire(T0 + 1101), 2);
        let stats = ob.stats();
        assert_eq!(stats.drops.get(Class::Alarm, DropReason::Expired), 1);
        assert_eq!(stats.drops.get(Class::Data, DropReason::Expired), 1);
        assert_eq!(stats.drops.get(Class::Data, DropReason::Full), 0);
        assert_eq!(drain_ids(&mut ob), vec![young]);
        drop(ob);
        // Expired records do not come back, and the rest expires at open when due.
        let (_, report) = Outbox::open(dir.path(), o, T0 + 1101).unwrap();
        assert_eq!(report.recovered, 1);
        let (ob, report) = Outbox::open(dir.path(), o, T0 + 5000).unwrap();
        assert_eq!((report.recovered, report.expired), (0, 1));
        assert_eq!(ob.stats().depth, 0);
    }

    #[test]
    fn fully_acked_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
        let payload = [3u8; 300];
        let ids: Vec<u64> = (0..100)
            .map(|_| ob.append(rec(Class::Data, "t", &payload), T0).unwrap())
            .collect();
        let segs_before = segment_files(dir.path()).len();
        assert!(segs_before >= 8, "{segs_before} segments");
        ob.next_unsent(usize::MAX).unwrap();
        for id in &ids[..50] {
            ob.ack(*id).unwrap();
        }
        let segs_half = segment_files(dir.path()).len();
        assert!(
            segs_half <= segs_before / 2 + 1,
            "{segs_half} of {segs_before}"
        );
        for id in &ids[50..] {
            ob.ack(*id).unwrap();
        }
        // Only the active segment (not full yet) may remain.
        assert!(segment_files(dir.path()).len() <= 1);
        assert!(ob.stats().disk_bytes <= 4096);
        drop(ob);
        let (ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.recovered, 0);
        assert_eq!(
            report.segments, 0,
            "a fully acked leftover segment is deleted at open"
        );
        assert!(segment_files(dir.path()).is_empty());
        assert_eq!(ob.stats().disk_bytes, 0);
    }

    #[test]
    fn long_lived_alarms_do_not_pin_disk_space() {
        let dir = tempfile::tempdir().unwrap();
        let payload = [9u8; 300];
        let mut o = opts();
        o.max_size_bytes = 40_000;
        let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
        // Broker down: data streams in, an alarm now and then, nothing is acked.
        for i in 0..3000 {
            let class = if i % 50 == 0 {
                Class::Alarm
            } else {
                Class::Data
            };
            ob.append(rec(class, "t", &payload), T0 + i).unwrap();
            let stats = ob.stats();
            assert!(stats.bytes <= o.max_size_bytes);
            assert!(
                stats.disk_bytes <= o.max_size_bytes + 2 * o.segment_size_bytes,
                "disk {} at {i}",
                stats.disk_bytes
            );
        }
        let stats = ob.stats();
        assert_eq!(stats.depth_by_class[Class::Alarm.index()], 60);
        assert!(stats.compacted_bytes > 0);
        eprintln!(
            "compacted {} bytes for {} appended",
            stats.compacted_bytes,
            3000 * frame::encoded_len(1, 300).unwrap()
        );
        let on_disk: u64 = segment_files(dir.path())
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, stats.disk_bytes);
        // Compaction moved records around; order and contents survive a restart.
        let expected = drain_ids(&mut ob);
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), o, T0 + 3000).unwrap();
        assert_eq!(report.recovered, expected.len());
        let back = ob.next_unsent(usize::MAX).unwrap();
        assert_eq!(ids(&back), expected);
        assert!(back.iter().all(|r| r.payload == payload));
    }

    #[test]
    fn duplicate_left_by_interrupted_compaction_is_recovered_once() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, ids) = five_records(dir.path());
        // Same records in a second, newer segment: what a crash mid-compaction leaves.
        fs::copy(&seg, segment_path(dir.path(), 1_000_000)).unwrap();
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.recovered, 5);
        assert_eq!(drain_ids(&mut ob), ids);
        for id in &ids[..3] {
            ob.ack(*id).unwrap();
        }
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.recovered, 2);
        assert_eq!(drain_ids(&mut ob), ids[3..].to_vec());
    }

    #[test]
    fn unusable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let target = file.join("outbox").join("sink");
        let err = Outbox::open(&target, opts(), T0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not-a-dir"), "{msg}");
        assert!(matches!(err, OutboxError::Io { .. }));
        // The directory itself being a file.
        let err = Outbox::open(&file, opts(), T0).unwrap_err();
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }

    #[test]
    fn segment_path_taken_by_a_directory_fails_the_append_not_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
        let blocker = segment_path(dir.path(), ob.stats().next_id);
        fs::create_dir(&blocker).unwrap();
        let err = ob.append(rec(Class::Alarm, "t", b"a"), T0).unwrap_err();
        assert!(
            err.to_string().contains(&blocker.display().to_string()),
            "{err}"
        );
        assert_eq!(ob.stats().depth, 0);
        // Once the operator fixes it, the same store carries on.
        fs::remove_dir(&blocker).unwrap();
        let id = ob.append(rec(Class::Alarm, "t", b"a"), T0).unwrap();
        assert_eq!(drain_ids(&mut ob), vec![id]);
    }

    #[test]
    fn full_disk_is_reported_as_storage_full_and_recoverable() {
        let dev_full = Path::new("/dev/full");
        if !dev_full.exists() {
            eprintln!("skipped: no /dev/full on this system");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
        // The segment the next append creates is a link to /dev/full: writes fail with ENOSPC,
        // exactly as on a full filesystem.
        let link = segment_path(dir.path(), ob.stats().next_id);
        std::os::unix::fs::symlink(dev_full, &link).unwrap();
        for _ in 0..3 {
            let err = ob.append(rec(Class::Alarm, "t", b"alarm"), T0).unwrap_err();
            assert_eq!(err.io_kind(), Some(io::ErrorKind::StorageFull), "{err}");
            assert!(
                err.to_string().contains(&link.display().to_string()),
                "{err}"
            );
            assert_eq!(ob.stats().depth, 0);
            if fs::symlink_metadata(&link).is_err() {
                // The store dropped the useless segment; put the full disk back for the retry.
                std::os::unix::fs::symlink(dev_full, &link).unwrap();
            }
        }
        // Space comes back: the same store carries on, nothing was half-written.
        fs::remove_file(&link).unwrap();
        let id = ob.append(rec(Class::Alarm, "t", b"alarm"), T0).unwrap();
        assert_eq!(drain_ids(&mut ob), vec![id]);
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!((report.recovered, report.torn_tails), (1, 0));
        assert_eq!(drain_ids(&mut ob), vec![id]);
    }

    #[test]
    fn non_empty_file_in_the_way_of_a_new_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
        let squatter = segment_path(dir.path(), ob.stats().next_id);
        fs::write(&squatter, b"not ours").unwrap();
        let err = ob.append(rec(Class::Alarm, "t", b"a"), T0).unwrap_err();
        assert_eq!(err.io_kind(), Some(io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&squatter).unwrap(), b"not ours");
    }

    #[test]
    fn every_fsync_policy_persists_records() {
        for fsync in [
            FsyncPolicy::Always,
            FsyncPolicy::Alarms,
            FsyncPolicy::Interval(100),
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut o = opts();
            o.fsync = fsync;
            let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
            let mut ids = append_n(&mut ob, Class::Data, 20, T0);
            ids.extend(append_n(&mut ob, Class::Alarm, 20, T0 + 150));
            ob.sync_if_due(T0 + 300).unwrap();
            ob.sync_if_due(T0 - 5).unwrap(); // clock stepped back
            ob.flush().unwrap();
            drop(ob);
            let (mut ob, report) = Outbox::open(dir.path(), o, T0 + 400).unwrap();
            assert_eq!(report.recovered, 40, "{fsync:?}");
            assert_eq!(drain_ids(&mut ob), ids, "{fsync:?}");
        }
    }

    #[test]
    fn invalid_options_and_records_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let bad = [
            OutboxOptions {
                max_size_bytes: 0,
                ..opts()
            },
            OutboxOptions {
                max_age_ms: 0,
                ..opts()
            },
            OutboxOptions {
                segment_size_bytes: 100,
                ..opts()
            },
            OutboxOptions {
                fsync: FsyncPolicy::Interval(0),
                ..opts()
            },
        ];
        for o in bad {
            assert!(matches!(
                Outbox::open(dir.path(), o, T0),
                Err(OutboxError::InvalidOptions(_))
            ));
        }
        let mut o = opts();
        o.max_size_bytes = 1000;
        let (mut ob, _) = Outbox::open(dir.path(), o, T0).unwrap();
        let mut bad_qos = rec(Class::Alarm, "t", b"p");
        bad_qos.qos = 3;
        assert!(matches!(
            ob.append(bad_qos, T0),
            Err(OutboxError::InvalidRecord(_))
        ));
        let huge = vec![0u8; 2000];
        assert!(matches!(
            ob.append(rec(Class::Alarm, "t", &huge), T0),
            Err(OutboxError::InvalidRecord(_))
        ));
        let long_topic = "t".repeat(70_000);
        assert!(ob.append(rec(Class::Alarm, &long_topic, b""), T0).is_err());
        assert_eq!(ob.stats().depth, 0);
    }

    #[test]
    fn damaged_ack_file_only_resends_the_damaged_acks() {
        let dir = tempfile::tempdir().unwrap();
        let (_, ids) = five_records(dir.path());
        {
            let (mut ob, _) = Outbox::open(dir.path(), opts(), T0).unwrap();
            for id in &ids[..3] {
                assert!(ob.ack(*id).unwrap());
            }
        }
        let acks: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ACK_EXT))
            .collect();
        assert_eq!(acks.len(), 1);
        let mut bytes = fs::read(&acks[0]).unwrap();
        assert_eq!(bytes.len(), 3 * frame::ENTRY_LEN);
        bytes[3] ^= 0xFF; // first ack entry fails its CRC
        bytes.truncate(bytes.len() - 5); // third one torn
        fs::write(&acks[0], &bytes).unwrap();

        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.bad_ack_entries, 1);
        assert_eq!(drain_ids(&mut ob), vec![ids[0], ids[2], ids[3], ids[4]]);
        // The torn entry was cut off, so new acks line up again.
        assert!(ob.ack(ids[4]).unwrap());
        drop(ob);
        let (mut ob, report) = Outbox::open(dir.path(), opts(), T0).unwrap();
        assert_eq!(report.bad_ack_entries, 1);
        assert_eq!(drain_ids(&mut ob), vec![ids[0], ids[2], ids[3]]);
    }

    #[test]
    fn index_entry_stays_compact() {
        assert!(std::mem::size_of::<Entry>() <= 40);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Arbitrary bytes as a segment, an ack file and a lease: open either fails with an
        /// error or recovers records; it never panics, and the store stays usable.
        #[test]
        fn open_survives_arbitrary_files(
            seg in proptest::collection::vec(any::<u8>(), 0..3000),
            ack in proptest::collection::vec(any::<u8>(), 0..100),
            lease in proptest::collection::vec(any::<u8>(), 0..20),
            keep_valid in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = Vec::new();
            if keep_valid {
                let (s, _) = five_records(dir.path());
                bytes = fs::read(&s).unwrap();
                fs::remove_file(s).unwrap();
            }
            bytes.extend(&seg);
            fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
            fs::write(ack_path(dir.path(), 1), &ack).unwrap();
            fs::write(dir.path().join(LEASE_FILE), &lease).unwrap();
            if let Ok((mut ob, report)) = Outbox::open(dir.path(), opts(), T0) {
                let back = ob.next_unsent(usize::MAX).unwrap();
                prop_assert_eq!(back.len(), report.recovered);
                let id = ob.append(rec(Class::Alarm, "t", b"p"), T0).unwrap();
                prop_assert!(back.iter().all(|r| r.id < id));
            }
        }
    }
}
