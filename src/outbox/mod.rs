//! Durable on-disk outbox: what makes "a broker outage never drops an alarm" true.
//!
//! rumqttc's `publish().await` only means *queued*, and a clean reconnect silently clears its
//! pending queue (docs/STANDARDS.md §3.4). So every alarm transition, summary, status and data
//! message is appended here first and leaves only when the caller reports the broker's
//! PUBACK with [`Outbox::ack`]. Delivery is at-least-once; consumers dedupe by record id.
//!
//! # Use
//!
//! One [`Outbox`] per MQTT sink (`<state_dir>/outbox/<sink-name>/`), owned by the publisher
//! task; the API is synchronous and takes `now` as an argument (it never reads a clock).
//! `append` → `next_unsent` (marks records in flight) → publish → `ack` on PUBACK;
//! `requeue_in_flight` after a disconnect. Records come out in append order (FIFO), so an
//! alarm is never overtaken by an older summary. Records recovered at `open` carry
//! `replayed = true`.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/00000000000000000001.seg   segment: framed records, append-only (see frame.rs)
//! <dir>/00000000000000000001.ack   removals for that segment: 12-byte entries (id u64 + crc32)
//! <dir>/00000000000000004097.seg   ...
//! <dir>/ids.lease                  one 12-byte entry: every id below it may have been issued
//! ```
//!
//! * **Segments.** Records are appended to the active segment until it reaches
//!   `segment_size_bytes` (default 4 MiB), then a new one starts. A restart always starts a
//!   new segment; old ones are only read and deleted. A segment is deleted as soon as none of
//!   its records is live and it takes no more appends, which is how disk space comes back.
//! * **Removals (acks and drops)** are appended to the `.ack` file of the segment holding
//!   the record, and vanish with it. A removal that empties a closed segment deletes the
//!   segment instead of being written. At open, every segment is scanned and a record is live
//!   unless its id appears in an ack file. Ack files are written (not fsynced) on every ack,
//!   so a process crash loses none; they are fsynced with the records at the policy's sync
//!   points, so a power cut can at most resend the records acked since the last sync.
//! * **Ids** are monotonic u64, never reused across restarts, even after a power cut: before
//!   handing out ids the store fsyncs `ids.lease` with a ceiling 4096 ids ahead (write to a
//!   temp file, fsync, rename, fsync the directory). At open, the next id is the largest of
//!   the lease and every id or segment number seen. A crash skips at most 4096 ids.
//! * **Damage.** A partial record or garbage after the last valid record (torn write on power
//!   loss) is reported and truncated away. A damaged record in the middle fails its CRC and
//!   the reader resynchronises on the next magic that starts a valid record; the skipped runs
//!   are counted. Neither is fatal. A record damaged after open is dropped when read and
//!   counted in `unreadable_dropped`.
//! * **Compaction.** Eviction keeps alarms while dropping data, so a few long-lived records
//!   could pin many mostly-dead segments. When segment files exceed `max_size_bytes` plus one
//!   segment, the live records of the closed segment with the most dead bytes are copied to
//!   the active segment (fsynced unless the policy is `Never`) and the old file is deleted. A
//!   crash in between leaves two copies; open keeps one and marks the other removed.
//!
//! # Limits
//!
//! * `max_size_bytes` bounds the bytes of live records. When an append would exceed it, the
//!   oldest Data record goes first, then Summary, then Status, and Alarm last. A record only
//!   evicts records of its own class or less important ones; if that is not enough, the new
//!   record itself is refused with [`OutboxError::Full`] (and counted). Disk use stays below
//!   `max_size_bytes + 2 × segment_size_bytes`, give or take a record.
//! * `max_age_ms`: older records (alarms included) are expired on `open`, `append` and
//!   `expire`. Every drop is counted by class and reason in [`OutboxStats::drops`].
//! * Memory: an index entry of about 40 bytes per live record; payloads are read from disk
//!   with `read_exact_at` when sent. Open reads one segment at a time.
//!
//! # Durability ([`FsyncPolicy`])
//!
//! Every append is one `write(2)` of the whole frame, so records survive a crash of the
//! process under every policy. `Always` fsyncs after every record; `Alarms` (default) after
//! every alarm, the others riding along with the next alarm, segment roll or `flush`;
//! `Interval(ms)` on `append` / `sync_if_due` once `ms` have passed; `Never` leaves it to the
//! OS.
//!
//! # Errors
//!
//! I/O failures (full disk, read-only or missing directory) return [`OutboxError::Io`] naming
//! the operation and the path; the store stays usable and the caller can retry. A failed
//! append cuts its partial bytes off again.
//!
//! # Notes for the publisher
//!
//! * Map rumqttc's `Outgoing::Publish(pkid)` to the record id and call `ack(id)` on the
//!   matching `Incoming::PubAck`. After any reconnect (rumqttc drops its pending queue when
//!   `session_present = false`), call `requeue_in_flight` and send again from `next_unsent`.
//! * Call `expire(now)` and `sync_if_due(now)` from a timer and `flush()` on shutdown.
//! * `append`, `ack` and `flush` may fsync (milliseconds on slow storage); run them where
//!   blocking is acceptable (`spawn_blocking` or a dedicated thread), not on a busy runtime
//!   worker.
//! * [`OutboxError::Full`] is a counted drop, not a failure of the store.
//!
//! # Known limits
//!
//! * There is no lock against two processes opening the same directory (`File::lock` needs
//!   Rust 1.89; the crate targets 1.85). One sink, one directory, one process.
//! * Damage in the middle of a segment is skipped but not rewritten, so it is reported again
//!   at every open until the segment is deleted.
//! * Compaction copies live records forward; with alarms pinned in every segment and nothing
//!   acked, it can rewrite a large share of the appended bytes (see
//!   [`OutboxStats::compacted_bytes`]).
pub(crate) mod frame;
pub(crate) mod lease;
pub(crate) mod store;

/// Records carry the message class the agent gives everything it publishes.
pub use crate::core::outbound::Class;
pub use store::{
    DropCounts, DropReason, FsyncPolicy, NewRecord, OpenReport, Outbox, OutboxError, OutboxOptions,
    OutboxStats, StoredRecord, DEAD_LETTER_FILE,
};
