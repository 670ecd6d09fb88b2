//! Logging: human format on a terminal, JSON when asked (`ALSENTRY_LOG_FORMAT=json` or the
//! config), level from `RUST_LOG` or the config.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level.unwrap_or("info")));
    let json = std::env::var("ALSENTRY_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
