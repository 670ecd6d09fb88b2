//! Puts sample rows in time order before they reach the engine, with bounded memory, so that a
//! historian export grouped per device or per tag (in one file or several) replays like the
//! same rows in time order. See docs/REPLAY.md, "Order".
//!
//! A first pass reads only the timestamps and devices and cuts the input, taken as one stream
//! over the files in the order given, into *runs*: a run ends where a row is older than the
//! newest row of the run by more than the reorder tolerance, or older than the run's previous
//! row of the same device. Inside a run rows keep their order, so a row that is late by less
//! than the tolerance behind other devices' rows (a late batch, as `[record]` writes it) is
//! still applied late, as live; one device's own samples never go back in time. The second
//! pass merges the runs: each run is read from its own place in its file with a small buffer,
//! and the run whose next row has the smallest key goes next.
//! The key is (newest time of the run so far, device, run): rows of one device and timestamp
//! from several runs (an export grouped per tag) meet again in one batch. When there are more
//! runs than can be open at once (a shuffled file), rows are sorted in chunks of bounded size,
//! spilled to temporary files, and the chunks merged by the same key.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::progress::Progress;
use super::ReplayError;
use crate::core::model::{BadReason, Quality, Ts};
use crate::io::samples::{csv, Columns, HeaderError, Names, Next, Row, RowError, SampleReader};

/// Runs merged directly: each holds an open file and a read buffer of [`RUN_BUFFER`] bytes.
pub const MAX_RUNS: usize = 64;
/// Rows sorted in memory at once when the runs are too many (about 64 bytes each).
pub const CHUNK_ROWS: usize = 1 << 18;
const RUN_BUFFER: usize = 32 * 1024;

/// One input file: where to read it and how to name it in messages.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub display: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderOptions {
    pub tolerance_ms: i64,
    pub max_runs: usize,
    pub chunk_rows: usize,
    /// Show the chunk sort's progress on a terminal.
    pub progress: bool,
}

impl OrderOptions {
    pub fn new(tolerance_ms: i64) -> OrderOptions {
        OrderOptions {
            tolerance_ms,
            max_runs: MAX_RUNS,
            chunk_rows: CHUNK_ROWS,
            progress: false,
        }
    }
}

/// What the ordered stream yields; `file` indexes the sources.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Row { row: Row, file: usize },
    Bad { file: usize, error: RowError },
    Derived,
}

/// How the input was ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderStats {
    /// Records in all files (good or bad), from the first pass.
    pub records: u64,
    /// Time-ordered runs found; 1 for a file already in time order.
    pub runs: u64,
    /// Sorted chunks written to temporary files (0 unless the runs were too many).
    pub spilled_chunks: u64,
    /// Most rows held in memory at once by the chunk sort.
    pub max_buffered_rows: usize,
}

/// Where runs end: a row older than the run's newest by more than the tolerance, or older
/// than the run's last row of its device.
#[derive(Debug)]
struct Breaks {
    tolerance_ms: i64,
    newest: Option<Ts>,
    run: u64,
    /// Per device: (run, time) of its last row.
    last: Vec<(u64, Ts)>,
}

impl Breaks {
    fn new(tolerance_ms: i64, devices: usize) -> Breaks {
        Breaks {
            tolerance_ms,
            newest: None,
            run: 0,
            last: vec![(u64::MAX, 0); devices],
        }
    }

    /// Takes a row; true if it starts a new run. Rows without a time never do.
    fn take(&mut self, ts: Option<Ts>, device: Option<u32>) -> bool {
        let Some(t) = ts else {
            return false;
        };
        let slot = device.and_then(|d| self.last.get(d as usize).copied());
        let breaks = match self.newest {
            None => false,
            Some(n) => {
                t < n.saturating_sub(self.tolerance_ms)
                    || slot.is_some_and(|(run, prev)| run == self.run && t < prev)
            }
        };
        if breaks {
            self.run += 1;
            self.newest = Some(t);
        } else {
            self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
        }
        if let Some(s) = device.and_then(|d| self.last.get_mut(d as usize)) {
            *s = (self.run, t);
        }
        breaks
    }
}

/// A stretch of one file inside a run.
#[derive(Debug, Clone, Copy)]
struct Segment {
    file: usize,
    offset: u64,
    lines_before: u64,
    records: u64,
}

fn open(src: &Source, offset: u64) -> Result<BufReader<File>, ReplayError> {
    let read_err = |source| ReplayError::Read {
        path: src.path.clone(),
        source,
    };
    let mut f = File::open(&src.path).map_err(read_err)?;
    if offset > 0 {
        f.seek(SeekFrom::Start(offset)).map_err(read_err)?;
    }
    Ok(BufReader::with_capacity(RUN_BUFFER, f))
}

fn header<'n>(
    src: &Source,
    names: &'n Names,
) -> Result<SampleReader<'n, BufReader<File>>, ReplayError> {
    SampleReader::new(open(src, 0)?, names).map_err(|e| match e {
        HeaderError::Csv(csv::CsvError::Io(source)) => ReplayError::Read {
            path: src.path.clone(),
            source,
        },
        other => ReplayError::Header {
            path: src.path.clone(),
            source: other,
        },
    })
}

fn io_err(src: &Source) -> impl Fn(std::io::Error) -> ReplayError + '_ {
    |source| ReplayError::Read {
        path: src.path.clone(),
        source,
    }
}

/// The first pass: each file's columns and, unless there are more than `max_runs`, the runs.
#[derive(Debug)]
struct Scan {
    columns: Vec<Columns>,
    runs: Option<Vec<Vec<Segment>>>,
    stats: OrderStats,
}

fn scan(sources: &[Source], names: &Names, opts: &OrderOptions) -> Result<Scan, ReplayError> {
    let mut columns = Vec::with_capacity(sources.len());
    let mut runs: Option<Vec<Vec<Segment>>> = Some(Vec::new());
    let mut stats = OrderStats::default();
    let mut cuts = Breaks::new(opts.tolerance_ms, names.device_count());
    for (fi, src) in sources.iter().enumerate() {
        let mut r = header(src, names)?;
        columns.push(r.columns());
        let mut seg: Option<Segment> = None;
        while let Some(key) = r.next_key().map_err(io_err(src))? {
            let (offset, line) = (key.offset, key.line);
            stats.records += 1;
            let breaks = cuts.take(key.ts, key.device);
            if breaks || seg.is_none() {
                if let (Some(s), Some(runs)) = (seg.take(), runs.as_mut()) {
                    if let Some(run) = runs.last_mut() {
                        run.push(s);
                    }
                }
                if breaks || stats.runs == 0 {
                    stats.runs += 1;
                    match runs.as_mut() {
                        Some(v) if v.len() < opts.max_runs => v.push(Vec::new()),
                        _ => runs = None,
                    }
                }
                seg = Some(Segment {
                    file: fi,
                    offset,
                    lines_before: line.saturating_sub(1),
                    records: 0,
                });
            }
            if let Some(s) = seg.as_mut() {
                s.records += 1;
            }
        }
        if let (Some(s), Some(runs)) = (seg, runs.as_mut()) {
            if let Some(run) = runs.last_mut() {
                run.push(s);
            }
        }
    }
    Ok(Scan {
        columns,
        runs,
        stats,
    })
}

/// Reads one run, segment by segment.
struct RunReader<'a, 'n> {
    segments: std::vec::IntoIter<Segment>,
    current: Option<(SampleReader<'n, BufReader<File>>, usize, u64)>,
    sources: &'a [Source],
    names: &'n Names,
    columns: &'a [Columns],
    /// Newest row time of the run so far: its merge key.
    newest: Option<Ts>,
}

impl RunReader<'_, '_> {
    fn next(&mut self) -> Result<Option<Item>, ReplayError> {
        loop {
            let (reader, file, left) = match self.current.as_mut() {
                Some(c) if c.2 > 0 => c,
                _ => {
                    let Some(s) = self.segments.next() else {
                        return Ok(None);
                    };
                    let src = &self.sources[s.file];
                    let input = open(src, s.offset)?;
                    let r = SampleReader::resume(
                        input,
                        self.names,
                        self.columns[s.file],
                        s.offset,
                        s.lines_before,
                    );
                    self.current.insert((r, s.file, s.records))
                }
            };
            *left -= 1;
            let file = *file;
            let next = reader.next_row().map_err(io_err(&self.sources[file]))?;
            return Ok(Some(match next {
                // The file shrank since the first pass.
                Next::End => {
                    self.current = None;
                    continue;
                }
                Next::Row(row) => {
                    self.newest = Some(self.newest.map_or(row.ts, |n| n.max(row.ts)));
                    Item::Row { row, file }
                }
                Next::Bad(error) => Item::Bad { file, error },
                Next::Derived => Item::Derived,
            }));
        }
    }
}

/// The first pass done: what [`Plan::for_each`] will read, and how.
#[derive(Debug)]
pub struct Plan<'a, 'n> {
    sources: &'a [Source],
    names: &'n Names,
    opts: OrderOptions,
    scan: Scan,
}

/// Reads the timestamps of `sources` (and every header) to plan the ordered read.
pub fn plan<'a, 'n>(
    sources: &'a [Source],
    names: &'n Names,
    opts: &OrderOptions,
) -> Result<Plan<'a, 'n>, ReplayError> {
    Ok(Plan {
        sources,
        names,
        opts: *opts,
        scan: scan(sources, names, opts)?,
    })
}

impl Plan<'_, '_> {
    pub fn stats(&self) -> &OrderStats {
        &self.scan.stats
    }

    /// Calls `emit` with every row in replay order (and with every bad or derived row as it
    /// is read). Returns how the input was ordered.
    pub fn for_each(
        self,
        emit: &mut dyn FnMut(Item) -> Result<(), ReplayError>,
    ) -> Result<OrderStats, ReplayError> {
        let mut stats = self.scan.stats;
        match self.scan.runs {
            Some(runs) => merge_runs(self.sources, self.names, &self.scan.columns, runs, emit)?,
            None => spill_sort(self.sources, self.names, &self.opts, &mut stats, emit)?,
        }
        Ok(stats)
    }
}

fn merge_runs(
    sources: &[Source],
    names: &Names,
    columns: &[Columns],
    runs: Vec<Vec<Segment>>,
    emit: &mut dyn FnMut(Item) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let mut readers: Vec<RunReader<'_, '_>> = runs
        .into_iter()
        .map(|segments| RunReader {
            segments: segments.into_iter(),
            current: None,
            sources,
            names,
            columns,
            newest: None,
        })
        .collect();
    let mut heads: Vec<Option<(Row, usize)>> = vec![None; readers.len()];
    let mut heap = BinaryHeap::new();
    for i in 0..readers.len() {
        fill(i, &mut readers, &mut heads, &mut heap, emit)?;
    }
    while let Some(Reverse((_, _, i))) = heap.pop() {
        if let Some((row, file)) = heads[i].take() {
            emit(Item::Row { row, file })?;
        }
        fill(i, &mut readers, &mut heads, &mut heap, emit)?;
    }
    Ok(())
}

type Heap = BinaryHeap<Reverse<(Ts, u32, usize)>>;

/// Reads run `i` up to its next good row, passing bad and derived rows on as they come.
fn fill(
    i: usize,
    readers: &mut [RunReader<'_, '_>],
    heads: &mut [Option<(Row, usize)>],
    heap: &mut Heap,
    emit: &mut dyn FnMut(Item) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    while let Some(item) = readers[i].next()? {
        match item {
            Item::Row { row, file } => {
                let key = readers[i].newest.unwrap_or(row.ts);
                heap.push(Reverse((key, row.device, i)));
                heads[i] = Some((row, file));
                return Ok(());
            }
            other => emit(other)?,
        }
    }
    Ok(())
}

/// A row in the chunk sort, with its key: (newest time of its run, device, run, position).
#[derive(Debug, Clone, Copy)]
struct Keyed {
    newest: Ts,
    run: u64,
    seq: u64,
    file: u32,
    row: Row,
}

impl Keyed {
    fn key(&self) -> (Ts, u32, u64, u64) {
        (self.newest, self.row.device, self.run, self.seq)
    }
}

const RECORD: usize = 8 * 5 + 4 * 2 + 2 + 8 + 2;

fn quality_code(q: Quality) -> [u8; 2] {
    match q {
        Quality::Good => [0, 0],
        Quality::Bad(BadReason::Timeout) => [1, 0],
        Quality::Bad(BadReason::Exception(c)) => [2, c],
        Quality::Bad(BadReason::ConnectionLost) => [3, 0],
        Quality::Bad(BadReason::Decode) => [4, 0],
        Quality::Bad(BadReason::Protocol) => [5, 0],
        Quality::Bad(BadReason::Input) => [6, 0],
    }
}

fn quality_of(c: [u8; 2]) -> Quality {
    match c[0] {
        0 => Quality::Good,
        1 => Quality::Bad(BadReason::Timeout),
        2 => Quality::Bad(BadReason::Exception(c[1])),
        3 => Quality::Bad(BadReason::ConnectionLost),
        4 => Quality::Bad(BadReason::Decode),
        5 => Quality::Bad(BadReason::Protocol),
        _ => Quality::Bad(BadReason::Input),
    }
}

fn encode(k: &Keyed, out: &mut [u8; RECORD]) {
    let r = &k.row;
    let mut at = 0;
    let mut put = |b: &[u8]| {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    };
    put(&k.newest.to_le_bytes());
    put(&k.run.to_le_bytes());
    put(&k.seq.to_le_bytes());
    put(&r.ts.to_le_bytes());
    put(&r.line.to_le_bytes());
    put(&k.file.to_le_bytes());
    put(&r.device.to_le_bytes());
    put(&r.tag.to_le_bytes());
    put(&r.value.to_bits().to_le_bytes());
    put(&quality_code(r.quality));
}

fn decode(b: &[u8; RECORD]) -> Keyed {
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |i: usize| {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[i..i + 4]);
        u32::from_le_bytes(a)
    };
    Keyed {
        newest: u64_at(0) as i64,
        run: u64_at(8),
        seq: u64_at(16),
        file: u32_at(40),
        row: Row {
            ts: u64_at(24) as i64,
            line: u64_at(32),
            device: u32_at(44),
            tag: u16::from_le_bytes([b[48], b[49]]),
            value: f64::from_bits(u64_at(50)),
            quality: quality_of([b[58], b[59]]),
        },
    }
}

fn spill(chunk: &mut Vec<Keyed>) -> std::io::Result<File> {
    chunk.sort_unstable_by_key(Keyed::key);
    let mut f = BufWriter::with_capacity(RUN_BUFFER, tempfile::tempfile()?);
    let mut buf = [0u8; RECORD];
    for k in chunk.iter() {
        encode(k, &mut buf);
        f.write_all(&buf)?;
    }
    chunk.clear();
    let mut f = f.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f)
}

/// Merges sorted chunk files, passing each row on in key order.
fn merge_chunks(
    files: Vec<File>,
    out: &mut dyn FnMut(Keyed) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let spill_err = |source| ReplayError::Spill(source);
    let mut readers: Vec<BufReader<File>> = files
        .into_iter()
        .map(|f| BufReader::with_capacity(RUN_BUFFER, f))
        .collect();
    let mut heads: Vec<Option<Keyed>> = vec![None; readers.len()];
    let mut heap = BinaryHeap::new();
    let mut buf = [0u8; RECORD];
    let read = |r: &mut BufReader<File>, buf: &mut [u8; RECORD]| -> std::io::Result<bool> {
        match r.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    for (i, r) in readers.iter_mut().enumerate() {
        if read(r, &mut buf).map_err(spill_err)? {
            let k = decode(&buf);
            heap.push(Reverse((k.key(), i)));
            heads[i] = Some(k);
        }
    }
    while let Some(Reverse((_, i))) = heap.pop() {
        if let Some(k) = heads[i].take() {
            out(k)?;
        }
        if read(&mut readers[i], &mut buf).map_err(spill_err)? {
            let k = decode(&buf);
            heap.push(Reverse((k.key(), i)));
            heads[i] = Some(k);
        }
    }
    Ok(())
}

/// The fallback for many runs: an external merge sort by the same key as [`merge_runs`].
fn spill_sort(
    sources: &[Source],
    names: &Names,
    opts: &OrderOptions,
    stats: &mut OrderStats,
    emit: &mut dyn FnMut(Item) -> Result<(), ReplayError>,
) -> Result<(), ReplayError> {
    let chunk_rows = opts.chunk_rows.max(1);
    let fan_in = opts.max_runs.max(2);
    let mut chunk: Vec<Keyed> = Vec::with_capacity(chunk_rows);
    let mut chunks: Vec<File> = Vec::new();
    let mut cuts = Breaks::new(opts.tolerance_ms, names.device_count());
    let mut seq: u64 = 0;
    let mut progress = if opts.progress {
        Progress::rows("sorting", stats.records)
    } else {
        Progress::hidden()
    };
    for (fi, src) in sources.iter().enumerate() {
        let mut r = header(src, names)?;
        loop {
            match r.next_row().map_err(io_err(src))? {
                Next::End => break,
                Next::Derived => emit(Item::Derived)?,
                Next::Bad(error) => emit(Item::Bad { file: fi, error })?,
                Next::Row(row) => {
                    progress.row();
                    cuts.take(Some(row.ts), Some(row.device));
                    seq += 1;
                    chunk.push(Keyed {
                        newest: cuts.newest.unwrap_or(row.ts),
                        run: cuts.run,
                        seq,
                        file: fi as u32,
                        row,
                    });
                    stats.max_buffered_rows = stats.max_buffered_rows.max(chunk.len());
                    if chunk.len() >= chunk_rows {
                        chunks.push(spill(&mut chunk).map_err(ReplayError::Spill)?);
                        stats.spilled_chunks += 1;
                    }
                }
            }
        }
    }
    progress.finish();
    let mut pass = |k: Keyed| {
        emit(Item::Row {
            row: k.row,
            file: k.file as usize,
        })
    };
    if chunks.is_empty() {
        chunk.sort_unstable_by_key(Keyed::key);
        for k in chunk {
            pass(k)?;
        }
        return Ok(());
    }
    if !chunk.is_empty() {
        chunks.push(spill(&mut chunk).map_err(ReplayError::Spill)?);
        stats.spilled_chunks += 1;
    }
    drop(chunk);
    // More chunks than can be open at once: merge them in groups first.
    while chunks.len() > fan_in {
        let mut next = Vec::new();
        let mut rest = chunks.into_iter();
        loop {
            let group: Vec<File> = rest.by_ref().take(fan_in).collect();
            if group.is_empty() {
                break;
            }
            let mut w = BufWriter::with_capacity(
                RUN_BUFFER,
                tempfile::tempfile().map_err(ReplayError::Spill)?,
            );
            let mut buf = [0u8; RECORD];
            merge_chunks(group, &mut |k| {
                encode(&k, &mut buf);
                w.write_all(&buf).map_err(ReplayError::Spill)
            })?;
            let mut f = w
                .into_inner()
                .map_err(|e| ReplayError::Spill(e.into_error()))?;
            f.seek(SeekFrom::Start(0)).map_err(ReplayError::Spill)?;
            next.push(f);
        }
        chunks = next;
    }
    merge_chunks(chunks, &mut pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spilled_rows_read_back_exactly() {
        for q in [
            Quality::Good,
            Quality::Bad(BadReason::Timeout),
            Quality::Bad(BadReason::Exception(0x0b)),
            Quality::Bad(BadReason::ConnectionLost),
            Quality::Bad(BadReason::Decode),
            Quality::Bad(BadReason::Protocol),
            Quality::Bad(BadReason::Input),
        ] {
            let k = Keyed {
                newest: 1_795_824_000_123,
                run: 7,
                seq: 1 << 40,
                file: 3,
                row: Row {
                    line: 99,
                    ts: 1_795_824_000_001,
                    device: 12,
                    tag: 513,
                    value: -0.1,
                    quality: q,
                },
            };
            let mut buf = [0u8; RECORD];
            encode(&k, &mut buf);
            let back = decode(&buf);
            assert_eq!(back.key(), k.key());
            assert_eq!(back.file, 3);
            assert_eq!(back.row, k.row);
        }
    }
}
