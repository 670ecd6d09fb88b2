//! Command-line interface: `run`, `check`, and the tools built into the same binary; the exit
//! codes and how an invalid configuration is reported.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{ConfigError, DEFAULT_PATH};

/// Exit code for an invalid configuration, from every subcommand (sysexits.h `EX_CONFIG`).
/// The systemd unit has `RestartPreventExitStatus=78`: restarting cannot fix a bad file.
pub const EX_CONFIG: u8 = 78;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 78 invalid configuration (every problem is listed, as FILE:LINE:COL: key: \
message, or as JSON lines with --log-format json); 1 any other failure.";

#[derive(Debug, Parser)]
#[command(
    name = "alsentry",
    version,
    about = "Edge alarm daemon for aluminium plants: Modbus acquisition, early-warning rules, ISA-18.2 alarms, MQTT delivery",
    long_about = None,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Log lines (and configuration problems) as plain text or as JSON objects.
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        env = "ALSENTRY_LOG_FORMAT",
        default_value = "human",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
    /// Log filter, e.g. "info" or "info,alsentry::io=debug" (tracing-subscriber EnvFilter).
    #[arg(long = "log", global = true, env = "RUST_LOG", value_name = "FILTER")]
    pub log_filter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

impl Cli {
    pub fn log_options(&self) -> crate::telemetry::LogOptions {
        crate::telemetry::LogOptions {
            json: self.log_format == LogFormat::Json,
            filter: self.log_filter.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll devices, evaluate rules, publish alarms.
    Run(ConfigArg),
    /// Validate a configuration: exit 0 if it is valid, or list every problem and exit 78.
    Check(CheckArgs),
    /// Run the Modbus plant simulator (cells, kilns, a calciner; scripted faults).
    Sim(crate::sim::SimArgs),
    /// Simulated plant + embedded broker + agent in one process; alarms print to the terminal.
    Demo(crate::demo::DemoArgs),
    /// Replay recorded samples (CSV) through the engine on file time; score against ground truth.
    Replay(crate::replay::ReplayArgs),
    /// Run simulator scenarios through the rule engine on simulated time and score the warnings.
    Evaluate(crate::evaluate::EvaluateArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file.
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Also print the Modbus read plan of every device.
    #[arg(long)]
    pub explain: bool,
}

/// Reports every problem of a configuration that `path` failed with, on stderr, and returns
/// `EX_CONFIG`. `consequence` ends the count line, e.g. "; not starting". In JSON log mode
/// every problem is one JSON object per line, shaped like the log lines, with the file, line,
/// column and key as fields.
pub fn config_refused(path: &Path, err: &ConfigError, consequence: &str) -> ExitCode {
    let summary = format!(
        "{}: {} problem(s){consequence}",
        path.display(),
        err.problems.len()
    );
    if crate::telemetry::json() {
        let ts = crate::clock::rfc3339_ms(crate::clock::wall_ms());
        for p in &err.problems {
            let line = serde_json::json!({
                "timestamp": ts,
                "level": "ERROR",
                "fields": {
                    "message": p.message,
                    "file": p.file.display().to_string(),
                    "line": p.line,
                    "col": p.col,
                    "key": p.path,
                },
                "target": "alsentry::config",
            });
            eprintln!("{line}");
        }
        let line = serde_json::json!({
            "timestamp": ts,
            "level": "ERROR",
            "fields": {
                "message": summary,
                "file": path.display().to_string(),
                "problems": err.problems.len(),
            },
            "target": "alsentry::config",
        });
        eprintln!("{line}");
    } else {
        for p in &err.problems {
            eprintln!("{p}");
        }
        eprintln!("{summary}");
    }
    ExitCode::from(EX_CONFIG)
}
