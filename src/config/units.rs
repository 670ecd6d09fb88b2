//! Values that carry their unit: durations ("500ms", "10m"), sizes ("64MiB"), and the ranges
//! that expand one device entry into many ("1-3,7", "5100-5499").

const DURATION_FORMS: &str =
    "accepted forms: \"500ms\", \"1s\", \"1.5s\", \"10m\", \"2h\", \"1d\", \"1h30m\"";

/// Parses a duration into milliseconds. A bare number is refused: its unit would be a guess.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration; {DURATION_FORMS}"));
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("\"{s}\" is not a duration; {DURATION_FORMS}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("\"{s}\" is not a duration; {DURATION_FORMS}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = rest[unit_len..].trim_start();
        let factor = match unit {
            "ms" => 1.0,
            "s" | "sec" => 1_000.0,
            "m" | "min" => 60_000.0,
            "h" => 3_600_000.0,
            "d" => 86_400_000.0,
            "" => {
                return Err(format!(
                    "\"{s}\" has no unit; write e.g. \"{n}s\" or \"{n}ms\"; {DURATION_FORMS}"
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit \"{other}\" in \"{s}\"; units: ms, s, m, h, d; {DURATION_FORMS}"
                ))
            }
        };
        total += n * factor;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(format!("\"{s}\" is too long"));
    }
    Ok(total.round() as i64)
}

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

/// Formats milliseconds back into the shortest exact form ("1s", "500ms", "10m").
pub fn format_duration_ms(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (f, u) in UNITS {
        if ms != 0 && ms % f == 0 {
            return format!("{}{u}", ms / f);
        }
    }
    format!("{ms}ms")
}

/// Parses a list of integers and inclusive ranges: "1-3", "1-10,12,20-22".
pub fn parse_int_ranges(s: &str, lo: u32, hi: u32) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
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
        for v in a..=b {
            if out.contains(&v) {
                return Err(format!("{v} appears twice in \"{s}\""));
            }
            out.push(v);
        }
        if out.len() > 100_000 {
            return Err(format!("\"{s}\" expands to too many values"));
        }
    }
    Ok(out)
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
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1s"), Ok(1000));
        assert_eq!(parse_duration_ms("1.5s"), Ok(1500));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert!(parse_duration_ms("5").unwrap_err().contains("no unit"));
        assert!(parse_duration_ms("5 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration_ms("").is_err());
        assert!(parse_duration_ms("s").is_err());
        assert_eq!(format_duration_ms(600_000), "10m");
        assert_eq!(format_duration_ms(1500), "1500ms");
    }

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
        assert_eq!(parse_int_ranges("1-3", 1, 247), Ok(vec![1, 2, 3]));
        assert_eq!(parse_int_ranges("1-2, 7", 1, 247), Ok(vec![1, 2, 7]));
        assert!(parse_int_ranges("3-1", 1, 247).is_err());
        assert!(parse_int_ranges("0-3", 1, 247).is_err());
        assert!(parse_int_ranges("1-3,2", 1, 247).is_err());
        assert!(parse_int_ranges("a", 1, 247).is_err());
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
