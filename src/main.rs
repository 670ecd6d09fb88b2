use std::process::ExitCode;

use clap::Parser;

use alsentry::cli::{Cli, Command};
use alsentry::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    alsentry::telemetry::configure(cli.log_options());
    match cli.command {
        Command::Check(args) => match Config::load(&args.config) {
            Ok(cfg) => {
                print!("{}", alsentry::config::describe::summary(&cfg));
                if args.explain {
                    print!("{}", alsentry::explain::read_plan(&cfg));
                }
                for w in alsentry::config::describe::kpi_warnings(&cfg) {
                    alsentry::telemetry::config_warning(&args.config, &w);
                }
                println!("{}: ok", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => alsentry::telemetry::config_refused(&args.config, &e, ""),
        },
        Command::Run(args) => alsentry::app::main(&args.config),
        Command::Probe(args) => alsentry::probe::main(args),
        Command::Demo(args) => alsentry::demo::main(args),
        Command::Evaluate(args) => alsentry::evaluate::main(args),
        Command::Replay(args) => alsentry::replay::main(args),
        Command::User(cmd) => alsentry::cli::user(cmd),
        Command::Tune(args) => alsentry::tune::main(args),
        Command::Sim(args) => {
            alsentry::telemetry::init(None);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(alsentry::sim::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sim: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
