//! The one duration grammar: config values ("500ms", "10m", "1h30m"), command arguments
//! (`shelve` durations), tool options (`--tick`, `--run-for`) and simulator scenarios all read
//! durations here, so a form accepted in one place is accepted everywhere.

const DURATION_FORMS: &str =
    "accepted forms: \"500ms\", \"1s\", \"1.5s\", \"10m\", \"2h\", \"1d\", \"1h30m\"";

/// Milliseconds per unit word; the short forms are the documented ones, the long forms are
/// accepted because operators and older scenario files write them.
fn unit_factor(unit: &str) -> Option<f64> {
    Some(match unit {
        "ms" | "msec" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000.0,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000.0,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
        "d" | "day" | "days" => 86_400_000.0,
        _ => return None,
    })
}

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
            "" => {
                return Err(format!(
                    "\"{s}\" has no unit; write e.g. \"{n}s\" or \"{n}ms\"; {DURATION_FORMS}"
                ))
            }
            other => unit_factor(other).ok_or_else(|| {
                format!(
                    "unknown unit \"{other}\" in \"{s}\"; units: ms, s, m, h, d; {DURATION_FORMS}"
                )
            })?,
        };
        total += n * factor;
    }
    if !total.is_finite() || total > 1e15 {
        return Err(format!("\"{s}\" is too long"));
    }
    Ok(total.round() as i64)
}

/// Parses a duration into a `std::time::Duration` (negative forms cannot be written).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    parse_duration_ms(s).map(|ms| std::time::Duration::from_millis(ms.max(0) as u64))
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

/// A unit a rate or a curve's time axis is counted in (`per = "min"`, `time_unit = "h"`):
/// milliseconds per unit.
pub fn time_unit_ms(unit: &str) -> Option<i64> {
    match unit {
        "s" => Some(1_000),
        "min" | "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    }
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
        assert_eq!(parse_duration_ms("1h 30m"), Ok(5_400_000));
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
    fn long_unit_words_as_scenario_files_and_clis_write_them() {
        assert_eq!(parse_duration_ms("2 minutes"), Ok(120_000));
        assert_eq!(parse_duration_ms("1hour 5secs"), Ok(3_605_000));
        assert_eq!(
            parse_duration("90s"),
            Ok(std::time::Duration::from_secs(90))
        );
    }

    #[test]
    fn time_units() {
        assert_eq!(time_unit_ms("min"), Some(60_000));
        assert_eq!(time_unit_ms("m"), Some(60_000));
        assert_eq!(time_unit_ms("h"), Some(3_600_000));
        assert_eq!(time_unit_ms("d"), None);
    }
}
