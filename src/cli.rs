//! Command-line interface: `run`, `check`, and the tools built into the same binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::DEFAULT_PATH;

#[derive(Debug, Parser)]
#[command(
    name = "alsentry",
    version,
    about = "Edge alarm daemon for aluminium plants: Modbus acquisition, early-warning rules, ISA-18.2 alarms, MQTT delivery",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll devices, evaluate rules, publish alarms.
    Run(ConfigArg),
    /// Validate a configuration: exit 0 if it is valid, or list every problem and exit 1.
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
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Also print the Modbus read plan of every device.
    #[arg(long)]
    pub explain: bool,
}
