//! Command-line interface: `run`, `check`, and the tools built into the same binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;

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
    /// Sweep the early-warning limits over recorded samples against the cells' own anode-effect
    /// register; propose limits and write an HTML report with figures.
    Tune(crate::tune::TuneArgs),
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
