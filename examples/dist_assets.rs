//! Writes the man pages and shell completions of the packages from the CLI definition:
//!
//!     cargo run --example dist_assets -- target/dist/assets
//!
//! gives `man/alsentry.1` (plus `alsentry-SUBCOMMAND.1` for each subcommand, gzipped by the
//! packager) and `completions/{alsentry.bash,_alsentry,alsentry.fish}`. An example rather than
//! a subcommand: the gateway binary does not carry the generators, and the output does not
//! depend on the target, so a cross build uses the files generated on the build host.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/dist/assets"));
    let cmd = alsentry::cli::Cli::command();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    // alsentry.1 and alsentry-SUBCOMMAND.1 for each subcommand.
    clap_mangen::generate_to(cmd, &man)?;
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = alsentry::cli::Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, "alsentry", &completions)?;
        println!("{}", path.display());
    }
    Ok(())
}
