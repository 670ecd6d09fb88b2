//! Command-line interface: `run`, `check`, and the tools built into the same binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::DEFAULT_PATH;

const AFTER_HELP: &str = "\
Exit codes: 0 success; 78 invalid configuration (every problem is listed, as FILE:LINE:COL: key: \
message, or as JSON lines with --log-format json); 69 `probe`: a device did not answer; 1 any \
other failure.";

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
    /// Read devices once as `run` would and print each tag's address, raw words, value and quality.
    Probe(crate::probe::ProbeArgs),
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
    /// Manage the operator station's users (the file named by `[http] users`).
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from stdin (one line) or asked for on a terminal.
    Add {
        name: String,
        /// viewer (sees), operator (acknowledges, shelves, resets) or engineer (also out of service).
        #[arg(long, value_parser = ["viewer", "operator", "engineer"])]
        role: String,
        #[command(flatten)]
        file: UsersFile,
    },
    /// Set a user's password (read like `add`'s).
    Passwd {
        name: String,
        #[command(flatten)]
        file: UsersFile,
    },
}

#[derive(Debug, Args)]
pub struct UsersFile {
    /// Configuration file whose `[http] users` names the users file.
    #[arg(short, long, value_name = "FILE", env = "ALSENTRY_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// The users file itself (instead of reading the configuration).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
}

/// `alsentry user add|passwd`: exit 0, 78 (configuration without `[http] users`), 1 otherwise.
pub fn user(cmd: UserCommand) -> std::process::ExitCode {
    use crate::io::web::auth::{set_user, Role};
    use std::process::ExitCode;
    let (name, role, file) = match cmd {
        UserCommand::Add { name, role, file } => (name, Role::parse(&role), file),
        UserCommand::Passwd { name, file } => (name, None, file),
    };
    let path = match file.users {
        Some(p) => p,
        None => match crate::config::Config::load(&file.config) {
            Ok(cfg) => match cfg.http.and_then(|h| h.users) {
                Some(p) => p,
                None => {
                    eprintln!(
                        "{}: no [http] users file is configured; add `users = \"/etc/alsentry/users\"` under [http] or pass --users FILE",
                        file.config.display()
                    );
                    return ExitCode::from(78);
                }
            },
            Err(e) => return crate::telemetry::config_refused(&file.config, &e, ""),
        },
    };
    let password = match read_password(&name) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    match set_user(&path, &name, role, &password) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// One line from stdin; on a terminal, asked twice without echo.
fn read_password(name: &str) -> Result<String, String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let line = |prompt: &str| -> Result<String, String> {
        if stdin.is_terminal() {
            eprint!("{prompt}");
            let _ = std::io::stderr().flush();
        }
        let mut s = String::new();
        stdin
            .lock()
            .read_line(&mut s)
            .map_err(|e| format!("reading the password: {e}"))?;
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
    };
    if !stdin.is_terminal() {
        return line("");
    }
    let echo = |on: bool| {
        let _ = std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(std::process::Stdio::inherit())
            .status();
    };
    echo(false);
    let first = line(&format!("password for {name}: "));
    eprintln!();
    let second = line("again: ");
    eprintln!();
    echo(true);
    let (first, second) = (first?, second?);
    if first != second {
        return Err("the passwords differ".into());
    }
    Ok(first)
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
