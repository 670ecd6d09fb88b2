//! Logging: human format on a terminal, JSON when asked (`--log-format json` or
//! `ALSENTRY_LOG_FORMAT=json`), level from `--log`/`RUST_LOG` or the caller's default.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

/// What the command line (or its environment variables) asked for.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub json: bool,
    /// An `EnvFilter` directive such as `info,alsentry=debug`.
    pub filter: Option<String>,
}

static OPTIONS: OnceLock<LogOptions> = OnceLock::new();

/// Called once by `main` with the parsed command line; library users (tests) fall back to
/// the environment variables.
pub fn configure(options: LogOptions) {
    let _ = OPTIONS.set(options);
}

fn options() -> LogOptions {
    OPTIONS.get().cloned().unwrap_or_else(|| LogOptions {
        json: std::env::var("ALSENTRY_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")),
        filter: std::env::var("RUST_LOG").ok(),
    })
}

/// True when log lines (and configuration problems) are JSON objects.
pub fn json() -> bool {
    options().json
}

/// True when the user chose the log filter (`--log` or `RUST_LOG`).
pub fn filter_given() -> bool {
    options().filter.is_some()
}

pub fn init(level: Option<&str>) {
    let options = options();
    let filter = options
        .filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if options.json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
