//! Pure byte framing for the outbox: records, ack entries and the id lease. No I/O here.
//!
//! Record frame (little-endian):
//!
//! ```text
//! offset size field
//!  0     4    magic  A1 5E 0B 58
//!  4     4    body_len (u32)       22 ..= MAX_BODY_LEN
//!  8     4    crc32(body)          crc32fast (IEEE)
//! 12     ..   body:
//!               0  8 id (u64)
//!               8  8 created (i64, ms since epoch)
//!              16  1 class (1 alarm, 2 status, 3 summary, 4 data)
//!              17  1 flags (bit 0 = retain; other bits must be 0)
//!              18  1 qos (0..=2)
//!              19  1 reserved (0)
//!              20  2 topic_len (u16)
//!              22  .. topic (UTF-8), then payload (rest of the body)
//! ```
//!
//! The length is not covered by the CRC on purpose: a damaged length selects the wrong body,
//! and that body then fails the CRC. [`scan`] never trusts a length to skip ahead over bad
//! bytes; it resynchronises on the next magic that starts a valid record.
//!
//! Ack entries and the id lease share one fixed 12-byte entry: `u64 value` + `crc32(value)`.

use crate::core::model::Ts;
use crate::core::outbound::Class;

/// First bytes of every record. Chosen to be unlikely in zero-filled or ASCII tails.
pub const MAGIC: [u8; 4] = [0xA1, 0x5E, 0x0B, 0x58];
/// Magic + body length + CRC.
pub const HEADER_LEN: usize = 12;
/// Body bytes before the topic.
pub const FIXED_BODY_LEN: usize = 22;
/// Largest body accepted (16 MiB plus room for the topic). Far above any MQTT packet we send;
/// it bounds what a damaged length field can make a reader allocate.
pub const MAX_BODY_LEN: usize = (16 << 20) + 65_536;
/// Size of one ack / lease entry.
pub const ENTRY_LEN: usize = 12;

const FLAG_RETAIN: u8 = 0x01;

/// The class byte of a record. The numbers are the on-disk format: never renumber.
fn class_byte(class: Class) -> u8 {
    match class {
        Class::Alarm => 1,
        Class::Status => 2,
        Class::Summary => 3,
        Class::Data => 4,
    }
}

fn class_from_byte(b: u8) -> Option<Class> {
    match b {
        1 => Some(Class::Alarm),
        2 => Some(Class::Status),
        3 => Some(Class::Summary),
        4 => Some(Class::Data),
        _ => None,
    }
}

/// The fixed fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub id: u64,
    pub created: Ts,
    pub class: Class,
    pub retain: bool,
    pub qos: u8,
}

/// A record borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub meta: RecordMeta,
    pub topic: &'a str,
    pub payload: &'a [u8],
}

/// Why bytes do not decode to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("incomplete record: {needed} bytes needed")]
    Incomplete { needed: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("bad body length {0}")]
    BadLength(u32),
    #[error("crc mismatch")]
    BadCrc,
    #[error("malformed body: {0}")]
    BadBody(&'static str),
    #[error("record too large: topic {topic_len} bytes, payload {payload_len} bytes")]
    TooLarge {
        topic_len: usize,
        payload_len: usize,
    },
}

/// Total frame size for a topic and payload, or `None` if it cannot be framed.
pub fn encoded_len(topic_len: usize, payload_len: usize) -> Option<usize> {
    if topic_len > usize::from(u16::MAX) {
        return None;
    }
    let body = FIXED_BODY_LEN
        .checked_add(topic_len)?
        .checked_add(payload_len)?;
    if body > MAX_BODY_LEN {
        return None;
    }
    Some(HEADER_LEN + body)
}

/// Appends one framed record to `out`.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let too_large = FrameError::TooLarge {
        topic_len: frame.topic.len(),
        payload_len: frame.payload.len(),
    };
    let total = encoded_len(frame.topic.len(), frame.payload.len()).ok_or(too_large)?;
    let topic_len = u16::try_from(frame.topic.len()).map_err(|_| too_large)?;
    let body_len = u32::try_from(total - HEADER_LEN).map_err(|_| too_large)?;
    if frame.meta.qos > 2 {
        return Err(FrameError::BadBody("qos above 2"));
    }
    out.reserve(total);
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    let body_start = out.len();
    out.extend_from_slice(&frame.meta.id.to_le_bytes());
    out.extend_from_slice(&frame.meta.created.to_le_bytes());
    out.push(class_byte(frame.meta.class));
    out.push(if frame.meta.retain { FLAG_RETAIN } else { 0 });
    out.push(frame.meta.qos);
    out.push(0);
    out.extend_from_slice(&topic_len.to_le_bytes());
    out.extend_from_slice(frame.topic.as_bytes());
    out.extend_from_slice(frame.payload);
    let crc = crc32fast::hash(&out[body_start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Decodes the record at the start of `buf`; returns it and the number of bytes it spans.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
    if buf.len() < HEADER_LEN {
        // Report a bad magic as early as possible so a scanner does not wait for more bytes.
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            return Err(FrameError::BadMagic);
        }
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    }
    if buf[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let body_len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body_len_usize = usize::try_from(body_len).map_err(|_| FrameError::BadLength(body_len))?;
    if !(FIXED_BODY_LEN..=MAX_BODY_LEN).contains(&body_len_usize) {
        return Err(FrameError::BadLength(body_len));
    }
    let total = HEADER_LEN + body_len_usize;
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let crc = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let body = &buf[HEADER_LEN..total];
    if crc32fast::hash(body) != crc {
        return Err(FrameError::BadCrc);
    }
    let meta = decode_meta(body)?;
    let topic_len = usize::from(u16::from_le_bytes([body[20], body[21]]));
    let topic_end = FIXED_BODY_LEN + topic_len;
    if topic_end > body.len() {
        return Err(FrameError::BadBody("topic longer than body"));
    }
    let topic = std::str::from_utf8(&body[FIXED_BODY_LEN..topic_end])
        .map_err(|_| FrameError::BadBody("topic is not UTF-8"))?;
    let payload = &body[topic_end..];
    Ok((
        Frame {
            meta,
            topic,
            payload,
        },
        total,
    ))
}

fn decode_meta(body: &[u8]) -> Result<RecordMeta, FrameError> {
    let mut id = [0; 8];
    id.copy_from_slice(&body[0..8]);
    let mut created = [0; 8];
    created.copy_from_slice(&body[8..16]);
    let class = class_from_byte(body[16]).ok_or(FrameError::BadBody("unknown class"))?;
    let flags = body[17];
    if flags & !FLAG_RETAIN != 0 {
        return Err(FrameError::BadBody("unknown flags"));
    }
    let qos = body[18];
    if qos > 2 {
        return Err(FrameError::BadBody("qos above 2"));
    }
    Ok(RecordMeta {
        id: u64::from_le_bytes(id),
        created: i64::from_le_bytes(created),
        class,
        retain: flags & FLAG_RETAIN != 0,
        qos,
    })
}

/// Position of the next [`MAGIC`] at or after `from`.
pub fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    if from >= buf.len() {
        return None;
    }
    buf[from..]
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|p| p + from)
}

/// One valid record found by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScannedRecord {
    pub meta: RecordMeta,
    /// Offset of the frame in the scanned buffer.
    pub offset: usize,
    /// Frame length (header + body).
    pub len: usize,
}

/// The result of scanning a whole segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Valid records, in file order.
    pub records: Vec<ScannedRecord>,
    /// Runs of bad bytes followed by a valid record (mid-file corruption), each skipped.
    pub corrupt_regions: usize,
    /// Bytes in those runs.
    pub corrupt_bytes: usize,
    /// Bad bytes after the last valid record: a torn write or trailing garbage.
    pub torn_bytes: usize,
    /// Where the valid prefix ends (`buf.len() - torn_bytes`); truncate the file here.
    pub valid_len: usize,
}

/// Walks a segment, keeping every record that decodes and skipping damaged bytes by
/// resynchronising on the next magic. Never panics, whatever the input.
pub fn scan(buf: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0;
    let mut bad_start: Option<usize> = None;
    while pos < buf.len() {
        match decode(&buf[pos..]) {
            Ok((frame, len)) => {
                if let Some(start) = bad_start.take() {
                    scan.corrupt_regions += 1;
                    scan.corrupt_bytes += pos - start;
                }
                scan.records.push(ScannedRecord {
                    meta: frame.meta,
                    offset: pos,
                    len,
                });
                pos += len;
            }
            Err(_) => {
                bad_start.get_or_insert(pos);
                pos = find_magic(buf, pos + 1).unwrap_or(buf.len());
            }
        }
    }
    if let Some(start) = bad_start {
        scan.torn_bytes = buf.len() - start;
    }
    scan.valid_len = buf.len() - scan.torn_bytes;
    scan
}

/// Encodes one ack / lease entry.
pub fn encode_entry(value: u64) -> [u8; ENTRY_LEN] {
    let bytes = value.to_le_bytes();
    let mut out = [0; ENTRY_LEN];
    out[..8].copy_from_slice(&bytes);
    out[8..].copy_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
    out
}

/// Decodes one entry; `None` if its CRC does not match.
pub fn decode_entry(entry: &[u8; ENTRY_LEN]) -> Option<u64> {
    let mut bytes = [0; 8];
    bytes.copy_from_slice(&entry[..8]);
    let crc = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]);
    (crc32fast::hash(&bytes) == crc).then_some(u64::from_le_bytes(bytes))
}

/// The entries of an ack file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryScan {
    pub values: Vec<u64>,
    /// Entries whose CRC failed (their records will be resent: at-least-once).
    pub bad_entries: usize,
    /// A partial entry at the end (torn write); truncate to `buf.len() - torn_bytes`.
    pub torn_bytes: usize,
}

/// Decodes a file of fixed-size entries.
pub fn scan_entries(buf: &[u8]) -> EntryScan {
    let mut scan = EntryScan::default();
    let chunks = buf.chunks_exact(ENTRY_LEN);
    scan.torn_bytes = chunks.remainder().len();
    for chunk in chunks {
        let mut entry = [0; ENTRY_LEN];
        entry.copy_from_slice(chunk);
        match decode_entry(&entry) {
            Some(v) => scan.values.push(v),
            None => scan.bad_entries += 1,
        }
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(id: u64) -> RecordMeta {
        RecordMeta {
            id,
            created: 1_700_000_000_000 + id as i64,
            class: Class::Alarm,
            retain: id.is_multiple_of(2),
            qos: 1,
        }
    }

    fn encoded(id: u64, topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &Frame {
                meta: meta(id),
                topic,
                payload,
            },
            &mut out,
        )
        .unwrap();
        out
    }

    #[test]
    fn round_trip() {
        let buf = encoded(42, "acme/pot117/alarms/hi", b"{\"v\":1}");
        assert_eq!(buf.len(), encoded_len(21, 7).unwrap());
        let (frame, len) = decode(&buf).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(frame.meta, meta(42));
        assert_eq!(frame.topic, "acme/pot117/alarms/hi");
        assert_eq!(frame.payload, b"{\"v\":1}");
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_rejected() {
        let buf = encoded(7, "t", b"payload");
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Err(FrameError::Incomplete { .. })),
                "cut at {cut}"
            );
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn rejects_oversized_topic_and_bad_qos() {
        let topic = "x".repeat(70_000);
        let mut out = Vec::new();
        let frame = Frame {
            meta: meta(1),
            topic: &topic,
            payload: b"",
        };
        assert!(matches!(
            encode(&frame, &mut out),
            Err(FrameError::TooLarge { .. })
        ));
        let mut m = meta(1);
        m.qos = 3;
        let frame = Frame {
            meta: m,
            topic: "t",
            payload: b"",
        };
        assert!(encode(&frame, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn scan_reports_torn_tail_and_resyncs_after_mid_corruption() {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for id in 1..=5 {
            starts.push(buf.len());
            buf.extend(encoded(id, "topic", &[id as u8; 40]));
        }
        let full_len = buf.len();
        // Corrupt record 3's payload, tear record 5.
        buf[starts[2] + HEADER_LEN + 30] ^= 0xFF;
        buf.truncate(full_len - 3);
        let scan = scan(&buf);
        let ids: Vec<u64> = scan.records.iter().map(|r| r.meta.id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
        assert_eq!(scan.corrupt_regions, 1);
        assert_eq!(scan.corrupt_bytes, starts[3] - starts[2]);
        assert_eq!(scan.torn_bytes, full_len - 3 - starts[4]);
        assert_eq!(scan.valid_len, starts[4]);
    }

    #[test]
    fn scan_of_zero_filled_tail_is_torn() {
        let mut buf = encoded(1, "t", b"p");
        let good = buf.len();
        buf.extend([0u8; 4096]);
        let scan = scan(&buf);
        assert_eq!(scan.records.len(), 1);
        assert_eq!(scan.valid_len, good);
        assert_eq!(scan.torn_bytes, 4096);
    }

    #[test]
    fn entries_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        for v in [1u64, 2, u64::MAX] {
            buf.extend(encode_entry(v));
        }
        buf[ENTRY_LEN + 3] ^= 0x10;
        buf.extend([1, 2, 3]);
        let scan = scan_entries(&buf);
        assert_eq!(scan.values, vec![1, u64::MAX]);
        assert_eq!(scan.bad_entries, 1);
        assert_eq!(scan.torn_bytes, 3);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn scan_never_panics_and_accounts_for_every_byte(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let s = scan(&bytes);
            let record_bytes: usize = s.records.iter().map(|r| r.len).sum();
            prop_assert_eq!(record_bytes + s.corrupt_bytes + s.torn_bytes, bytes.len());
            prop_assert_eq!(s.valid_len + s.torn_bytes, bytes.len());
        }

        /// Valid records spliced with arbitrary garbage: every record that is not touched by
        /// the garbage is recovered, nothing panics.
        #[test]
        fn scan_recovers_records_around_garbage(
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
            at in 0usize..6,
            payload_len in 0usize..100,
        ) {
            let mut buf = Vec::new();
            for id in 1..=5u64 {
                if id as usize == at {
                    buf.extend(&garbage);
                }
                buf.extend(encoded(id, "a/b", &vec![0x5A; payload_len]));
            }
            let s = scan(&buf);
            let ids: Vec<u64> = s.records.iter().map(|r| r.meta.id).collect();
            // Garbage before record `at` can at worst hide nothing: records are intact.
            prop_assert_eq!(ids, vec![1, 2, 3, 4, 5]);
        }
    }
}
