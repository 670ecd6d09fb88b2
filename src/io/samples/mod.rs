//! The sample CSV format (`ts,device,tag,value[,quality]`), both ways: `[record]` writes it
//! ([`format_batch`]) and `replay` reads it ([`SampleReader`]). Reading takes the header by name
//! in any order, resolves names through the configuration, and reports each bad row with its
//! line.

pub(crate) mod csv;

use std::collections::HashMap;
use std::fmt;
use std::io::BufRead;

use self::csv::{write_field, CsvError, CsvReader};
use crate::clock::{parse_ts, rfc3339_ms};
use crate::config::Config;
use crate::core::engine::SampleBatch;
use crate::core::model::{BadReason, Quality, Ts};

/// The columns every sample file has; `quality` is optional.
pub const REQUIRED_COLUMNS: [&str; 4] = ["ts", "device", "tag", "value"];
pub const HEADER: &str = "ts,device,tag,value,quality";

/// What is wrong with one row, for counting by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowErrorKind {
    Syntax,
    MissingField,
    Timestamp,
    UnknownDevice,
    UnknownTag,
    Value,
    Quality,
    OutOfOrder,
}

impl RowErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RowErrorKind::Syntax => "csv syntax",
            RowErrorKind::MissingField => "missing field",
            RowErrorKind::Timestamp => "bad timestamp",
            RowErrorKind::UnknownDevice => "unknown device",
            RowErrorKind::UnknownTag => "unknown tag",
            RowErrorKind::Value => "bad value",
            RowErrorKind::Quality => "bad quality",
            RowErrorKind::OutOfOrder => "out of order",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub kind: RowErrorKind,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// One good row, resolved to engine indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub line: u64,
    pub ts: Ts,
    pub device: u32,
    pub tag: u16,
    pub value: f64,
    pub quality: Quality,
}

/// Where a record is and what orders it, from [`SampleReader::next_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// Byte offset of the record in the file, and its line.
    pub offset: u64,
    pub line: u64,
    pub ts: Option<Ts>,
    pub device: Option<u32>,
}

/// Outcome of reading one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Row(Row),
    /// A derived tag: the engine computes it from the raw tags, so the recorded value is skipped.
    Derived,
    Bad(RowError),
    End,
}

/// Device and tag names to indices, as `SampleBatch` wants them.
#[derive(Debug)]
pub struct Names {
    devices: HashMap<String, u32>,
    tags: Vec<HashMap<String, u16>>,
    derived: Vec<Vec<String>>,
}

impl Names {
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn new(cfg: &Config) -> Names {
        Names {
            devices: cfg
                .devices
                .iter()
                .enumerate()
                .map(|(i, d)| (d.name.clone(), i as u32))
                .collect(),
            tags: cfg
                .devices
                .iter()
                .map(|d| {
                    d.tags
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t.name.clone(), i as u16))
                        .collect()
                })
                .collect(),
            derived: cfg
                .devices
                .iter()
                .map(|d| d.derived.iter().map(|t| t.name.clone()).collect())
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the file is empty; expected a header line: {HEADER}")]
    Empty,
    #[error("line {line}: missing column(s) {missing} in the header; found: {found}; expected: {HEADER} (any order, quality optional)")]
    Missing {
        line: u64,
        missing: String,
        found: String,
    },
    #[error(transparent)]
    Csv(#[from] CsvError),
}

/// Where the columns of a file are, from its header: what a reader resumed inside the file needs.
#[derive(Debug, Clone, Copy)]
pub struct Columns {
    ts: usize,
    device: usize,
    tag: usize,
    value: usize,
    quality: Option<usize>,
    needed: usize,
}

/// Reads sample rows from CSV text.
#[derive(Debug)]
pub struct SampleReader<'n, R> {
    csv: CsvReader<R>,
    names: &'n Names,
    cols: Columns,
    last: Last,
}

/// Consecutive rows usually repeat the timestamp and device: parse and look them up once.
#[derive(Debug, Default)]
struct Last {
    ts_text: String,
    ts: Ts,
    device_text: String,
    device: Option<u32>,
}

impl Last {
    fn ts(&mut self, text: &str) -> Option<Ts> {
        if text == self.ts_text && !text.is_empty() {
            return Some(self.ts);
        }
        let ts = parse_file_ts(text)?;
        self.ts_text.clear();
        self.ts_text.push_str(text);
        self.ts = ts;
        Some(ts)
    }

    fn device(&mut self, names: &Names, text: &str) -> Option<u32> {
        match self.device {
            Some(d) if text == self.device_text => Some(d),
            _ => {
                let d = *names.devices.get(text)?;
                self.device_text.clear();
                self.device_text.push_str(text);
                self.device = Some(d);
                Some(d)
            }
        }
    }
}

impl<'n, R: BufRead> SampleReader<'n, R> {
    /// Reads the header. Columns are matched by name (case-insensitive) in any order; extra
    /// columns are ignored.
    pub fn new(input: R, names: &'n Names) -> Result<Self, HeaderError> {
        let mut csv = CsvReader::new(input);
        let line = csv.next_record()?.ok_or(HeaderError::Empty)?;
        let found: Vec<String> = (0..csv.len())
            .map(|i| csv.field(i).unwrap_or("").trim().to_ascii_lowercase())
            .collect();
        let find = |name: &str| found.iter().position(|f| f == name);
        let missing: Vec<&str> = REQUIRED_COLUMNS
            .iter()
            .copied()
            .filter(|c| find(c).is_none())
            .collect();
        let (Some(ts), Some(device), Some(tag), Some(value)) =
            (find("ts"), find("device"), find("tag"), find("value"))
        else {
            return Err(HeaderError::Missing {
                line,
                missing: missing
                    .iter()
                    .map(|m| format!("\"{m}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                found: found.join(","),
            });
        };
        let quality = find("quality");
        let needed = [ts, device, tag, value].into_iter().max().unwrap_or(0) + 1;
        Ok(SampleReader {
            csv,
            names,
            cols: Columns {
                ts,
                device,
                tag,
                value,
                quality,
                needed,
            },
            last: Last::default(),
        })
    }

    /// A reader of the same file positioned at a record: `input` starts at the record's byte
    /// `offset`, after `lines_before` lines, and the columns are those the header gave.
    pub fn resume(
        input: R,
        names: &'n Names,
        cols: Columns,
        offset: u64,
        lines_before: u64,
    ) -> Self {
        SampleReader {
            csv: CsvReader::resume(input, offset, lines_before),
            names,
            cols,
            last: Last::default(),
        }
    }

    pub fn columns(&self) -> Columns {
        self.cols
    }

    /// Reads the next record and only its timestamp and device, for a first pass over a file
    /// that only needs to know its order. `ts` and `device` are `None` where they are bad.
    pub fn next_key(&mut self) -> Result<Option<Key>, std::io::Error> {
        let line = match self.csv.next_record() {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(None),
            Err(CsvError::Io(e)) => return Err(e),
            Err(CsvError::Syntax { line, .. }) => {
                return Ok(Some(Key {
                    offset: self.csv.record_offset(),
                    line,
                    ts: None,
                    device: None,
                }))
            }
        };
        let offset = self.csv.record_offset();
        let ts = self
            .last
            .ts(self.csv.field(self.cols.ts).unwrap_or("").trim());
        let device = self.last.device(
            self.names,
            self.csv.field(self.cols.device).unwrap_or("").trim(),
        );
        Ok(Some(Key {
            offset,
            line,
            ts,
            device,
        }))
    }

    /// Reads and resolves the next row. I/O errors end the file; every other problem is a bad row.
    pub fn next_row(&mut self) -> Result<Next, std::io::Error> {
        let line = match self.csv.next_record() {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(Next::End),
            Err(CsvError::Io(e)) => return Err(e),
            Err(CsvError::Syntax { line, message }) => {
                return Ok(Next::Bad(RowError {
                    line,
                    kind: RowErrorKind::Syntax,
                    message,
                }))
            }
        };
        Ok(self.resolve(line))
    }

    fn resolve(&mut self, line: u64) -> Next {
        let bad = |kind, message: String| {
            Next::Bad(RowError {
                line,
                kind,
                message,
            })
        };
        let c = self.cols;
        if self.csv.len() < c.needed {
            return bad(
                RowErrorKind::MissingField,
                format!(
                    "{} field(s), the header needs at least {}",
                    self.csv.len(),
                    c.needed
                ),
            );
        }
        let field = |i: usize| self.csv.field(i).unwrap_or("").trim();

        let ts_text = field(c.ts);
        let Some(ts) = self.last.ts(ts_text) else {
            return bad(
                RowErrorKind::Timestamp,
                format!("ts \"{ts_text}\" is not a time in RFC 3339 (2026-11-28T16:05:53.123Z) or epoch milliseconds, between 1970 and 9999"),
            );
        };

        let device_text = field(c.device);
        let Some(device) = self.last.device(self.names, device_text) else {
            return bad(
                RowErrorKind::UnknownDevice,
                format!("device \"{device_text}\" is not in the configuration"),
            );
        };

        let tag_text = field(c.tag);
        let tag = match self.names.tags[device as usize].get(tag_text) {
            Some(&t) => t,
            None if self.names.derived[device as usize]
                .iter()
                .any(|d| d == tag_text) =>
            {
                return Next::Derived
            }
            None => {
                return bad(
                    RowErrorKind::UnknownTag,
                    format!("device \"{device_text}\" has no tag \"{tag_text}\""),
                )
            }
        };

        let quality = match c.quality.map(field) {
            None | Some("") => Quality::Good,
            Some(q) => match parse_quality(q) {
                Some(q) => q,
                None => {
                    return bad(
                        RowErrorKind::Quality,
                        format!("quality \"{q}\" is not good, bad:<reason> or empty; reasons: timeout, exception_XX, connection_lost, decode_error, protocol_error, bad_input"),
                    )
                }
            },
        };

        let value_text = field(c.value);
        let value = if value_text.is_empty() {
            if quality.is_good() {
                return bad(
                    RowErrorKind::Value,
                    "empty value with good quality; give a number, or a bad:<reason> quality"
                        .into(),
                );
            }
            f64::NAN
        } else {
            match value_text.parse::<f64>() {
                Ok(v) => v,
                Err(_) => {
                    return bad(
                        RowErrorKind::Value,
                        format!("value \"{value_text}\" is not a number"),
                    )
                }
            }
        };
        Next::Row(Row {
            line,
            ts,
            device,
            tag,
            value,
            quality,
        })
    }
}

/// RFC 3339 (with `Z` or a numeric offset such as `+08:00`) or epoch milliseconds.
/// The offset is applied here because `clock::parse_ts` (humantime's weak parser) ignores it,
/// which would shift a local-time export by hours without a word.
pub fn parse_file_ts(s: &str) -> Option<Ts> {
    // Years 1970 to 9999: keeps every later subtraction of two times far from overflow.
    parse_any_ts(s).filter(|t| (0..=MAX_TS).contains(t))
}

/// 9999-12-31T23:59:59.999Z.
pub const MAX_TS: Ts = 253_402_300_799_999;

fn parse_any_ts(s: &str) -> Option<Ts> {
    let s = s.trim();
    // "2026-11-28T16:05:53" is 19 bytes; an offset can only follow the seconds.
    if s.len() > 19 && s.is_char_boundary(s.len() - 6) {
        let (head, tail) = s.split_at(s.len() - 6);
        let t = tail.as_bytes();
        if (t[0] == b'+' || t[0] == b'-') && t[3] == b':' {
            let hh: i64 = tail.get(1..3)?.parse().ok()?;
            let mm: i64 = tail.get(4..6)?.parse().ok()?;
            if hh > 23 || mm > 59 {
                return None;
            }
            let offset_ms = (hh * 60 + mm) * 60_000;
            let utc = parse_ts(head)?;
            return Some(if t[0] == b'+' {
                utc - offset_ms
            } else {
                utc + offset_ms
            });
        }
    }
    parse_ts(s)
}

/// `good`, or `bad:<reason>` as [`Quality::label`] writes it.
pub fn parse_quality(s: &str) -> Option<Quality> {
    if s.eq_ignore_ascii_case("good") {
        return Some(Quality::Good);
    }
    let reason = s.strip_prefix("bad:")?;
    let r = match reason {
        "timeout" => BadReason::Timeout,
        "connection_lost" => BadReason::ConnectionLost,
        "decode_error" => BadReason::Decode,
        "protocol_error" => BadReason::Protocol,
        "bad_input" => BadReason::Input,
        other => {
            let code = other.strip_prefix("exception")?;
            let code = code.strip_prefix('_').unwrap_or(code);
            BadReason::Exception(if code.is_empty() {
                0
            } else {
                u8::from_str_radix(code, 16).ok()?
            })
        }
    };
    Some(Quality::Bad(r))
}

/// One device's names as rows spell them, CSV-escaped once; `None` for a tag not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowNames {
    device: String,
    tags: Vec<Option<String>>,
}

impl RowNames {
    /// `tags`: each tag's name in the device's tag order, or `None` to leave it out.
    pub fn new<'a>(device: &str, tags: impl IntoIterator<Item = Option<&'a str>>) -> RowNames {
        let escaped = |s: &str| {
            let mut out = String::new();
            write_field(&mut out, s);
            out
        };
        RowNames {
            device: escaped(device),
            tags: tags.into_iter().map(|t| t.map(escaped)).collect(),
        }
    }
}

/// Appends one row per written value of `b` to `out`; returns the number of rows.
pub fn format_batch(names: &[RowNames], b: &SampleBatch, out: &mut String) -> u64 {
    use std::fmt::Write as _;
    let Some(dev) = names.get(b.device as usize) else {
        return 0;
    };
    let ts = rfc3339_ms(b.ts);
    let mut rows = 0;
    for &(tag, v, q) in &b.values {
        let Some(Some(tag)) = dev.tags.get(tag as usize) else {
            continue;
        };
        out.push_str(&ts);
        out.push(',');
        out.push_str(&dev.device);
        out.push(',');
        out.push_str(tag);
        out.push(',');
        // Display writes the shortest text that parses back to the same f64. A bad value is
        // left empty: its quality says why.
        if q.is_good() {
            let _ = write!(out, "{v}");
        }
        out.push(',');
        out.push_str(&q.label());
        out.push('\n');
        rows += 1;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CFG: &str = r#"
[agent]
id = "gw"
site = "s"
area = "a"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[templates.cell]
tags = [
  { name = "voltage", table = "input", address = 0, type = "f32", unit = "V" },
  { name = "current", table = "input", address = 2, type = "f32", unit = "kA" },
]
derived = [ { name = "resistance", expr = "voltage / current" } ]
[[devices]]
name = "pot-{unit:03}"
template = "cell"
endpoint = "tcp://127.0.0.1:5020"
units = "1-2"
"#;

    fn names() -> Names {
        Names::new(&Config::from_str(Path::new("t.toml"), CFG).unwrap())
    }

    fn read_all(text: &str) -> Result<Vec<Next>, String> {
        let n = names();
        let mut r = SampleReader::new(text.as_bytes(), &n).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        loop {
            match r.next_row().unwrap() {
                Next::End => return Ok(out),
                x => out.push(x),
            }
        }
    }

    #[test]
    fn columns_in_any_order_with_extra_columns_bom_and_crlf() {
        let got = read_all(
            "\u{feff}Value,comment,Tag,DEVICE,ts\r\n4.25,\"a, b\",voltage,pot-002,1000\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![Next::Row(Row {
                line: 2,
                ts: 1000,
                device: 1,
                tag: 0,
                value: 4.25,
                quality: Quality::Good
            })]
        );
    }

    #[test]
    fn missing_columns_are_named() {
        let e = read_all("ts,device,value\n").unwrap_err();
        assert!(e.contains("\"tag\"") && e.contains("line 1"), "{e}");
        let e = read_all("").unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn each_bad_row_has_its_line_and_kind() {
        let got = read_all(
            "ts,device,tag,value,quality\n\
             yesterday,pot-001,voltage,4.2,good\n\
             2026-11-28T16:05:53.123Z,pot-009,voltage,4.2,\n\
             2026-11-28T16:05:53.123Z,pot-001,volts,4.2,\n\
             2026-11-28T16:05:53.123Z,pot-001,voltage,abc,\n\
             2026-11-28T16:05:53.123Z,pot-001,voltage,,good\n\
             2026-11-28T16:05:53.123Z,pot-001,voltage,4.2,meh\n\
             2026-11-28T16:05:53.123Z,pot-001\n\
             2026-11-28T16:05:53.123Z,pot-001,resistance,0.1,good\n",
        )
        .unwrap();
        let kinds: Vec<(u64, RowErrorKind)> = got
            .iter()
            .filter_map(|n| match n {
                Next::Bad(e) => Some((e.line, e.kind)),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                (2, RowErrorKind::Timestamp),
                (3, RowErrorKind::UnknownDevice),
                (4, RowErrorKind::UnknownTag),
                (5, RowErrorKind::Value),
                (6, RowErrorKind::Value),
                (7, RowErrorKind::Quality),
                (8, RowErrorKind::MissingField),
            ]
        );
        assert_eq!(got.last(), Some(&Next::Derived));
    }

    #[test]
    fn bad_quality_rows_may_have_no_value() {
        let got = read_all(
            "ts,device,tag,value,quality\n\
             1764345953123,pot-001,voltage,,bad:timeout\n\
             1764345953123,pot-001,current,NaN,bad:exception_02\n",
        )
        .unwrap();
        match (&got[0], &got[1]) {
            (Next::Row(a), Next::Row(b)) => {
                assert!(a.value.is_nan() && b.value.is_nan());
                assert_eq!(a.quality, Quality::Bad(BadReason::Timeout));
                assert_eq!(b.quality, Quality::Bad(BadReason::Exception(2)));
                assert_eq!(b.tag, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn timestamps_with_offsets_are_converted_to_utc() {
        let utc = Some(1_795_881_953_123);
        assert_eq!(parse_file_ts("2026-11-28T16:05:53.123Z"), utc);
        assert_eq!(parse_file_ts("2026-11-29T00:05:53.123+08:00"), utc);
        assert_eq!(parse_file_ts("2026-11-28T10:35:53.123-05:30"), utc);
        assert_eq!(parse_file_ts("2026-11-28T16:05:53.123+00:00"), utc);
        assert_eq!(parse_file_ts(" 1795881953123 "), utc);
        assert_eq!(parse_file_ts("2026-11-28T16:05:53.123+25:00"), None);
        assert_eq!(parse_file_ts("2026-11-28"), None);
        assert_eq!(parse_file_ts("9223372036854775807"), None);
        assert_eq!(parse_file_ts("-1"), None);
    }

    #[test]
    fn quality_labels_round_trip() {
        for q in [
            Quality::Good,
            Quality::Bad(BadReason::Timeout),
            Quality::Bad(BadReason::Exception(0x0b)),
            Quality::Bad(BadReason::ConnectionLost),
            Quality::Bad(BadReason::Decode),
            Quality::Bad(BadReason::Protocol),
            Quality::Bad(BadReason::Input),
        ] {
            assert_eq!(parse_quality(&q.label()), Some(q));
        }
        assert_eq!(parse_quality("bad:gremlins"), None);
    }

    #[test]
    fn rows_are_escaped_filtered_and_bad_values_left_empty() {
        let names = vec![RowNames::new(
            "pot-001",
            [Some("voltage"), None, Some("\"odd,name\"")],
        )];
        let mut out = String::new();
        let n = format_batch(
            &names,
            &SampleBatch {
                device: 0,
                ts: 1_764_345_953_123,
                values: vec![
                    (0, 4.125, Quality::Good),
                    (1, 900.0, Quality::Good),
                    (2, f64::NAN, Quality::Bad(BadReason::Exception(2))),
                    (7, 1.0, Quality::Good),
                ],
            },
            &mut out,
        );
        assert_eq!(n, 2);
        assert_eq!(
            out,
            "2025-11-28T16:05:53.123Z,pot-001,voltage,4.125,good\n\
             2025-11-28T16:05:53.123Z,pot-001,\"\"\"odd,name\"\"\",,bad:exception_02\n"
        );
    }

    #[test]
    fn what_is_written_reads_back_to_the_same_samples() {
        let n = names();
        let rows: Vec<RowNames> = (1..=2)
            .map(|u| RowNames::new(&format!("pot-{u:03}"), [Some("voltage"), Some("current")]))
            .collect();
        let batches = [
            SampleBatch {
                device: 1,
                ts: 1_764_345_953_123,
                values: vec![(0, 4.1 + 1e-12, Quality::Good), (1, 301.25, Quality::Good)],
            },
            SampleBatch {
                device: 0,
                ts: 1_764_345_953_224,
                values: vec![
                    (0, f64::NAN, Quality::Bad(BadReason::Timeout)),
                    (1, -0.000_001_5, Quality::Good),
                ],
            },
        ];
        let mut text = format!("{HEADER}\n");
        for b in &batches {
            format_batch(&rows, b, &mut text);
        }
        let mut r = SampleReader::new(text.as_bytes(), &n).unwrap();
        for b in &batches {
            for &(tag, v, q) in &b.values {
                let Next::Row(row) = r.next_row().unwrap() else {
                    panic!("a row")
                };
                assert_eq!(
                    (row.device, row.ts, row.tag, row.quality),
                    (b.device, b.ts, tag, q)
                );
                assert!(row.value == v || (row.value.is_nan() && v.is_nan()), "{v}");
            }
        }
        assert_eq!(r.next_row().unwrap(), Next::End);
    }
}
