use std::process::ExitCode;

use clap::Parser;

use alsentry::cli::{Cli, Command};
use alsentry::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => match Config::load(&args.config) {
            Ok(cfg) => {
                print!("{}", alsentry::explain::summary(&cfg));
                if args.explain {
                    print!("{}", alsentry::explain::read_plan(&cfg));
                }
                println!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for p in &e.problems {
                    eprintln!("{p}");
                }
                eprintln!("{}: {} problem(s)", args.config.display(), e.problems.len());
                ExitCode::from(1)
            }
        },
        Command::Run(args) => alsentry::app::main(&args.config),
    }
}
