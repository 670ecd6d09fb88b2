//! A small CSV reader: RFC 4180 quoting (`""` escapes, quoted line breaks), LF or CRLF, a UTF-8
//! byte-order mark tolerated. Hand-written so the sample corpus needs no new crate, and so a
//! record costs no allocation: fields are spans into one reused buffer.

use std::io::BufRead;

/// A record longer than this is refused: it is almost certainly an unbalanced quote swallowing
/// the rest of the file.
const MAX_RECORD_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    #[error("line {line}: {message}")]
    Syntax { line: u64, message: String },
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug)]
pub struct CsvReader<R> {
    inner: R,
    /// Physical lines consumed so far.
    lines: u64,
    /// Line on which the current record starts.
    record_line: u64,
    /// Bytes consumed so far, and the offset at which the current record starts: where a reader
    /// can [`CsvReader::resume`] to re-read it (replay's ordering reads runs of a file this way).
    offset: u64,
    record_offset: u64,
    raw: String,
    /// Unescaped text of the current record when it had quotes; otherwise fields point into `raw`.
    unescaped: String,
    in_unescaped: bool,
    spans: Vec<(usize, usize)>,
    started: bool,
}

impl<R: BufRead> CsvReader<R> {
    pub fn new(inner: R) -> Self {
        CsvReader {
            inner,
            lines: 0,
            record_line: 0,
            offset: 0,
            record_offset: 0,
            raw: String::new(),
            unescaped: String::new(),
            in_unescaped: false,
            spans: Vec::new(),
            started: false,
        }
    }

    /// A reader positioned inside a file: `inner` starts at a record's first byte, `offset`
    /// (that record's [`CsvReader::record_offset`]) after `lines_before` lines.
    pub fn resume(inner: R, offset: u64, lines_before: u64) -> Self {
        let mut r = CsvReader::new(inner);
        r.lines = lines_before;
        r.offset = offset;
        r.started = true;
        r
    }

    /// Advances to the next non-blank record and returns the line it starts on, or `None` at the
    /// end. After a syntax error the offending record is skipped and reading can continue.
    pub fn next_record(&mut self) -> Result<Option<u64>, CsvError> {
        loop {
            self.spans.clear();
            self.in_unescaped = false;
            // Read bytes and check UTF-8 per record, so one badly encoded line is a bad row with
            // its line number, not an I/O error that ends the file. The buffer is reused.
            let mut bytes = std::mem::take(&mut self.raw).into_bytes();
            bytes.clear();
            self.record_offset = self.offset;
            let n = self.inner.read_until(b'\n', &mut bytes)?;
            if n == 0 {
                return Ok(None);
            }
            self.offset += n as u64;
            self.lines += 1;
            self.record_line = self.lines;
            if !self.started {
                self.started = true;
                if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
                    bytes.drain(..3);
                }
            }
            let has_quote = bytes.contains(&b'"');
            if has_quote {
                // A quoted field that is still open at the line end runs on to the next line.
                while ends_inside_quotes(&bytes) {
                    if bytes.len() > MAX_RECORD_BYTES {
                        return Err(self.syntax("unterminated quoted field (record over 1 MiB)"));
                    }
                    let more = self.inner.read_until(b'\n', &mut bytes)?;
                    if more == 0 {
                        return Err(self.syntax("unterminated quoted field at end of file"));
                    }
                    self.offset += more as u64;
                    self.lines += 1;
                }
            }
            self.raw = match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => {
                    let at = e.utf8_error().valid_up_to();
                    // Keep the buffer's capacity for the next record.
                    let mut b = e.into_bytes();
                    b.clear();
                    self.raw = String::from_utf8(b).unwrap_or_default();
                    return Err(self.syntax(&format!(
                        "not UTF-8 (byte {}); save the file as UTF-8",
                        at + 1
                    )));
                }
            };
            let end = trim_line_end(&self.raw);
            if self.raw[..end].trim().is_empty() {
                continue;
            }
            if has_quote {
                self.split_quoted(end)?;
            } else {
                let mut start = 0;
                for (i, b) in self.raw[..end].bytes().enumerate() {
                    if b == b',' {
                        self.spans.push((start, i));
                        start = i + 1;
                    }
                }
                self.spans.push((start, end));
            }
            return Ok(Some(self.record_line));
        }
    }

    fn split_quoted(&mut self, end: usize) -> Result<(), CsvError> {
        self.unescaped.clear();
        self.in_unescaped = true;
        let text = &self.raw[..end];
        let b = text.as_bytes();
        let mut i = 0;
        loop {
            let start = self.unescaped.len();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                loop {
                    let Some(q) = text[i..].find('"').map(|q| q + i) else {
                        return Err(self.syntax("unterminated quoted field"));
                    };
                    self.unescaped.push_str(&text[i..q]);
                    if b.get(q + 1) == Some(&b'"') {
                        self.unescaped.push('"');
                        i = q + 2;
                    } else {
                        i = q + 1;
                        break;
                    }
                }
                if i < b.len() && b[i] != b',' {
                    let field = self.spans.len() + 1;
                    return Err(self.syntax(&format!(
                        "field {field}: text after the closing quote (write a quote inside a quoted field as \"\")"
                    )));
                }
            } else {
                let c = text[i..].find(',').map_or(b.len(), |c| c + i);
                self.unescaped.push_str(&text[i..c]);
                i = c;
            }
            self.spans.push((start, self.unescaped.len()));
            if i >= b.len() {
                return Ok(());
            }
            // b[i] is the separator.
            i += 1;
            if i == b.len() {
                let at = self.unescaped.len();
                self.spans.push((at, at));
                return Ok(());
            }
        }
    }

    fn syntax(&self, message: &str) -> CsvError {
        CsvError::Syntax {
            line: self.record_line,
            message: message.to_string(),
        }
    }

    /// Number of fields in the current record.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Field `i` of the current record, unescaped.
    pub fn field(&self, i: usize) -> Option<&str> {
        let &(a, b) = self.spans.get(i)?;
        let text = if self.in_unescaped {
            &self.unescaped
        } else {
            &self.raw
        };
        text.get(a..b)
    }

    /// Byte offset at which the current record (or the one just refused) starts.
    pub fn record_offset(&self) -> u64 {
        self.record_offset
    }
}

/// Whether `s` ends inside a quoted field. A quote opens a field only at its start; elsewhere
/// in an unquoted field it is a literal (`5" pipe`), so a stray quote cannot swallow the file.
fn ends_inside_quotes(s: &[u8]) -> bool {
    let mut in_quotes = false;
    let mut at_field_start = true;
    let mut bytes = s.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if in_quotes {
            if b == b'"' {
                if bytes.peek() == Some(&b'"') {
                    bytes.next();
                } else {
                    in_quotes = false;
                }
            }
        } else {
            match b {
                b',' | b'\n' => at_field_start = true,
                b'"' if at_field_start => {
                    in_quotes = true;
                    at_field_start = false;
                }
                _ => at_field_start = false,
            }
        }
    }
    in_quotes
}

fn trim_line_end(s: &str) -> usize {
    let t = s.strip_suffix('\n').unwrap_or(s);
    let t = t.strip_suffix('\r').unwrap_or(t);
    t.len()
}

/// Writes one field, quoting it only when it must be.
pub fn write_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) || field.starts_with(' ') || field.ends_with(' ') {
        out.push('"');
        for c in field.chars() {
            if c == '"' {
                out.push('"');
            }
            out.push(c);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<Result<(u64, Vec<String>), String>> {
        let mut r = CsvReader::new(text.as_bytes());
        let mut out = Vec::new();
        loop {
            match r.next_record() {
                Ok(Some(line)) => out.push(Ok((
                    line,
                    (0..r.len())
                        .map(|i| r.field(i).unwrap().to_string())
                        .collect(),
                ))),
                Ok(None) => return out,
                Err(e) => out.push(Err(e.to_string())),
            }
        }
    }

    fn ok(line: u64, fields: &[&str]) -> Result<(u64, Vec<String>), String> {
        Ok((line, fields.iter().map(|s| s.to_string()).collect()))
    }

    #[test]
    fn plain_fields_lf_and_crlf_and_trailing_empty() {
        assert_eq!(
            records("a,b,c\r\n1,2,\n\n3,,4"),
            vec![
                ok(1, &["a", "b", "c"]),
                ok(2, &["1", "2", ""]),
                ok(4, &["3", "", "4"])
            ]
        );
    }

    #[test]
    fn byte_order_mark_is_dropped_from_the_first_field() {
        assert_eq!(
            records("\u{feff}ts,device\n"),
            vec![ok(1, &["ts", "device"])]
        );
    }

    #[test]
    fn quotes_escapes_separators_and_line_breaks_inside_quotes() {
        assert_eq!(
            records("\"a,b\",\"say \"\"hi\"\"\",\"\"\n\"two\r\nlines\",x,\"\"\nnext,1\n"),
            vec![
                ok(1, &["a,b", "say \"hi\"", ""]),
                ok(2, &["two\r\nlines", "x", ""]),
                ok(4, &["next", "1"]),
            ]
        );
        assert_eq!(records("\"q\",\n"), vec![ok(1, &["q", ""])]);
    }

    #[test]
    fn text_after_a_closing_quote_names_line_and_field_and_reading_continues() {
        let got = records("ok,1\n\"a\"b,2\nok,3\n");
        assert_eq!(got[0], ok(1, &["ok", "1"]));
        let e = got[1].as_ref().unwrap_err();
        assert!(e.starts_with("line 2:") && e.contains("field 1"), "{e}");
        assert_eq!(got[2], ok(3, &["ok", "3"]));
    }

    #[test]
    fn unterminated_quote_at_end_of_file_is_reported_on_its_first_line() {
        let got = records("a,b\n\"open,1\nmore\n");
        assert_eq!(got[0], ok(1, &["a", "b"]));
        let e = got[1].as_ref().unwrap_err();
        assert!(
            e.starts_with("line 2:") && e.contains("unterminated"),
            "{e}"
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_bad_record_and_reading_continues() {
        let mut text = b"a,1\nb,".to_vec();
        text.extend_from_slice(&[0xB5, 0xE7, b'\n']); // GBK, not UTF-8
        text.extend_from_slice("c,\u{e9}\n".as_bytes());
        let mut r = CsvReader::new(&text[..]);
        assert_eq!(r.next_record().unwrap(), Some(1));
        let e = r.next_record().unwrap_err().to_string();
        assert!(e.starts_with("line 2:") && e.contains("not UTF-8"), "{e}");
        assert_eq!(r.next_record().unwrap(), Some(3));
        assert_eq!(r.field(1), Some("\u{e9}"));
        assert_eq!(r.next_record().unwrap(), None);
    }

    #[test]
    fn a_quote_inside_an_unquoted_field_is_literal() {
        assert_eq!(
            records("pipe,5\" wide,1\nnext,2\n"),
            vec![ok(1, &["pipe", "5\" wide", "1"]), ok(2, &["next", "2"])]
        );
    }

    proptest::proptest! {
        #[test]
        fn any_fields_written_with_write_field_read_back(
            rows in proptest::collection::vec(
                proptest::collection::vec("[a-z,\" \r\n\u{e9}]{0,6}", 2..5), 1..6),
            crlf in proptest::bool::ANY,
        ) {
            let mut text = String::new();
            for r in &rows {
                for (i, f) in r.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    write_field(&mut text, f);
                }
                text.push_str(if crlf { "\r\n" } else { "\n" });
            }
            let got: Vec<Vec<String>> = records(&text)
                .into_iter()
                .map(|r| r.map(|(_, f)| f))
                .collect::<Result<_, _>>()
                .map_err(proptest::test_runner::TestCaseError::fail)?;
            proptest::prop_assert_eq!(got, rows);
        }
    }

    #[test]
    fn write_field_round_trips_through_the_reader() {
        let mut line = String::new();
        for (i, f) in ["plain", "a,b", "say \"x\"", " pad", ""].iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            write_field(&mut line, f);
        }
        line.push('\n');
        assert_eq!(
            records(&line),
            vec![ok(1, &["plain", "a,b", "say \"x\"", " pad", ""])]
        );
    }
}
