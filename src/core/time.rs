//! Timestamps as text: RFC 3339 for payloads and logs, RFC 3339 or epoch milliseconds when
//! read back (commands, recorded samples). Pure conversions; nothing here reads a clock.

use std::time::{Duration, UNIX_EPOCH};

use super::model::Ts;

/// RFC 3339 UTC with milliseconds, e.g. "2026-11-28T16:05:53.123Z".
pub fn rfc3339_ms(ts: Ts) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ts.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
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
        assert_eq!(
            parse_ts("2025-11-28T16:05:53.123Z"),
            Some(1_764_345_953_123)
        );
        assert_eq!(parse_ts("1764345953123"), Some(1_764_345_953_123));
        assert_eq!(parse_ts("yesterday"), None);
    }
}
