//! Values that carry their unit: sizes ("64MiB") here, durations ("500ms", "10m") from
//! `core::duration`; and the ranges that expand one device entry into many: unit ids and
//! ports ("1-3,7", "5100-5499", from `core::expand`) and hosts ("10.0.1.10-10.0.1.50").

// One grammar for durations and ranges, shared with commands, tools and the simulator.
pub use crate::core::duration::{format_duration_ms, parse_duration_ms};

/// Parses a size into bytes: B, KB/MB/GB (powers of 1000) or KiB/MiB/GiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    const FORMS: &str = "accepted forms: \"4096B\", \"512KiB\", \"64MiB\", \"1GiB\", \"100MB\"";
    let t = s.trim();
    let num_len = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let n: f64 = t[..num_len]
        .parse()
        .map_err(|_| format!("\"{s}\" is not a size; {FORMS}"))?;
    let factor: f64 = match t[num_len..].trim() {
        "B" => 1.0,
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "" => return Err(format!("\"{s}\" has no unit; {FORMS}")),
        other => return Err(format!("unknown unit \"{other}\" in \"{s}\"; {FORMS}")),
    };
    let b = n * factor;
    if !b.is_finite() || b > 1e15 {
        return Err(format!("\"{s}\" is too large"));
    }
    Ok(b.round() as u64)
}

/// Parses IPv4 hosts: "10.0.1.10-10.0.1.50,10.0.2.7" or a single name.
pub fn parse_host_ranges(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let a: std::net::Ipv4Addr = a.trim().parse().map_err(|_| {
                    format!("\"{a}\" is not an IPv4 address; write e.g. \"10.0.1.10-10.0.1.50\"")
                })?;
                let b: std::net::Ipv4Addr = b.trim().parse().map_err(|_| {
                    format!("\"{b}\" is not an IPv4 address; write e.g. \"10.0.1.10-10.0.1.50\"")
                })?;
                let (a, b) = (u32::from(a), u32::from(b));
                if a > b {
                    return Err(format!("range \"{part}\" runs backwards"));
                }
                if b - a > 65_535 {
                    return Err(format!("range \"{part}\" is too large"));
                }
                out.extend((a..=b).map(|ip| std::net::Ipv4Addr::from(ip).to_string()));
            }
            None if !part.is_empty() => out.push(part.to_string()),
            None => return Err(format!("empty element in \"{s}\"")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert!(parse_size("64").is_err());
        assert!(parse_size("64XB").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_host_ranges("10.0.0.254-10.0.1.1"),
            Ok(vec![
                "10.0.0.254".into(),
                "10.0.0.255".into(),
                "10.0.1.0".into(),
                "10.0.1.1".into()
            ])
        );
    }
}
