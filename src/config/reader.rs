//! A thin reader over toml's spanned document that collects every problem at once, each with
//! its file, line, column and key path, instead of stopping at the first like serde would.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.col,
            if self.path.is_empty() {
                "(document)"
            } else {
                &self.path
            },
            self.message
        )
    }
}

/// The text of one file, for turning byte offsets into line and column.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }
}

/// Collects problems across files.
#[derive(Debug, Default)]
pub struct Problems {
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn add(&mut self, src: &Source, offset: usize, path: &str, message: impl Into<String>) {
        let (line, col) = src.line_col(offset);
        self.list.push(Problem {
            file: src.path.clone(),
            line,
            col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Problems in file order, then position, without exact duplicates.
    pub fn sorted(mut self) -> Vec<Problem> {
        self.list.sort_by(|a, b| {
            (&a.file, a.line, a.col, &a.path).cmp(&(&b.file, b.line, b.col, &b.path))
        });
        self.list.dedup();
        self.list
    }
}

/// Where a value sits: its source, byte offset, and key path.
#[derive(Debug, Clone, Copy)]
pub struct At<'s> {
    pub src: &'s Source,
    pub offset: usize,
}

/// Joins a key onto a path: `devices[1]` + `poll` = `devices[1].poll`.
pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Reads the keys of one table, remembering which were used so the rest can be reported
/// as unknown.
#[derive(Debug)]
pub struct TableReader<'a, 's> {
    pub table: &'a DeTable<'a>,
    pub at: At<'s>,
    pub path: String,
    used: Vec<&'static str>,
}

impl<'a, 's> TableReader<'a, 's> {
    pub fn new(table: &'a DeTable<'a>, at: At<'s>, path: String) -> Self {
        TableReader {
            table,
            at,
            path,
            used: Vec::new(),
        }
    }

    /// Reads a table-valued node, or reports that it is not a table.
    pub fn of(
        v: &'a Spanned<DeValue<'a>>,
        src: &'s Source,
        path: String,
        p: &mut Problems,
    ) -> Option<Self> {
        match v.get_ref() {
            DeValue::Table(t) => Some(TableReader::new(
                t,
                At {
                    src,
                    offset: v.span().start,
                },
                path,
            )),
            other => {
                p.add(
                    src,
                    v.span().start,
                    &path,
                    format!("expected a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn get(&mut self, key: &'static str) -> Option<&'a Spanned<DeValue<'a>>> {
        self.used.push(key);
        self.table.get(key)
    }

    pub fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    pub fn value_offset(&self, key: &str) -> usize {
        self.table
            .get(key)
            .map(|v| v.span().start)
            .unwrap_or(self.at.offset)
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn problem(&self, p: &mut Problems, key: &str, msg: impl Into<String>) {
        let off = if self.has(key) {
            self.value_offset(key)
        } else {
            self.at.offset
        };
        p.add(self.at.src, off, &self.key_path(key), msg);
    }

    pub fn missing(&self, p: &mut Problems, key: &str, what: &str) {
        p.add(
            self.at.src,
            self.at.offset,
            &self.key_path(key),
            format!("missing required key; {what}"),
        );
    }

    pub fn opt_str(&mut self, p: &mut Problems, key: &'static str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.problem(
                    p,
                    key,
                    format!("expected a string, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn req_str(&mut self, p: &mut Problems, key: &'static str, what: &str) -> Option<String> {
        if !self.has(key) {
            self.used.push(key);
            self.missing(p, key, what);
            return None;
        }
        self.opt_str(p, key)
    }

    pub fn opt_bool(&mut self, p: &mut Problems, key: &'static str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.problem(
                    p,
                    key,
                    format!("expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    pub fn opt_int(&mut self, p: &mut Problems, key: &'static str) -> Option<i64> {
        let v = self.get(key)?;
        match int_of(v.get_ref()) {
            Some(i) => Some(i),
            None => {
                self.problem(
                    p,
                    key,
                    format!("expected an integer, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    /// An integer within `lo..=hi`.
    pub fn opt_int_in(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        lo: i64,
        hi: i64,
    ) -> Option<i64> {
        let i = self.opt_int(p, key)?;
        if i < lo || i > hi {
            self.problem(
                p,
                key,
                format!("{i} is out of range; accepted: {lo} to {hi}"),
            );
            return None;
        }
        Some(i)
    }

    /// A number: integer or float, finite.
    pub fn opt_f64(&mut self, p: &mut Problems, key: &'static str) -> Option<f64> {
        let v = self.get(key)?;
        match f64_of(v.get_ref()) {
            Some(f) if f.is_finite() => Some(f),
            Some(_) => {
                self.problem(p, key, "expected a finite number");
                None
            }
            None => {
                self.problem(
                    p,
                    key,
                    format!("expected a number, found {}", type_name(v.get_ref())),
                );
                None
            }
        }
    }

    pub fn opt_duration_ms(&mut self, p: &mut Problems, key: &'static str) -> Option<i64> {
        self.opt_with_unit(
            p,
            key,
            super::units::parse_duration_ms,
            "a duration",
            "\"500ms\", \"1s\", \"10m\", \"2h\", \"1d\"",
        )
    }

    pub fn opt_size(&mut self, p: &mut Problems, key: &'static str) -> Option<u64> {
        self.opt_with_unit(
            p,
            key,
            super::units::parse_size,
            "a size",
            "\"512KiB\", \"64MiB\", \"1GiB\", \"100MB\"",
        )
    }

    /// A string value that carries its unit, parsed by `parse`; a bare number is refused with
    /// the accepted forms.
    fn opt_with_unit<T>(
        &mut self,
        p: &mut Problems,
        key: &'static str,
        parse: fn(&str) -> Result<T, String>,
        what: &str,
        forms: &str,
    ) -> Option<T> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => match parse(s) {
                Ok(x) => Some(x),
                Err(e) => {
                    self.problem(p, key, e);
                    None
                }
            },
            other => {
                self.problem(
                    p,
                    key,
                    format!(
                        "expected {what} string with its unit, found {}; accepted forms: {forms}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// An array of strings, or a single string taken as a one-element list.
    pub fn opt_str_list(&mut self, p: &mut Problems, key: &'static str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(vec![s.to_string()]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push(s.to_string()),
                        other => p.add(
                            self.at.src,
                            item.span().start,
                            &index(&self.key_path(key), i),
                            format!("expected a string, found {}", type_name(other)),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.problem(
                    p,
                    key,
                    format!("expected an array of strings, found {}", type_name(other)),
                );
                None
            }
        }
    }

    /// Reports every key that was never asked for.
    pub fn finish(self, p: &mut Problems) {
        for (k, _) in self.table.iter() {
            let key: &str = k.get_ref();
            if !self.used.contains(&key) {
                let mut accepted: Vec<&str> = self.used.clone();
                accepted.sort_unstable();
                accepted.dedup();
                p.add(
                    self.at.src,
                    k.span().start,
                    &join(&self.path, key),
                    format!("unknown key; accepted here: {}", accepted.join(", ")),
                );
            }
        }
    }
}

/// The `name` string of a table, read without reporting anything: what an item that failed to
/// parse is still known by.
pub fn name_of(v: &Spanned<DeValue<'_>>) -> Option<String> {
    match v.get_ref() {
        DeValue::Table(t) => match t.get("name").map(|n| n.get_ref()) {
            Some(DeValue::String(s)) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Offset of a key's value in a table, or of the table itself.
pub fn value_offset_of(v: &Spanned<DeValue<'_>>, key: &str) -> usize {
    match v.get_ref() {
        DeValue::Table(t) => t.get(key).map_or(v.span().start, |x| x.span().start),
        _ => v.span().start,
    }
}

pub fn int_of(v: &DeValue<'_>) -> Option<i64> {
    match v {
        DeValue::Integer(i) => {
            let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
            let (neg, body) = match digits.strip_prefix('-') {
                Some(rest) => (true, rest.to_string()),
                None => (false, digits.trim_start_matches('+').to_string()),
            };
            let body = body
                .trim_start_matches("0x")
                .trim_start_matches("0o")
                .trim_start_matches("0b");
            let n = i64::from_str_radix(body, i.radix()).ok()?;
            Some(if neg { -n } else { n })
        }
        _ => None,
    }
}

pub fn f64_of(v: &DeValue<'_>) -> Option<f64> {
    match v {
        DeValue::Float(f) => {
            let s: String = f.as_str().chars().filter(|c| *c != '_').collect();
            match s.as_str() {
                "inf" | "+inf" => Some(f64::INFINITY),
                "-inf" => Some(f64::NEG_INFINITY),
                "nan" | "+nan" | "-nan" => Some(f64::NAN),
                _ => s.parse().ok(),
            }
        }
        DeValue::Integer(_) => int_of(v).map(|i| i as f64),
        _ => None,
    }
}

/// Parses a whole file into a spanned table, reporting a syntax error with its position.
pub fn parse_document<'a>(src: &'a Source, p: &mut Problems) -> Option<Spanned<DeTable<'a>>> {
    match DeTable::parse(&src.text) {
        Ok(t) => Some(t),
        Err(e) => {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            let msg = e.message().trim().replace('\n', " ");
            p.add(src, off, "", format!("TOML syntax error: {msg}"));
            None
        }
    }
}

/// Largest configuration file (main or included) that is read: far above any plant's
/// configuration (10,000 devices take about 1 MiB), and it keeps a wrong include from eating
/// the memory of the agent.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a file, or reports why it cannot be read. Only a regular file of at most
/// [`MAX_FILE_BYTES`] is read: a FIFO would block the reader until someone writes to it, and
/// a device such as `/dev/zero` never ends.
pub fn read_source(path: &Path) -> Result<Source, Problem> {
    let fail = |message: String| Problem {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        path: String::new(),
        message: format!("cannot read the file: {message}"),
    };
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    check_file_kind(&meta).map_err(fail)?;
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    // The path may have been replaced between the two calls: check what was opened, and
    // never read more than the bound.
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    check_file_kind(&meta).map_err(fail)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_FILE_BYTES + 1),
        &mut bytes,
    )
    .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(too_large(bytes.len() as u64)));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| fail("stream did not contain valid UTF-8".to_string()))?;
    Ok(Source {
        path: path.to_path_buf(),
        text,
    })
}

fn too_large(len: u64) -> String {
    format!("it holds {len} bytes or more; a configuration file may hold at most {MAX_FILE_BYTES}")
}

/// Only regular files of bounded size are configuration files.
fn check_file_kind(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = kind {
        return Err(format!("it is {kind}; only a regular file can be read"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large(meta.len()));
    }
    Ok(())
}

#[cfg(test)]
mod read_tests {
    use super::*;

    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("a.toml");
        std::fs::write(&ok, "x = 1\n").unwrap();
        assert_eq!(read_source(&ok).unwrap().text, "x = 1\n");
        let err = |p: &Path| read_source(p).unwrap_err().message;
        assert!(err(Path::new("/dev/zero")).contains("a character device"));
        assert!(err(dir.path()).contains("a directory"));
        let big = dir.path().join("big.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        assert!(err(&big).contains("at most 16777216"), "{}", err(&big));
        // A FIFO nobody writes to: refused at once instead of blocking the reader.
        let fifo = dir.path().join("fifo.toml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo (coreutils)");
        assert!(err(&fifo).contains("a FIFO"));
        let missing = err(&dir.path().join("none.toml"));
        assert!(missing.contains("No such file"), "{missing}");
    }
}
