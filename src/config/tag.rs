//! Tag definitions: where a value sits in a device and how it decodes.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{f64_of, index, int_of, type_name, Problems, Source, TableReader};
use crate::core::decode::{decode_bit, decode_registers, DataType, Encoding, Table, WordOrder};

#[derive(Debug, Clone, PartialEq)]
pub struct Tag {
    pub name: String,
    pub address: u16,
    pub encoding: Encoding,
    pub unit: String,
}

/// A tag computed from other tags of the same device, e.g. pseudo-resistance.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    pub name: String,
    pub expr: String,
    pub unit: String,
}

impl Tag {
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.encoding.width())
    }
}

/// Converts Modicon notation ("30001", "400011") to a table and 0-based address.
pub fn parse_modicon(s: &str) -> Result<(Table, u16), String> {
    let bad = || {
        format!(
            "\"{s}\" is not a Modicon address; use a 0-based integer address, or 5/6-digit Modicon notation such as \"30001\" (input register 0) or \"40011\" (holding register 10)"
        )
    };
    if !(s.len() == 5 || s.len() == 6) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let table = match s.as_bytes()[0] {
        b'0' => Table::Coil,
        b'1' => Table::Discrete,
        b'3' => Table::Input,
        b'4' => Table::Holding,
        _ => return Err(bad()),
    };
    let n: u32 = s[1..].parse().map_err(|_| bad())?;
    let max = if s.len() == 5 { 9_999 } else { 65_536 };
    if n == 0 || n > max {
        return Err(format!(
            "\"{s}\": Modicon numbers start at 1 (\"{}0001\" is address 0) and end at {max}",
            &s[..1]
        ));
    }
    Ok((table, (n - 1) as u16))
}

/// The Modicon number of a 0-based address: "30001" for input register 0, 5 digits up to
/// 9999 and 6 digits above (the inverse of [`parse_modicon`]).
pub fn modicon(table: Table, address: u16) -> String {
    let lead = match table {
        Table::Coil => 0,
        Table::Discrete => 1,
        Table::Input => 3,
        Table::Holding => 4,
    };
    let n = u32::from(address) + 1;
    if n <= 9_999 {
        format!("{lead}{n:04}")
    } else {
        format!("{lead}{n:05}")
    }
}

/// Registers (or one bit, 0 or 1) written as hex or decimal words: "0x4083 0x3333",
/// "16515, 13107". The form `alsentry probe` prints raw words in.
pub fn parse_raw_words(s: &str) -> Result<Vec<u16>, String> {
    let words: Result<Vec<u16>, String> = s
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let parsed = match w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => w.parse::<u16>(),
            };
            parsed.map_err(|_| {
                format!("\"{w}\" is not a register word; write 0x0000 to 0xFFFF or 0 to 65535")
            })
        })
        .collect();
    let words = words?;
    if words.is_empty() {
        return Err("no register words; write them as \"0x4083 0x3333\" or [16515, 13107]".into());
    }
    Ok(words)
}

/// Words as `probe` prints them and `expect` reads them: "0x4083 0x3333".
pub fn format_raw_words(words: &[u16]) -> String {
    words
        .iter()
        .map(|w| format!("0x{w:04X}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Relative tolerance of a register test vector when it gives none: a float32 carries about
/// 7 significant digits, so 4.1 matches the f32 nearest to it (4.099999904632568) while a
/// wrong word order or scale is off by far more.
pub const EXPECT_RELATIVE_TOLERANCE: f64 = 1e-6;

/// Whether `decoded` passes a vector expecting `value` with absolute `tolerance`.
pub fn expect_matches(decoded: f64, value: f64, tolerance: f64) -> bool {
    (decoded - value).abs() <= tolerance.max(EXPECT_RELATIVE_TOLERANCE * value.abs())
}

/// A scaled integer at the precision of its scale and offset (`502.7` for 5027 x 0.1, not
/// `502.70000000000005`): the digits past it are arithmetic, not the device's.
pub fn at_scale_precision(e: &Encoding, v: f64) -> f64 {
    let integer = !matches!(e.dtype, DataType::F32 | DataType::F64);
    if !integer || (e.scale == 1.0 && e.offset == 0.0) {
        return v;
    }
    let decimals = |x: f64| {
        crate::core::payload::number_text(x)
            .split_once('.')
            .map_or(0, |(_, frac)| frac.len())
    };
    let places = decimals(e.scale).max(decimals(e.offset)).min(15);
    format!("{v:.places$}").parse().unwrap_or(v)
}

/// Decodes a test vector's words as the tag would decode them off the wire.
fn decode_vector(enc: &Encoding, words: &[u16]) -> Result<f64, String> {
    let width = usize::from(enc.width());
    if enc.table.is_bits() && (words.len() != 1 || words[0] > 1) {
        return Err(format!(
            "this tag reads one bit of the {} table; write raw = \"0\" or \"1\", not \"{}\"",
            enc.table,
            format_raw_words(words)
        ));
    }
    if words.len() != width {
        return Err(format!(
            "this tag reads {width} register(s) ({}); the vector gives {} word(s)",
            describe_encoding(enc),
            words.len()
        ));
    }
    let v = if enc.table.is_bits() {
        decode_bit(enc, words[0] == 1)
    } else {
        decode_registers(enc, words)
    };
    v.map_err(|e| format!("{} decodes to no value: {e}", format_raw_words(words)))
}

/// Why a vector does not decode to its value, with the word order or scale that would have.
fn vector_mismatch(enc: &Encoding, words: &[u16], decoded: f64, value: f64, tol: f64) -> String {
    let shown = crate::core::payload::number_text(at_scale_precision(enc, decoded));
    let mut msg = format!(
        "{} decodes to {shown} as {}, not {}",
        format_raw_words(words),
        describe_encoding(enc),
        crate::core::payload::number_text(value)
    );
    if enc.dtype.registers() >= 2 && !enc.table.is_bits() {
        for order in [
            WordOrder::Abcd,
            WordOrder::Cdab,
            WordOrder::Badc,
            WordOrder::Dcba,
        ] {
            let other = Encoding { order, ..*enc };
            if order != enc.order
                && decode_registers(&other, words).is_ok_and(|v| expect_matches(v, value, tol))
            {
                msg.push_str(&format!("; order = \"{}\" would give it", order.as_str()));
                return msg;
            }
        }
    }
    let unscaled = Encoding {
        scale: 1.0,
        offset: 0.0,
        ..*enc
    };
    if let Ok(raw) = decode_registers(&unscaled, words) {
        if raw != 0.0 && enc.offset == 0.0 && !enc.table.is_bits() {
            for k in -6..=6 {
                let scale = 10f64.powi(k);
                if scale != enc.scale && expect_matches(raw * scale, value, tol) {
                    msg.push_str(&format!(
                        "; scale = {} would give it",
                        crate::core::payload::number_text(scale)
                    ));
                    return msg;
                }
            }
        }
    }
    msg.push_str("; check type, order, scale and offset");
    msg
}

fn describe_encoding(enc: &Encoding) -> String {
    let mut s = if enc.table.is_bits() {
        format!("a {}", enc.table)
    } else if let Some(b) = enc.bit {
        format!("bit {b}")
    } else if enc.dtype.registers() >= 2 {
        format!("{} {}", enc.dtype.as_str(), enc.order.as_str())
    } else {
        enc.dtype.as_str().to_string()
    };
    if enc.scale != 1.0 {
        s.push_str(&format!(
            " x {}",
            crate::core::payload::number_text(enc.scale)
        ));
    }
    if enc.offset != 0.0 {
        s.push_str(&format!(
            " + {}",
            crate::core::payload::number_text(enc.offset)
        ));
    }
    s
}

/// Checks a tag's `expect` vectors: each `{ raw = "0x4083 0x3333", value = 4.1 }` (raw also
/// as an integer array; value also as true/false; optional absolute `tolerance`) must decode
/// to its value, so a wrong order or scale fails `check`, at the vector's line.
fn check_expect(
    v: &Spanned<DeValue<'_>>,
    enc: &Encoding,
    src: &Source,
    path: String,
    p: &mut Problems,
) {
    let items: Vec<(&Spanned<DeValue<'_>>, String)> = match v.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, index(&path, i)))
            .collect(),
        DeValue::Table(_) => vec![(v, path)],
        other => {
            p.add(
                src,
                v.span().start,
                &path,
                format!(
                    "expected an array of test vectors such as [{{ raw = \"0x4083 0x3333\", value = 4.1 }}], found {}",
                    type_name(other)
                ),
            );
            return;
        }
    };
    for (item, path) in items {
        let Some(mut r) = TableReader::of(item, src, path, p) else {
            continue;
        };
        let words = match r.get("raw") {
            None => {
                r.missing(
                    p,
                    "raw",
                    "the register words as read, e.g. \"0x4083 0x3333\" or [16515, 13107]",
                );
                None
            }
            Some(raw) => match raw.get_ref() {
                DeValue::String(s) => match parse_raw_words(s) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        r.problem(p, "raw", e);
                        None
                    }
                },
                DeValue::Array(ws) => {
                    let words: Option<Vec<u16>> = ws
                        .iter()
                        .map(|w| int_of(w.get_ref()).and_then(|i| u16::try_from(i).ok()))
                        .collect();
                    if words.is_none() || ws.is_empty() {
                        r.problem(
                            p,
                            "raw",
                            "expected register words 0 to 65535, e.g. [16515, 13107]",
                        );
                    }
                    words.filter(|w| !w.is_empty())
                }
                other => {
                    r.problem(
                        p,
                        "raw",
                        format!("expected a string of words such as \"0x4083 0x3333\" or an integer array, found {}", type_name(other)),
                    );
                    None
                }
            },
        };
        let value = match r.get("value") {
            None => {
                r.missing(p, "value", "the value the words must decode to, e.g. 4.1");
                None
            }
            Some(val) => match val.get_ref() {
                DeValue::Boolean(b) => Some(f64::from(u8::from(*b))),
                other => match f64_of(other) {
                    Some(f) if f.is_finite() => Some(f),
                    _ => {
                        r.problem(
                            p,
                            "value",
                            format!(
                                "expected a number or true/false, found {}",
                                type_name(other)
                            ),
                        );
                        None
                    }
                },
            },
        };
        let tolerance = match r.opt_f64(p, "tolerance") {
            Some(t) if t < 0.0 => {
                r.problem(p, "tolerance", "a tolerance is 0 or positive");
                None
            }
            t => Some(t.unwrap_or(0.0)),
        };
        if let (Some(words), Some(value), Some(tol)) = (words, value, tolerance) {
            match decode_vector(enc, &words) {
                Err(e) => r.problem(p, "raw", e),
                Ok(decoded) if !expect_matches(decoded, value, tol) => r.problem(
                    p,
                    "value",
                    vector_mismatch(enc, &words, decoded, value, tol),
                ),
                Ok(_) => {}
            }
        }
        r.finish(p);
    }
}

pub fn parse_tag(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> Option<Tag> {
    let mut r = TableReader::of(v, src, path, p)?;
    let problems_before = p.list.len();
    let name = r.req_str(p, "name", "every tag needs a name");
    let table_str = r.opt_str(p, "table");
    let mut table = match table_str.as_deref() {
        Some(t) => match Table::parse(t) {
            Some(t) => Some(t),
            None => {
                r.problem(
                    p,
                    "table",
                    format!("unknown table \"{t}\"; accepted: {}", Table::NAMES),
                );
                None
            }
        },
        None => None,
    };
    let mut ok = true;
    let address = match r.get("address") {
        None => {
            r.missing(
                p,
                "address",
                "0-based protocol address (integer) or Modicon string such as \"40011\"",
            );
            ok = false;
            0
        }
        Some(a) => {
            match a.get_ref() {
                DeValue::Integer(_) => match int_of(a.get_ref()) {
                    Some(i) if (0..=65_535).contains(&i) => i as u16,
                    _ => {
                        r.problem(p, "address", "address is out of range; accepted: 0 to 65535 (0-based protocol address)");
                        ok = false;
                        0
                    }
                },
                DeValue::String(s) => match parse_modicon(s) {
                    Ok((t, addr)) => {
                        match (table, table_str.is_some()) {
                            (Some(given), _) if given != t => {
                                r.problem(
                                p,
                                "address",
                                format!(
                                    "Modicon address \"{s}\" is in the {t} table but table = \"{given}\"; drop `table` or make them agree"
                                ),
                            );
                                ok = false;
                            }
                            (None, true) => {}
                            _ => table = Some(t),
                        }
                        addr
                    }
                    Err(e) => {
                        r.problem(p, "address", e);
                        ok = false;
                        0
                    }
                },
                other => {
                    r.problem(
                        p,
                        "address",
                        format!(
                            "expected an integer or a Modicon string, found {}",
                            type_name(other)
                        ),
                    );
                    ok = false;
                    0
                }
            }
        }
    };
    if table.is_none() && table_str.is_none() && ok {
        r.missing(
            p,
            "table",
            &format!(
                "one of {} (or give a Modicon address such as \"40011\")",
                Table::NAMES
            ),
        );
    }
    let dtype = match r.opt_str(p, "type") {
        Some(t) => match DataType::parse(&t) {
            Some(d) => Some(d),
            None => {
                r.problem(
                    p,
                    "type",
                    format!("unknown type \"{t}\"; accepted: {}", DataType::NAMES),
                );
                None
            }
        },
        None => match table {
            Some(t) if t.is_bits() => Some(DataType::Bool),
            _ => Some(DataType::U16),
        },
    };
    let order = match r.opt_str(p, "order") {
        Some(o) => match WordOrder::parse(&o) {
            Some(o) => {
                if let Some(d) = dtype {
                    if d.registers() < 2 {
                        r.problem(
                            p,
                            "order",
                            format!(
                                "word order applies only to 32- and 64-bit types, not {}",
                                d.as_str()
                            ),
                        );
                    }
                }
                Some(o)
            }
            None => {
                r.problem(p, "order", format!("unknown word order \"{o}\"; accepted: {} (ABCD is big-endian; 123456.0 as f32 reads [0x47F1, 0x2000] in ABCD, [0x2000, 0x47F1] in CDAB)", WordOrder::NAMES));
                None
            }
        },
        None => Some(WordOrder::Abcd),
    };
    let bit = r.opt_int_in(p, "bit", 0, 15).map(|b| b as u8);
    let scale = r.opt_f64(p, "scale").unwrap_or(1.0);
    let offset = r.opt_f64(p, "offset").unwrap_or(0.0);
    if scale == 0.0 {
        r.problem(p, "scale", "a scale of 0 would make every value 0");
    }
    let unit = r.opt_str(p, "unit").unwrap_or_default();
    if let (Some(b), Some(t)) = (bit, table) {
        let _ = b;
        if t.is_bits() {
            r.problem(
                p,
                "bit",
                format!("`bit` selects a bit of a register; a {t} is already a single bit"),
            );
        } else if let Some(d) = dtype {
            if !matches!(d, DataType::Bool | DataType::U16) {
                r.problem(
                    p,
                    "bit",
                    format!(
                        "`bit` needs type = \"bool\" (one bit of a 16-bit register), not \"{}\"",
                        d.as_str()
                    ),
                );
            }
        }
    }
    if let (Some(t), Some(d)) = (table, dtype) {
        if t.is_bits() && d != DataType::Bool {
            r.problem(
                p,
                "type",
                format!(
                    "a {t} holds one bit; its type must be \"bool\", not \"{}\"",
                    d.as_str()
                ),
            );
        }
        if !t.is_bits() && d == DataType::Bool && bit.is_none() && !r.has("bit") {
            r.problem(
                p,
                "bit",
                format!(
                    "a bool in the {t} table needs `bit = 0..15` to say which bit of the register"
                ),
            );
        }
    }
    let t = table?;
    let dtype = dtype?;
    let order = order?;
    let name = name?;
    let tag = Tag {
        name,
        address,
        encoding: Encoding {
            table: t,
            dtype: if bit.is_some() { DataType::Bool } else { dtype },
            order,
            bit,
            scale,
            offset,
        },
        unit,
    };
    if tag.end() > 65_536 {
        r.problem(
            p,
            "address",
            format!(
                "a {} at address {address} runs past the last address 65535",
                dtype.as_str()
            ),
        );
        return None;
    }
    if let Some(e) = r.get("expect") {
        // Vectors are checked against a tag that is itself fine: one bad value, one problem.
        if ok && p.list.len() == problems_before {
            let path = r.key_path("expect");
            check_expect(e, &tag.encoding, r.at.src, path, p);
        }
    }
    r.finish(p);
    ok.then_some(tag)
}

pub fn parse_derived(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> Option<Derived> {
    let mut r = TableReader::of(v, src, path, p)?;
    let name = r.req_str(p, "name", "every derived tag needs a name");
    let expr = r.req_str(
        p,
        "expr",
        "an expression over other tags of the device, e.g. \"(voltage - 1.65) / current\"",
    );
    let unit = r.opt_str(p, "unit").unwrap_or_default();
    r.finish(p);
    Some(Derived {
        name: name?,
        expr: expr?,
        unit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modicon_conversion() {
        assert_eq!(parse_modicon("30001"), Ok((Table::Input, 0)));
        assert_eq!(parse_modicon("40011"), Ok((Table::Holding, 10)));
        assert_eq!(parse_modicon("00001"), Ok((Table::Coil, 0)));
        assert_eq!(parse_modicon("10002"), Ok((Table::Discrete, 1)));
        assert_eq!(parse_modicon("465536"), Ok((Table::Holding, 65535)));
        assert!(parse_modicon("40000").is_err());
        assert!(parse_modicon("20001").is_err());
        assert!(parse_modicon("4001").is_err());
        assert!(parse_modicon("4x001").is_err());
    }

    #[test]
    fn modicon_formatting_reads_back() {
        for (table, addr, text) in [
            (Table::Input, 0, "30001"),
            (Table::Holding, 10, "40011"),
            (Table::Coil, 5, "00006"),
            (Table::Discrete, 1, "10002"),
            (Table::Holding, 9_998, "49999"),
            (Table::Holding, 9_999, "410000"),
            (Table::Input, 65_535, "365536"),
        ] {
            assert_eq!(modicon(table, addr), text);
            assert_eq!(parse_modicon(text), Ok((table, addr)));
        }
    }

    #[test]
    fn raw_words_in_hex_or_decimal() {
        assert_eq!(parse_raw_words("0x4083 0x3333"), Ok(vec![0x4083, 0x3333]));
        assert_eq!(parse_raw_words("16515, 13107"), Ok(vec![0x4083, 0x3333]));
        assert_eq!(parse_raw_words("0XFFFF,0"), Ok(vec![0xFFFF, 0]));
        assert!(parse_raw_words("65536").is_err());
        assert!(parse_raw_words("0x1g").is_err());
        assert!(parse_raw_words(" , ").is_err());
        assert_eq!(format_raw_words(&[0x4083, 0x3333]), "0x4083 0x3333");
    }

    /// The documented rule: within the absolute tolerance, or one part per million.
    #[test]
    fn vector_tolerance() {
        let f = f64::from(4.1f32);
        assert!(expect_matches(f, 4.1, 0.0));
        assert!(expect_matches(957.300_000_000_000_1, 957.3, 0.0));
        assert!(!expect_matches(f, 4.1001, 0.0));
        assert!(expect_matches(f, 4.1001, 0.001));
        assert!(expect_matches(0.0, 0.0, 0.0));
        assert!(!expect_matches(1e-9, 0.0, 0.0));
    }

    fn tag_of(text: &str) -> Result<Tag, Vec<Problem>> {
        let src = Source {
            path: "t.toml".into(),
            text: format!("t = {text}\n"),
        };
        let mut p = Problems::default();
        let doc = crate::config::reader::parse_document(&src, &mut p).unwrap();
        let v = doc.get_ref().get("t").unwrap();
        let tag = parse_tag(v, &src, "t".into(), &mut p);
        match (tag, p.is_empty()) {
            (Some(t), true) => Ok(t),
            _ => Err(p.sorted()),
        }
    }

    use super::super::reader::Problem;

    #[test]
    fn vectors_that_hold_are_accepted() {
        for t in [
            r#"{ name = "v", address = "30001", type = "f32", order = "CDAB", expect = [{ raw = "0x3333 0x4083", value = 4.1 }] }"#,
            r#"{ name = "v", address = "30001", type = "f32", order = "DCBA", expect = { raw = "0x3333 0x8340", value = 4.1 } }"#,
            r#"{ name = "t", address = "30001", type = "i16", scale = 0.1, expect = [{ raw = [65286], value = -25 }] }"#,
            r#"{ name = "c", address = "40001", type = "u32", expect = [{ raw = "1 2", value = 65538 }] }"#,
            r#"{ name = "b", address = "40001", type = "bool", bit = 15, expect = [{ raw = "0x8000", value = true }, { raw = "0x7FFF", value = false }] }"#,
            r#"{ name = "k", address = "00001", expect = [{ raw = "1", value = 1 }] }"#,
            r#"{ name = "s", address = "40001", type = "u16", scale = 0.01, expect = [{ raw = "12345", value = 123.4, tolerance = 0.1 }] }"#,
        ] {
            assert!(tag_of(t).is_ok(), "{t}: {:?}", tag_of(t));
        }
    }

    #[test]
    fn a_wrong_vector_names_its_key_and_the_fix() {
        let e = tag_of(r#"{ name = "v", address = "30001", type = "f32", order = "CDAB", expect = [{ raw = "0x4083 0x3333", value = 4.1 }] }"#).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "t.expect[0].value");
        assert!(
            e[0].message.contains("order = \"ABCD\" would give it"),
            "{e:?}"
        );
        let e = tag_of(r#"{ name = "s", address = "30001", type = "u16", scale = 0.1, expect = [{ raw = "9573", value = 9.573 }] }"#).unwrap_err();
        assert!(
            e[0].message.contains("scale = 0.001 would give it"),
            "{e:?}"
        );
        // A tag that is itself refused is not also blamed for its vectors.
        let e = tag_of(r#"{ name = "s", address = "30001", type = "u16", scale = 0, expect = [{ raw = "1", value = 5 }] }"#).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "t.scale");
    }
}
