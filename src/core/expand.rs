//! One entry that stands for many devices: integer ranges ("1-3,7", "5100-5499") and name
//! patterns filled per device ("pot-{unit:03}", "tcp://{host}:{port}"). The agent's
//! `[[devices]]` entries and the simulator's `[[groups]]` both expand here.

use std::fmt;

/// What a placeholder stands for in one expansion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var<'a> {
    Int(u64),
    /// Inserted as is; a padding spec is ignored.
    Text(&'a str),
    /// A placeholder this kind of entry knows, whose values come from a key the entry does not
    /// have (`{port}` without `ports`): names that key.
    Unset(&'static str),
}

/// Why a pattern cannot be filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatternError {
    Unclosed {
        pattern: String,
    },
    Unset {
        pattern: String,
        name: String,
        key: &'static str,
    },
    Unknown {
        pattern: String,
        name: String,
        accepted: Vec<String>,
    },
    BadFormat {
        pattern: String,
        inner: String,
        name: String,
    },
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatternError::Unclosed { pattern } => write!(f, "unclosed '{{' in \"{pattern}\""),
            PatternError::Unset { pattern, name, key } => write!(
                f,
                "\"{pattern}\" uses {{{name}}} but the entry has no `{key}`"
            ),
            PatternError::Unknown {
                pattern,
                name,
                accepted,
            } => {
                let list: Vec<String> = accepted.iter().map(|a| format!("{{{a}}}")).collect();
                write!(
                    f,
                    "unknown placeholder {{{name}}} in \"{pattern}\"; accepted: {}, with optional zero padding such as {{{}:03}}",
                    list.join(", "),
                    accepted.first().map(String::as_str).unwrap_or("unit")
                )
            }
            PatternError::BadFormat {
                pattern,
                inner,
                name,
            } => write!(
                f,
                "format \"{{{inner}}}\" in \"{pattern}\": only zero padding such as {{{name}:03}} is accepted"
            ),
        }
    }
}

impl std::error::Error for PatternError {}

/// Fills `{name}` and `{name:0N}` (zero padding to N digits, N at most 12) from `vars`.
pub fn fill(pattern: &str, vars: &[(&str, Var<'_>)]) -> Result<String, PatternError> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| PatternError::Unclosed {
            pattern: pattern.to_string(),
        })?;
        let inner = &after[..close];
        let (key, spec) = inner.split_once(':').unwrap_or((inner, ""));
        let n = match vars.iter().find(|(name, _)| *name == key).map(|(_, v)| *v) {
            Some(Var::Int(n)) => n,
            Some(Var::Text(t)) => {
                out.push_str(t);
                rest = &after[close + 1..];
                continue;
            }
            Some(Var::Unset(k)) => {
                return Err(PatternError::Unset {
                    pattern: pattern.to_string(),
                    name: key.to_string(),
                    key: k,
                })
            }
            None => {
                return Err(PatternError::Unknown {
                    pattern: pattern.to_string(),
                    name: key.to_string(),
                    accepted: vars.iter().map(|(n, _)| n.to_string()).collect(),
                })
            }
        };
        if spec.is_empty() {
            out.push_str(&n.to_string());
        } else {
            let width: usize = spec
                .strip_prefix('0')
                .and_then(|w| w.parse().ok())
                .filter(|w| *w <= 12)
                .ok_or_else(|| PatternError::BadFormat {
                    pattern: pattern.to_string(),
                    inner: inner.to_string(),
                    name: key.to_string(),
                })?;
            out.push_str(&format!("{n:0width$}"));
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses a list of integers and inclusive ranges within `lo..=hi`: "1-3", "1-10,12,20-22".
pub fn parse_int_ranges(s: &str, lo: u32, hi: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for part in s.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!(
                "empty element in \"{s}\"; write e.g. \"1-3\" or \"1-10,12\""
            ));
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: u32 = a.parse().map_err(|_| {
            format!("\"{part}\" is not a number or range; write e.g. \"1-3\" or \"1-10,12\"")
        })?;
        let b: u32 = b.parse().map_err(|_| {
            format!("\"{part}\" is not a number or range; write e.g. \"1-3\" or \"1-10,12\"")
        })?;
        if a > b {
            return Err(format!("range \"{part}\" runs backwards"));
        }
        if a < lo || b > hi {
            return Err(format!(
                "\"{part}\" is out of range; accepted: {lo} to {hi}"
            ));
        }
        // Counted before expanding, and repeats found through a set: "1-65535" is 65,535
        // values, not 2 billion comparisons.
        if out.len() as u64 + u64::from(b - a) + 1 > 100_000 {
            return Err(format!("\"{s}\" expands to too many values"));
        }
        for v in a..=b {
            if !seen.insert(v) {
                return Err(format!("{v} appears twice in \"{s}\""));
            }
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device_vars<'a>(port: Option<u64>, host: Option<&'a str>) -> Vec<(&'static str, Var<'a>)> {
        vec![
            ("unit", Var::Int(7)),
            ("index", Var::Int(12)),
            ("port", port.map_or(Var::Unset("ports"), Var::Int)),
            ("host", host.map_or(Var::Unset("hosts"), Var::Text)),
        ]
    }

    #[test]
    fn fills_patterns() {
        let x = device_vars(Some(5107), Some("10.0.0.7"));
        assert_eq!(fill("pot-{unit:03}", &x).unwrap(), "pot-007");
        assert_eq!(fill("pot-{index}", &x).unwrap(), "pot-12");
        assert_eq!(
            fill("tcp://{host}:{port}", &x).unwrap(),
            "tcp://10.0.0.7:5107"
        );
        assert_eq!(
            fill("pot-{unt}", &x).unwrap_err().to_string(),
            "unknown placeholder {unt} in \"pot-{unt}\"; accepted: {unit}, {index}, {port}, {host}, with optional zero padding such as {unit:03}"
        );
        assert!(matches!(
            fill("pot-{unit", &x),
            Err(PatternError::Unclosed { .. })
        ));
        assert!(matches!(
            fill("pot-{unit:3x}", &x),
            Err(PatternError::BadFormat { .. })
        ));
        let y = device_vars(None, None);
        assert!(fill("tcp://h:{port}", &y)
            .unwrap_err()
            .to_string()
            .contains("no `ports`"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_int_ranges("1-3", 1, 247), Ok(vec![1, 2, 3]));
        assert_eq!(parse_int_ranges("1-2, 7", 1, 247), Ok(vec![1, 2, 7]));
        assert!(parse_int_ranges("3-1", 1, 247).is_err());
        assert!(parse_int_ranges("0-3", 1, 247).is_err());
        assert!(parse_int_ranges("1-3,2", 1, 247).is_err());
        assert!(parse_int_ranges("a", 1, 247).is_err());
    }
}
