//! Tag definitions: where a value sits in a device and how it decodes.

use toml::de::DeValue;
use toml::Spanned;

use super::reader::{int_of, type_name, Problems, Source, TableReader};
use crate::core::decode::{DataType, Encoding, Table, WordOrder};

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

pub fn parse_tag(
    v: &Spanned<DeValue<'_>>,
    src: &Source,
    path: String,
    p: &mut Problems,
) -> Option<Tag> {
    let mut r = TableReader::of(v, src, path, p)?;
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
}
