//! Timestamps as text: RFC 3339 for payloads and logs, RFC 3339 or epoch milliseconds when
//! read back (commands, recorded samples). Pure conversions; nothing here reads a clock.

use std::time::{Duration, UNIX_EPOCH};

use super::model::Ts;

/// RFC 3339 UTC with milliseconds, e.g. "2026-11-28T16:05:53.123Z". Times before 1970 or
/// after 9999 are clamped to those years (RFC 3339 has four-digit years; a bogus timestamp in
/// a replayed file made the formatter fail).
pub fn rfc3339_ms(ts: Ts) -> String {
    let mut s = String::with_capacity(RFC3339_MS_LEN);
    // Infallible: a String takes any text, and the time is clamped to what the formatter takes.
    let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{}", rfc3339_millis(ts)));
    s
}

/// Appends [`rfc3339_ms`] of `ts` to `out` without a String of its own (once per data message).
pub fn push_rfc3339_ms(out: &mut Vec<u8>, ts: Ts) {
    // Infallible, as above.
    let _ = std::io::Write::write_fmt(out, format_args!("{}", rfc3339_millis(ts)));
}

/// The length of `2025-11-28T16:05:53.123Z`.
const RFC3339_MS_LEN: usize = 24;
/// 9999-12-31T23:59:59.999Z, the last time with a four-digit year.
const LAST_FOUR_DIGIT_YEAR_MS: Ts = 253_402_300_799_999;

fn rfc3339_millis(ts: Ts) -> humantime::Rfc3339Timestamp {
    let ms = ts.clamp(0, LAST_FOUR_DIGIT_YEAR_MS) as u64;
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
}

/// Parses RFC 3339 or epoch milliseconds.
pub fn parse_ts(s: &str) -> Option<Ts> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_764_345_953_123), "2025-11-28T16:05:53.123Z");
        let mut out = b"ts=".to_vec();
        push_rfc3339_ms(&mut out, 1_764_345_953_123);
        assert_eq!(out, b"ts=2025-11-28T16:05:53.123Z");
        assert_eq!(rfc3339_ms(1_764_345_953_123).capacity(), RFC3339_MS_LEN);
        // Out of RFC 3339's range: clamped, never empty (and never a panic, as before).
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(253_402_300_800_000), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_ts("2025-11-28T16:05:53.123Z"),
            Some(1_764_345_953_123)
        );
        assert_eq!(parse_ts("1764345953123"), Some(1_764_345_953_123));
        assert_eq!(parse_ts("yesterday"), None);
    }
}
