//! Shared vocabulary of the pure core: timestamps, quality, samples, priorities.

use std::fmt;

/// Milliseconds since the Unix epoch (UTC). Every time in the core is one of these and is
/// passed in by the caller; the core never reads a clock.
pub type Ts = i64;

/// Why a sample is not good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadReason {
    /// The device did not answer within its timeout.
    Timeout,
    /// The device answered with a Modbus exception (function code + 0x80).
    Exception(u8),
    /// The link to the device is down (connect failed, connection dropped).
    ConnectionLost,
    /// The registers were read but do not decode to a usable value (NaN, infinity).
    Decode,
    /// The reply did not match the request (wrong length, transaction id, function code).
    Protocol,
    /// A derived tag whose inputs are not all good.
    Input,
}

impl BadReason {
    /// A stable, lower-case name used in payloads and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            BadReason::Timeout => "timeout",
            BadReason::Exception(_) => "exception",
            BadReason::ConnectionLost => "connection_lost",
            BadReason::Decode => "decode_error",
            BadReason::Protocol => "protocol_error",
            BadReason::Input => "bad_input",
        }
    }
}

impl fmt::Display for BadReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadReason::Exception(code) => write!(f, "exception {code:02X}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Quality of one sample. A bad sample never triggers a value rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quality {
    #[default]
    Good,
    Bad(BadReason),
}

impl Quality {
    pub fn is_good(&self) -> bool {
        matches!(self, Quality::Good)
    }

    /// `"good"` or `"bad:<reason>"`, as published.
    pub fn label(&self) -> String {
        match self {
            Quality::Good => "good".to_string(),
            Quality::Bad(BadReason::Exception(code)) => format!("bad:exception_{code:02x}"),
            Quality::Bad(reason) => format!("bad:{}", reason.as_str()),
        }
    }
}

/// Alarm priority, highest first (ISA-18.2 uses three or four levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    Critical,
    High,
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 4] = [
        Priority::Critical,
        Priority::High,
        Priority::Medium,
        Priority::Low,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
