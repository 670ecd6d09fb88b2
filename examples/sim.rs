//! Manual runner for the simulator until the CLI wires `alsentry sim`:
//! `cargo run --example sim -- --scenario config/scenarios/normal.toml`

use clap::Parser;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    sim: alsentry::sim::SimArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    alsentry::sim::run(cli.sim).await
}
